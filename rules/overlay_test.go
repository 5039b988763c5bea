package rules

import (
	"fmt"
	"slices"
	"testing"
)

// overlayTable is nftpol's per-account sets for TCP: the base, the moved
// UIDs and their ports, with accounts uid -> ports (one range each).
func overlayTable(accounts map[uint32][2]uint16, moved map[uint32][2]uint16, base map[uint32][2]uint16) *Ruleset {
	els := func(m map[uint32][2]uint16) []Element {
		var es []Element
		for uid, r := range m {
			es = append(es, Element{UID: uid, Lo: r[0], Hi: r[1], Comment: fmt.Sprint("a", uid)})
		}
		return SortElements(es)
	}
	rs := &Ruleset{Table: "nftpol", Sets: []*Set{
		{Name: MovedSet(TCP), Key: KeyUID, Comment: OwnerPrefix + "moved"},
		{Name: PortsSet(TCP), Key: KeyUIDPort, Interval: true, Comment: OwnerPrefix + "ports"},
		{Name: MovedPortsSet(TCP), Key: KeyUIDPort, Interval: true, Comment: OwnerPrefix + "moved ports"},
	}}
	if base == nil {
		rs.Sets[1].Elements = els(accounts)
		return rs
	}
	rs.Sets[1].Elements = els(base)
	rs.Sets[2].Elements = els(moved)
	for uid := range moved {
		rs.Sets[0].Elements = append(rs.Sets[0].Elements, Element{UID: uid, Comment: fmt.Sprint("a", uid)})
	}
	rs.Sets[0].Elements = SortElements(rs.Sets[0].Elements)
	return rs
}

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
	installed := Overlay(current, desired)
	if installed == desired {
		t.Fatal("Overlay returned the compiled layout")
	}
	if got, want := Accounts(installed)[TCP], Accounts(desired)[TCP]; !slices.Equal(got, want) {
		t.Errorf("enforced accounts after the overlay:\n%+v\nwant\n%+v", got, want)
	}
	plan := Diff(current, installed)
	for _, sc := range plan.Sets {
		if sc.Name == PortsSet(TCP) && (len(sc.Delete) > 0 || sc.Action == ActionReplace) {
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
	if len(current.Set(MovedSet(TCP)).Elements) != 0 || len(desired.Set(PortsSet(TCP)).Elements) != 3 {
		t.Error("Overlay changed its arguments")
	}

	// Back to what the base holds: 2 and 3 leave the moved sets; 4, now
	// in the base, is removed by moving it.
	back := Overlay(installed, current)
	if m := back.Set(MovedSet(TCP)).Elements; len(m) != 1 || m[0].UID != 4 || len(back.Set(MovedPortsSet(TCP)).Elements) != 0 {
		t.Errorf("moved sets after going back: %+v, %+v, want uid 4 alone, no ports", m, back.Set(MovedPortsSet(TCP)).Elements)
	}
	if !slices.Equal(Accounts(back)[TCP], Accounts(current)[TCP]) {
		t.Errorf("enforced after going back: %+v, want %+v", Accounts(back)[TCP], Accounts(current)[TCP])
	}
	if p := Diff(back, Overlay(back, current)); !p.Empty() {
		t.Errorf("planning the same again is not empty: %+v", p.Sets)
	}
}

// TestOverlayFallsBack: without nftpol's table of the same layout, or past
// MaxMoved accounts, the compiled layout is installed (the base rebuilt).
func TestOverlayFallsBack(t *testing.T) {
	desired := overlayTable(map[uint32][2]uint16{1: {10, 10}}, nil, nil)
	if Overlay(nil, desired) != desired {
		t.Error("no table: not the compiled layout")
	}
	old := &Ruleset{Table: "nftpol", Sets: []*Set{{Name: PortsSet(TCP), Key: KeyUIDPort, Interval: true, Comment: OwnerPrefix + "ports",
		Elements: []Element{{UID: 1, Lo: 11, Hi: 11}}}}}
	if got := Overlay(old, desired); !slices.Equal(got.Set(PortsSet(TCP)).Elements, desired.Set(PortsSet(TCP)).Elements) {
		t.Error("a table without moved sets: not the compiled layout")
	}

	all, widened := map[uint32][2]uint16{}, map[uint32][2]uint16{}
	for uid := uint32(1); uid <= MaxMoved+1; uid++ {
		all[uid] = [2]uint16{uint16(uid), uint16(uid)}
		widened[uid] = [2]uint16{uint16(uid), uint16(uid) + 1000}
	}
	current := overlayTable(all, nil, nil)
	many := overlayTable(widened, nil, nil)
	got := Overlay(current, many)
	if len(got.Set(MovedSet(TCP)).Elements) != 0 || !slices.Equal(got.Set(PortsSet(TCP)).Elements, many.Set(PortsSet(TCP)).Elements) {
		t.Errorf("%d accounts moved: want the compiled layout, got %d moved", MaxMoved+1, len(got.Set(MovedSet(TCP)).Elements))
	}
	delete(widened, MaxMoved+1)
	widened[MaxMoved+1] = all[MaxMoved+1]
	if got := Overlay(current, overlayTable(widened, nil, nil)); len(got.Set(MovedSet(TCP)).Elements) != MaxMoved {
		t.Errorf("%d accounts moved: got %d moved, want all of them", MaxMoved, len(got.Set(MovedSet(TCP)).Elements))
	}
}

// TestAccountsIgnoresStrayMovedPorts: a moved-ports element of a UID that
// is not moved is enforced by no rule, and a moved UID's base elements are
// not either.
func TestAccountsIgnoresStrayMovedPorts(t *testing.T) {
	rs := overlayTable(nil, map[uint32][2]uint16{2: {25, 25}}, map[uint32][2]uint16{1: {10, 10}, 2: {20, 20}})
	rs.Sets[2].Elements = append(rs.Sets[2].Elements, Element{UID: 9, Lo: 90, Hi: 90})
	got := Accounts(rs)[TCP]
	want := []Element{{UID: 1, Lo: 10, Hi: 10, Comment: "a1"}, {UID: 2, Lo: 25, Hi: 25, Comment: "a2"}}
	if !slices.Equal(got, want) {
		t.Errorf("Accounts = %+v, want %+v", got, want)
	}
}

// TestPrepareMoves: the moved ports of accounts about to be moved go first,
// on their own; the elements of accounts already moved stay with the rest,
// so their delete and add swap together; p itself is unchanged.
func TestPrepareMoves(t *testing.T) {
	current := overlayTable(nil, map[uint32][2]uint16{3: {35, 35}}, map[uint32][2]uint16{1: {10, 10}, 2: {20, 20}, 3: {30, 30}})
	desired := overlayTable(map[uint32][2]uint16{1: {10, 19}, 2: {20, 20}, 3: {36, 36}}, nil, nil)
	installed := Overlay(current, desired)
	p := Diff(current, installed)
	before := fmt.Sprintf("%+v", p.Sets)
	pre, rest := PrepareMoves(current, p)
	if pre == nil {
		t.Fatal("no first transaction for a move")
	}
	if fmt.Sprintf("%+v", p.Sets) != before {
		t.Error("PrepareMoves changed the plan it was given")
	}
	if len(pre.Sets) != 1 || pre.Sets[0].Name != MovedPortsSet(TCP) ||
		!slices.Equal(pre.Sets[0].Add, []Element{{UID: 1, Lo: 10, Hi: 19, Comment: "a1"}}) || len(pre.Sets[0].Delete) != 0 {
		t.Errorf("first transaction %+v, want uid 1's new ports only", pre.Sets)
	}
	var restMP *SetChange
	for i, sc := range rest.Sets {
		if sc.Name == MovedPortsSet(TCP) {
			restMP = &rest.Sets[i]
		}
	}
	if restMP == nil || !slices.Equal(restMP.Add, []Element{{UID: 3, Lo: 36, Hi: 36, Comment: "a3"}}) ||
		!slices.Equal(restMP.Delete, []Element{{UID: 3, Lo: 35, Hi: 35, Comment: "a3"}}) {
		t.Errorf("rest's moved ports %+v, want uid 3's delete and add", restMP)
	}
	if u := Undo(pre); !slices.Equal(u.Sets[0].Delete, pre.Sets[0].Add) || len(u.Sets[0].Add) != 0 {
		t.Errorf("Undo = %+v", u.Sets)
	}
	// No move, no first transaction.
	if pre, rest := PrepareMoves(installed, Diff(installed, Overlay(installed, desired))); pre != nil || rest == nil {
		t.Errorf("a plan that moves nothing was split: %+v", pre)
	}
}

// TestAccountChangesSharedBase: when the base is shared (only moved UIDs
// are compared), the plan names the same accounts, the same way, as when
// every account is compared.
func TestAccountChangesSharedBase(t *testing.T) {
	current := overlayTable(nil, map[uint32][2]uint16{3: {35, 35}, 5: {50, 51}}, map[uint32][2]uint16{1: {10, 10}, 2: {20, 20}, 3: {30, 30}, 5: {50, 50}})
	desired := overlayTable(map[uint32][2]uint16{1: {10, 19}, 2: {20, 20}, 3: {30, 30}, 5: {50, 51}}, nil, nil)
	installed := Overlay(current, desired)
	if &installed.Set(PortsSet(TCP)).Elements[0] != &current.Set(PortsSet(TCP)).Elements[0] {
		t.Fatal("Overlay copied a base it did not change")
	}
	unshared := *installed
	unshared.Sets = slices.Clone(installed.Sets)
	for i, s := range unshared.Sets {
		if s.Name == PortsSet(TCP) {
			unshared.Sets[i] = withElements(s, slices.Clone(s.Elements))
		}
	}
	fast, full := Diff(current, installed).Accounts, Diff(current, &unshared).Accounts
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
