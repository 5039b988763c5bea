package rules

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// overlayTable is nftpol's per-account sets for TCP: the base shards, the
// moved UIDs and their ports, with accounts uid -> ports (one range each).
func overlayTable(accounts map[uint32][2]uint16, moved map[uint32][2]uint16, base map[uint32][2]uint16) *Ruleset {
	els := func(m map[uint32][2]uint16) []Element {
		var es []Element
		for uid, r := range m {
			es = append(es, Element{UID: uid, Lo: r[0], Hi: r[1], Comment: fmt.Sprint("a", uid)})
		}
		return SortElements(es)
	}
	movedSet := &Set{Name: MovedSet(TCP), Key: KeyUID, Comment: OwnerPrefix + "moved"}
	movedPorts := &Set{Name: MovedPortsSet(TCP), Key: KeyUIDPort, Interval: true, Comment: OwnerPrefix + "moved ports"}
	rs := &Ruleset{Table: "nftpol", Sets: []*Set{movedSet}}
	shards := make([]*Set, Shards)
	for k := range shards {
		shards[k] = &Set{Name: PortsSet(TCP, uint32(k)), Key: KeyUIDPort, Interval: true, Comment: OwnerPrefix + "ports"}
		rs.Sets = append(rs.Sets, shards[k])
	}
	rs.Sets = append(rs.Sets, movedPorts)
	if base == nil {
		base = accounts
	} else {
		movedPorts.Elements = els(moved)
		for uid := range moved {
			movedSet.Elements = append(movedSet.Elements, Element{UID: uid, Comment: fmt.Sprint("a", uid)})
		}
		movedSet.Elements = SortElements(movedSet.Elements)
	}
	for _, e := range els(base) {
		s := shards[Shard(e.UID)]
		s.Elements = append(s.Elements, e)
	}
	return rs
}

// baseElements is every element of rs's TCP base shards, sorted.
func baseElements(rs *Ruleset) []Element {
	var es []Element
	for _, s := range rs.Sets {
		if r := RoleOf(s); isPorts(r) && r.Proto == TCP {
			es = append(es, s.Elements...)
		}
	}
	return SortElements(es)
}

// isPorts reports whether r is a per-account ports set's, sharded or not.
func isPorts(r Role) bool { return r.Kind == SetPorts || r.Kind == SetLegacyPorts }

// isBase reports whether a set change is to one of the base shards.
func isBase(sc SetChange) bool { return isPorts(RoleOf(sc.Set)) }

// TestOverlay: a change lays the desired accounts over the kernel's base
// without deleting from it, the plan names exactly the changed accounts,
// and every account is enforced as desired.
func TestOverlay(t *testing.T) {
	current := overlayTable(map[uint32][2]uint16{1: {10, 10}, 2: {20, 20}, 3: {30, 30}}, nil, nil)
	desired := overlayTable(map[uint32][2]uint16{
		1: {10, 10}, // unchanged
		2: {20, 29}, // widened: moved
		// 3 removed: moved with no ports
		4: {40, 40}, // new: added to the base
	}, nil, nil)
	ch := Sync(current, desired)
	installed, plan := ch.Target, ch.Plan
	if installed == desired {
		t.Fatal("Sync targets the compiled layout")
	}
	if got, want := Accounts(installed)[TCP], Accounts(desired)[TCP]; !slices.Equal(got, want) {
		t.Errorf("enforced accounts after the overlay:\n%+v\nwant\n%+v", got, want)
	}
	for _, sc := range plan.Sets {
		if isBase(sc) && (len(sc.Delete) > 0 || sc.Action == ActionReplace) {
			t.Errorf("the base set loses elements: %+v", sc)
		}
	}
	var changed []string
	for _, ac := range plan.Accounts {
		changed = append(changed, fmt.Sprintf("%d %s", ac.UID, ac.Action))
	}
	if want := []string{"2 change", "3 remove", "4 add"}; !slices.Equal(changed, want) {
		t.Errorf("plan accounts %v, want %v", changed, want)
	}
	moved := installed.Set(MovedSet(TCP)).Elements
	if len(moved) != 2 || moved[0].UID != 2 || moved[1].UID != 3 || moved[0].Comment != "a2" {
		t.Errorf("moved %+v, want uids 2 and 3 named after their accounts", moved)
	}
	// The inputs are not changed.
	if len(current.Set(MovedSet(TCP)).Elements) != 0 || len(baseElements(desired)) != 3 {
		t.Error("Sync changed its arguments")
	}

	// Back to what the base holds: 2 and 3 leave the moved sets; 4, now
	// in the base, is removed by moving it.
	back := Sync(installed, current).Target
	if m := back.Set(MovedSet(TCP)).Elements; len(m) != 1 || m[0].UID != 4 || len(back.Set(MovedPortsSet(TCP)).Elements) != 0 {
		t.Errorf("moved sets after going back: %+v, %+v, want uid 4 alone, no ports", m, back.Set(MovedPortsSet(TCP)).Elements)
	}
	if !slices.Equal(Accounts(back)[TCP], Accounts(current)[TCP]) {
		t.Errorf("enforced after going back: %+v, want %+v", Accounts(back)[TCP], Accounts(current)[TCP])
	}
	if p := Sync(back, current).Plan; !p.Empty() {
		t.Errorf("planning the same again is not empty: %+v", p.Sets)
	}
}

