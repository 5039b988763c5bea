package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/audit"
	"github.com/nftpol/nftpol/bindguard"
	"github.com/nftpol/nftpol/sockets"
)

// exitBlocked is audit's exit status when some socket is blocked, so that
// cron jobs and monitoring can act on it without parsing the output.
const exitBlocked = 3

// defaultGrace is how long audit --terminate waits after SIGTERM before
// SIGKILL: long enough for a daemon to close its connections cleanly.
const defaultGrace = 10 * time.Second

func (a *app) auditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "List the sockets that serve clients, and what the policy does to each",
		Long: `audit lists every listening TCP socket and bound UDP socket (IPv4 and IPv6)
of the machine, or of the --netns namespace, with its owner UID, the account
the policy gives that UID, and the processes that hold it. Each gets a
verdict under the policy, as compiled for apply:

    reachable     an account serves on a port of its own
    blocked       clients from outside cannot get through, because it is on
                    another account's port (NAME)
                    outside the account's ranges
                    protocol not assigned (the port is the account's, for
                      the other protocol only)
                    unassigned zone port (refused whoever listens, root too)
    local-only    bound to loopback, and the policy lets local clients in
    not-enforced  a UID below min_uid or exempt, not on a closed zone port

The verdicts describe the policy file. The kernel enforces them once
` + "`nftpol apply`" + ` has installed that policy.

Exit status: 0 when nothing is blocked, 3 when something is, 1 on error.

--terminate is opt-in and does what hosting providers did before nftpol:
it sends SIGTERM to every process holding a blocked socket (the whole
process, with all its other sockets), then SIGKILL to those still running
after --grace, and reports what it did. PID 1 is never signalled.

A blocked UDP socket on a port the kernel also hands to sockets that bind
none (net.ipv4.ip_local_port_range, minus ip_local_reserved_ports) may be a
client's: QUIC sends from unconnected sockets. Audit marks it "may be a
client", and --terminate leaves its process alone. Linux's default range
32768-60999 covers the usual zone; reserve the zone
(sysctl net.ipv4.ip_local_reserved_ports=40010-49999) so that every UDP
socket in it was bound on purpose.`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(cmd)
	terminate := cmd.Flags().Bool("terminate", false, "end the processes behind blocked sockets: SIGTERM, then SIGKILL after --grace (opt-in)")
	grace := cmd.Flags().Duration("grace", defaultGrace, "with --terminate: how long to wait after SIGTERM before SIGKILL")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*out); err != nil {
			return err
		}
		if *grace < 0 {
			return fmt.Errorf("--grace %v is negative; give a duration like 10s, or 0 for SIGKILL at once", *grace)
		}
		p, _, err := a.load()
		if err != nil {
			return err
		}
		judge, err := audit.New(p)
		if err != nil {
			return err
		}
		var opts []sockets.Option
		ns := a.v.GetString("netns")
		if ns != "" {
			opts = append(opts, sockets.WithNetNS(ns))
		}
		list, err := sockets.List(opts...)
		if err != nil {
			return err
		}
		auto, err := sockets.ReadAutoPorts(opts...)
		if err != nil {
			// Assume Linux's default rather than take every UDP
			// socket for a server's.
			auto = sockets.DefaultAutoPorts
			fmt.Fprintf(a.stderr, "nftpol: warning: reading the kernel's automatic port range: %v; assuming %d-%d\n", err, auto.Lo, auto.Hi)
		}
		judge.SetAutoPorts(auto)
		inodes := make([]uint64, len(list))
		for i, s := range list {
			inodes[i] = s.Inode
		}
		holders, unreadable, err := sockets.Holders(procRoot, inodes)
		if err != nil {
			return fmt.Errorf("finding the processes behind sockets in %s: %w", procRoot, err)
		}
		findings, err := judge.JudgeAll(list, holders)
		if err != nil {
			return err
		}
		r := &auditReport{policy: a.configFile(), netns: ns, findings: findings, unreadable: unreadable, terminate: *terminate, grace: *grace}
		if p.BindGuard.Enabled {
			if r.guard, err = bindguard.Compile(p); err != nil {
				return err
			}
		}
		if *terminate {
			r.terminated = audit.Terminate(cmd.Context(), findings, *grace, procRoot)
		}
		if unreadable > 0 {
			fmt.Fprintf(a.stderr, "nftpol: warning: the descriptors of %d %s could not be read (run as root to see every process behind a socket)\n",
				unreadable, noun(unreadable, "process", "processes"))
		}
		if *out == "json" {
			err = r.writeJSON(a.stdout)
		} else {
			err = r.writeText(a.stdout)
		}
		if err != nil {
			return err
		}
		if n := r.unfinished(); n > 0 {
			return fmt.Errorf("--terminate could not end %d %s; see the report above", n, noun(n, "process", "processes"))
		}
		if r.count(audit.Blocked) > 0 {
			return exitCodeError{exitBlocked}
		}
		return nil
	}
	return cmd
}

