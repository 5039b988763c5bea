package reconcile

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
	"github.com/nftpol/nftpol/state"
)

// The removal guard: an apply that would remove more than half of the
// installed accounts, when more than guardMinAccounts are installed, is
// refused unless AllowRemovals. A broken config-management run that
// renders an empty include directory must not close every account's ports.
const guardMinAccounts = 10

// ApplyOptions are apply's choices.
type ApplyOptions struct {
	// Adopt replaces a same-named table that nftpol did not create.
	Adopt bool
	// AllowRemovals lets an apply remove more than half of the installed
	// accounts.
	AllowRemovals bool
	// Policy is the policy desired was compiled from: its bind guard is
	// applied with the table. nil: the guard is left as it is.
	Policy *policies.Policy
	// Brief asks for a brief plan (rules.SyncBrief): Plan.Accounts
	// describes at most BriefAccounts accounts. Honoured only with
	// AllowRemovals, as the removal guard counts every account.
	Brief bool
	// Rebuild creates the table anew even when it could be changed in
	// place: an agent that cannot adopt a table (its flags are fixed when
	// it is created) makes its own. It goes through a handover table
	// (rules.Change.Handover), which the caller makes sure is not there.
	Rebuild bool
}

// BriefAccounts is how many accounts a brief plan describes: what an
// agent's log line of a heal shows.
const BriefAccounts = 4

// Applied is an apply the kernel committed. The lock is still held and the
// state not yet recorded: call Record, then Close.
type Applied struct {
	Result
	// GuardErr is why the bind guard could not be applied; the table
	// is, and Record records it all the same.
	GuardErr error
	s        *session
	pending  *state.Pending
	after    kernel.Identity
	dir      string
	guard    *state.Guard
	e        *Engine
}

// DigestInBackground starts computing p.Digest() and returns a function that
// waits for it. An apply starts it as soon as the policy is loaded: at
// 50,000 accounts the digest takes a few milliseconds, which otherwise
// stood between the commit and the end of the apply.
func DigestInBackground(p *policies.Policy) func() string {
	done := make(chan struct{})
	var sum string
	go func() {
		defer close(done)
		sum = p.Digest()
	}()
	return func() string {
		<-done
		return sum
	}
}

// Apply brings the kernel in line with desired (compiled from the policy
// whose digest policyDigest returns), in one transaction (two when
// accounts move). On success the kernel holds the result; Record then
// writes the state.
func (e *Engine) Apply(ctx context.Context, desired *rules.Ruleset, policyDigest func() string, opt ApplyOptions) (*Applied, error) {
	s, err := e.open(ctx, "apply")
	if err != nil {
		return nil, err
	}
	// What the commit installs is desired laid over the kernel's table
	// (rules.Sync), and its state is written while the kernel works.
	// When the state proves the kernel unchanged since the last apply
	// (the usual case), the kernel's table is the recorded one, so the
	// change is made and its writing starts before the kernel is even
	// asked.
	var pending *state.Pending
	var ch *rules.Change // the change pending records the target of
	syncTo := rules.Sync
	if opt.Brief && opt.AllowRemovals {
		syncTo = func(current, compiled *rules.Ruleset) *rules.Change {
			return rules.SyncBrief(current, compiled, BriefAccounts)
		}
	}
	fail := func(err error) (*Applied, error) {
		if pending != nil {
			pending.Discard()
		}
		s.end()
		return nil, err
	}
	// The recorded state also lends its formatted element text to every
	// state written here, whichever change it records: a set whose
	// elements are still the recorded slice is not formatted again
	// (state.Pending), which is every set of a heal after a flush.
	var recorded *state.State
	if st, err := e.Recorded(); err == nil && !e.cfg.FullRead {
		recorded = st
		ch = syncTo(st.Ruleset(), desired)
		pending = state.Prepare(e.cfg.StateDir, e.cfg.Version, policyDigest, ch.Target, st)
	}
	guard := guardRecord(opt.Policy)
	res, after, err := e.converge(s.k, desired.Table, true, func(current *rules.Ruleset) (*rules.Change, error) {
		if ch == nil || current != ch.Current {
			if pending != nil {
				pending.Discard()
			}
			ch = syncTo(current, desired)
			pending = state.Prepare(e.cfg.StateDir, e.cfg.Version, policyDigest, ch.Target, recorded)
		}
		planned, err := e.planTo(s.k, ch, opt.Adopt)
		if err == nil && opt.Rebuild && planned.Current != nil {
			planned = planned.Handover()
		}
		if err == nil && !opt.AllowRemovals {
			err = removalGuard(planned.Plan, current)
		}
		if err == nil && planned.Target != ch.Target {
			// Replaced (adopted, rebuilt): what the state records is
			// what the replacement installs.
			pending.Discard()
			ch = planned
			pending = state.Prepare(e.cfg.StateDir, e.cfg.Version, policyDigest, ch.Target, recorded)
		}
		return planned, err
	}, func(after kernel.Identity) { pending.Seal(after, guard) })
	if err != nil {
		return fail(err)
	}
	a := &Applied{Result: *res, s: s, pending: pending, after: after, dir: e.cfg.StateDir, guard: guard, e: e}
	// The table's transaction ends here: its own phase, so that the
	// timings keep the kernel's share apart from the guard's.
	s.phase("committed")
	if opt.Policy != nil {
		// After the table: a guard that cannot be installed never
		// costs the table its enforcement.
		if a.Guard, a.GuardErr = e.applyGuard(desired.Table, opt.Policy, false); a.GuardErr != nil {
			a.GuardErr = fmt.Errorf("the table is applied, but the bind guard is not: %w", a.GuardErr)
		}
		e.cfg.Phase("bind guard")
	}
	return a, nil
}