// TestOverlayFallsBack: without nftpol's table of the same layout, or past
// MaxMoved accounts, the compiled layout is installed (the base rebuilt).
func TestOverlayFallsBack(t *testing.T) {
	desired := overlayTable(map[uint32][2]uint16{1: {10, 10}}, nil, nil)
	if Sync(nil, desired).Target != desired {
		t.Error("no table: not the compiled layout")
	}
	// The layout before shards: one base set, no moved sets.
	old := &Ruleset{Table: "nftpol", Sets: []*Set{{Name: legacyPortsSet(TCP), Key: KeyUIDPort, Interval: true, Comment: OwnerPrefix + "ports",
		Elements: []Element{{UID: 1, Lo: 11, Hi: 11}}}}}
	ch := Sync(old, desired)
	if got := ch.Target; !slices.Equal(baseElements(got), baseElements(desired)) || len(got.Set(MovedSet(TCP)).Elements) > 0 {
		t.Error("a table of the unsharded layout: not the compiled layout")
	}
	if p := ch.Plan; p.TableAction != TableReplace {
		t.Errorf("from the unsharded layout: table %s, want replace", p.TableAction)
	}

	all, widened := map[uint32][2]uint16{}, map[uint32][2]uint16{}
	for uid := uint32(1); uid <= MaxMoved+1; uid++ {
		all[uid] = [2]uint16{uint16(uid), uint16(uid)}
		widened[uid] = [2]uint16{uint16(uid), uint16(uid) + 1000}
	}
	current := overlayTable(all, nil, nil)
	many := overlayTable(widened, nil, nil)
	got := Sync(current, many).Target
	if len(got.Set(MovedSet(TCP)).Elements) != 0 || !slices.Equal(baseElements(got), baseElements(many)) {
		t.Errorf("%d accounts moved: want the compiled layout, got %d moved", MaxMoved+1, len(got.Set(MovedSet(TCP)).Elements))
	}
	delete(widened, MaxMoved+1)
	widened[MaxMoved+1] = all[MaxMoved+1]
	if got := Sync(current, overlayTable(widened, nil, nil)).Target; len(got.Set(MovedSet(TCP)).Elements) != MaxMoved {
		t.Errorf("%d accounts moved: got %d moved, want all of them", MaxMoved, len(got.Set(MovedSet(TCP)).Elements))
	}
}

