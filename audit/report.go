//go:build linux

package audit

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nftpol/nftpol/bindguard"
	"github.com/nftpol/nftpol/sockets"
)

// Report is what audit found and did, for printing.
type Report struct {
	// Policy is the policy file, Netns the namespace ("" for ours).
	Policy, Netns string
	// Unreadable counts processes whose descriptors could not be read.
	Unreadable int
	Findings   []Finding
	// Terminate says --terminate ran, with Grace; Terminated is what it
	// did.
	Terminate  bool
	Grace      time.Duration
	Terminated []Termination
	// Guard is the policy's bind guard, nil when it has none.
	Guard *bindguard.Data
}

// guardRefuses reports whether the policy's bind guard refuses the bind of
// f's socket.
func (r *Report) GuardRefuses(f Finding) bool {
	if r.Guard == nil {
		return false
	}
	proto := bindguard.UDP
	if f.Socket.Proto == sockets.TCP || f.Socket.Proto == sockets.SCTP {
		proto = bindguard.TCP
	}
	return r.Guard.Refuses(f.Socket.UID, proto, f.Socket.Port)
}

func (r *Report) Count(v Verdict) int {
	n := 0
	for _, f := range r.Findings {
		if f.Verdict == v {
			n++
		}
	}
	return n
}

// unfinished counts processes --terminate signalled or tried to signal that
// are still there.
func (r *Report) Unfinished() int {
	n := 0
	for _, t := range r.Terminated {
		if t.Outcome == Failed || t.Outcome == Running {
			n++
		}
	}
	return n
}

func (r *Report) WriteText(w io.Writer) error {
	where := "this network namespace"
	if r.Netns != "" {
		where = "network namespace " + r.Netns
	}
	fmt.Fprintf(w, "Sockets of %s under %s:\n\n", where, r.Policy)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tADDRESS\tUID\tACCOUNT\tPROCESS\tVERDICT")
	for _, f := range r.Findings {
		verdict := string(f.Verdict)
		if f.Verdict == Blocked {
			verdict += ": " + f.Explain()
		}
		if f.MaybeClient {
			verdict += " (automatic UDP port: may be a client)"
		}
		if r.GuardRefuses(f) {
			verdict += " (the bind guard refuses this bind)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", f.Socket.Proto, f.Socket.AddrPort(), f.Socket.UID,
			dash(f.Account), processes(f.Processes), verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	counts := make([]string, len(Verdicts))
	for i, v := range Verdicts {
		counts[i] = fmt.Sprintf("%d %s", r.Count(v), v)
	}
	fmt.Fprintf(w, "\n%d %s: %s.\n", len(r.Findings), map[bool]string{true: "socket", false: "sockets"}[len(r.Findings) == 1], strings.Join(counts, ", "))

	if !r.Terminate {
		return nil
	}
	fmt.Fprintln(w)
	if len(r.Terminated) == 0 {
		fmt.Fprintln(w, "--terminate: no process holds a blocked socket; nothing to do.")
	} else {
		fmt.Fprintf(w, "--terminate (grace %v):\n", r.Grace)
		for _, t := range r.Terminated {
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
	for _, f := range r.Findings {
		if f.Verdict == Blocked && len(f.Processes) == 0 {
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

func (r *Report) WriteJSON(w io.Writer) error {
	j := auditJSON{Policy: r.Policy, Netns: r.Netns, Sockets: []socketJSON{}, Summary: map[string]int{}, Unreadable: r.Unreadable}
	for _, v := range Verdicts {
		j.Summary[string(v)] = r.Count(v)
	}
	for _, f := range r.Findings {
		s := socketJSON{
			Proto: string(f.Socket.Proto), Address: f.Socket.Addr.String(), Port: f.Socket.Port,
			Interface: f.Socket.Interface, UID: f.Socket.UID, Inode: f.Socket.Inode, Account: f.Account,
			Processes: []processJSON{}, Verdict: string(f.Verdict),
			Reason: string(f.Reason), OtherAccount: f.Other, Explanation: f.Explain(), Rule: f.Rule,
			MaybeClient: f.MaybeClient, GuardRefuses: r.GuardRefuses(f),
		}
		for _, p := range f.Processes {
			s.Processes = append(s.Processes, processJSON{p.PID, p.Command})
		}
		j.Sockets = append(j.Sockets, s)
	}
	for _, t := range r.Terminated {
		j.Terminated = append(j.Terminated, terminationJSON{
			PID: t.PID, Command: t.Command, Sockets: t.Sockets, Signals: append([]string{}, t.Signals...),
			Outcome: string(t.Outcome), Detail: t.Detail,
		})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(j)
}
