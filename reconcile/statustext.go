package reconcile

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/internal/promtext"
)

// WriteText prints the report for people.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	state := "not installed"
	switch {
	case r.Installed && !r.Owned:
		state = "installed, but NOT created by nftpol"
	case r.Installed && r.Dormant:
		state = "installed, DORMANT (enforcing nothing)"
	case r.Installed:
		state = "installed, managed by nftpol"
	}
	fmt.Fprintf(tw, "Table:\tinet %s (%s)\n", r.Table, state)
	switch {
	case r.InSync == nil && r.StateErr != "":
		fmt.Fprintf(tw, "Sync:\tunknown: %s\n", r.StateErr)
	case r.InSync == nil:
		fmt.Fprintf(tw, "Sync:\tunknown: nothing applied yet (no state)\n")
	case *r.InSync:
		fmt.Fprintf(tw, "Sync:\tin sync with the last apply\n")
	default:
		fmt.Fprintf(tw, "Sync:\tDRIFTED from the last apply (nftpol restore or apply repairs it):\n")
		for _, d := range r.Drift {
			fmt.Fprintf(tw, "\t  %s\n", d)
		}
	}
	if r.Installed {
		total := 0
		for _, n := range r.Elements {
			total += n
		}
		fmt.Fprintf(tw, "Accounts:\t%d installed (%d set elements)\n", r.Accounts, total)
	}
	if a := r.Agent; a != nil {
		mode := "follows the kernel and heals every change to the table"
		if a.Mode == "owner" {
			mode = "owns the table: no other process can change it"
		}
		fmt.Fprintf(tw, "Agent:\tnftpol watch, pid %d since %s, %s; %d applies, %d failed, %d heals\n",
			a.PID, a.Since.Format("2006-01-02 15:04:05 MST"), mode, a.Applies, a.Failures, a.Heals)
		if a.LastHeal != nil {
			fmt.Fprintf(tw, "Last heal:\t%s, after %s\n", a.LastHeal.Format("2006-01-02 15:04:05 MST"), orDash(a.LastHealCause))
		}
		if a.Suspended != "" {
			fmt.Fprintf(tw, "Enforcing:\tNOTHING: %s\n", a.Suspended)
		}
		if a.PolicyError != "" {
			fmt.Fprintf(tw, "Policy:\tNOT APPLIED since %s, the last good policy stays enforced:\n", a.PolicyErrorSince.Format("2006-01-02 15:04:05 MST"))
			for _, l := range strings.Split(strings.TrimRight(a.PolicyError, "\n"), "\n") {
				fmt.Fprintf(tw, "\t  %s\n", l)
			}
		}
		if a.OffendersError != "" {
			fmt.Fprintf(tw, "Offenders:\tNOT watched: %s\n", a.OffendersError)
		}
		if len(a.Episodes) == 0 {
			fmt.Fprintf(tw, "Serving:\tno account serves where it may not now\n")
		} else {
			fmt.Fprintf(tw, "Serving:\t%d %s where the policy does not allow it now:\n", len(a.Episodes), plural(len(a.Episodes), "socket", "sockets"))
			fmt.Fprintf(tw, "\t  UID\tACCOUNT\tPROTO\tPORT\tSINCE\tPACKETS\tPROCESSES\tENDS AT\n")
			for _, e := range a.Episodes {
				end := "-"
				if e.TerminateAt != nil {
					end = e.TerminateAt.Format("15:04:05 MST")
				}
				fmt.Fprintf(tw, "\t  %d\t%s\t%s\t%d\t%s\t%d\t%s\t%s\n", e.UID, orDash(e.Account), e.Proto, e.Port,
					e.Started.Format("15:04:05 MST"), e.Packets, orDash(strings.Join(e.Processes, " ")), end)
			}
		}
		if len(a.Terminations) > 0 {
			fmt.Fprintf(tw, "Terminated:\tthe last %d:\n", len(a.Terminations))
			fmt.Fprintf(tw, "\t  AT\tUID\tACCOUNT\tPROTO\tPORT\tPROCESS\tSIGNALS\tOUTCOME\n")
			for _, tm := range a.Terminations {
				outcome := tm.Outcome
				if tm.DryRun {
					outcome += " (dry run)"
				}
				fmt.Fprintf(tw, "\t  %s\t%d\t%s\t%s\t%d\t%s[%d]\t%s\t%s\n", tm.At.Format("15:04:05 MST"), tm.UID, orDash(tm.Account),
					tm.Proto, tm.Port, tm.Command, tm.PID, orDash(strings.Join(tm.Signals, ",")), outcome)
			}
		}
	}
	if r.LastApply != nil {
		fmt.Fprintf(tw, "Last apply:\t%s by nftpol %s, state sha256 %.12s, policy sha256 %.12s\n",
			r.LastApply.Time.Format("2006-01-02 15:04:05 MST"), r.LastApply.Version, r.LastApply.StateDigest, r.LastApply.PolicyDigest)
	}
	if r.Installed {
		if len(r.Top) == 0 {
			fmt.Fprintf(tw, "Violations:\tnone recorded in the last %s\n", nftDurationText(compiler.ViolationTimeout))
		} else {
			fmt.Fprintf(tw, "Violations:\ttop %d (blocked serving, last %s):\n", len(r.Top), nftDurationText(compiler.ViolationTimeout))
			fmt.Fprintf(tw, "\t  UID\tACCOUNT\tPROTO\tPORT\tPACKETS\tLAST SEEN\n")
			for _, v := range r.Top {
				fmt.Fprintf(tw, "\t  %d\t%s\t%s\t%d\t%d\t%s\n", v.UID, orDash(v.Account), v.Proto, v.Port, v.Packets, v.LastSeen.Format("15:04:05 MST"))
			}
		}
	}
	if g := r.BindGuard; g != nil {
		switch {
		case g.Error != "":
			fmt.Fprintf(tw, "Bind guard:\tunknown: %s\n", g.Error)
		case !g.Installed:
			fmt.Fprintf(tw, "Bind guard:\tNOT installed (the last apply recorded one: nftpol restore or apply installs it)\n")
		default:
			where := "NOT attached to its cgroup"
			if g.Attached {
				where = "attached to " + g.Cgroup
			}
			sync := "in sync with the last apply"
			if !g.InSync {
				sync = "its maps DIFFER from the last apply"
			}
			fmt.Fprintf(tw, "Bind guard:\t%s, %s\n", where, sync)
		}
		if len(g.Events) > 0 {
			fmt.Fprintf(tw, "\t  KIND\tUID\tPROTO\tPORT\tCOUNT\n")
			for _, e := range g.Events {
				fmt.Fprintf(tw, "\t  %s\t%d\t%s\t%d\t%d\n", e.Kind, e.UID, e.Proto, e.Port, e.Count)
			}
		}
	}
	return tw.Flush()
}