// TestAccountsIgnoresStrayMovedPorts: a moved-ports element of a UID that
// is not moved is enforced by no rule, and a moved UID's base elements are
// not either.
func TestAccountsIgnoresStrayMovedPorts(t *testing.T) {
	rs := overlayTable(nil, map[uint32][2]uint16{2: {25, 25}}, map[uint32][2]uint16{1: {10, 10}, 2: {20, 20}})
	mp := rs.Set(MovedPortsSet(TCP))
	mp.Elements = append(mp.Elements, Element{UID: 9, Lo: 90, Hi: 90})
	got := Accounts(rs)[TCP]
	want := []Element{{UID: 1, Lo: 10, Hi: 10, Comment: "a1"}, {UID: 2, Lo: 25, Hi: 25, Comment: "a2"}}
	if !slices.Equal(got, want) {
		t.Errorf("Accounts = %+v, want %+v", got, want)
	}
}

// TestAccountChangesSharedBase: when the base is shared (only moved UIDs
// are compared), the plan names the same accounts, the same way, as when
// every account is compared.
func TestAccountChangesSharedBase(t *testing.T) {
	current := overlayTable(nil, map[uint32][2]uint16{3: {35, 35}, 5: {50, 51}}, map[uint32][2]uint16{1: {10, 10}, 2: {20, 20}, 3: {30, 30}, 5: {50, 50}})
	desired := overlayTable(map[uint32][2]uint16{1: {10, 19}, 2: {20, 20}, 3: {30, 30}, 5: {50, 51}}, nil, nil)
	ch := Sync(current, desired)
	installed := ch.Target
	if &installed.Set(PortsSet(TCP, 1)).Elements[0] != &current.Set(PortsSet(TCP, 1)).Elements[0] {
		t.Fatal("the overlay copied a base it did not change")
	}
	unshared := *installed
	unshared.Sets = slices.Clone(installed.Sets)
	for i, s := range unshared.Sets {
		if isPorts(RoleOf(s)) && len(s.Elements) > 0 {
			unshared.Sets[i] = withElements(s, slices.Clone(s.Elements))
		}
	}
	fast, full := ch.Plan.Accounts, SyncExact(current, &unshared).Plan.Accounts
	if fmt.Sprintf("%+v", fast) != fmt.Sprintf("%+v", full) {
		t.Errorf("shared base: %+v\nevery account compared: %+v", fast, full)
	}
	var got []string
	for _, ac := range fast {
		got = append(got, fmt.Sprintf("%d %s", ac.UID, ac.Action))
	}
	if want := []string{"1 change", "3 change"}; !slices.Equal(got, want) {
		t.Errorf("accounts %v, want %v", got, want)
	}
}

// TestOverlayAcrossShards: accounts of every shard change at once; each
// shard's base keeps its elements, the moved sets hold the changed accounts
// of all shards in UID order, and a UID's element left in another shard's
// set (which no rule looks up for it) is neither enforced nor moved, but
// dropped.
func TestOverlayAcrossShards(t *testing.T) {
	all, changed := map[uint32][2]uint16{}, map[uint32][2]uint16{}
	for uid := uint32(1000); uid < 1000+3*Shards; uid++ {
		all[uid] = [2]uint16{uint16(uid), uint16(uid)}
		changed[uid] = all[uid]
		if uid%3 == 0 {
			changed[uid] = [2]uint16{uint16(uid), uint16(uid) + 100}
		}
	}
	current, desired := overlayTable(all, nil, nil), overlayTable(changed, nil, nil)
	// uid 1001 (shard 1) has a stray element in shard 0.
	stray := current.Set(PortsSet(TCP, 0))
	stray.Elements = SortElements(append(slices.Clone(stray.Elements), Element{UID: 1001, Lo: 5000, Hi: 5000}))
	if got := Accounts(current)[TCP]; slices.Contains(got, Element{UID: 1001, Lo: 5000, Hi: 5000}) {
		t.Errorf("an element in another UID's shard is taken as enforced: %+v", got)
	}
	ch := Sync(current, desired)
	installed := ch.Target
	if got, want := Accounts(installed)[TCP], Accounts(desired)[TCP]; !slices.Equal(got, want) {
		t.Errorf("enforced after the overlay:\n%+v\nwant\n%+v", got, want)
	}
	var moved []uint32
	for _, e := range installed.Set(MovedSet(TCP)).Elements {
		moved = append(moved, e.UID)
	}
	var want []uint32
	for uid := range changed {
		if changed[uid] != all[uid] {
			want = append(want, uid)
		}
	}
	slices.Sort(want)
	if !slices.Equal(moved, want) {
		t.Errorf("moved %v, want %v", moved, want)
	}
	shards := map[uint32]bool{}
	for _, u := range want {
		shards[Shard(u)] = true
	}
	if len(shards) != Shards {
		t.Fatalf("the changed accounts cover %d shards, want all %d", len(shards), Shards)
	}
	for _, sc := range ch.Plan.Sets {
		switch {
		case sc.Name == PortsSet(TCP, 0):
			if sc.Action != ActionUpdate || !slices.Equal(sc.Delete, []Element{{UID: 1001, Lo: 5000, Hi: 5000}}) || len(sc.Add) > 0 {
				t.Errorf("shard 0: %+v, want the stray element deleted and nothing else", sc)
			}
		case isBase(sc):
			t.Errorf("base shard %s changed: %+v", sc.Name, sc)
		}
	}
}

