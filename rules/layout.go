package rules

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// The layout of nftpol's table: which sets it holds, what each is for and
// what it is called. Every set has a Role (its kind, protocol and shard);
// the name is a function of the role (Role.Name) and the role of the name,
// key and flags (RoleOf), here and nowhere else. The sets of one protocol p:
//
//	PortsSet(p, k)    "uid . port range" per account that may serve p, of
//	                  the UIDs u with Shard(u) == k (the base)
//	MovedSet(p)       UIDs whose elements are in MovedPortsSet(p) instead
//	MovedPortsSet(p)  their elements now (see overlay, below)
//	OpenSet(p)        the union of the accounts' ranges
//	ViolationsSet(p)  uid . port of blocked serving, filled by the packet path
//
// and, for all protocols, ExemptSet. A recorded state or a kernel may also
// hold the one per-account set of the layout before shards
// (SetLegacyPorts) until the next apply replaces the table.

// SetKind is what a set of nftpol's table is for.
type SetKind uint8

// The kinds of sets. The zero kind is no role at all (see Set.Role).
const (
	// SetUnset: no role given. RoleOf derives one from the set's name,
	// key and flags.
	SetUnset SetKind = iota
	// SetOther: no part in the layout, such as a set nftpol does not
	// name, or one of its names with another key or flags. The layout
	// ignores it; the plan replaces the table if the desired one lacks it.
	SetOther
	// SetPorts is shard Role.Shard of the per-account ports of
	// Role.Proto (PortsSet).
	SetPorts
	// SetLegacyPorts is the one per-account port set of Role.Proto that
	// nftpol wrote before the sets were sharded.
	SetLegacyPorts
	// SetMoved holds the moved UIDs of Role.Proto (MovedSet).
	SetMoved
	// SetMovedPorts holds the moved UIDs' elements (MovedPortsSet).
	SetMovedPorts
	// SetOpen holds the zone ports some account has for Role.Proto
	// (OpenSet).
	SetOpen
	// SetExempt holds the exempt UIDs (ExemptSet).
	SetExempt
	// SetViolations records blocked serving of Role.Proto, with
	// counters (ViolationsSet); the packet path fills it.
	SetViolations
	// SetTransportViolations records the packets of transports no
	// account is granted (uid . protocol . port), with counters
	// (TransportViolationsSet); the packet path fills it.
	SetTransportViolations
)

// Role is a set's part in the layout.
type Role struct {
	Kind SetKind
	// Proto is the protocol of every kind but SetExempt and SetOther.
	Proto Proto
	// Shard is the shard of a SetPorts set: it holds the elements of the
	// UIDs u with Shard(u) == Shard. Zero for every other kind.
	Shard uint32
}

// Name is the name of the set of role r, "" for SetUnset and SetOther.
func (r Role) Name() string {
	switch r.Kind {
	case SetPorts:
		return PortsSet(r.Proto, r.Shard)
	case SetLegacyPorts:
		return legacyPortsSet(r.Proto)
	case SetMoved:
		return MovedSet(r.Proto)
	case SetMovedPorts:
		return MovedPortsSet(r.Proto)
	case SetOpen:
		return OpenSet(r.Proto)
	case SetExempt:
		return ExemptSet
	case SetViolations:
		return ViolationsSet(r.Proto)
	case SetTransportViolations:
		return TransportViolationsSet
	}
	return ""
}

// RoleOf returns s.Role, or when s has none (SetUnset) the role its name,
// key and dynamic flag give it (see DeriveRole).
func RoleOf(s *Set) Role {
	if s.Role.Kind != SetUnset {
		return s.Role
	}
	return derivedRole(s)
}

// DeriveRole sets s.Role to the role the layout gives a set of s's name, key
// and dynamic flag, and returns s: SetOther unless the name is one of the
// layout's and the key and flag are those of its kind. The decoders of the
// state (UnmarshalRuleset) and of the kernel call it on every set they
// make; it is the one place a set's name is read for its meaning.
func (s *Set) DeriveRole() *Set {
	s.Role = derivedRole(s)
	return s
}

func derivedRole(s *Set) Role {
	r := roleOfName(s.Name)
	switch r.Kind {
	case SetPorts, SetLegacyPorts, SetMovedPorts:
		if s.Key == KeyUIDPort && !s.Dynamic {
			return r
		}
	case SetMoved, SetExempt:
		if s.Key == KeyUID && !s.Dynamic {
			return r
		}
	case SetOpen:
		if s.Key == KeyPort && !s.Dynamic {
			return r
		}
	case SetViolations:
		if s.Key == KeyUIDPort && s.Dynamic {
			return r
		}
	case SetTransportViolations:
		if s.Key == KeyUIDProtoPort && s.Dynamic {
			return r
		}
	}
	return Role{Kind: SetOther}
}