func nftDurationText(d time.Duration) string {
	if d == time.Hour {
		return "hour"
	}
	return d.String()
}

// WritePrometheus prints the report as node_exporter textfile metrics.
func (r *Report) WritePrometheus(w io.Writer) error {
	var b strings.Builder
	gauge := func(name, help string) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
	}
	bit := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	t := promtext.Label(r.Table)
	gauge("nftpol_table_installed", "Whether nftpol's table is installed and created by nftpol.")
	fmt.Fprintf(&b, "nftpol_table_installed{table=%s} %d\n", t, bit(r.Installed && r.Owned && !r.Dormant))
	if r.InSync != nil {
		gauge("nftpol_in_sync", "Whether the kernel holds what the last apply recorded.")
		fmt.Fprintf(&b, "nftpol_in_sync{table=%s} %d\n", t, bit(*r.InSync))
	}
	gauge("nftpol_accounts", "Accounts with ports installed in the kernel.")
	fmt.Fprintf(&b, "nftpol_accounts{table=%s} %d\n", t, r.Accounts)
	gauge("nftpol_set_elements", "Elements per set of nftpol's table.")
	for _, name := range slices.Sorted(maps.Keys(r.Elements)) {
		fmt.Fprintf(&b, "nftpol_set_elements{table=%s,set=%s} %d\n", t, promtext.Label(name), r.Elements[name])
	}
	if r.LastApply != nil {
		gauge("nftpol_last_apply_timestamp_seconds", "When the last successful apply happened.")
		fmt.Fprintf(&b, "nftpol_last_apply_timestamp_seconds{table=%s} %d\n", t, r.LastApply.Time.Unix())
	}
	gauge("nftpol_violation_packets", "Packets of blocked serving per uid, protocol and port, over the recording window.")
	for _, v := range r.Top {
		fmt.Fprintf(&b, "nftpol_violation_packets{table=%s,uid=\"%d\",account=%s,proto=%s,port=\"%d\"} %d\n",
			t, v.UID, promtext.Label(v.Account), promtext.Label(v.Proto), v.Port, v.Packets)
	}
	if g := r.BindGuard; g != nil && g.Error == "" {
		gauge("nftpol_bind_guard_installed", "Whether the bind guard is installed and attached to its cgroup.")
		fmt.Fprintf(&b, "nftpol_bind_guard_installed{table=%s} %d\n", t, bit(g.Installed && g.Attached))
		gauge("nftpol_bind_guard_in_sync", "Whether the bind guard's maps hold what the last apply recorded.")
		fmt.Fprintf(&b, "nftpol_bind_guard_in_sync{table=%s} %d\n", t, bit(g.InSync))
		gauge("nftpol_bind_guard_events", "Binds the bind guard refused (kind bind) and packets it dropped (kind ingress), per uid, protocol and port.")
		for _, e := range g.Events {
			fmt.Fprintf(&b, "nftpol_bind_guard_events{table=%s,kind=%s,uid=\"%d\",proto=%s,port=\"%d\"} %d\n",
				t, promtext.Label(e.Kind), e.UID, promtext.Label(e.Proto), e.Port, e.Count)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