// TestRoleOf: a set's role follows from its name, key and dynamic flag, and
// the role names the set back.
func TestRoleOf(t *testing.T) {
	ports := func(p Proto, k uint32) Role { return Role{Kind: SetPorts, Proto: p, Shard: k} }
	other := Role{Kind: SetOther}
	for _, c := range []struct {
		name    string
		key     KeyType
		dynamic bool
		want    Role
	}{
		{"tcp_ports_0", KeyUIDPort, false, ports(TCP, 0)},
		{"udp_ports_7", KeyUIDPort, false, ports(UDP, 7)},
		{"tcp_ports", KeyUIDPort, false, Role{Kind: SetLegacyPorts, Proto: TCP}},
		{"tcp_ports_8", KeyUIDPort, false, other},
		{"tcp_ports_03", KeyUIDPort, false, other},
		{"tcp_ports_", KeyUIDPort, false, other},
		{"tcp_ports_-1", KeyUIDPort, false, other},
		{"_ports_1", KeyUIDPort, false, other},
		{"_ports", KeyUIDPort, false, other},
		{"tcp_moved_ports_1", KeyUIDPort, false, other},
		{"tcp_ports_0", KeyUID, false, other},
		{"tcp_ports_0", KeyUIDPort, true, other},
		{"tcp_moved", KeyUID, false, Role{Kind: SetMoved, Proto: TCP}},
		{"tcp_moved", KeyUIDPort, false, other},
		{"_moved", KeyUID, false, other},
		{"udp_moved_ports", KeyUIDPort, false, Role{Kind: SetMovedPorts, Proto: UDP}},
		{"udp_moved_ports", KeyUID, false, other},
		{"tcp_open", KeyPort, false, Role{Kind: SetOpen, Proto: TCP}},
		{"tcp_open", KeyUIDPort, false, other},
		{"exempt", KeyUID, false, Role{Kind: SetExempt}},
		{"exempt", KeyUID, true, other},
		{"udp_violations", KeyUIDPort, true, Role{Kind: SetViolations, Proto: UDP}},
		{"udp_violations", KeyUIDPort, false, other},
		{"_violations", KeyUIDPort, true, other},
		{"ports", KeyUIDPort, false, other},
		{"strangers", KeyUID, false, other},
	} {
		s := &Set{Name: c.name, Key: c.key, Dynamic: c.dynamic}
		if got := RoleOf(s); got != c.want {
			t.Errorf("RoleOf(%q, %s, dynamic %v) = %+v, want %+v", c.name, c.key, c.dynamic, got, c.want)
		}
		if s.DeriveRole().Role != c.want {
			t.Errorf("DeriveRole(%q) set %+v, want %+v", c.name, s.Role, c.want)
		}
		if c.want != other && c.want.Name() != c.name {
			t.Errorf("%q has role %+v, which names %q", c.name, c.want, c.want.Name())
		}
	}
	// A role given is kept, whatever the name.
	if got := RoleOf(&Set{Name: "x", Role: ports(TCP, 3)}); got != ports(TCP, 3) {
		t.Errorf("RoleOf kept %+v, want the role given", got)
	}
}