// roleOfName is the role a set's name stands for, SetOther if none: the
// inverse of Role.Name.
func roleOfName(name string) Role {
	// A set rebuilt while rules read it alternates between its name and
	// its other name (altName): both stand for the same role.
	name = strings.TrimSuffix(name, altSuffix)
	proto := func(suffix string) (Proto, bool) {
		p, ok := strings.CutSuffix(name, suffix)
		return Proto(p), ok && p != ""
	}
	switch name {
	case ExemptSet:
		return Role{Kind: SetExempt}
	case TransportViolationsSet:
		return Role{Kind: SetTransportViolations}
	}
	// "_moved_ports" before "_ports": tcp_moved_ports is not the legacy
	// ports set of a protocol called tcp_moved.
	for _, c := range []struct {
		suffix string
		kind   SetKind
	}{{"_moved_ports", SetMovedPorts}, {"_moved", SetMoved}, {"_open", SetOpen}, {"_violations", SetViolations}} {
		if p, ok := proto(c.suffix); ok {
			return Role{Kind: c.kind, Proto: p}
		}
	}
	if p, ok := proto("_ports"); ok && !strings.HasSuffix(string(p), "_moved") {
		return Role{Kind: SetLegacyPorts, Proto: p}
	}
	i := strings.LastIndexByte(name, '_')
	if i < 0 {
		return Role{Kind: SetOther}
	}
	n, err := strconv.ParseUint(name[i+1:], 10, 32)
	rest, found := strings.CutSuffix(name[:i], "_ports")
	if err != nil || !found || rest == "" || n >= Shards || name[i+1:] != strconv.FormatUint(n, 10) || strings.HasSuffix(rest, "_moved") {
		return Role{Kind: SetOther}
	}
	return Role{Kind: SetPorts, Proto: Proto(rest), Shard: uint32(n)}
}

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

// OpenSet is the name of the set of zone ports open for protocol p.
func OpenSet(p Proto) string { return string(p) + "_open" }

// ExemptSet is the name of the set of exempt UIDs.
const ExemptSet = "exempt"

// TransportViolationsSet is the name of the dynamic set recording the
// packets of every transport but TCP, UDP and ICMP that accounts sent.
const TransportViolationsSet = "other_violations"

// ViolationsSet is the name of the dynamic set recording blocked serving of
// protocol p.
func ViolationsSet(p Proto) string { return string(p) + "_violations" }

// SetOfRole returns the set of rs whose role is r, or nil.
func (rs *Ruleset) SetOfRole(r Role) *Set {
	for _, s := range rs.Sets {
		if RoleOf(s) == r {
			return s
		}
	}
	return nil
}

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
	n := 0
	used := readSets(rs)
	for _, s := range rs.Sets {
		if r := RoleOf(s); r.Kind == SetPorts && r.Proto == p && out[r.Shard] == nil && used(s.Name) {
			out[r.Shard] = s
			n++
		}
	}
	if n < Shards {
		return nil
	}
	return out
}

// movedSets returns the moved and moved-ports sets of protocol p in rs, or
// nils when rs lacks either.
func movedSets(rs *Ruleset, p Proto) (moved, movedPorts *Set) {
	m, mp := rs.SetOfRole(Role{Kind: SetMoved, Proto: p}), rs.SetOfRole(Role{Kind: SetMovedPorts, Proto: p})
	if m == nil || mp == nil {
		return nil, nil
	}
	return m, mp
}

// overlayProtos returns the protocols whose base shards, moved and
// moved-ports sets rs has.
func overlayProtos(rs *Ruleset) []Proto {
	var out []Proto
	for _, s := range rs.Sets {
		r := RoleOf(s)
		if r.Kind != SetMoved {
			continue
		}
		if m, _ := movedSets(rs, r.Proto); m != nil && shardSets(rs, r.Proto) != nil {
			out = append(out, r.Proto)
		}
	}
	return out
}

