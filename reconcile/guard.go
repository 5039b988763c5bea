package reconcile

import (
	"errors"
	"fmt"
	"path/filepath"

	"github.com/nftpol/nftpol/bindguard"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/state"
)

// The bind guard (package bindguard) is applied with the table: after the
// kernel committed the table and the state recorded it, so that a guard that
// cannot be installed (no cgroup v2, no bpffs, an old kernel) never costs
// the table its enforcement. Its inputs are recorded in the state (the
// zone, min_uid, the exempt UIDs, the reserved ports, the cgroup), the
// accounts' ports come from the recorded ruleset: restore installs both.

// GuardResult is what applying the bind guard did.
type GuardResult struct {
	// Enabled: the policy (or the state) has the guard on.
	Enabled bool `json:"enabled"`
	// Removed: it was off, and a guard an earlier apply installed was
	// removed.
	Removed bool `json:"removed,omitempty"`
	// Entries is how many port entries were (or would be) written, and
	// Exempt how many exempt UIDs changed.
	Entries int `json:"port_entries"`
	Exempt  int `json:"exempt_changes"`
	// Cgroup is where the programs are attached.
	Cgroup string `json:"cgroup,omitempty"`
}

// guardRecord is what the state records of p's guard, nil when it is off.
func guardRecord(p *policies.Policy) *state.Guard {
	if p == nil || !p.BindGuard.Enabled {
		return nil
	}
	g := &state.Guard{Cgroup: p.BindGuard.Cgroup, ZoneLo: p.Zone.Lo, ZoneHi: p.Zone.Hi, MinUID: p.MinUID, Exempt: p.Exempt}
	for _, r := range p.BindGuard.Reserved {
		g.Reserved = append(g.Reserved, [2]uint16{r.Lo, r.Hi})
	}
	return g
}

// guardPolicy is the policy a recorded guard and ruleset stand for, as far
// as the guard needs one: bindguard.Compile of it gives the data the apply
// installed.
func guardPolicy(g *state.Guard, rs *rules.Ruleset) *policies.Policy {
	p := &policies.Policy{Zone: policies.PortRange{Lo: g.ZoneLo, Hi: g.ZoneHi}, MinUID: g.MinUID, Exempt: g.Exempt,
		BindGuard: policies.BindGuard{Enabled: true, Cgroup: g.Cgroup}}
	for _, r := range g.Reserved {
		p.BindGuard.Reserved = append(p.BindGuard.Reserved, policies.PortRange{Lo: r[0], Hi: r[1]})
	}
	byUID := map[uint32]*policies.Account{}
	var order []uint32
	for proto, es := range rules.Accounts(rs) {
		for _, e := range es {
			a := byUID[e.UID]
			if a == nil {
				a = &policies.Account{Name: e.Comment, UID: e.UID}
				byUID[e.UID] = a
				order = append(order, e.UID)
			}
			if len(a.Protocols) == 0 || a.Protocols[len(a.Protocols)-1] != policies.Protocol(proto) {
				a.Protocols = append(a.Protocols, policies.Protocol(proto))
			}
			a.Ports = append(a.Ports, policies.PortRange{Lo: e.Lo, Hi: e.Hi})
		}
	}
	for _, uid := range order {
		a := byUID[uid]
		a.Ports = policies.MergeInPlace(a.Ports)
		p.Accounts = append(p.Accounts, a)
	}
	return p
}

// guard is the bind guard of table, attached to cgroup ("" for the cgroup
// v2 root).
func (e *Engine) guard(table, cgroup string) *bindguard.Guard {
	dir := ""
	if e.cfg.BPFDir != "" {
		dir = filepath.Join(e.cfg.BPFDir, "nftpol", table)
	} else {
		dir = bindguard.DefaultPinDir(table)
	}
	return bindguard.New(bindguard.Config{PinDir: dir, Cgroup: cgroup})
}

// applyGuard installs (or updates, writing only what changed) the guard p
// asks for, or removes one that an earlier apply installed when p has it
// off. With dryRun it only says what it would write.
func (e *Engine) applyGuard(table string, p *policies.Policy, dryRun bool) (*GuardResult, error) {
	g := e.guard(table, p.BindGuard.Cgroup)
	if !p.BindGuard.Enabled {
		// Only a guard this state directory's last apply recorded is
		// ours to take away: the pins are the host's, not a network
		// namespace's, and an apply into a test namespace with a policy
		// of its own must not remove the host's guard.
		if rec, err := e.Recorded(); err != nil || rec.BindGuard == nil {
			return &GuardResult{}, nil
		}
		st, err := g.Status(nil)
		if err != nil || !st.Installed {
			return &GuardResult{}, nil // nothing of ours to take away
		}
		if dryRun {
			return &GuardResult{Removed: true}, nil
		}
		if err := g.Remove(); err != nil {
			return nil, fmt.Errorf("removing the bind guard the policy no longer has: %w", err)
		}
		return &GuardResult{Removed: true}, nil
	}
	d, err := bindguard.Compile(p)
	if err != nil {
		return nil, err
	}
	var diff *bindguard.Diff
	if dryRun {
		diff, err = g.Plan(d)
	} else {
		diff, err = g.Install(d)
	}
	if err != nil {
		return nil, err
	}
	cg, _ := g.Cgroup()
	return &GuardResult{Enabled: true, Entries: len(diff.Ports), Exempt: len(diff.ExemptAdd) + len(diff.ExemptDel), Cgroup: cg}, nil
}

// GuardStatus reports the bind guard the state recorded, nil when it
// records none and none is installed.
func (e *Engine) GuardStatus(table string) (*bindguard.Status, error) {
	st, err := e.Recorded()
	if err != nil && !errors.Is(err, state.ErrNoState) {
		return nil, nil
	}
	var d *bindguard.Data
	cgroup := ""
	if st != nil && st.BindGuard != nil {
		cgroup = st.BindGuard.Cgroup
		if d, err = bindguard.Compile(guardPolicy(st.BindGuard, st.Ruleset())); err != nil {
			return nil, err
		}
	}
	s, err := e.guard(table, cgroup).Status(d)
	if err != nil && d == nil {
		return nil, nil // none recorded, none to be found: nothing to say
	}
	if err != nil {
		return nil, err
	}
	if d == nil && !s.Installed {
		return nil, nil
	}
	return s, nil
}