// TestAccountsOfUnshardedTable: in a table of the layout before shards, the
// moved sets count as they do in a sharded one: a moved account is
// enforced with its moved ports, one moved with none is not enforced, and
// the plan to the sharded layout of the same accounts changes none.
func TestAccountsOfUnshardedTable(t *testing.T) {
	legacy := &Ruleset{Table: "nftpol", Sets: []*Set{
		{Name: MovedSet(TCP), Key: KeyUID, Elements: []Element{{UID: 1, Comment: "a1"}, {UID: 3, Comment: "a3"}}},
		{Name: legacyPortsSet(TCP), Key: KeyUIDPort, Interval: true, Elements: []Element{
			{UID: 1, Lo: 10, Hi: 10, Comment: "a1"}, {UID: 2, Lo: 20, Hi: 20, Comment: "a2"}, {UID: 3, Lo: 30, Hi: 30, Comment: "a3"}}},
		{Name: MovedPortsSet(TCP), Key: KeyUIDPort, Interval: true, Elements: []Element{{UID: 1, Lo: 10, Hi: 19, Comment: "a1"}}},
	}}
	desired := overlayTable(map[uint32][2]uint16{1: {10, 19}, 2: {20, 20}}, nil, nil)
	if got, want := Accounts(legacy)[TCP], Accounts(desired)[TCP]; !slices.Equal(got, want) {
		t.Errorf("enforced in the unsharded table: %+v, want %+v", got, want)
	}
	if p := Sync(legacy, desired).Plan; len(p.Accounts) != 0 || p.TableAction != TableReplace {
		t.Errorf("to the sharded layout: table %s, accounts %+v; want replace, none", p.TableAction, p.Accounts)
	}
}

// TestShardChangesMatchesMerged: comparing two views shard by shard finds
// exactly the UIDs that comparing every account's enforced elements does,
// moved accounts, stray moved ports and elements in another UID's shard
// included (random tables, fixed seed).
func TestShardChangesMatchesMerged(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 50000))
	table := func() *Ruleset {
		base, moved := map[uint32][2]uint16{}, map[uint32][2]uint16{}
		for uid := uint32(1000); uid < 1060; uid++ {
			switch rng.IntN(5) {
			case 0: // absent
			case 1:
				moved[uid] = [2]uint16{uint16(uid), uint16(uid) + uint16(rng.IntN(3))}
				base[uid] = [2]uint16{uint16(uid), uint16(uid)}
			default:
				base[uid] = [2]uint16{uint16(uid), uint16(uid) + uint16(rng.IntN(2))}
			}
		}
		rs := overlayTable(nil, moved, base)
		// A stray in another UID's shard, and a moved port of a UID
		// that is not moved: neither is enforced.
		s := rs.Set(PortsSet(TCP, 0))
		s.Elements = SortElements(append(slices.Clone(s.Elements), Element{UID: 1001 + uint32(rng.IntN(7)), Lo: 9, Hi: 9}))
		mp := rs.Set(MovedPortsSet(TCP))
		mp.Elements = SortElements(append(slices.Clone(mp.Elements), Element{UID: 1000 + uint32(rng.IntN(60)), Lo: 8, Hi: 8}))
		return rs
	}
	for range 300 {
		a, b := accountViews(table())[TCP], accountViews(table())[TCP]
		var want []uint32
		eachUID(a.all(), b.all(), func(uid uint32, x, y []Element) bool {
			if !slices.Equal(x, y) {
				want = append(want, uid)
			}
			return true
		})
		got := shardChanges(a, b)
		slices.Sort(got)
		got = slices.Compact(got)
		if !slices.Equal(got, want) {
			t.Fatalf("shard by shard: %v\nevery account: %v", got, want)
		}
	}
}