// overlay returns the ruleset to install to bring the kernel from current to
// desired (a compiled ruleset, its moved sets empty) without deleting from
// the base sets: desired with, per protocol, the base shards kept as current
// has them plus new accounts' elements, and the accounts whose elements
// differ from the base moved. It returns desired itself when current is not
// nftpol's table of the same layout, and desired's layout for a protocol
// that would move more than MaxMoved accounts. It does not change either
// argument; the sets it returns share element slices with both (see
// Set.Elements).
func overlay(current, desired *Ruleset) *Ruleset {
	if current == nil || !current.Owned() {
		return desired
	}
	out := *desired
	out.Sets = slices.Clone(desired.Sets)
	// TCP's and UDP's shards hold the same elements when every account
	// has both protocols (the default), and then share them in memory
	// (as the compiler and the state reader leave them, see
	// Set.Elements): one overlay of each pair serves both.
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
			r.base, r.moved, r.movedPorts, r.fits = overlayShard(cur, want, uint32(k), room)
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

// withElements is a copy of s holding es, clipped: the overlay's sets share
// their slices (see Set.Elements).
func withElements(s *Set, es []Element) *Set {
	c := *s
	c.Elements = slices.Clip(es)
	return &c
}

// overlayShard lays want (shard k's elements, sorted) over base (the kernel's
// elements of that shard): the base to keep, the moved UIDs (as elements
// named after the account) and their elements. ok is false when more than
// room accounts would be moved. Elements of a UID of another shard, which
// no rule looks up, are dropped from the base.
func overlayShard(base, want []Element, k uint32, room int) (newBase, moved, movedPorts []Element, ok bool) {
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

// AccountsOf returns, for each of uids, the elements Accounts gives it per
// protocol (nil for a UID without any), looking each up in its own shard
// instead of merging every account's.
func AccountsOf(rs *Ruleset, uids []uint32) map[uint32]map[Proto][]Element {
	views := accountViews(rs)
	out := make(map[uint32]map[Proto][]Element, len(uids))
	for _, uid := range uids {
		for p, v := range views {
			if g := v.group(uid); len(g) > 0 {
				if out[uid] == nil {
					out[uid] = map[Proto][]Element{}
				}
				out[uid][p] = g
			}
		}
	}
	return out
}

// ChangedAccounts returns, sorted, the UIDs whose elements (ranges and
// comments) Accounts gives differently in a and b, for any protocol. A shard
// that holds the same elements in both (the same slice: Sync's Target keeps
// the slice of every set the overlay leaves as it was) is not walked, so a
// one-account change costs no walk of 50,000 elements.
func ChangedAccounts(a, b *Ruleset) []uint32 {
	va, vb := accountViews(a), accountViews(b)
	changed := map[uint32]bool{}
	for _, p := range Protos {
		x, y := va[p], vb[p]
		if x == nil && y == nil {
			continue
		}
		if x == nil || y == nil || len(x.bases) != len(y.bases) {
			diffGroups(x.all(), y.all(), nil, changed)
			continue
		}
		moved := map[uint32]bool{}
		for _, m := range [][]Element{x.moved, y.moved} {
			for _, e := range m {
				moved[e.UID] = true
			}
		}
		for uid := range moved {
			if !slices.Equal(x.group(uid), y.group(uid)) {
				changed[uid] = true
			}
		}
		n := uint32(len(x.bases))
		for k := range x.bases {
			if sameSlice(x.bases[k], y.bases[k]) {
				continue
			}
			// Only a UID of this shard is looked up here, and a moved
			// one not at all (compared above).
			skip := func(uid uint32) bool { return uid%n != uint32(k) || moved[uid] }
			diffGroups(x.bases[k], y.bases[k], skip, changed)
		}
	}
	out := make([]uint32, 0, len(changed))
	for uid := range changed {
		out = append(out, uid)
	}
	slices.Sort(out)
	return out
}

func sameSlice(a, b []Element) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// diffGroups walks a and b, sorted by UID, and marks in changed every UID
// (but those skip says) whose elements differ between them.
func diffGroups(a, b []Element, skip func(uint32) bool, changed map[uint32]bool) {
	next := func(es []Element) ([]Element, []Element) {
		j := 1
		for j < len(es) && es[j].UID == es[0].UID {
			j++
		}
		return es[:j], es[j:]
	}
	for len(a) > 0 || len(b) > 0 {
		var ga, gb []Element
		switch {
		case len(b) == 0 || len(a) > 0 && a[0].UID < b[0].UID:
			ga, a = next(a)
		case len(a) == 0 || b[0].UID < a[0].UID:
			gb, b = next(b)
		default:
			ga, a = next(a)
			gb, b = next(b)
		}
		var uid uint32
		if len(ga) > 0 {
			uid = ga[0].UID
		} else {
			uid = gb[0].UID
		}
		if (skip == nil || !skip(uid)) && !slices.Equal(ga, gb) {
			changed[uid] = true
		}
	}
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
	used := readSets(rs)
	for _, s := range rs.Sets {
		if !used(s.Name) {
			continue // a staged set no rule reads enforces nothing
		}
		r := RoleOf(s)
		var k, shards uint32
		switch r.Kind {
		case SetPorts:
			k, shards = r.Shard, Shards
		case SetLegacyPorts:
			k, shards = 0, 1
		default:
			continue
		}
		p := r.Proto
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

// readSets returns whether the rules of rs read a set, answering true for
// every set of a ruleset whose rules read none (a model built by hand, a
// table between its two first transactions): the sets a rule reads are the ones
// that enforce, when a staged change left others behind.
func readSets(rs *Ruleset) func(name string) bool {
	used := referencedSets(rs)
	if len(used) == 0 {
		return func(string) bool { return true }
	}
	return func(name string) bool { return used[name] }
}
