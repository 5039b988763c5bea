package rules

import (
	"cmp"
	"slices"
	"strings"
)

// Why the per-account sets have an overlay. The kernel keeps a "uid .
// inet_service" interval set in a pipapo table, and deleting one element
// from it scans the table's entries from the first one up to that element:
// about 25 ms for the last of 50,000 (nft_pipapo_remove). Additions cost a
// fraction of a millisecond. Changing an account's ports means deleting its
// elements, so a one-account change would pay that scan per protocol, as a
// hand-written `nft -f` does.
//
// So an account's elements in PortsSet(p) (the base) are never deleted on a
// small change. When an account's ports change, its UID goes into
// MovedSet(p) (a hash set: cheap either way) and its new elements into
// MovedPortsSet(p), a small pipapo set; the output chain looks a moved UID
// up in the moved ports only, and every other UID in the base only. An
// account that is removed is moved with no ports; a new account's elements
// are added to the base. Once more than MaxMoved accounts of a protocol
// would be moved, the plan goes back to the compiled layout (the base
// rebuilt inside the transaction, the moved sets emptied).
//
// The enforced content of an account is the same either way (Accounts);
// only the kernel's layout differs.

// MovedSet is the name of the set of UIDs of protocol p whose ports are in
// MovedPortsSet(p) instead of PortsSet(p).
func MovedSet(p Proto) string { return string(p) + "_moved" }

// MovedPortsSet is the name of the set of "uid . port range" elements of the
// moved UIDs of protocol p.
func MovedPortsSet(p Proto) string { return string(p) + "_moved_ports" }

// MaxMoved bounds the accounts of one protocol served from the moved sets.
// Deleting from MovedPortsSet scans at most that many entries; past it a
// plan rebuilds the base (a few hundred ms at 50,000 accounts) and starts
// over.
const MaxMoved = 256

// overlayProtos returns the protocols whose base, moved and moved-ports sets
// rs has.
func overlayProtos(rs *Ruleset) []Proto {
	var out []Proto
	for _, s := range rs.Sets {
		p, ok := strings.CutSuffix(s.Name, "_moved")
		if !ok || s.Key != KeyUID {
			continue
		}
		base, mp := rs.Set(PortsSet(Proto(p))), rs.Set(MovedPortsSet(Proto(p)))
		if base != nil && mp != nil && base.Key == KeyUIDPort && mp.Key == KeyUIDPort && !base.Dynamic && !mp.Dynamic {
			out = append(out, Proto(p))
		}
	}
	return out
}

// Overlay returns the ruleset to install to bring the kernel from current to
// desired (a compiled ruleset, its moved sets empty) without deleting from
// the base sets: desired with, per protocol, the base kept as current has it
// plus new accounts' elements, and the accounts whose elements differ from
// the base moved. It returns desired itself when current is not nftpol's
// table of the same layout, and desired's layout for a protocol that would
// move more than MaxMoved accounts. It does not change either argument.
func Overlay(current, desired *Ruleset) *Ruleset {
	if current == nil || !current.Owned() {
		return desired
	}
	out := *desired
	out.Sets = slices.Clone(desired.Sets)
	for _, p := range overlayProtos(desired) {
		cb, cm, cmp := current.Set(PortsSet(p)), current.Set(MovedSet(p)), current.Set(MovedPortsSet(p))
		db, dm, dmp := desired.Set(PortsSet(p)), desired.Set(MovedSet(p)), desired.Set(MovedPortsSet(p))
		if cb == nil || cm == nil || cmp == nil || !cb.SameDefinition(db) || !cm.SameDefinition(dm) || !cmp.SameDefinition(dmp) {
			continue
		}
		base, moved, movedPorts, ok := overlay(cb.Elements, db.Elements)
		if !ok {
			continue
		}
		for i, s := range out.Sets {
			switch s.Name {
			case db.Name:
				out.Sets[i] = withElements(s, base)
			case dm.Name:
				out.Sets[i] = withElements(s, moved)
			case dmp.Name:
				out.Sets[i] = withElements(s, movedPorts)
			}
		}
	}
	return &out
}

func withElements(s *Set, es []Element) *Set {
	c := *s
	c.Elements = es
	return &c
}

