package rules

import (
	"cmp"
	"slices"
)

// Change is what it takes to bring nftpol's table in the kernel from
// Current to Target: the plan, for people, tools and the removal guard, and
// the transactions that carry it out. Sync and SyncExact make one; they are
// the only way from a ruleset to a plan, so no caller can forget the
// overlay or the moves' first transaction.
//
// A Change is not safe for concurrent use, but its rulesets are only read:
// a state writer may read Target while the plan is sent.
type Change struct {
	// Current is the kernel's table the change starts from, nil when
	// there is none.
	Current *Ruleset
	// Target is the ruleset the kernel holds once the change is
	// committed, and so the one to record in the state. It shares
	// element slices with Current and with the ruleset it was made from
	// (see Set.Elements).
	Target *Ruleset
	// Plan is the whole change from Current to Target, as one plan:
	// what plan and apply print (Plan.WriteText, JSON), and what the
	// removal guard counts. The caller may set Plan.Retire, before it
	// asks for the Transactions.
	Plan *Plan

	// unstaged is Target before staging renamed sets (stage.go).
	unstaged *Ruleset
	// stagedReplace: Plan replaces the table, in two transactions
	// (replaceTransactions).
	stagedReplace bool
	// handover: Plan creates the table anew, through a handover table
	// (Handover).
	handover bool
}

// newChange is the change from current to target, staged (see stage.go),
// its plan describing at most accounts accounts (all when negative).
func newChange(current, target *Ruleset, accounts int) *Change {
	c := &Change{Current: current, Target: target, Plan: plan(current, target, accounts), unstaged: target}
	c.stage()
	return c
}

// stage makes c's transactions safe from the kernel's late publication of
// interval sets (see stage.go).
func (c *Change) stage() {
	switch c.Plan.TableAction {
	case TableUpdate:
		c.stageRebuilds()
	case TableReplace:
		c.stageReplace()
	}
}

// Sync is the change from current (the kernel's table, nil when there is
// none) to compiled, a ruleset from compiler.Compile, whose moved sets are
// empty. Its Target is compiled laid over current: an account whose ports
// changed is moved rather than deleted from its shard (see the overlay in
// layout.go). A protocol that would move more than MaxMoved accounts, or
// whose sets in current are not of compiled's layout, has compiled's sets
// in Target (the shards rebuilt, the moved sets empty); when current is nil
// or not nftpol's table, Target is compiled itself. Neither argument is
// changed. Sync plans at once (Plan): at 50,000 accounts the overlay and the
// plan of a one-account change take about 0.6 ms together.
//
// Target follows from what current and compiled hold, not from where
// current came from: apply can call Sync with the recorded state's ruleset
// before it asks the kernel, start writing Target to the state, and keep the
// whole Change when the kernel's read comes back as that same *Ruleset.
func Sync(current, compiled *Ruleset) *Change {
	return SyncBrief(current, compiled, -1)
}

// SyncBrief is Sync with a brief plan: Plan.Accounts describes at most
// accounts accounts (all when negative) and Plan.AccountsLeft counts the
// others; the sets, chains, transactions and Target are Sync's. It is for
// a caller that shows a line of the plan and never a whole one, and never
// judges removals by it: an agent healing a flushed table, whose plan adds
// every account.
func SyncBrief(current, compiled *Ruleset, accounts int) *Change {
	return newChange(current, overlay(current, adoptNames(current, compiled)), accounts)
}

// SyncExact is the change from current to recorded, a ruleset that is
// already laid out (the one a state recorded): Target is recorded itself,
// nothing is laid over. Restore installs it; status reports the drift of
// current from it (an empty Plan: in sync).
func SyncExact(current, recorded *Ruleset) *Change {
	return newChange(current, recorded, -1)
}

// replacing is the plan of a change that deletes the table and creates
// target in its place: every set and chain created, and c.Plan's accounts
// and Retire (the effect on each account is the same; they are not
// described again, which would cost as much as the plan of a first apply).
func (c *Change) replacing(target *Ruleset) *Plan {
	p := plan(nil, target, 0)
	p.TableAction = TableReplace
	p.Accounts, p.AccountsLeft, p.Retire = c.Plan.Accounts, c.Plan.AccountsLeft, c.Plan.Retire
	return p
}