// procRoot is where processes are looked up.
const procRoot = "/proc"

// auditReport is what audit found and did, for printing.
type auditReport struct {
	policy, netns string
	// unreadable counts processes whose descriptors could not be read.
	unreadable int
	findings   []audit.Finding
	terminate  bool
	grace      time.Duration
	terminated []audit.Termination
	// guard is the policy's bind guard, nil when it has none.
	guard *bindguard.Data
}

// guardRefuses reports whether the policy's bind guard refuses the bind of
// f's socket.
func (r *auditReport) guardRefuses(f audit.Finding) bool {
	if r.guard == nil {
		return false
	}
	proto := bindguard.UDP
	if f.Socket.Proto == sockets.TCP || f.Socket.Proto == sockets.SCTP {
		proto = bindguard.TCP
	}
	return r.guard.Refuses(f.Socket.UID, proto, f.Socket.Port)
}

func (r *auditReport) count(v audit.Verdict) int {
	n := 0
	for _, f := range r.findings {
		if f.Verdict == v {
			n++
		}
	}
	return n
}

// unfinished counts processes --terminate signalled or tried to signal that
// are still there.
func (r *auditReport) unfinished() int {
	n := 0
	for _, t := range r.terminated {
		if t.Outcome == audit.Failed || t.Outcome == audit.Running {
			n++
		}
	}
	return n
}

