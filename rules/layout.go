package rules

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// Set names follow a convention so that a plan can speak in accounts: the
// sets PortsSet(p, k) hold "uid . port range" elements, one or more per
// account that may serve protocol p; OpenSet(p) holds the union of those
// ranges.

// Shards is how many sets hold one protocol's per-account ports: an
// account's elements are in PortsSet(p, Shard(uid)), which the output chain
// looks up only for UIDs of that shard (`meta skuid & 7 == k`).
//
// Why: the kernel keeps these sets in pipapo tables, whose lookup ANDs
// bitmaps as wide as the table for every 4 bits of the UID. At 50,000
// accounts in one set that made a served packet measurably dearer than at
// one account (1.12× the round trip, `make bench`); eight sets of 6,250
// each cost what one small set costs. UIDs on a hosting node are handed out
// in sequence, so their low bits spread them evenly.
const Shards = 8

// Shard is the shard of uid's per-account elements.
func Shard(uid uint32) uint32 { return uid & (Shards - 1) }

// PortsSet is the name of shard k of the per-account port sets of protocol
// p.
func PortsSet(p Proto, k uint32) string { return string(p) + "_ports_" + strconv.Itoa(int(k)) }

// legacyPortsSet is the name of the one per-account port set of protocol p
// that nftpol wrote before the sets were sharded; recorded states and
// kernels may still hold it until the next apply replaces the table.
func legacyPortsSet(p Proto) string { return string(p) + "_ports" }

// parsePortsSet reports the protocol, shard and number of shards a
// per-account set's name stands for: PortsSet(p, k) is shard k of Shards,
// the legacy name the one shard of one.
func parsePortsSet(name string) (p Proto, k, shards uint32, ok bool) {
	if rest, found := strings.CutSuffix(name, "_ports"); found && rest != "" && !strings.HasSuffix(rest, "_moved") {
		return Proto(rest), 0, 1, true
	}
	i := strings.LastIndexByte(name, '_')
	if i < 0 {
		return "", 0, 0, false
	}
	n, err := strconv.ParseUint(name[i+1:], 10, 32)
	rest, found := strings.CutSuffix(name[:i], "_ports")
	if err != nil || !found || rest == "" || n >= Shards || name[i+1:] != strconv.FormatUint(n, 10) || strings.HasSuffix(rest, "_moved") {
		return "", 0, 0, false
	}
	return Proto(rest), uint32(n), Shards, true
}

// OpenSet is the name of the set of zone ports open for protocol p.
func OpenSet(p Proto) string { return string(p) + "_open" }

// ExemptSet is the name of the set of exempt UIDs.
const ExemptSet = "exempt"

// Why the per-account sets have an overlay. The kernel keeps a "uid .
// inet_service" interval set in a pipapo table, and deleting one element
// from it scans the table's entries from the first one up to that element:
// about 25 ms for the last of 50,000 (nft_pipapo_remove). Additions cost a
// fraction of a millisecond. Changing an account's ports means deleting its
// elements, so a one-account change would pay that scan per protocol, as a
// hand-written `nft -f` does.
//
// So an account's elements in the PortsSet(p, k) shards (the base) are
// never deleted on a small change. When an account's ports change, its UID goes into
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

// shardSets returns the Shards per-account sets of protocol p in rs, in
// shard order, or nil when rs lacks one.
func shardSets(rs *Ruleset, p Proto) []*Set {
	out := make([]*Set, Shards)
	for k := range out {
		s := rs.Set(PortsSet(p, uint32(k)))
		if s == nil || s.Key != KeyUIDPort || s.Dynamic {
			return nil
		}
		out[k] = s
	}
	return out
}

// movedSets returns the moved and moved-ports sets of protocol p in rs, or
// nils when rs lacks either or holds one of another kind.
func movedSets(rs *Ruleset, p Proto) (moved, movedPorts *Set) {
	m, mp := rs.Set(MovedSet(p)), rs.Set(MovedPortsSet(p))
	if m == nil || mp == nil || m.Key != KeyUID || mp.Key != KeyUIDPort || m.Dynamic || mp.Dynamic {
		return nil, nil
	}
	return m, mp
}