// Replace returns the change that deletes the table and creates Target in
// its place, inside one transaction, whatever Current holds: how a
// same-named table nftpol did not create (Current.Owned() false) is
// adopted. Its plan creates every set and chain, with TableAction
// TableReplace, and lists c.Plan's accounts (the effect on each account is
// the same) and Retire. c is not changed. Whether to adopt is the caller's
// decision.
func (c *Change) Replace() *Change {
	r := &Change{Current: c.Current, Target: c.unstaged, Plan: c.replacing(c.unstaged), unstaged: c.unstaged}
	if c.Current != nil {
		r.stageReplace()
	}
	return r
}

// Transactions returns the plans to commit, in this order, each at the
// ruleset generation the one before it made. It is Plan alone, unless Plan
// moves accounts: then first the moved ports of the accounts about to be
// moved, which change no verdict (prepareMoves says why the kernel needs
// them first), then the rest, if anything is left of it. Plan itself is not
// changed. Call it after setting Plan.Retire: a plan that retires a table
// (or changes more than elements) is never split.
//
// A change that creates interval sets for rules to read goes in two as well
// (stage.go says why): the sets, filled, first; the rules that read them
// second. That is a first install (the table and its sets, then the
// chains), a rebuild (the sets under their other names and the sets a
// crash left behind deleted, then the rules switched and the old sets
// deleted) and a replaced table (its new sets inside the old table, then
// the old chains and sets deleted and the new chains created).
func (c *Change) Transactions() []*Plan {
	p := c.Plan
	switch {
	case c.handover:
		return c.handoverTransactions()
	case c.stagedReplace:
		return c.replaceTransactions()
	case p.TableAction == TableCreate && len(p.Chains) > 0:
		sets := *p
		sets.Chains = []ChainChange{}
		chains := &Plan{Table: p.Table, TableAction: TableUpdate, Desired: p.Desired, Chains: p.Chains, Accounts: []AccountChange{}}
		return []*Plan{&sets, chains}
	case p.TableAction != TableUpdate:
		return []*Plan{p}
	}
	// First what no rule reads yet: sets to create (and, when no chain
	// exists, every set change), stale sets to delete.
	noRules := c.Current != nil && len(c.Current.Chains) == 0 && len(p.Chains) > 0
	first := &Plan{Table: p.Table, TableAction: TableUpdate, Desired: p.Desired, Chains: []ChainChange{}, Accounts: []AccountChange{}}
	rest := *p
	rest.Sets = nil
	for _, sc := range p.Sets {
		if noRules || sc.Action == ActionCreate || (sc.Action == ActionDelete && !c.Current.referenced(sc.Name)) {
			first.Sets = append(first.Sets, sc)
		} else {
			rest.Sets = append(rest.Sets, sc)
		}
	}
	if len(first.Sets) == 0 {
		if pre, rest := prepareMoves(c.Current, p); pre != nil {
			if rest.Wake || rest.Retire != "" || len(rest.Chains) > 0 || rest.Operations() > 0 {
				return []*Plan{pre, rest}
			}
			return []*Plan{pre}
		}
		return []*Plan{p}
	}
	txs := []*Plan{}
	if len(first.Sets) > 0 {
		txs = append(txs, first)
	}
	pre, r := prepareMoves(c.Current, &rest)
	if pre != nil {
		if len(txs) > 0 {
			first.Sets = append(first.Sets, pre.Sets...)
		} else {
			txs = append(txs, pre)
		}
	}
	if len(txs) == 0 || r.Wake || r.Retire != "" || len(r.Chains) > 0 || r.Operations() > 0 {
		txs = append(txs, r)
	}
	return txs
}

// Undo returns the plan that takes back transaction i of Transactions, to
// send when a later one is refused, so the kernel is as it was: its
// additions deleted, its deletions added again. Only the transactions
// before the last, element operations alone, can be taken back so; Undo
// returns nil for the last one.
func (c *Change) Undo(i int) *Plan {
	txs := c.Transactions()
	if i >= len(txs)-1 {
		return nil
	}
	return undo(txs[i])
}

