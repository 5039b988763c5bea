package rules

import (
	"cmp"
	"slices"
)

// PrepareMoves splits p in two: pre, what has to be in the kernel before p
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
func PrepareMoves(current *Ruleset, p *Plan) (pre, rest *Plan) {
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

// Undo is the plan that takes back an element plan p (such as PrepareMoves'
// pre): its additions deleted, its deletions added again.
func Undo(p *Plan) *Plan {
	u := &Plan{Table: p.Table, TableAction: TableUpdate, Chains: []ChainChange{}, Accounts: []AccountChange{}}
	for _, sc := range p.Sets {
		u.Sets = append(u.Sets, SetChange{Name: sc.Name, Action: ActionUpdate, Set: sc.Set, Delete: sc.Add, Add: sc.Delete})
	}
	return u
}
