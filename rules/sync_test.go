package rules

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// TestTransactions: the moved ports of accounts about to be moved go first,
// on their own; the elements of accounts already moved stay with the rest,
// so their delete and add swap together; the plan itself is unchanged, and
// the first transaction's undo takes back its additions.
func TestTransactions(t *testing.T) {
	current := overlayTable(nil, map[uint32][2]uint16{3: {35, 35}}, map[uint32][2]uint16{1: {10, 10}, 2: {20, 20}, 3: {30, 30}})
	desired := overlayTable(map[uint32][2]uint16{1: {10, 19}, 2: {20, 20}, 3: {36, 36}}, nil, nil)
	ch := Sync(current, desired)
	before := fmt.Sprintf("%+v", ch.Plan.Sets)
	txs := ch.Transactions()
	if len(txs) != 2 {
		t.Fatalf("%d transactions for a move, want 2", len(txs))
	}
	if fmt.Sprintf("%+v", ch.Plan.Sets) != before {
		t.Error("Transactions changed the plan")
	}
	pre, rest := txs[0], txs[1]
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
	if u := ch.Undo(0); !slices.Equal(u.Sets[0].Delete, pre.Sets[0].Add) || len(u.Sets[0].Add) != 0 {
		t.Errorf("undo(0) = %+v", u.Sets)
	}
	if u := ch.Undo(1); u != nil {
		t.Errorf("Undo of the last transaction = %+v, want nil", u)
	}
	// A plan that retires a table is not split.
	retiring := Sync(current, desired)
	retiring.Plan.Retire = "old"
	if txs := retiring.Transactions(); len(txs) != 1 || txs[0] != retiring.Plan {
		t.Errorf("a plan that retires a table was split: %d transactions", len(txs))
	}
	// No move, one transaction: the plan.
	again := Sync(ch.Target, desired)
	if txs := again.Transactions(); len(txs) != 1 || txs[0] != again.Plan || again.Undo(0) != nil {
		t.Errorf("a plan that moves nothing was split: %+v", txs)
	}
}

// TestSyncExact: a recorded ruleset is the target as it is, nothing laid
// over, and a kernel that holds it has nothing to change.
func TestSyncExact(t *testing.T) {
	current := overlayTable(map[uint32][2]uint16{1: {10, 10}, 2: {20, 20}}, nil, nil)
	recorded := overlayTable(map[uint32][2]uint16{1: {10, 10}, 2: {20, 29}}, nil, nil)
	ch := SyncExact(current, recorded)
	if ch.Target != recorded || ch.Current != current {
		t.Fatal("SyncExact's target is not the recorded ruleset")
	}
	if len(ch.Target.Set(MovedSet(TCP)).Elements) != 0 || !slices.ContainsFunc(ch.Plan.Sets, isBase) {
		t.Errorf("SyncExact laid the recorded ruleset over the kernel's: %+v", ch.Plan.Sets)
	}
	if p := SyncExact(recorded, recorded).Plan; !p.Empty() {
		t.Errorf("the kernel holds the recorded ruleset, but the plan is %+v", p.Sets)
	}
}

// TestReplace: adopting a table replaces it whole with the target, the
// accounts listed as the plan from the stranger's table lists them.
func TestReplace(t *testing.T) {
	stranger := overlayTable(map[uint32][2]uint16{1: {10, 10}}, nil, nil)
	for _, s := range stranger.Sets {
		s.Comment = "not ours"
	}
	desired := overlayTable(map[uint32][2]uint16{1: {10, 19}, 2: {20, 20}}, nil, nil)
	ch := Sync(stranger, desired)
	if len(ch.Target.Sets) != len(desired.Sets) || !ch.stagedReplace {
		t.Fatal("a table nftpol did not create is not replaced, staged")
	}
	for i, s := range ch.Target.Sets {
		if s.Name != altName(desired.Sets[i].Name) || !slices.Equal(s.Elements, desired.Sets[i].Elements) {
			t.Errorf("staged set %s for %s", s.Name, desired.Sets[i].Name)
		}
	}
	ch.Plan.Retire = "old"
	r := ch.Replace()
	if r.Plan.TableAction != TableReplace || len(r.Plan.Sets) != len(desired.Sets) || r.Plan.Retire != "old" {
		t.Errorf("replace plan: table %s, %d sets, retire %q", r.Plan.TableAction, len(r.Plan.Sets), r.Plan.Retire)
	}
	if fmt.Sprintf("%+v", r.Plan.Accounts) != fmt.Sprintf("%+v", ch.Plan.Accounts) || len(r.Plan.Accounts) != 2 {
		t.Errorf("replace accounts %+v, want %+v", r.Plan.Accounts, ch.Plan.Accounts)
	}
	txs := r.Transactions()
	if len(txs) != 2 || r.Plan == ch.Plan {
		t.Fatalf("replace: %d transactions, or the change replaced was changed", len(txs))
	}
	// First the new sets, filled, beside the stranger's; then its chains
	// and sets deleted, and the new chains made.
	if len(txs[0].Chains) != 0 || len(txs[0].Sets) != len(desired.Sets) || slices.ContainsFunc(txs[0].Sets, func(sc SetChange) bool {
		return sc.Action != ActionCreate || stranger.Set(sc.Name) != nil
	}) {
		t.Errorf("replace, first transaction: %+v", txs[0].Sets)
	}
	deleted := 0
	for _, sc := range txs[1].Sets {
		if sc.Action != ActionDelete || stranger.Set(sc.Name) == nil {
			t.Errorf("replace, second transaction changes set %s (%s)", sc.Name, sc.Action)
		}
		deleted++
	}
	if deleted != len(stranger.Sets) || txs[1].Retire != "old" || len(txs[1].Chains) != len(stranger.Chains)+len(desired.Chains) {
		t.Errorf("replace, second transaction: %d sets deleted, retire %q, %d chain changes", deleted, txs[1].Retire, len(txs[1].Chains))
	}
}