func (r *auditReport) writeText(w io.Writer) error {
	where := "this network namespace"
	if r.netns != "" {
		where = "network namespace " + r.netns
	}
	fmt.Fprintf(w, "Sockets of %s under %s:\n\n", where, r.policy)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tADDRESS\tUID\tACCOUNT\tPROCESS\tVERDICT")
	for _, f := range r.findings {
		verdict := string(f.Verdict)
		if f.Verdict == audit.Blocked {
			verdict += ": " + f.Explain()
		}
		if f.MaybeClient {
			verdict += " (automatic UDP port: may be a client)"
		}
		if r.guardRefuses(f) {
			verdict += " (the bind guard refuses this bind)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", f.Socket.Proto, f.Socket.AddrPort(), f.Socket.UID,
			dash(f.Account), processes(f.Processes), verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	counts := make([]string, len(audit.Verdicts))
	for i, v := range audit.Verdicts {
		counts[i] = fmt.Sprintf("%d %s", r.count(v), v)
	}
	fmt.Fprintf(w, "\n%d %s: %s.\n", len(r.findings), noun(len(r.findings), "socket", "sockets"), strings.Join(counts, ", "))

	if !r.terminate {
		return nil
	}
	fmt.Fprintln(w)
	if len(r.terminated) == 0 {
		fmt.Fprintln(w, "--terminate: no process holds a blocked socket; nothing to do.")
	} else {
		fmt.Fprintf(w, "--terminate (grace %v):\n", r.grace)
		for _, t := range r.terminated {
			what := string(t.Outcome)
			if len(t.Signals) > 0 {
				what = strings.Join(t.Signals, ", ") + ", " + what
			}
			if t.Detail != "" {
				what += ": " + t.Detail
			}
			fmt.Fprintf(w, "  pid %d (%s, %s): %s\n", t.PID, dash(t.Command), strings.Join(t.Sockets, ", "), what)
		}
	}
	for _, f := range r.findings {
		if f.Verdict == audit.Blocked && len(f.Processes) == 0 {
			fmt.Fprintf(w, "  no process found for %s %s (uid %d): not signalled\n", f.Socket.Proto, f.Socket.AddrPort(), f.Socket.UID)
		}
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// processes writes holders as "PID/command,...".
func processes(ps []sockets.Process) string {
	if len(ps) == 0 {
		return "-"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = fmt.Sprintf("%d/%s", p.PID, dash(p.Command))
	}
	return strings.Join(s, ",")
}

// The JSON form of audit's report; field names are part of the interface
// monitoring tools use.
type (
	auditJSON struct {
		Policy     string            `json:"policy"`
		Netns      string            `json:"netns,omitempty"`
		Sockets    []socketJSON      `json:"sockets"`
		Summary    map[string]int    `json:"summary"`
		Unreadable int               `json:"unreadable_processes,omitempty"`
		Terminated []terminationJSON `json:"terminated,omitempty"`
	}
	socketJSON struct {
		Proto     string        `json:"proto"`
		Address   string        `json:"address"`
		Port      uint16        `json:"port"`
		Interface uint32        `json:"interface,omitempty"`
		UID       uint32        `json:"uid"`
		Inode     uint64        `json:"inode"`
		Account   string        `json:"account,omitempty"`
		Processes []processJSON `json:"processes"`
		Verdict   string        `json:"verdict"`
		// Reason is a fixed word; Explanation says it for people.
		Reason       string `json:"reason,omitempty"`
		OtherAccount string `json:"other_account,omitempty"`
		Explanation  string `json:"explanation,omitempty"`
		Rule         string `json:"rule,omitempty"`
		// MaybeClient: an unconnected UDP socket on a port the kernel
		// also gives clients; --terminate leaves it alone.
		MaybeClient  bool `json:"maybe_client,omitempty"`
		GuardRefuses bool `json:"bind_guard_refuses,omitempty"`
	}
	processJSON struct {
		PID     int    `json:"pid"`
		Command string `json:"command"`
	}
	terminationJSON struct {
		PID     int      `json:"pid"`
		Command string   `json:"command"`
		Sockets []string `json:"sockets"`
		Signals []string `json:"signals"`
		Outcome string   `json:"outcome"`
		Detail  string   `json:"detail,omitempty"`
	}
)

func (r *auditReport) writeJSON(w io.Writer) error {
	j := auditJSON{Policy: r.policy, Netns: r.netns, Sockets: []socketJSON{}, Summary: map[string]int{}, Unreadable: r.unreadable}
	for _, v := range audit.Verdicts {
		j.Summary[string(v)] = r.count(v)
	}
	for _, f := range r.findings {
		s := socketJSON{
			Proto: string(f.Socket.Proto), Address: f.Socket.Addr.String(), Port: f.Socket.Port,
			Interface: f.Socket.Interface, UID: f.Socket.UID, Inode: f.Socket.Inode, Account: f.Account,
			Processes: []processJSON{}, Verdict: string(f.Verdict),
			Reason: string(f.Reason), OtherAccount: f.Other, Explanation: f.Explain(), Rule: f.Rule,
			MaybeClient: f.MaybeClient, GuardRefuses: r.guardRefuses(f),
		}
		for _, p := range f.Processes {
			s.Processes = append(s.Processes, processJSON{p.PID, p.Command})
		}
		j.Sockets = append(j.Sockets, s)
	}
	for _, t := range r.terminated {
		j.Terminated = append(j.Terminated, terminationJSON{
			PID: t.PID, Command: t.Command, Sockets: t.Sockets, Signals: append([]string{}, t.Signals...),
			Outcome: string(t.Outcome), Detail: t.Detail,
		})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(j)
}