// PlanGuard says what applying p would do to its bind guard.
func (e *Engine) PlanGuard(p *policies.Policy) (*GuardResult, error) {
	return e.applyGuard(p.Table, p, true)
}

// Record writes the state of the applied ruleset, so restore installs it at
// boot and the next plan can trust it.
func (a *Applied) Record() error {
	a.s.phase("reported")
	a.pending.SetGuard(a.guard)
	if err := a.pending.Commit(&a.after); err != nil {
		a.s.phase("state saved")
		return fmt.Errorf("the kernel is updated, but recording it in %s failed: %w; "+
			"restore would install the previous ruleset until an apply succeeds", a.dir, err)
	}
	a.s.phase("state saved")
	if a.e.cfg.Keep {
		a.e.Close()
		a.e.recorded, a.e.recordedErr, a.e.stateRead = a.pending.Recorded(), nil, true
	}
	return a.e.publish(a.pending.Ruleset(), &a.after)
}

// Close discards a state that was not recorded, closes the kernel and
// releases the lock.
func (a *Applied) Close() {
	a.pending.Discard()
	a.s.end()
}

// RestoreOptions are Restore's choices.
type RestoreOptions struct {
	// Adopt replaces a same-named table nftpol did not create.
	Adopt bool
	// Rebuild creates the table anew, as ApplyOptions.Rebuild.
	Rebuild bool
}

// Restore installs the ruleset the last apply recorded: the difference from
// what the kernel holds, always read in full (at boot the state cannot
// vouch for a kernel it has never seen). It returns what it did and the
// state it installed.
func (e *Engine) Restore(ctx context.Context, opt RestoreOptions) (*Result, *state.State, error) {
	s, err := e.open(ctx, "restore")
	if err != nil {
		return nil, nil, err
	}
	defer s.end()
	if e.cfg.Keep {
		defer e.Forget()
	}
	st, err := e.Recorded()
	if err == nil {
		err = st.VerifyRendered()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("restore: %w", err)
	}
	desired := st.Ruleset()
	res, after, err := e.converge(s.k, desired.Table, false, func(current *rules.Ruleset) (*rules.Change, error) {
		ch, err := owned(rules.SyncExact(current, desired), opt.Adopt || opt.Rebuild, e.cfg.Owner, "restore --adopt replaces it")
		if err == nil && opt.Rebuild && ch.Current != nil {
			ch = ch.Handover()
		}
		return ch, err
	}, nil)
	if err != nil {
		return nil, nil, err
	}
	// A restore over another table, or one that rebuilt sets, leaves
	// them under other names than the state's (rules.Sync stages them):
	// the state then records what the kernel holds, for the same policy.
	published, id := desired, st.Kernel
	if installed := res.Plan.Desired; installed != nil && installed != desired {
		if err := state.Save(e.cfg.StateDir, e.cfg.Version, st.PolicyDigest, installed, &after, st.BindGuard); err != nil {
			return nil, nil, fmt.Errorf("the kernel holds the recorded ruleset, but recording its new set names in %s failed: %w", e.cfg.StateDir, err)
		}
		published, id = installed, &after
	}
	if st.BindGuard != nil {
		if res.Guard, err = e.applyGuard(desired.Table, guardPolicy(st.BindGuard, installedRuleset(res, desired)), false); err != nil {
			return res, st, fmt.Errorf("the table is restored, but the bind guard is not: %w", err)
		}
	}
	return res, st, e.publish(published, id)
}

// installedRuleset is the ruleset a restore left in the kernel.
func installedRuleset(res *Result, recorded *rules.Ruleset) *rules.Ruleset {
	if res.Plan.Desired != nil {
		return res.Plan.Desired
	}
	return recorded
}

