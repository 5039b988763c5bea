package reconcile

import (
	"cmp"
	"errors"
	"slices"
	"time"

	"github.com/nftpol/nftpol/bindguard"
	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/state"
)

// Report is what `nftpol status` knows; its JSON form is part of the
// interface to monitoring, fields are only ever added.
type Report struct {
	Table     string         `json:"table"`
	Installed bool           `json:"installed"`
	Owned     bool           `json:"owned"`
	Dormant   bool           `json:"dormant,omitempty"`
	InSync    *bool          `json:"in_sync"` // null: no state to compare with
	Drift     []string       `json:"drift"`
	Accounts  int            `json:"accounts"`
	Elements  map[string]int `json:"elements"`
	LastApply *LastApply     `json:"last_apply"`
	StateErr  string         `json:"state_error,omitempty"`
	Top       []Violator     `json:"violations"`
	// BindGuard is the bind guard, when the state records one or one is
	// installed.
	BindGuard *GuardReport `json:"bind_guard,omitempty"`
	// Agent is the running agent (nftpol watch) that served the status;
	// absent when none runs.
	Agent *AgentReport `json:"agent,omitempty"`
}

// AgentReport is what a running agent adds to status.
type AgentReport struct {
	PID   int       `json:"pid"`
	Since time.Time `json:"since"`
	// Mode is "owner" (the agent holds the table: the kernel refuses
	// every other process's change to it) or "monitor" (it follows the
	// kernel's changes and heals them).
	Mode string `json:"mode"`
	// PolicyError is why the policy files cannot be applied now, since
	// PolicyErrorSince; the last good policy stays enforced.
	PolicyError      string     `json:"policy_error,omitempty"`
	PolicyErrorSince *time.Time `json:"policy_error_since,omitempty"`
	// Suspended says why the agent enforces nothing now (nftpol remove).
	Suspended string `json:"suspended,omitempty"`
	Applies   uint64 `json:"applies"`
	Failures  uint64 `json:"failures"`
	// PolicyErrors counts the times the policy files turned out broken.
	PolicyErrors uint64     `json:"policy_errors"`
	Heals        uint64     `json:"heals"`
	LastApply    *time.Time `json:"last_apply,omitempty"`
	LastHeal     *time.Time `json:"last_heal,omitempty"`
	// LastHealCause names who changed the table before the last heal.
	LastHealCause string `json:"last_heal_cause,omitempty"`
	// Episodes are the accounts serving where they may not now: one per
	// UID, protocol and port whose packets are being blocked.
	Episodes []Episode `json:"episodes"`
	// Terminations are the last processes the agent ended (or, in a dry
	// run, would have), newest last.
	Terminations []TerminationRecord `json:"terminations"`
	// Offenders is why the agent cannot see offenders now ("" when it
	// can).
	OffendersError string `json:"offenders_error,omitempty"`
}

// Episode is an account serving where it may not: its packets on one
// protocol and port are blocked, from Started until nothing more is blocked
// for a while or the socket is closed.
type Episode struct {
	UID      uint32    `json:"uid"`
	Account  string    `json:"account"`
	Proto    string    `json:"proto"`
	Port     uint16    `json:"port"`
	Started  time.Time `json:"started"`
	LastSeen time.Time `json:"last_seen"`
	// Packets blocked in this episode.
	Packets uint64 `json:"packets"`
	// Processes hold the socket, as "command[pid]", when found.
	Processes []string `json:"processes"`
	// Reason is why the socket is blocked, for people.
	Reason string `json:"reason,omitempty"`
	// TerminateAt is when its processes are ended (the policy's
	// terminate.after), absent when they are not.
	TerminateAt *time.Time `json:"terminate_at,omitempty"`
}

// TerminationRecord is one process the agent ended, or would have ended.
type TerminationRecord struct {
	At      time.Time `json:"at"`
	UID     uint32    `json:"uid"`
	Account string    `json:"account"`
	Proto   string    `json:"proto"`
	Port    uint16    `json:"port"`
	PID     int       `json:"pid"`
	Command string    `json:"command"`
	Signals []string  `json:"signals"`
	// Outcome is audit's: exited, skipped, gone, running, failed, or
	// would-end in a dry run.
	Outcome string `json:"outcome"`
	Detail  string `json:"detail,omitempty"`
	DryRun  bool   `json:"dry_run,omitempty"`
}