// TestSyncMatchesSequence: on random tables, the entry point gives what the
// sequence its callers ran before gives: Overlay, Diff, PrepareMoves (and
// the commit's skipping of an empty rest), Undo, and for adopt diff(nil,
// desired) made a replace with the accounts of diff(current, desired).
func TestSyncMatchesSequence(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 3))
	table := func(compiled bool) *Ruleset {
		base, moved := map[uint32][2]uint16{}, map[uint32][2]uint16{}
		for uid := uint32(1000); uid < 1000+uint32(rng.IntN(80)); uid++ {
			switch rng.IntN(6) {
			case 0: // absent
			case 1:
				if !compiled {
					moved[uid] = [2]uint16{uint16(uid), uint16(uid) + uint16(rng.IntN(3))}
				}
				base[uid] = [2]uint16{uint16(uid), uint16(uid)}
			default:
				base[uid] = [2]uint16{uint16(uid), uint16(uid) + uint16(rng.IntN(2))}
			}
		}
		var rs *Ruleset
		if compiled {
			rs = overlayTable(base, nil, nil)
		} else {
			rs = overlayTable(nil, moved, base)
			if rng.IntN(4) == 0 {
				// A stray in another UID's shard, a moved port of a
				// UID that is not moved.
				s := rs.Set(PortsSet(TCP, 0))
				s.Elements = SortElements(append(slices.Clone(s.Elements), Element{UID: 1001 + uint32(rng.IntN(7)), Lo: 9, Hi: 9}))
				mp := rs.Set(MovedPortsSet(TCP))
				mp.Elements = SortElements(append(slices.Clone(mp.Elements), Element{UID: 1000 + uint32(rng.IntN(60)), Lo: 8, Hi: 8}))
			}
		}
		if rng.IntN(2) == 0 {
			// UDP too, sharing TCP's elements (as compiled when every
			// account has both) or, in the kernel's table, not.
			for _, s := range slices.Clone(rs.Sets) {
				u := *s
				u.Name = strings.Replace(s.Name, "tcp", "udp", 1)
				if !compiled {
					u.Elements = slices.Clone(s.Elements)
				}
				rs.Sets = append(rs.Sets, &u)
			}
		}
		rs.Chains = []*Chain{{Name: "output", Hook: HookOutput, Rules: []Rule{{Stmts: []Stmt{Verdict{Kind: Accept}}, Comment: OwnerPrefix + "x"}}}}
		return withRoles(rs)
	}
	current := func() *Ruleset {
		switch rng.IntN(10) {
		case 0:
			return nil
		case 1: // somebody else's
			rs := table(false)
			for _, s := range rs.Sets {
				s.Comment = ""
			}
			rs.Chains[0].Rules[0].Comment = ""
			return rs
		case 2: // another chain
			rs := table(false)
			rs.Chains[0].Rules[0].Comment += " changed"
			return rs
		}
		return table(false)
	}
	same := func(what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: entry point\n%+v\nsequence\n%+v", what, got, want)
		}
	}
	split, laid, stagedN := 0, 0, 0
	for range 500 {
		cur, desired := current(), table(true)
		retire := ""
		if rng.IntN(8) == 0 {
			retire = "old"
		}

		ch := Sync(cur, desired)
		target := overlay(cur, desired)
		plan := diff(cur, target)
		if target != desired {
			laid++
		}
		if staged(plan) {
			// Staged (stage.go): no transaction both writes the
			// content of an interval set it creates and the rules.
			stagedN++
			ch.Plan.Retire = retire
			checkStaged(t, ch)
			continue
		}
		same("target", ch.Target, target)
		same("plan", ch.Plan, plan)

		// A brief plan: the same change, two of its accounts described
		// and the rest counted.
		brief := SyncBrief(cur, desired, 2).Plan
		described := min(2, len(plan.Accounts))
		if len(brief.Accounts) != described || brief.AccountsLeft != len(plan.Accounts)-described {
			t.Fatalf("brief plan: %d accounts and %d left of %d", len(brief.Accounts), brief.AccountsLeft, len(plan.Accounts))
		}
		whole := *brief
		whole.Accounts, whole.AccountsLeft = plan.Accounts, 0
		same("brief plan", &whole, plan)
		_, wantDrift := plan.DriftHead(2)
		if _, got := brief.DriftHead(2); got != wantDrift {
			t.Fatalf("brief plan's drift counts %d lines, the whole plan's %d", got, wantDrift)
		}

		// The commit as cmd/nftpol's does it.
		ch.Plan.Retire, plan.Retire = retire, retire
		var txs []*Plan
		pre, rest := prepareMoves(cur, plan)
		if pre != nil {
			txs = append(txs, pre)
		}
		if rest.Operations() > 0 || rest.TableAction != TableUpdate {
			txs = append(txs, rest)
		}
		same("transactions", ch.Transactions(), txs)
		if pre != nil {
			split++
			same("undo", ch.Undo(0), undo(pre))
		}

		// adopt (ownedPlan).
		adopted := diff(nil, target)
		adopted.TableAction = TableReplace
		adopted.Accounts = diff(cur, target).Accounts
		adopted.Retire = retire
		r := ch.Replace()
		if cur == nil || len(cur.Extra) > 0 {
			same("replace", r.Plan, adopted)
		} else {
			// Staged: the same plan, its sets under names the
			// kernel's table does not use.
			same("replace accounts", r.Plan.Accounts, adopted.Accounts)
			if r.Plan.TableAction != TableReplace || r.Plan.Retire != retire || len(r.Plan.Sets) != len(adopted.Sets) {
				t.Fatalf("replace: %+v", r.Plan)
			}
			checkStaged(t, r)
		}

		// restore and status: the recorded ruleset, exactly.
		recorded := table(false)
		exact, want := SyncExact(cur, recorded), diff(cur, recorded)
		if staged(want) {
			same("exact accounts", exact.Plan.Accounts, want.Accounts)
			checkStaged(t, exact)
		} else {
			same("exact", exact.Plan, want)
		}
	}
	if split < 50 || laid < 200 {
		t.Errorf("%d of the random changes laid the compiled ruleset over the kernel's, %d were split: too few to test", laid, split)
	}
	if stagedN < 20 {
		t.Errorf("only %d of the random changes were staged: too few to test", stagedN)
	}
	t.Logf("%d laid over, %d split, %d staged", laid, split, stagedN)
}

