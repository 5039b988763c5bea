package main

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/rules"
)

// statusReport is what `nftpol status` knows; its JSON form is part of the
// interface to monitoring, fields are only ever added.
type statusReport struct {
	Table     string         `json:"table"`
	Installed bool           `json:"installed"`
	Owned     bool           `json:"owned"`
	Dormant   bool           `json:"dormant,omitempty"`
	InSync    *bool          `json:"in_sync"` // null: no state to compare with
	Drift     []string       `json:"drift"`
	Accounts  int            `json:"accounts"`
	Elements  map[string]int `json:"elements"`
	LastApply *lastApply     `json:"last_apply"`
	StateErr  string         `json:"state_error,omitempty"`
	Top       []violator     `json:"violations"`
}

type lastApply struct {
	Time         time.Time `json:"time"`
	Version      string    `json:"version"`
	PolicyDigest string    `json:"policy_sha256"`
	// StateDigest is the sha256 the state file ends with (format 1: of
	// its ruleset record).
	StateDigest string `json:"state_sha256"`
}

type violator struct {
	UID      uint32    `json:"uid"`
	Account  string    `json:"account,omitempty"`
	Proto    string    `json:"proto"`
	Port     uint16    `json:"port"`
	Packets  uint64    `json:"packets"`
	Bytes    uint64    `json:"bytes"`
	LastSeen time.Time `json:"last_seen"`
}

func (a *app) statusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show whether the table is installed and in sync, and who violates the policy",
		Args:  cobra.NoArgs,
	}
	out := cmd.Flags().StringP("output", "o", "text", "output format: text, json or prometheus")
	format := cmd.Flags().String("format", "", "same as --output (prometheus: node_exporter textfile metrics)")
	top := cmd.Flags().Int("top", 10, "how many violators to list")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		f := *out
		if *format != "" {
			f = *format
		}
		if f != "text" && f != "json" && f != "prometheus" {
			return fmt.Errorf("unknown output format %q (want text, json or prometheus)", f)
		}
		r, err := a.status(*top)
		if err != nil {
			return err
		}
		switch f {
		case "json":
			b, err := json.Marshal(r)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.stdout, "%s\n", b)
			return err
		case "prometheus":
			return r.writePrometheus(a.stdout)
		}
		return r.writeText(a.stdout)
	}
	return cmd
}

func (a *app) status(top int) (*statusReport, error) {
	table, err := a.tableName()
	if err != nil {
		return nil, err
	}
	r := &statusReport{Table: table, Elements: map[string]int{}, Drift: []string{}, Top: []violator{}}
	st, serr := a.recordedState()
	switch {
	case serr == nil:
		r.LastApply = &lastApply{Time: st.AppliedAt, Version: st.Version, PolicyDigest: st.PolicyDigest, StateDigest: st.sha}
	case !errors.Is(serr, errNoState):
		r.StateErr = serr.Error()
	}

	k, err := a.openKernel()
	if err != nil {
		return nil, err
	}
	defer k.Close()
	current, err := k.Read(table)
	if err != nil {
		return nil, err
	}
	if current == nil {
		if st != nil {
			f := false
			r.InSync = &f
			r.Drift = append(r.Drift, "the table is not installed (run nftpol restore or nftpol apply)")
		}
		return r, nil
	}
	r.Installed, r.Owned, r.Dormant = true, current.Owned(), current.Dormant
	names := map[uint32]string{}
	for _, s := range current.Sets {
		if !s.Dynamic {
			r.Elements[s.Name] = len(s.Elements)
		}
	}
	for _, es := range rules.Accounts(current) {
		for _, e := range es {
			names[e.UID] = e.Comment
		}
	}
	r.Accounts = len(installedAccounts(current))
	if st != nil {
		plan := rules.Diff(current, st.ruleset)
		sync := plan.Empty()
		r.InSync = &sync
		r.Drift = driftLines(plan)
	}

	now := time.Now()
	for _, s := range current.Sets {
		if !s.Dynamic {
			continue
		}
		proto, ok := strings.CutSuffix(s.Name, "_violations")
		if !ok {
			continue
		}
		hits, err := k.Hits(table, s.Name)
		if err != nil {
			return nil, err
		}
		for _, h := range hits {
			timeout := s.Timeout
			if timeout == 0 {
				timeout = compiler.ViolationTimeout
			}
			r.Top = append(r.Top, violator{
				UID: h.UID, Account: names[h.UID], Proto: cmp.Or(h.Proto, proto), Port: h.Port,
				Packets: h.Packets, Bytes: h.Bytes,
				LastSeen: now.Add(-(timeout - h.Expires)).UTC().Truncate(time.Second),
			})
		}
	}
	slices.SortFunc(r.Top, func(x, y violator) int {
		if c := cmp.Compare(y.Packets, x.Packets); c != 0 {
			return c
		}
		return cmp.Compare(x.UID, y.UID)
	})
	if len(r.Top) > top {
		r.Top = r.Top[:top]
	}
	return r, nil
}

// driftLines says in a few lines how the kernel differs from the state.
func driftLines(p *rules.Plan) []string {
	out := []string{}
	if p.Empty() {
		return out
	}
	if p.Wake {
		out = append(out, "the table is dormant: it enforces nothing")
	}
	if p.TableAction == rules.TableReplace {
		out = append(out, "the table's layout differs or it holds objects nftpol did not write")
	}
	for _, ac := range p.Accounts {
		var parts []string
		for _, pp := range ac.Ports {
			parts = append(parts, fmt.Sprintf("%s kernel %s, recorded %s", pp.Proto, joinOr(pp.Old), joinOr(pp.New)))
		}
		out = append(out, fmt.Sprintf("account %s (uid %d): %s", displayName(ac.Name), ac.UID, strings.Join(parts, "; ")))
	}
	for _, c := range p.Chains {
		out = append(out, fmt.Sprintf("chain %s: rules differ from those recorded", c.Name))
	}
	for _, s := range p.Sets {
		if s.Action == rules.ActionCreate && p.TableAction != rules.TableReplace {
			out = append(out, fmt.Sprintf("set %s is missing", s.Name))
		}
	}
	return out
}

func joinOr(rs []string) string {
	if len(rs) == 0 {
		return "none"
	}
	return strings.Join(rs, ",")
}

func (r *statusReport) writeText(w io.Writer) error {
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
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func nftDurationText(d time.Duration) string {
	if d == time.Hour {
		return "hour"
	}
	return d.String()
}

// writePrometheus prints the report as node_exporter textfile metrics.
func (r *statusReport) writePrometheus(w io.Writer) error {
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
	t := promLabel(r.Table)
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
		fmt.Fprintf(&b, "nftpol_set_elements{table=%s,set=%s} %d\n", t, promLabel(name), r.Elements[name])
	}
	if r.LastApply != nil {
		gauge("nftpol_last_apply_timestamp_seconds", "When the last successful apply happened.")
		fmt.Fprintf(&b, "nftpol_last_apply_timestamp_seconds{table=%s} %d\n", t, r.LastApply.Time.Unix())
	}
	gauge("nftpol_violation_packets", "Packets of blocked serving per uid, protocol and port, over the recording window.")
	for _, v := range r.Top {
		fmt.Fprintf(&b, "nftpol_violation_packets{table=%s,uid=\"%d\",account=%s,proto=%s,port=\"%d\"} %d\n",
			t, v.UID, promLabel(v.Account), promLabel(v.Proto), v.Port, v.Packets)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// promLabel quotes a label value as the Prometheus text format wants.
func promLabel(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	return `"` + r.Replace(s) + `"`
}