// GuardReport is what status knows of the bind guard.
type GuardReport struct {
	Installed bool   `json:"installed"`
	Attached  bool   `json:"attached"`
	InSync    bool   `json:"in_sync"`
	Cgroup    string `json:"cgroup,omitempty"`
	Error     string `json:"error,omitempty"`
	// Events are refused binds and dropped packets, most first.
	Events []GuardEvent `json:"events"`
}

// GuardEvent is a count of refused binds (bind) or of packets dropped on
// the way in (ingress) of one UID, protocol and port.
type GuardEvent struct {
	Kind  string `json:"kind"`
	UID   uint32 `json:"uid"`
	Proto string `json:"proto"`
	Port  uint16 `json:"port"`
	Count uint64 `json:"count"`
}

// LastApply is what the state says of the last apply.
type LastApply struct {
	Time         time.Time `json:"time"`
	Version      string    `json:"version"`
	PolicyDigest string    `json:"policy_sha256"`
	// StateDigest is the sha256 the state file ends with (format 1: of
	// its ruleset record).
	StateDigest string `json:"state_sha256"`
}

// Violator is a UID seen serving from a port it does not own, from the
// table's violation sets.
type Violator struct {
	UID      uint32    `json:"uid"`
	Account  string    `json:"account,omitempty"`
	Proto    string    `json:"proto"`
	Port     uint16    `json:"port"`
	Packets  uint64    `json:"packets"`
	Bytes    uint64    `json:"bytes"`
	LastSeen time.Time `json:"last_seen"`
}

// Status reports whether nftpol's table (TableName says which) is
// installed and in sync with the last apply, and the top violators, most
// packets first. It takes no lock: it only reads.
func (e *Engine) Status(top int, policyTable func() (string, error)) (*Report, error) {
	table, err := e.TableName(policyTable)
	if err != nil {
		return nil, err
	}
	r := &Report{Table: table, Elements: map[string]int{}, Drift: []string{}, Top: []Violator{}}
	st, serr := e.Recorded()
	switch {
	case serr == nil:
		r.LastApply = &LastApply{Time: st.AppliedAt, Version: st.Version, PolicyDigest: st.PolicyDigest, StateDigest: st.Digest()}
	case !errors.Is(serr, state.ErrNoState):
		r.StateErr = serr.Error()
	}

	k, err := e.cfg.Open()
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
	r.BindGuard = e.guardReport(table, top)
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
		plan := rules.SyncExact(current, st.Ruleset()).Plan
		sync := plan.Empty()
		r.InSync = &sync
		r.Drift = plan.Drift()
	}

	now := time.Now()
	for _, s := range current.Sets {
		role := rules.RoleOf(s)
		if role.Kind != rules.SetViolations && role.Kind != rules.SetTransportViolations {
			continue
		}
		proto := string(role.Proto)
		hits, err := k.Hits(table, s.Name)
		if err != nil {
			return nil, err
		}
		for _, h := range hits {
			timeout := s.Timeout
			if timeout == 0 {
				timeout = compiler.ViolationTimeout
			}
			r.Top = append(r.Top, Violator{
				UID: h.UID, Account: names[h.UID], Proto: cmp.Or(h.Proto, proto), Port: h.Port,
				Packets: h.Packets, Bytes: h.Bytes,
				LastSeen: now.Add(-(timeout - h.Expires)).UTC().Truncate(time.Second),
			})
		}
	}
	slices.SortFunc(r.Top, func(x, y Violator) int {
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

// guardReport is the bind guard's part of status, nil when there is none.
func (e *Engine) guardReport(table string, top int) *GuardReport {
	s, err := e.GuardStatus(table)
	if err != nil {
		return &GuardReport{Error: err.Error(), Events: []GuardEvent{}}
	}
	if s == nil {
		return nil
	}
	g := &GuardReport{Installed: s.Installed, Attached: s.InCgroup, InSync: s.InSync(), Events: []GuardEvent{}}
	for _, l := range s.Links {
		if l.Cgroup != "" {
			g.Cgroup = l.Cgroup
		}
	}
	for _, c := range s.Counters {
		kind := "ingress"
		if c.Kind == bindguard.KindBind {
			kind = "bind"
		}
		g.Events = append(g.Events, GuardEvent{Kind: kind, UID: c.UID, Proto: c.Proto.String(), Port: c.Port, Count: c.Count})
	}
	slices.SortFunc(g.Events, func(x, y GuardEvent) int {
		if c := cmp.Compare(y.Count, x.Count); c != 0 {
			return c
		}
		return cmp.Compare(x.UID, y.UID)
	})
	if len(g.Events) > top {
		g.Events = g.Events[:top]
	}
	return g
}