// staged reports whether the plan creates, rebuilds or replaces sets: what
// stage.go stages.
func staged(p *Plan) bool {
	return p.TableAction == TableCreate || p.TableAction == TableReplace || slices.ContainsFunc(p.Sets, func(sc SetChange) bool {
		return sc.Action != ActionUpdate
	})
}

// checkStaged checks that no transaction of ch both changes rules and fills
// an interval set that the transaction creates, that a first install makes
// its chains only after its sets, and that the transactions name only sets
// that exist by then.
func checkStaged(t *testing.T, ch *Change) {
	t.Helper()
	txs := ch.Transactions()
	for i, tx := range txs {
		rulesChange := tx.TableAction == TableReplace && len(tx.Chains) > 0
		for _, cc := range tx.Chains {
			rulesChange = rulesChange || cc.Action != ActionDelete
		}
		for _, sc := range tx.Sets {
			if rulesChange && (sc.Action == ActionCreate || sc.Action == ActionReplace) && sc.Set.Interval && len(sc.Add) > 0 {
				if ch.Current == nil || len(ch.Current.Extra) == 0 {
					t.Fatalf("transaction %d of %d creates and fills interval set %s and changes rules:\n%+v", i+1, len(txs), sc.Name, tx)
				}
			}
		}
		if tx.TableAction == TableCreate && len(tx.Chains) > 0 {
			t.Fatalf("a first install creates its chains with its sets")
		}
	}
	if got := txs[len(txs)-1].Desired; got != nil && got != ch.Target && ch.Plan.Desired != ch.Target {
		t.Errorf("the last transaction leads to another ruleset than Target")
	}
	for _, s := range ch.Target.Sets {
		if strings.HasSuffix(s.Name, altSuffix) && RoleOf(s) != RoleOf(&Set{Name: altName(s.Name), Key: s.Key, Dynamic: s.Dynamic}) {
			t.Errorf("set %s has another role than %s", s.Name, altName(s.Name))
		}
	}
}