// overlay lays want (an account set's elements, sorted) over base (the base
// set's elements in the kernel): the base to keep, the moved UIDs (as
// elements named after the account) and their elements. ok is false when
// more than MaxMoved accounts would be moved.
func overlay(base, want []Element) (newBase, moved, movedPorts []Element, ok bool) {
	var added []Element
	ok = true
	eachUID(base, want, func(uid uint32, b, w []Element) bool {
		switch {
		case slices.Equal(b, w):
			// The base holds the account as wanted.
		case len(b) == 0:
			added = append(added, w...)
		default:
			if len(moved) == MaxMoved {
				ok = false
				return false
			}
			name := firstComment(w)
			if name == "" {
				name = firstComment(b)
			}
			moved = append(moved, Element{UID: uid, Comment: name})
			movedPorts = append(movedPorts, w...)
		}
		return true
	})
	if !ok {
		return nil, nil, nil, false
	}
	newBase = base
	if len(added) > 0 {
		newBase = make([]Element, 0, len(base)+len(added))
		newBase = append(append(newBase, base...), added...)
		slices.SortFunc(newBase, Element.Compare)
	}
	return newBase, moved, movedPorts, true
}

// Accounts returns, per protocol, the elements each account is enforced
// with, sorted: a base set's elements of the UIDs not moved, and the moved
// ports. The per-account sets are those called PortsSet(p), without their
// moved sets for a ruleset that has none.
func Accounts(rs *Ruleset) map[Proto][]Element {
	m := map[Proto][]Element{}
	for p, v := range accountViews(rs) {
		m[p] = v.all()
	}
	return m
}

// accountView is one protocol's per-account sets of a ruleset.
type accountView struct {
	base, moved, movedPorts []Element
}

// accountViews returns the per-account sets of rs by protocol.
func accountViews(rs *Ruleset) map[Proto]*accountView {
	m := map[Proto]*accountView{}
	if rs == nil {
		return m
	}
	for _, s := range rs.Sets {
		p, ok := strings.CutSuffix(s.Name, "_ports")
		if !ok || s.Key != KeyUIDPort || s.Dynamic || strings.HasSuffix(p, "_moved") {
			continue
		}
		m[Proto(p)] = &accountView{base: s.Elements}
	}
	for _, p := range overlayProtos(rs) {
		if v := m[p]; v != nil {
			v.moved, v.movedPorts = rs.Set(MovedSet(p)).Elements, rs.Set(MovedPortsSet(p)).Elements
		}
	}
	return m
}

func (v *accountView) isMoved(uid uint32) bool {
	_, found := slices.BinarySearchFunc(v.moved, uid, func(m Element, u uint32) int { return cmp.Compare(m.UID, u) })
	return found
}

// group returns the elements uid is enforced with.
func (v *accountView) group(uid uint32) []Element {
	if v == nil {
		return nil
	}
	if v.isMoved(uid) {
		return uidGroup(v.movedPorts, uid)
	}
	return uidGroup(v.base, uid)
}

// all returns the elements every account is enforced with, sorted.
func (v *accountView) all() []Element {
	if v == nil {
		return nil
	}
	if len(v.moved) == 0 && len(v.movedPorts) == 0 {
		return v.base
	}
	// Elements come in UID order, so one cursor over the moved UIDs
	// (sorted too) answers for the base and one for the moved ports.
	cursor := func() func(Element) bool {
		ms := v.moved
		return func(e Element) bool {
			for len(ms) > 0 && ms[0].UID < e.UID {
				ms = ms[1:]
			}
			return len(ms) > 0 && ms[0].UID == e.UID
		}
	}
	baseMoved, portsMoved := cursor(), cursor()
	// Merge the base's elements of UIDs not moved with the moved ports of
	// moved UIDs (one of a UID that is not moved is enforced by no rule:
	// left out).
	base, mps := v.base, v.movedPorts
	out := make([]Element, 0, len(base)+len(mps))
	for len(base) > 0 || len(mps) > 0 {
		if len(mps) == 0 || len(base) > 0 && base[0].Compare(mps[0]) <= 0 {
			if !baseMoved(base[0]) {
				out = append(out, base[0])
			}
			base = base[1:]
			continue
		}
		if portsMoved(mps[0]) {
			out = append(out, mps[0])
		}
		mps = mps[1:]
	}
	return out
}

// movedOnly returns, when a and b share their base (the same elements, as
// Overlay leaves it when it adds nothing), the UIDs whose enforcement can
// differ between them: those in either's moved sets. ok is false when the
// bases differ and every account has to be compared.
func movedOnly(a, b *accountView) (uids []uint32, ok bool) {
	if a == nil || b == nil || len(a.base) != len(b.base) || len(a.base) > 0 && &a.base[0] != &b.base[0] {
		return nil, false
	}
	for _, es := range [][]Element{a.moved, b.moved, a.movedPorts, b.movedPorts} {
		for _, e := range es {
			uids = append(uids, e.UID)
		}
	}
	slices.Sort(uids)
	return slices.Compact(uids), true
}

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
		proto, ok := strings.CutSuffix(sc.Name, "_moved_ports")
		if !ok || sc.Action != ActionUpdate || len(sc.Add) == 0 {
			continue
		}
		moved := current.Set(MovedSet(Proto(proto)))
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
