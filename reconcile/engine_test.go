package reconcile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
	"github.com/nftpol/nftpol/state"
)

// accounts is a policy of n accounts, uid 2000+i with the port 40010+i over
// TCP and UDP; widen gives account i ten ports instead.
func accounts(n int, widen ...int) *policies.Policy {
	p := &policies.Policy{Table: "nftpol", Zone: policies.PortRange{Lo: 40010, Hi: 49999}, MinUID: 1000,
		Loopback: policies.LoopbackAllow, Action: policies.Reject}
	for i := range n {
		r := policies.PortRange{Lo: uint16(40010 + i), Hi: uint16(40010 + i)}
		for _, w := range widen {
			if w == i {
				r = policies.PortRange{Lo: uint16(45000 + 10*i), Hi: uint16(45009 + 10*i)}
			}
		}
		p.Accounts = append(p.Accounts, &policies.Account{Name: fmt.Sprintf("acct%d", i), UID: uint32(2000 + i),
			Ports: []policies.PortRange{r}, Protocols: []policies.Protocol{policies.TCP, policies.UDP}})
	}
	return p
}

func compile(t *testing.T, p *policies.Policy) *rules.Ruleset {
	t.Helper()
	rs, err := compiler.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// rig is an engine on a fake kernel and a state directory of its own.
type rig struct {
	t    *testing.T
	k    *fakeKernel
	dir  string
	warn bytes.Buffer
}

func newRig(t *testing.T) *rig {
	return &rig{t: t, k: newFake(), dir: filepath.Join(t.TempDir(), "state")}
}

// engine is a new engine, as each nftpol command makes one.
func (r *rig) engine() *Engine {
	return New(Config{StateDir: r.dir, Version: "test", LockTimeout: time.Second, Open: r.k.open, Warn: &r.warn})
}

// apply applies p as `nftpol apply` does and records the state.
func (r *rig) apply(p *policies.Policy, opt ApplyOptions) (*Result, error) {
	r.t.Helper()
	e := r.engine()
	defer e.Close()
	e.Prefetch()
	a, err := e.Apply(context.Background(), compile(r.t, p), DigestInBackground(p), opt)
	if err != nil {
		return nil, err
	}
	defer a.Close()
	return &a.Result, a.Record()
}

func (r *rig) mustApply(p *policies.Policy) *Result {
	r.t.Helper()
	res, err := r.apply(p, ApplyOptions{})
	if err != nil {
		r.t.Fatal(err)
	}
	return res
}

// table is what the fake kernel holds, rendered.
func (r *rig) table() string {
	t, _ := r.k.Read("nftpol")
	if t == nil {
		return "(none)"
	}
	return rules.RenderString(t)
}

func (r *rig) stateBytes() []byte {
	b, err := os.ReadFile(filepath.Join(r.dir, "state"))
	if err != nil {
		r.t.Fatal(err)
	}
	return b
}

// applyRecorded applies desired (compiled from p) with e and records the
// state, as an agent's kept engine does.
func applyRecorded(t *testing.T, e *Engine, desired *rules.Ruleset, p *policies.Policy, opt ApplyOptions) *Result {
	t.Helper()
	a, err := e.Apply(context.Background(), desired, DigestInBackground(p), opt)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.Record(); err != nil {
		t.Fatal(err)
	}
	return &a.Result
}

// planEmpty checks that a plan of p finds nothing to do, and says where it
// read the kernel from.
func (r *rig) planEmpty(p *policies.Policy) Source {
	r.t.Helper()
	e := r.engine()
	defer e.Close()
	res, err := e.Plan(context.Background(), compile(r.t, p), false)
	if err != nil {
		r.t.Fatal(err)
	}
	if !res.Plan.Empty() {
		var b strings.Builder
		res.Plan.WriteText(&b)
		r.t.Fatalf("plan after apply is not empty:\n%s", b.String())
	}
	return res.Source
}

// TestApplyInstallsWhatThePolicySays: a first apply creates the table in
// one transaction, records it, and a plan then trusts the state.
func TestApplyInstallsWhatThePolicySays(t *testing.T) {
	r := newRig(t)
	p := accounts(3)
	res := r.mustApply(p)
	// The table and its filled sets first, the chains that read them
	// second (rules/stage.go).
	if res.Plan.TableAction != rules.TableCreate || len(r.k.commits) != 2 || len(r.k.commits[0].Chains) != 0 || len(r.k.commits[1].Sets) != 0 {
		t.Fatalf("first apply: table %s in %d transactions", res.Plan.TableAction, len(r.k.commits))
	}
	if got, want := r.table(), rules.RenderString(compile(t, p)); got != want {
		t.Errorf("the kernel holds\n%s\nwant\n%s", got, want)
	}
	st, err := state.Load(r.dir)
	if err != nil {
		t.Fatal(err)
	}
	if st.Kernel == nil || st.Kernel.Generation != r.k.gen || st.PolicyDigest != p.Digest() {
		t.Errorf("recorded kernel %+v (the fake is at %d), policy %s", st.Kernel, r.k.gen, st.PolicyDigest)
	}
	if src := r.planEmpty(p); src != FromState {
		t.Errorf("plan right after apply read the kernel from %q, want the state", src)
	}
	// Somebody else commits: the state no longer vouches for the kernel.
	r.k.commitBy()
	if src := r.planEmpty(p); src != FromKernel {
		t.Errorf("plan after a foreign commit read the kernel from %q, want a full read", src)
	}
}

// TestMoveCommitsInTwoTransactions: a changed account is moved; its new
// ports go first in a transaction of their own, which changes no verdict,
// then the rest.
func TestMoveCommitsInTwoTransactions(t *testing.T) {
	r := newRig(t)
	r.mustApply(accounts(5))
	before := len(r.k.commits)
	res := r.mustApply(accounts(5, 2))
	pre := r.k.commits[before:]
	if len(pre) != 2 {
		t.Fatalf("a move took %d transactions, want 2", len(pre))
	}
	for _, sc := range pre[0].Sets {
		if !strings.HasSuffix(sc.Name, "_moved_ports") || len(sc.Delete) > 0 || sc.Action != rules.ActionUpdate {
			t.Errorf("the first transaction changes set %s (%s, -%d +%d): want only additions to the moved ports", sc.Name, sc.Action, len(sc.Delete), len(sc.Add))
		}
	}
	if len(pre[0].Chains) > 0 || len(pre[0].Sets) == 0 {
		t.Errorf("the first transaction: %d chain changes, %d set changes", len(pre[0].Chains), len(pre[0].Sets))
	}
	if len(res.Plan.Accounts) != 1 || res.Plan.Accounts[0].UID != 2002 {
		t.Errorf("plan accounts: %+v", res.Plan.Accounts)
	}
	if res.Sent.Messages != pre[0].Operations()+pre[1].Operations() {
		t.Errorf("sent %d messages, the two transactions have %d operations", res.Sent.Messages, pre[0].Operations()+pre[1].Operations())
	}
	if moved := r.k.tables["nftpol"].Set(rules.MovedSet(rules.TCP)); moved == nil || len(moved.Elements) != 1 || moved.Elements[0].UID != 2002 {
		t.Errorf("tcp_moved holds %+v, want uid 2002", moved)
	}
	r.planEmpty(accounts(5, 2))
}

// TestStateIsSealedBeforeTheCommit: an apply finishes its state (header
// and sync) before the kernel commits, with the identity the commit leaves,
// so recording it after the commit only renames it into place: the state's
// time precedes the last batch, and its identity is the kernel's after it,
// for a table created (two transactions), a one-account change (one), a
// move (two) and a plan made again after somebody else committed.
func TestStateIsSealedBeforeTheCommit(t *testing.T) {
	r := newRig(t)
	var last time.Time
	var meddle func(f *fakeKernel)
	r.k.beforeApply = func(f *fakeKernel) {
		if meddle != nil {
			meddle(f)
		}
		last = time.Now()
	}
	for _, c := range []struct {
		name   string
		p      *policies.Policy
		meddle func(f *fakeKernel)
	}{
		{"create", accounts(5), nil},
		{"one account", accounts(6), nil},
		{"move", accounts(6, 2), nil},
		{"planned again", accounts(7), func(f *fakeKernel) {
			f.commitBy()
			meddle = nil
		}},
	} {
		meddle = c.meddle
		from := len(r.k.commits)
		res := r.mustApply(c.p)
		st, err := state.Load(r.dir)
		if err != nil {
			t.Fatal(err)
		}
		id, _ := r.k.Identity()
		if st.Kernel == nil || *st.Kernel != id || res.Transactions != len(r.k.commits)-from {
			t.Errorf("%s: recorded identity %+v, the kernel's is %+v (%d transactions)", c.name, st.Kernel, id, res.Transactions)
		}
		if !st.AppliedAt.Before(last) {
			t.Errorf("%s: the state was finished at %v, after the last batch began (%v)", c.name, st.AppliedAt, last)
		}
	}
	if r.planEmpty(accounts(7)) != FromState {
		t.Error("the sealed state does not vouch for the kernel")
	}
}

// refusedApply installs accounts(5), then applies next with the fake
// refusing the Apply calls refuse picks, and checks that the apply fails and
// leaves the kernel and the state as they were. It returns the error.
func refusedApply(t *testing.T, next *policies.Policy, refuse func(call int) bool) error {
	t.Helper()
	r := newRig(t)
	r.mustApply(accounts(5))
	kernelBefore, stateBefore, gen := r.table(), r.stateBytes(), r.k.gen
	r.k.calls, r.k.refuse = 0, refuse
	_, err := r.apply(next, ApplyOptions{})
	if err == nil {
		t.Fatal("the apply succeeded though the kernel refused")
	}
	if got := r.table(); got != kernelBefore {
		t.Errorf("a refused apply changed the kernel:\nbefore:\n%s\nafter:\n%s", kernelBefore, got)
	}
	if !bytes.Equal(r.stateBytes(), stateBefore) {
		t.Error("a refused apply changed the state")
	}
	if r.k.gen == gen && r.k.calls > 1 {
		t.Errorf("%d transactions attempted, none committed: the generation did not move", r.k.calls)
	}
	leftovers, _ := filepath.Glob(filepath.Join(r.dir, ".*tmp*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
	r.k.refuse = nil
	r.mustApply(next)
	r.planEmpty(next)
	return err
}

// TestRefusedBatchChangesNothing: the kernel refuses the one transaction of
// a change: nothing changes, in the kernel or the state.
func TestRefusedBatchChangesNothing(t *testing.T) {
	err := refusedApply(t, accounts(7), func(int) bool { return true })
	if !strings.Contains(err.Error(), "refused batch 1") {
		t.Errorf("error: %v", err)
	}
}

// TestRefusedMoveIsTakenBack: the kernel takes the moved ports of a move,
// then refuses the rest: the moved ports are taken back, so the kernel is
// as it was.
func TestRefusedMoveIsTakenBack(t *testing.T) {
	err := refusedApply(t, accounts(5, 2), func(call int) bool { return call == 2 })
	if strings.Contains(err.Error(), "taking back") {
		t.Errorf("the undo is reported as failed: %v", err)
	}
}

// TestFailedUndoIsReported: when the kernel refuses the rest of a move and
// then the undo too, the error says both, and what is left changes no
// verdict; the next apply repairs it.
func TestFailedUndoIsReported(t *testing.T) {
	r := newRig(t)
	r.mustApply(accounts(5))
	r.k.calls, r.k.refuse = 0, func(call int) bool { return call >= 2 }
	_, err := r.apply(accounts(5, 2), ApplyOptions{})
	if err == nil || !strings.Contains(err.Error(), "taking back the moved ports sent before it failed too") {
		t.Fatalf("error: %v", err)
	}
	if moved := r.k.tables["nftpol"].Set(rules.MovedSet(rules.TCP)); len(moved.Elements) != 0 {
		t.Errorf("a refused move moved %+v", moved.Elements)
	}
	r.k.refuse = nil
	r.mustApply(accounts(5, 2))
	r.planEmpty(accounts(5, 2))
}

// TestGenerationChangeIsPlannedAgain: somebody commits between our read and
// our write; the kernel refuses the stale batch, and the engine reads the
// kernel in full and plans again.
func TestGenerationChangeIsPlannedAgain(t *testing.T) {
	r := newRig(t)
	r.mustApply(accounts(3))
	// Somebody deletes an element by hand between our read and our write.
	once := true
	r.k.beforeApply = func(f *fakeKernel) {
		if once {
			once = false
			s := f.tables["nftpol"].Set(rules.OpenSet(rules.TCP))
			s.Elements = s.Elements[1:]
			f.commitBy()
		}
	}
	res := r.mustApply(accounts(4))
	if !strings.Contains(r.warn.String(), "the ruleset changed while planning (attempt 1); planning again") {
		t.Errorf("warnings: %q", r.warn.String())
	}
	if res.Source != FromKernel {
		t.Errorf("the retry planned from %q, want a full read", res.Source)
	}
	r.planEmpty(accounts(4)) // the hand-made drift is repaired too

	// Somebody commits before every batch: the engine gives up after
	// maxAttempts.
	r.k.beforeApply = func(f *fakeKernel) { f.commitBy() }
	r.warn.Reset()
	if _, err := r.apply(accounts(5), ApplyOptions{}); !errors.Is(err, kernel.ErrGenerationChanged) {
		t.Fatalf("apply against a kernel that always changes: %v", err)
	}
	if n := strings.Count(r.warn.String(), "planning again"); n != maxAttempts-1 {
		t.Errorf("planned again %d times, want %d", n, maxAttempts-1)
	}
}

// TestRemovalGuard: an apply that would remove more than half of more than
// ten installed accounts is refused, naming them, and the kernel stays;
// AllowRemovals lets it through.
func TestRemovalGuard(t *testing.T) {
	r := newRig(t)
	r.mustApply(accounts(20))
	before := r.table()
	_, err := r.apply(accounts(9), ApplyOptions{})
	if err == nil || !strings.Contains(err.Error(), "refusing to remove 11 of the 20 installed accounts") ||
		!strings.Contains(err.Error(), "acct19 (uid 2019)") || !strings.Contains(err.Error(), "apply --allow-removals") {
		t.Fatalf("error: %v", err)
	}
	if r.table() != before {
		t.Error("a refused removal changed the kernel")
	}
	if _, err := r.apply(accounts(10), ApplyOptions{}); err != nil {
		t.Errorf("removing exactly half: %v", err)
	}
	if _, err := r.apply(accounts(0), ApplyOptions{AllowRemovals: true}); err != nil {
		t.Errorf("with AllowRemovals: %v", err)
	}
	r.planEmpty(accounts(0))
}

func TestRemovalGuardCounts(t *testing.T) {
	mk := func(n int) *rules.Ruleset {
		s := &rules.Set{Name: "tcp_ports", Key: rules.KeyUIDPort, Interval: true}
		for i := 0; i < n; i++ {
			s.Elements = append(s.Elements, rules.Element{UID: uint32(2000 + i), Lo: uint16(40010 + i), Hi: uint16(40010 + i), Comment: fmt.Sprint("s", i)})
		}
		return &rules.Ruleset{Table: "nftpol", Sets: []*rules.Set{s}}
	}
	cases := []struct {
		installed, kept int
		refused         bool
	}{
		{10, 0, false}, // 10 or fewer installed: no guard
		{11, 6, false}, // 5 of 11 removed
		{11, 5, true},  // 6 of 11 removed: more than half
		{12, 6, false}, // exactly half
		{12, 5, true},
		{100, 0, true},
	}
	for _, c := range cases {
		cur, want := mk(c.installed), mk(c.kept)
		err := removalGuard(rules.SyncExact(cur, want).Plan, cur)
		if (err != nil) != c.refused {
			t.Errorf("%d installed, %d kept: err = %v, want refused=%v", c.installed, c.kept, err, c.refused)
		}
	}
}

// TestForeignTable: a same-named table nftpol did not create is refused by
// apply, restore and remove, and replaced whole with Adopt.
func TestForeignTable(t *testing.T) {
	r := newRig(t)
	foreign := &rules.Ruleset{Table: "nftpol", Sets: []*rules.Set{{Name: "theirs", Key: rules.KeyUID}}}
	r.k.tables["nftpol"] = foreign
	if _, err := r.apply(accounts(3), ApplyOptions{}); err == nil || !strings.Contains(err.Error(), "was not created by nftpol; refusing to take it over") {
		t.Fatalf("apply over a foreign table: %v", err)
	}
	if _, err := r.engine().Remove(context.Background(), false, func() (string, error) { return "nftpol", nil }); err == nil ||
		!strings.Contains(err.Error(), "refusing to delete it") {
		t.Errorf("remove of a foreign table: %v", err)
	}
	res, err := r.apply(accounts(3), ApplyOptions{Adopt: true})
	if err != nil {
		t.Fatal(err)
	}
	if res.Plan.TableAction != rules.TableReplace || len(res.Plan.Accounts) != 3 {
		t.Errorf("adopt: table %s, %d accounts", res.Plan.TableAction, len(res.Plan.Accounts))
	}
	r.planEmpty(accounts(3))
}

// TestRestoreAndStatus: restore puts back what the last apply recorded
// after the table was deleted, and status reports the drift before.
func TestRestoreAndStatus(t *testing.T) {
	r := newRig(t)
	r.mustApply(accounts(4, 1))
	r.mustApply(accounts(4, 1, 3)) // a move: the recorded layout has moved accounts
	want := r.table()
	s := r.k.tables["nftpol"].Set(rules.PortsSet(rules.UDP, rules.Shard(2000)))
	s.Elements = nil // acct0 loses its UDP port by hand
	r.k.commitBy()
	rep, err := r.engine().Status(10, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.InSync == nil || *rep.InSync || len(rep.Drift) != 1 || !strings.Contains(rep.Drift[0], "account acct0 (uid 2000): ") || !strings.Contains(rep.Drift[0], "udp kernel none, recorded 40010") ||
		rep.Accounts != 4 || !rep.Owned {
		t.Errorf("status of a drifted table: %+v", rep)
	}
	delete(r.k.tables, "nftpol")
	res, st, err := r.engine().Restore(context.Background(), RestoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Plan.TableAction != rules.TableCreate || st.Table != "nftpol" || r.table() != want {
		t.Errorf("restore: %s; the kernel holds\n%s\nwant\n%s", res.Plan.TableAction, r.table(), want)
	}
	rep, err = r.engine().Status(10, nil)
	if err != nil || !*rep.InSync || len(rep.Drift) != 0 {
		t.Errorf("status after restore: %+v, %v", rep, err)
	}
	removed, err := r.engine().Remove(context.Background(), true, nil)
	if err != nil || !removed.Deleted || removed.Accounts != 4 || !removed.Purged {
		t.Errorf("remove --purge: %+v, %v", removed, err)
	}
	if _, err := state.Load(r.dir); !errors.Is(err, state.ErrNoState) {
		t.Errorf("state after purge: %v", err)
	}
}

// TestRebuildIsStaged: past rules.MaxMoved moved accounts the shards are
// rebuilt: under their other names, created and filled in a first
// transaction no rule reads, the rules switched to them in a second. A
// refused second transaction takes the staged sets away again; the next
// plan is empty after a successful one, and the one after rebuilds back
// under the first names.
func TestRebuildIsStaged(t *testing.T) {
	const n = rules.MaxMoved + 40
	var all []int
	for i := range n {
		all = append(all, i)
	}
	r := newRig(t)
	r.mustApply(accounts(n))
	before, stateBefore := r.table(), r.stateBytes()
	r.k.calls, r.k.refuse = 0, func(call int) bool { return call == 2 }
	if _, err := r.apply(accounts(n, all...), ApplyOptions{}); err == nil {
		t.Fatal("the rebuild succeeded though the kernel refused its second transaction")
	}
	if r.table() != before || !bytes.Equal(r.stateBytes(), stateBefore) {
		t.Fatal("a refused rebuild left the kernel or the state changed")
	}
	r.k.refuse = nil
	commits := len(r.k.commits)
	r.mustApply(accounts(n, all...))
	txs := r.k.commits[commits:]
	if len(txs) != 2 {
		t.Fatalf("a rebuild took %d transactions, want 2", len(txs))
	}
	if len(txs[0].Chains) != 0 || len(txs[0].Sets) == 0 {
		t.Errorf("first transaction: %d chain changes, %d set changes", len(txs[0].Chains), len(txs[0].Sets))
	}
	for _, sc := range txs[0].Sets {
		if sc.Action != rules.ActionCreate || !strings.HasSuffix(sc.Name, "_b") {
			t.Errorf("first transaction: set %s %s, want only staged sets created", sc.Name, sc.Action)
		}
	}
	deleted := 0
	for _, sc := range txs[1].Sets {
		if sc.Action == rules.ActionDelete {
			deleted++
		}
	}
	if deleted == 0 || len(txs[1].Chains) == 0 {
		t.Errorf("second transaction: %d sets deleted, %d chains changed", deleted, len(txs[1].Chains))
	}
	kt := r.k.tables["nftpol"]
	if s := kt.Set(rules.PortsSet(rules.TCP, 0) + "_b"); s == nil || kt.Set(rules.PortsSet(rules.TCP, 0)) != nil {
		t.Errorf("after the rebuild the kernel holds %v", kt.Sets)
	}
	if moved := kt.Set(rules.MovedSet(rules.TCP)); len(moved.Elements) != 0 {
		t.Errorf("the rebuild left %d moved accounts", len(moved.Elements))
	}
	r.planEmpty(accounts(n, all...))
	// Back: the other way round, under the first names again.
	r.mustApply(accounts(n))
	r.planEmpty(accounts(n))
	if kt := r.k.tables["nftpol"]; kt.Set(rules.PortsSet(rules.TCP, 0)) == nil || kt.Set(rules.PortsSet(rules.TCP, 0)+"_b") != nil {
		t.Errorf("after rebuilding back the kernel holds %v", kt.Sets)
	}
	// Restore into a fresh kernel installs what the state says.
	r.k.tables = map[string]*rules.Ruleset{}
	if _, _, err := r.engine().Restore(context.Background(), RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	r.planEmpty(accounts(n))
}

// TestStatusWithoutGuard: a state that records no bind guard, on a host
// where the guard could not even be looked for (no bpffs), reports none.
func TestStatusWithoutGuard(t *testing.T) {
	r := newRig(t)
	r.mustApply(accounts(2))
	e := New(Config{StateDir: r.dir, Version: "test", LockTimeout: time.Second, Open: r.k.open, BPFDir: t.TempDir()})
	rep, err := e.Status(10, nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep.BindGuard != nil {
		t.Errorf("status reports a bind guard nobody asked for: %+v", rep.BindGuard)
	}
}

// TestKeptEnginePlansFromWhatItRecorded: an engine that outlives one command
// (the agent's) plans each apply from the state it recorded last, never
// reading the state file again, and sees a change by somebody else.
func TestKeptEnginePlansFromWhatItRecorded(t *testing.T) {
	r := newRig(t)
	e := New(Config{StateDir: r.dir, Version: "test", LockTimeout: time.Second, Open: r.k.open, Warn: &r.warn, Keep: true})
	defer e.Close()
	apply := func(p *policies.Policy, opt ApplyOptions) *Result {
		t.Helper()
		return applyRecorded(t, e, compile(t, p), p, opt)
	}
	apply(accounts(3), ApplyOptions{})
	// The state file goes: the kept engine does not need it.
	if err := os.Remove(filepath.Join(r.dir, "state")); err != nil {
		t.Fatal(err)
	}
	res := apply(accounts(3, 1), ApplyOptions{})
	if res.Source != FromState || res.Plan.Empty() {
		t.Fatalf("second apply: source %s, empty %v; want the recorded state, a change", res.Source, res.Plan.Empty())
	}
	if got := r.planEmpty(accounts(3, 1)); got != FromState {
		t.Errorf("a fresh engine plans from %s after the kept engine's apply; want state", got)
	}
	r.k.commitBy() // somebody else commits
	if res := apply(accounts(3, 1), ApplyOptions{}); res.Source != FromKernel {
		t.Errorf("after a foreign commit the kept engine planned from %s, want a full read", res.Source)
	}
	// Rebuild replaces the table whole, and the state follows what it
	// installed.
	res = apply(accounts(3, 1), ApplyOptions{Rebuild: true})
	if res.Plan.TableAction != rules.TableReplace {
		t.Errorf("rebuild: table action %v, want a replacement", res.Plan.TableAction)
	}
	if got := r.planEmpty(accounts(3, 1)); got != FromState {
		t.Errorf("after the rebuild a plan reads from %s, want state", got)
	}
}

// TestRebuildHandsOver: a rebuild (the agent owning a table the CLI made)
// creates the table anew through a handover table that enforces the new
// ruleset whole meanwhile: five transactions, the handover table's sets and
// chains, the table replaced with its sets, its chains, the handover table
// deleted. Refused before the table was replaced, the handover table goes
// and the table is as it was; refused after, the handover table stays (it
// enforces the new policy whole) and the next apply completes the table.
func TestRebuildHandsOver(t *testing.T) {
	h := rules.HandoverTable("nftpol")
	r := newRig(t)
	r.mustApply(accounts(3))
	before := len(r.k.commits)
	res, err := r.apply(accounts(3, 1), ApplyOptions{Rebuild: true})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range r.k.commits[before:] {
		got = append(got, fmt.Sprintf("%s %v sets=%d chains=%d", p.Table, p.TableAction, len(p.Sets), len(p.Chains)))
	}
	sets, chains := len(res.Plan.Sets), len(res.Plan.Chains)
	want := []string{
		fmt.Sprintf("%s %v sets=%d chains=0", h, rules.TableCreate, sets),
		fmt.Sprintf("%s %v sets=0 chains=%d", h, rules.TableUpdate, chains),
		fmt.Sprintf("nftpol %v sets=%d chains=0", rules.TableReplace, sets),
		fmt.Sprintf("nftpol %v sets=0 chains=%d", rules.TableUpdate, chains),
		fmt.Sprintf("%s %v sets=0 chains=0", h, rules.TableDelete),
	}
	if !slices.Equal(got, want) || res.Transactions != 5 {
		t.Errorf("rebuild committed (%d transactions)\n%s\nwant\n%s", res.Transactions, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, ok := r.k.tables[h]; ok || len(r.k.tables) != 1 {
		t.Errorf("tables after the handover: %v, want nftpol alone", slices.Collect(maps.Keys(r.k.tables)))
	}
	r.planEmpty(accounts(3, 1))

	for _, refused := range []int{2, 3} {
		kernelBefore := r.table()
		r.k.calls, r.k.refuse = 0, func(call int) bool { return call == refused }
		if _, err := r.apply(accounts(4), ApplyOptions{Rebuild: true}); err == nil {
			t.Fatalf("transaction %d refused: the rebuild succeeded", refused)
		}
		r.k.refuse = nil
		if got := r.table(); got != kernelBefore {
			t.Errorf("transaction %d refused: the table changed:\n%s", refused, got)
		}
		if _, ok := r.k.tables[h]; ok {
			t.Errorf("transaction %d refused: the handover table is left", refused)
		}
	}

	r.k.calls, r.k.refuse = 0, func(call int) bool { return call == 4 }
	if _, err := r.apply(accounts(4), ApplyOptions{Rebuild: true}); err == nil {
		t.Fatal("transaction 4 refused: the rebuild succeeded")
	}
	r.k.refuse = nil
	if hr := r.k.tables[h]; hr == nil || len(hr.Chains) == 0 {
		t.Fatalf("transaction 4 refused: the handover table is %v, want it enforcing", hr)
	}
	if tr := r.k.tables["nftpol"]; tr == nil || len(tr.Chains) != 0 {
		t.Fatalf("transaction 4 refused: the table is %v, want its sets alone", tr)
	}
	r.mustApply(accounts(4))
	r.planEmpty(accounts(4))
}

// TestOwnerAdoptsByHandover: an engine whose kernel creates tables owned
// (the agent in owner mode) adopts a same-named table someone else made by
// creating it anew through the handover table: its content replaced in
// place would keep the other's flags, and the agent would own nothing.
func TestOwnerAdoptsByHandover(t *testing.T) {
	r := newRig(t)
	r.k.tables["nftpol"] = &rules.Ruleset{Table: "nftpol", Sets: []*rules.Set{{Name: "theirs", Key: rules.KeyUID}}}
	e := New(Config{StateDir: r.dir, Version: "test", LockTimeout: time.Second, Open: r.k.open, Warn: &r.warn, Owner: true})
	defer e.Close()
	before := len(r.k.commits)
	a, err := e.Apply(context.Background(), compile(t, accounts(3)), DigestInBackground(accounts(3)), ApplyOptions{Adopt: true})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Record()
	a.Close()
	if err != nil {
		t.Fatal(err)
	}
	var tables []string
	for _, p := range r.k.commits[before:] {
		tables = append(tables, fmt.Sprint(p.Table, " ", p.TableAction))
	}
	h := rules.HandoverTable("nftpol")
	var want []string
	for _, w := range []struct {
		table  string
		action rules.TableAction
	}{{h, rules.TableCreate}, {h, rules.TableUpdate}, {"nftpol", rules.TableReplace}, {"nftpol", rules.TableUpdate}, {h, rules.TableDelete}} {
		want = append(want, fmt.Sprint(w.table, " ", w.action))
	}
	if !slices.Equal(tables, want) {
		t.Errorf("adopting as the owner committed %v, want %v", tables, want)
	}
	if len(r.k.tables) != 1 || r.k.tables["nftpol"].Set("theirs") != nil {
		t.Errorf("tables after the adoption: %v", slices.Collect(maps.Keys(r.k.tables)))
	}
	r.planEmpty(accounts(3))
}

// TestHealAfterFlushIsBrief: an agent healing a table that was deleted
// asks for a brief plan, which describes four accounts and counts the rest
// (its log line shows no more), and its state reuses the element text the
// recorded state holds instead of formatting every set again: the section
// files of a large policy are left as they are, not written anew.
func TestHealAfterFlushIsBrief(t *testing.T) {
	const n = 8*2048 + 100 // every shard past the inline size: section files
	p := &policies.Policy{Table: "nftpol", Zone: policies.PortRange{Lo: 10000, Hi: 65000}, MinUID: 1000,
		Loopback: policies.LoopbackAllow, Action: policies.Reject}
	for i := range n {
		p.Accounts = append(p.Accounts, &policies.Account{Name: fmt.Sprintf("acct%d", i), UID: uint32(100000 + i),
			Ports: []policies.PortRange{{Lo: uint16(10000 + i), Hi: uint16(10000 + i)}}, Protocols: []policies.Protocol{policies.TCP, policies.UDP}})
	}
	r := newRig(t)
	e := New(Config{StateDir: r.dir, Version: "test", LockTimeout: time.Second, Open: r.k.open, Warn: &r.warn, Keep: true})
	defer e.Close()
	desired := compile(t, p)
	apply := func(opt ApplyOptions) *Result {
		t.Helper()
		return applyRecorded(t, e, desired, p, opt)
	}
	apply(ApplyOptions{})
	sections := func() map[string]uint64 {
		names, err := filepath.Glob(filepath.Join(r.dir, "elements.*"))
		if err != nil || len(names) == 0 {
			t.Fatalf("section files: %v, %v", names, err)
		}
		out := map[string]uint64{}
		for _, name := range names {
			fi, err := os.Stat(name)
			if err != nil {
				t.Fatal(err)
			}
			out[filepath.Base(name)] = fi.Sys().(*syscall.Stat_t).Ino
		}
		return out
	}
	before := sections()

	if err := r.k.Delete("nftpol"); err != nil { // nft flush ruleset
		t.Fatal(err)
	}
	res := apply(ApplyOptions{AllowRemovals: true, Adopt: true, Brief: true})
	if res.Plan.TableAction != rules.TableCreate {
		t.Fatalf("heal: table %s, want it created", res.Plan.TableAction)
	}
	if len(res.Plan.Accounts) != BriefAccounts || res.Plan.AccountsLeft != n-BriefAccounts {
		t.Errorf("heal plan describes %d accounts and leaves out %d; want %d and %d", len(res.Plan.Accounts), res.Plan.AccountsLeft, BriefAccounts, n-BriefAccounts)
	}
	// The log line is the one a whole plan gives.
	wantLines, wantTotal := rules.Sync(nil, desired).Plan.DriftHead(BriefAccounts)
	if lines, total := res.Plan.DriftHead(BriefAccounts); !slices.Equal(lines, wantLines) || total != wantTotal || total < n {
		t.Errorf("drift head: %q of %d, want %q of %d", lines, total, wantLines, wantTotal)
	}
	if got, want := r.table(), rules.RenderString(desired); got != want {
		t.Error("the healed table is not the policy's")
	}
	if after := sections(); !maps.Equal(after, before) {
		t.Errorf("the heal wrote the section files again: %v, were %v", after, before)
	}
	// What it recorded is whole: a fresh engine plans nothing from it.
	if src := r.planEmpty(p); src != FromState {
		t.Errorf("after the heal a plan reads from %s, want state", src)
	}

	// Without Brief, or without AllowRemovals (the removal guard counts
	// every account), the plan describes every account.
	if err := r.k.Delete("nftpol"); err != nil {
		t.Fatal(err)
	}
	if res := apply(ApplyOptions{Brief: true}); len(res.Plan.Accounts) != n || res.Plan.AccountsLeft != 0 {
		t.Errorf("brief without AllowRemovals: %d accounts described, %d left out; want all %d", len(res.Plan.Accounts), res.Plan.AccountsLeft, n)
	}
}