// overlayProtos returns the protocols whose base shards, moved and
// moved-ports sets rs has.
func overlayProtos(rs *Ruleset) []Proto {
	var out []Proto
	for _, s := range rs.Sets {
		p, ok := strings.CutSuffix(s.Name, "_moved")
		if !ok {
			continue
		}
		if m, _ := movedSets(rs, Proto(p)); m != nil && shardSets(rs, Proto(p)) != nil {
			out = append(out, Proto(p))
		}
	}
	return out
}

// Overlay returns the ruleset to install to bring the kernel from current to
// desired (a compiled ruleset, its moved sets empty) without deleting from
// the base sets: desired with, per protocol, the base shards kept as current
// has them plus new accounts' elements, and the accounts whose elements
// differ from the base moved. It returns desired itself when current is not
// nftpol's table of the same layout, and desired's layout for a protocol
// that would move more than MaxMoved accounts. It does not change either
// argument.
func Overlay(current, desired *Ruleset) *Ruleset {
	if current == nil || !current.Owned() {
		return desired
	}
	out := *desired
	out.Sets = slices.Clone(desired.Sets)
	// TCP's and UDP's shards hold the same elements when every account
	// has both protocols (the default), and then share them in memory
	// (as the compiler and the state reader leave them): one overlay of
	// each pair serves both.
	type laid struct {
		cur, want   *Element
		ncur, nwant int
		k           int
	}
	type result struct {
		base, moved, movedPorts []Element
		fits                    bool
	}
	first := func(es []Element) *Element {
		if len(es) == 0 {
			return nil
		}
		return &es[0]
	}
	done := map[laid]result{}
	layOver := func(cur, want []Element, k, room int) result {
		key := laid{first(cur), first(want), len(cur), len(want), k}
		if r, ok := done[key]; ok && r.fits && len(r.moved) <= room {
			return r
		}
		var r result
		if sameElements(cur, want) {
			r = result{base: want, fits: true} // nothing to lay over
		} else {
			r.base, r.moved, r.movedPorts, r.fits = overlay(cur, want, uint32(k), room)
		}
		done[key] = r
		return r
	}
	for _, p := range overlayProtos(desired) {
		cbs, dbs := shardSets(current, p), shardSets(desired, p)
		cm, cmp := movedSets(current, p)
		dm, dmp := movedSets(desired, p)
		if cbs == nil || cm == nil || !cm.SameDefinition(dm) || !cmp.SameDefinition(dmp) ||
			slices.ContainsFunc(dbs, func(d *Set) bool { return !d.SameDefinition(current.Set(d.Name)) }) {
			continue
		}
		bases := map[string][]Element{}
		var moved, movedPorts []Element
		ok := true
		for k, db := range dbs {
			r := layOver(cbs[k].Elements, db.Elements, k, MaxMoved-len(moved))
			base, m, mp, fits := r.base, r.moved, r.movedPorts, r.fits
			if !fits {
				ok = false
				break
			}
			bases[db.Name] = base
			moved, movedPorts = append(moved, m...), append(movedPorts, mp...)
		}
		if !ok {
			continue
		}
		moved, movedPorts = SortElements(moved), SortElements(movedPorts)
		for i, s := range out.Sets {
			switch {
			case s.Name == dm.Name:
				out.Sets[i] = withElements(s, moved)
			case s.Name == dmp.Name:
				out.Sets[i] = withElements(s, movedPorts)
			default:
				if base, found := bases[s.Name]; found {
					out.Sets[i] = withElements(s, base)
				}
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

// overlay lays want (shard k's elements, sorted) over base (the kernel's
// elements of that shard): the base to keep, the moved UIDs (as elements
// named after the account) and their elements. ok is false when more than
// room accounts would be moved. Elements of a UID of another shard, which
// no rule looks up, are dropped from the base.
func overlay(base, want []Element, k uint32, room int) (newBase, moved, movedPorts []Element, ok bool) {
	var added []Element
	var stray []uint32
	ok = true
	eachUID(base, want, func(uid uint32, b, w []Element) bool {
		switch {
		case slices.Equal(b, w):
			// The base holds the account as wanted.
		case Shard(uid) != k:
			stray = append(stray, uid)
		case len(b) == 0:
			added = append(added, w...)
		default:
			if len(moved) == room {
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
	if len(added)+len(stray) > 0 {
		newBase = make([]Element, 0, len(base)+len(added))
		for _, e := range base {
			if _, found := slices.BinarySearch(stray, e.UID); !found {
				newBase = append(newBase, e)
			}
		}
		newBase = append(newBase, added...)
		slices.SortFunc(newBase, Element.Compare)
	}
	return newBase, moved, movedPorts, true
}

// Accounts returns, per protocol, the elements each account is enforced
// with, sorted: the base shards' elements of the UIDs not moved, and the
// moved ports. The per-account sets are those called PortsSet(p, k), or the
// one set of the layout before shards, without moved sets for a ruleset that
// has none.
func Accounts(rs *Ruleset) map[Proto][]Element {
	m := map[Proto][]Element{}
	for p, v := range accountViews(rs) {
		m[p] = v.all()
	}
	return m
}

// accountView is one protocol's per-account sets of a ruleset.
type accountView struct {
	// bases holds the base's elements by shard: a UID's elements are
	// looked up in bases[uid % len(bases)] only.
	bases             [][]Element
	moved, movedPorts []Element
}

// accountViews returns the per-account sets of rs by protocol.
func accountViews(rs *Ruleset) map[Proto]*accountView {
	m := map[Proto]*accountView{}
	if rs == nil {
		return m
	}
	for _, s := range rs.Sets {
		p, k, shards, ok := parsePortsSet(s.Name)
		if !ok || s.Key != KeyUIDPort || s.Dynamic {
			continue
		}
		v := m[p]
		if v == nil || uint32(len(v.bases)) < shards {
			// The sharded layout wins over a stray set of the old
			// name: it is the one the rules look up.
			v = &accountView{bases: make([][]Element, shards)}
			m[p] = v
		} else if uint32(len(v.bases)) > shards {
			continue
		}
		v.bases[k] = s.Elements
	}
	// The moved sets count whatever the base's layout: a table of the
	// layout before shards has them too, and its moved accounts are
	// enforced from them.
	for p, v := range m {
		if moved, movedPorts := movedSets(rs, p); moved != nil {
			v.moved, v.movedPorts = moved.Elements, movedPorts.Elements
		}
	}
	return m
}

func (v *accountView) isMoved(uid uint32) bool {
	_, found := slices.BinarySearchFunc(v.moved, uid, func(m Element, u uint32) int { return cmp.Compare(m.UID, u) })
	return found
}

// shard returns the base elements among which uid is looked up.
func (v *accountView) shard(uid uint32) []Element {
	return v.bases[uid%uint32(len(v.bases))]
}

// group returns the elements uid is enforced with.
func (v *accountView) group(uid uint32) []Element {
	if v == nil {
		return nil
	}
	if v.isMoved(uid) {
		return uidGroup(v.movedPorts, uid)
	}
	return uidGroup(v.shard(uid), uid)
}

// base returns the base's elements that are looked up, in UID order: the
// shards merged, each without elements of UIDs of other shards.
func (v *accountView) base() []Element {
	if len(v.bases) == 1 {
		return v.bases[0]
	}
	n := 0
	for _, b := range v.bases {
		n += len(b)
	}
	out := make([]Element, 0, n)
	heads := slices.Clone(v.bases)
	for {
		// The shard whose next UID is lowest gives all of that UID's
		// elements: one UID's elements are in one shard.
		best := -1
		for k, h := range heads {
			if len(h) > 0 && (best < 0 || h[0].UID < heads[best][0].UID) {
				best = k
			}
		}
		if best < 0 {
			return out
		}
		h := heads[best]
		uid, j := h[0].UID, 1
		for j < len(h) && h[j].UID == uid {
			j++
		}
		if uid%uint32(len(heads)) == uint32(best) {
			out = append(out, h[:j]...)
		}
		heads[best] = h[j:]
	}
}

// all returns the elements every account is enforced with, sorted.
func (v *accountView) all() []Element {
	if v == nil {
		return nil
	}
	base := v.base()
	if len(v.moved) == 0 && len(v.movedPorts) == 0 {
		return base
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
	mps := v.movedPorts
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
