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
	target := overlay(current, compiled)
	return &Change{Current: current, Target: target, Plan: diff(current, target)}
}

// SyncExact is the change from current to recorded, a ruleset that is
// already laid out (the one a state recorded): Target is recorded itself,
// nothing is laid over. Restore installs it; status reports the drift of
// current from it (an empty Plan: in sync).
func SyncExact(current, recorded *Ruleset) *Change {
	return &Change{Current: current, Target: recorded, Plan: diff(current, recorded)}
}

// Replace returns the change that deletes the table and creates Target in
// its place, inside one transaction, whatever Current holds: how a
// same-named table nftpol did not create (Current.Owned() false) is
// adopted. Its plan creates every set and chain, with TableAction
// TableReplace, and lists c.Plan's accounts (the effect on each account is
// the same) and Retire. c is not changed. Whether to adopt is the caller's
// decision.
func (c *Change) Replace() *Change {
	p := diff(nil, c.Target)
	p.TableAction = TableReplace
	p.Accounts = c.Plan.Accounts
	p.Retire = c.Plan.Retire
	return &Change{Current: c.Current, Target: c.Target, Plan: p}
}

// Transactions returns the plans to commit, in this order, each at the
// ruleset generation the one before it made. It is Plan alone, unless Plan
// moves accounts: then first the moved ports of the accounts about to be
// moved, which change no verdict (prepareMoves says why the kernel needs
// them first), then the rest, if anything is left of it. Plan itself is not
// changed. Call it after setting Plan.Retire: a plan that retires a table
// (or changes more than elements) is never split.
func (c *Change) Transactions() []*Plan {
	pre, rest := prepareMoves(c.Current, c.Plan)
	switch {
	case pre == nil:
		return []*Plan{rest}
	case rest.TableAction == TableUpdate && rest.Operations() == 0:
		return []*Plan{pre}
	}
	return []*Plan{pre, rest}
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
	u := &Plan{Table: p.Table, TableAction: TableUpdate, Chains: []ChainChange{}, Accounts: []AccountChange{}}
	for _, sc := range p.Sets {
		u.Sets = append(u.Sets, SetChange{Name: sc.Name, Action: ActionUpdate, Set: sc.Set, Delete: sc.Add, Add: sc.Delete})
	}
	return u
}