// TestOverlaySharedProtocols: TCP's and UDP's shards sharing their elements
// (as compiled when every account has both) are laid over once, and each
// protocol gets the same, correct, moved accounts and base.
func TestOverlaySharedProtocols(t *testing.T) {
	both := func(accounts, moved, base map[uint32][2]uint16) *Ruleset {
		rs := overlayTable(accounts, moved, base)
		for _, s := range slices.Clone(rs.Sets) {
			u := *s
			u.Name = strings.Replace(s.Name, "tcp", "udp", 1)
			rs.Sets = append(rs.Sets, &u) // shares s's elements
		}
		return rs
	}
	current := both(map[uint32][2]uint16{1: {10, 10}, 2: {20, 20}, 3: {30, 30}}, nil, nil)
	desired := both(map[uint32][2]uint16{1: {10, 10}, 2: {20, 29}, 4: {40, 40}}, nil, nil)
	ch := Sync(current, desired)
	installed := ch.Target
	for _, p := range []Proto{TCP, UDP} {
		if got, want := Accounts(installed)[p], Accounts(desired)[p]; !slices.Equal(got, want) {
			t.Errorf("%s enforced after the overlay:\n%+v\nwant\n%+v", p, got, want)
		}
		var moved []uint32
		for _, e := range installed.Set(MovedSet(p)).Elements {
			moved = append(moved, e.UID)
		}
		if !slices.Equal(moved, []uint32{2, 3}) {
			t.Errorf("%s moved %v, want [2 3]", p, moved)
		}
	}
	for k := uint32(0); k < Shards; k++ {
		tcp, udp := installed.Set(PortsSet(TCP, k)).Elements, installed.Set(PortsSet(UDP, k)).Elements
		if len(tcp) > 0 && &tcp[0] != &udp[0] {
			t.Errorf("shard %d: the shared shards were laid over twice", k)
		}
	}
	if p := ch.Plan; len(p.Accounts) != 3 {
		t.Errorf("plan accounts %+v, want 2, 3 and 4", p.Accounts)
	}
}

// TestShareElements: a compiled ruleset shared with the one the kernel
// holds takes the kernel's memory where the elements are the same, keeps
// its own where they differ, and is not changed itself.
func TestShareElements(t *testing.T) {
	accounts := map[uint32][2]uint16{}
	for uid := uint32(1); uid <= 40; uid++ {
		accounts[uid] = [2]uint16{uint16(1000 + uid), uint16(1000 + uid)}
	}
	current := overlayTable(accounts, nil, nil) // as recorded
	accounts[3] = [2]uint16{1003, 1009}
	desired := overlayTable(accounts, nil, nil) // as compiled: uid 3 widened
	shared := ShareElements(desired, current)
	changed := PortsSet(TCP, Shard(3))
	for k := range uint32(Shards) {
		name := PortsSet(TCP, k)
		got, own, kernel := shared.Set(name).Elements, desired.Set(name).Elements, current.Set(name).Elements
		switch {
		case name == changed && !sameElements(got, own):
			t.Errorf("%s differs from the kernel's, yet does not keep its own elements", name)
		case name != changed && len(got) > 0 && !sameElements(got, kernel):
			t.Errorf("%s holds the kernel's elements in its own memory", name)
		}
		if !slices.Equal(got, own) {
			t.Errorf("%s: elements changed", name)
		}
	}
	if sameElements(desired.Set(PortsSet(TCP, 0)).Elements, current.Set(PortsSet(TCP, 0)).Elements) {
		t.Error("ShareElements changed the ruleset it was given")
	}
	if again := ShareElements(shared, current); again != shared {
		t.Error("nothing left to share, yet a copy")
	}
}