// Removed is what Remove did.
type Removed struct {
	// Table is the table nftpol manages.
	Table string
	// Absent is set when the table was not installed.
	Absent bool
	// Deleted is set when the table was there and is now deleted, with
	// Accounts accounts installed in it.
	Deleted  bool
	Accounts int
	// Purged is set when the state was deleted too.
	Purged bool
	// GuardRemoved is set when a bind guard was detached and removed.
	GuardRemoved bool
	// Handover is set when the handover table an interrupted agent left
	// (rules.Change.Handover) was deleted too.
	Handover bool
}

// Remove deletes nftpol's table (TableName says which) and, with purge, the
// recorded state. A same-named table nftpol did not create is refused.
// What was done before an error is in the result.
func (e *Engine) Remove(ctx context.Context, purge bool, policyTable func() (string, error)) (Removed, error) {
	var r Removed
	s, err := e.open(ctx, "remove")
	if err != nil {
		return r, err
	}
	defer s.end()
	if e.cfg.Keep {
		defer e.Forget()
	}
	if r.Table, err = e.TableName(policyTable); err != nil {
		return r, err
	}
	current, err := s.k.Read(r.Table)
	if err != nil {
		return r, err
	}
	if current == nil {
		r.Absent = true
	} else {
		if !current.Owned() {
			return r, fmt.Errorf("table inet %s was not created by nftpol; refusing to delete it", r.Table)
		}
		if err := s.k.Delete(r.Table); err != nil {
			return r, err
		}
		r.Deleted, r.Accounts = true, len(installedAccounts(current))
	}
	// An agent that died in a handover may have left its handover table,
	// enforcing a ruleset beside the table: removing nftpol removes it.
	if r.Handover, err = DropHandover(s.k, r.Table); err != nil {
		return r, err
	}
	if rec, err := e.Recorded(); err == nil && rec.BindGuard != nil {
		g := e.guard(r.Table, "")
		if st, err := g.Status(nil); err == nil && st.Installed {
			if err := g.Remove(); err != nil {
				return r, fmt.Errorf("removing the bind guard: %w", err)
			}
			r.GuardRemoved = true
		}
	}
	if purge {
		if err := state.Purge(e.cfg.StateDir); err != nil {
			return r, fmt.Errorf("purging state: %w", err)
		}
		r.Purged = true
	}
	return r, nil
}

// DropHandover deletes the handover table of table (rules.Change.Handover)
// if there is one and nftpol made it (its sets and rules carry nftpol's
// comments), and says whether it did: what a handover interrupted by the
// agent's death leaves. Another's table of that name is left as it is.
func DropHandover(k Kernel, table string) (bool, error) {
	h := rules.HandoverTable(table)
	left, err := k.Read(h)
	if err != nil || left == nil || !left.Owned() {
		return false, err
	}
	return true, k.Delete(h)
}

// TableName is the table nftpol manages: the one recorded by the last apply,
// else the one the policy names (policyTable reads it). Commands that only
// look at or remove the table must work without a readable policy when
// there is state.
func (e *Engine) TableName(policyTable func() (string, error)) (string, error) {
	st, err := e.Recorded()
	if err == nil {
		return st.Table, nil
	}
	table, lerr := policyTable()
	if lerr != nil {
		if errors.Is(err, state.ErrNoState) {
			return "", fmt.Errorf("no state in %s and the policy cannot be read: %w", e.cfg.StateDir, lerr)
		}
		return "", fmt.Errorf("%v; and the policy cannot be read: %w", err, lerr)
	}
	return table, nil
}

// installedAccounts returns the UIDs that are enforced with ports in rs.
func installedAccounts(rs *rules.Ruleset) map[uint32]bool {
	uids := map[uint32]bool{}
	for _, es := range rules.Accounts(rs) {
		for _, e := range es {
			uids[e.UID] = true
		}
	}
	return uids
}

// removalGuard refuses plan when it removes more than half of the accounts
// installed in current, when more than guardMinAccounts are.
func removalGuard(plan *rules.Plan, current *rules.Ruleset) error {
	var removed []string
	for _, ac := range plan.Accounts {
		if ac.Action == rules.ActionRemove {
			removed = append(removed, fmt.Sprintf("%s (uid %d)", ac.DisplayName(), ac.UID))
		}
	}
	if len(removed) <= guardMinAccounts/2 {
		return nil // cannot be more than half of more than guardMinAccounts
	}
	// Counting the installed accounts costs a map of every UID: only
	// when it can matter.
	installed := len(installedAccounts(current))
	if installed <= guardMinAccounts || 2*len(removed) <= installed {
		return nil
	}
	const show = 20
	list := removed
	more := ""
	if len(list) > show {
		list, more = list[:show], fmt.Sprintf(" and %d more", len(removed)-show)
	}
	return fmt.Errorf("refusing to remove %d of the %d installed accounts (more than half): %s%s\n"+
		"nftpol: if the policy really lost them (not a failed render of the include directory), run apply --allow-removals",
		len(removed), installed, strings.Join(list, ", "), more)
}