// TakeBack returns the plans to commit, in this order, when the kernel
// refused transaction failed of Transactions, so that it is as it was:
// Undo of each transaction before it, the last one first. A handover
// refused before its table was replaced deletes the handover table; once
// the old table is gone there is nothing to go back to, and the handover
// table, which enforces the new policy whole, stays until the next apply
// completes the table and deletes it.
func (c *Change) TakeBack(failed int) []*Plan {
	if c.handover {
		if failed == 1 || failed == 2 {
			return []*Plan{undo(c.Transactions()[0])}
		}
		return nil
	}
	var out []*Plan
	for j := failed - 1; j >= 0; j-- {
		if u := c.Undo(j); u != nil {
			out = append(out, u)
		}
	}
	return out
}

// prepareMoves splits p in two: pre, what has to be in the kernel before p
// moves an account (its elements in the moved ports), and rest, the others,
// to be committed after it. p itself is left as it is. The kernel makes a transaction's hash and rbtree elements visible
// all at once when it commits, but a pipapo set's new content only a moment
// later, when it swaps the set's lookup tables (nft_set_pipapo.c,
// nft_pipapo_commit). An account moved in the same transaction as its
// moved ports are added would, for that moment, be looked up in moved ports
// that do not hold it yet, and its packets dropped. Committed first, its
// moved ports change no verdict: the rule that reads them looks only at
// moved accounts. The elements of accounts that stay moved are left in p,
// whose delete and add then swap in one go; accounts that leave the moved
// sets need nothing first either (their base elements are what is wanted).
//
// pre is nil, and rest p, when p moves no account or changes more than
// elements.
func prepareMoves(current *Ruleset, p *Plan) (pre, rest *Plan) {
	if current == nil || p.TableAction != TableUpdate || p.Wake || p.Retire != "" || len(p.Chains) > 0 {
		return nil, p
	}
	pre = &Plan{Table: p.Table, TableAction: TableUpdate, Chains: []ChainChange{}, Accounts: []AccountChange{}}
	r := *p
	r.Sets = slices.Clone(p.Sets)
	for i := range r.Sets {
		sc := &r.Sets[i]
		role := RoleOf(sc.Set)
		if role.Kind != SetMovedPorts || sc.Action != ActionUpdate || len(sc.Add) == 0 {
			continue
		}
		moved := current.SetOfRole(Role{Kind: SetMoved, Proto: role.Proto})
		if moved == nil {
			continue
		}
		wasMoved := func(e Element) bool {
			_, found := slices.BinarySearchFunc(moved.Elements, e.UID, func(m Element, u uint32) int { return cmp.Compare(m.UID, u) })
			return found
		}
		// Elements of accounts that are not moved yet: inert until
		// they are, so they may go first, stray ones deleted with them.
		var add, del []Element
		sc.Add, add = partition(sc.Add, wasMoved)
		sc.Delete, del = partition(sc.Delete, wasMoved)
		if len(add)+len(del) > 0 {
			pre.Sets = append(pre.Sets, SetChange{Name: sc.Name, Action: ActionUpdate, Set: sc.Set, Delete: del, Add: add})
		}
	}
	if len(pre.Sets) == 0 {
		return nil, p
	}
	r.Sets = slices.DeleteFunc(r.Sets, func(sc SetChange) bool {
		return sc.Action == ActionUpdate && len(sc.Add)+len(sc.Delete) == 0
	})
	return pre, &r
}

// partition splits es into those keep reports true for and the others.
func partition(es []Element, keep func(Element) bool) (kept, rest []Element) {
	for _, e := range es {
		if keep(e) {
			kept = append(kept, e)
		} else {
			rest = append(rest, e)
		}
	}
	return kept, rest
}

// undo is the plan that takes back an element plan p (such as prepareMoves'
// pre): its additions deleted, its deletions added again.
func undo(p *Plan) *Plan {
	if p.TableAction == TableCreate {
		return &Plan{Table: p.Table, TableAction: TableDelete, Sets: []SetChange{}, Chains: []ChainChange{}, Accounts: []AccountChange{}}
	}
	u := &Plan{Table: p.Table, TableAction: TableUpdate, Chains: []ChainChange{}, Accounts: []AccountChange{}}
	for _, sc := range p.Sets {
		switch sc.Action {
		case ActionCreate:
			u.Sets = append(u.Sets, SetChange{Name: sc.Name, Action: ActionDelete, Set: sc.Set})
		case ActionUpdate:
			u.Sets = append(u.Sets, SetChange{Name: sc.Name, Action: ActionUpdate, Set: sc.Set, Delete: sc.Add, Add: sc.Delete})
		}
		// A stale set deleted stays deleted: nothing read it.
	}
	return u
}
