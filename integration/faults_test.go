package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/reconcile"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
)

// refusingKernel is the real kernel, except that the Apply calls refuse
// picks (1-based) carry one more operation that the kernel refuses for
// real: the deletion of an element that is not there, after the plan's
// own operations.
type refusingKernel struct {
	*kernel.Kernel
	refuse func(call int) bool
	calls  int
}

func (k *refusingKernel) Apply(p *rules.Plan, generation uint32) (kernel.Stats, error) {
	k.calls++
	if k.refuse(k.calls) && !p.Empty() {
		bad := *p
		open := p.Desired.Set(rules.OpenSet(rules.TCP))
		bad.Sets = append(slices.Clone(p.Sets), rules.SetChange{Name: open.Name, Action: rules.ActionUpdate, Set: open,
			Delete: []rules.Element{{Lo: 1, Hi: 1}}})
		bad.TableAction = rules.TableUpdate
		return k.Kernel.Apply(&bad, generation)
	}
	return k.Kernel.Apply(p, generation)
}

// refusedApply applies contractPolicy in a new namespace, then next through
// the engine with the kernel refusing the Apply calls refuse picks, and
// checks that the apply fails and leaves the kernel and the state as they
// were. It returns the run (for more) and the error.
func refusedApply(t *testing.T, name, next string, refuse func(call int) bool) (nftpolRun, error) {
	t.Helper()
	bin := buildBinary(t, "cmd/nftpol")
	ns := newNetns(t, name)
	state := t.TempDir()
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: ns, stateDir: state}
	n.apply(t)
	before := nftStateless(t, ns)
	stateBefore, err := os.ReadFile(filepath.Join(state, "state"))
	if err != nil {
		t.Fatal(err)
	}

	n.setPolicy(t, next)
	p, err := policies.Load(n.config)
	if err != nil {
		t.Fatal(err)
	}
	desired, err := compiler.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	eng := reconcile.New(reconcile.Config{StateDir: state, Version: "test", LockTimeout: 10 * time.Second,
		Open: func() (reconcile.Kernel, error) {
			k, err := kernel.Open(kernel.WithNetNS(ns))
			if err != nil {
				return nil, err
			}
			return &refusingKernel{Kernel: k, refuse: refuse}, nil
		}})
	defer eng.Close()
	applied, err := eng.Apply(context.Background(), desired, reconcile.DigestInBackground(p), reconcile.ApplyOptions{})
	if err == nil {
		applied.Close()
		t.Fatal("the apply succeeded though the kernel refused")
	}
	if got := nftStateless(t, ns); got != before {
		t.Errorf("a refused apply changed the kernel:\nbefore:\n%s\nafter:\n%s", before, got)
	}
	if got, _ := os.ReadFile(filepath.Join(state, "state")); string(got) != string(stateBefore) {
		t.Error("a refused apply updated the state")
	}
	return n, err
}

// TestRefusedBatchChangesNothing: the kernel refuses the last operation of
// a batch whose other operations are valid. Nothing of the batch is
// applied, the error names the refused operation, the state is untouched.
func TestRefusedBatchChangesNothing(t *testing.T) {
	requireRoot(t)
	// A real change: elements to add.
	n, err := refusedApply(t, "fault", contractPolicyGamma, func(int) bool { return true })
	for _, want := range []string{"the kernel refused operation", "delete element 1 in set tcp_open", "nothing was changed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q:\n%s", want, err)
		}
	}
	// Without the fault the same apply goes through.
	n.apply(t)
	n.planExit(t, 0)
}

// TestRefusedMoveChangesNothing: a change that moves an account commits in
// two transactions (rules.PrepareMoves); when the kernel refuses the second,
// the first is taken back, and the kernel and the state are as before.
func TestRefusedMoveChangesNothing(t *testing.T) {
	requireRoot(t)
	n, err := refusedApply(t, "fault-move", contractPolicyBetaWider, func(call int) bool { return call == 2 }) // beta moves
	if strings.Contains(err.Error(), "taking back") {
		t.Errorf("the undo is reported as failed: %v", err)
	}
	n.apply(t)
	n.planExit(t, 0)
	if got := run(t, "ip", "netns", "exec", n.netns, "nft", "list", "set", "inet", "nftpol", "tcp_moved"); !strings.Contains(got, "1002") {
		t.Errorf("beta did not move:\n%s", got)
	}
}

// TestGenerationGuard: a plan computed before somebody else committed is
// refused whole by the kernel, and applies once planned again.
func TestGenerationGuard(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t, "gen")
	k, err := kernel.Open(kernel.WithNetNS(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	p := &policies.Policy{Table: "nftpol", Zone: policies.PortRange{Lo: 40010, Hi: 49999}, MinUID: 1000,
		Loopback: policies.LoopbackAllow, Action: policies.Reject,
		Accounts: []*policies.Account{{Name: "a", UID: 1001, Ports: []policies.PortRange{{Lo: 40010, Hi: 40019}}, Protocols: []policies.Protocol{policies.TCP}}}}
	desired, err := compiler.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	gen, err := k.Generation()
	if err != nil {
		t.Fatal(err)
	}
	// The requests share one kept socket: one after the other, with no
	// commit between, each reads its own answer.
	for i := range 3 {
		id, err := k.Identity()
		if err != nil || id.Generation != gen {
			t.Fatalf("identity request %d: generation %d (%v), want %d", i, id.Generation, err, gen)
		}
		if g, err := k.Generation(); err != nil || g != gen {
			t.Fatalf("generation request %d: %d (%v), want %d", i, g, err, gen)
		}
	}
	current, err := k.Read("nftpol")
	if err != nil {
		t.Fatal(err)
	}
	plan := rules.SyncExact(current, desired).Plan

	nftLoad(t, ns, foreignTable) // somebody else commits in between
	if _, err := k.Apply(plan, gen); !errors.Is(err, kernel.ErrGenerationChanged) {
		t.Fatalf("Apply with a stale generation: %v, want ErrGenerationChanged", err)
	}
	if out := nftList(t, ns); strings.Contains(out, "nftpol") {
		t.Fatalf("a refused batch left something:\n%s", out)
	}
	gen2, err := k.Generation()
	if err != nil || gen2 == gen {
		t.Fatalf("generation %d -> %d (%v): it must change with every commit", gen, gen2, err)
	}
	if _, err := k.Apply(plan, gen2); err != nil {
		t.Fatalf("Apply with the current generation: %v", err)
	}
	got, err := k.Read("nftpol")
	if err != nil || !rules.SyncExact(got, desired).Plan.Empty() {
		t.Errorf("after the retry the kernel does not hold the plan (%v)", err)
	}
}

// TestUnchangedKernelIsNotReadAgain: right after an apply the state proves
// the kernel unchanged (same boot, namespace and ruleset generation), so
// plan and apply skip the full read; any commit by anybody, even to another
// table, makes them read the kernel again, and drift is still found.
func TestUnchangedKernelIsNotReadAgain(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	ns := newNetns(t, "fast")
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: ns, stateDir: t.TempDir()}
	n.apply(t)
	read := func(args ...string) string {
		t.Helper()
		p, _ := n.runJSON(t, 0, append(args, "-o", "json")...)
		return p.KernelRead
	}
	if got := read("plan"); got != "state" {
		t.Errorf("plan right after apply read %q, want state", got)
	}
	if got := read("plan", "--full-read"); got != "full" {
		t.Errorf("plan --full-read read %q", got)
	}
	n.setPolicy(t, contractPolicyGamma)
	if got := read("apply"); got != "state" {
		t.Errorf("apply of a change right after apply read %q, want state", got)
	}
	if got := read("plan"); got != "state" {
		t.Errorf("plan after the second apply read %q, want state (the state follows the commit)", got)
	}
	nftLoad(t, ns, foreignTable) // somebody commits, to another table
	if got := read("plan"); got != "full" {
		t.Errorf("plan after a foreign commit read %q, want full", got)
	}
	// Drift made by hand is found, since the hand edit is a commit.
	run(t, "ip", "netns", "exec", ns, "nft", "delete", "element", "inet", "nftpol", "tcp_ports_3", "{ 1003 . 40030-40039 }")
	n.planExit(t, 2)
	n.apply(t)
	n.planExit(t, 0)
}

// TestLargeRemovalRebuildsSet: the kernel deletes from a per-account set
// slowly (a scan per element), so removing a few accounts moves them
// (rules.Overlay) and deletes nothing from it, and removing more than
// rules.MaxMoved rebuilds the per-account sets inside the transaction; the
// result is then exactly what a fresh apply of the smaller policy gives.
func TestLargeRemovalRebuildsSet(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	ns := newNetns(t, "rebuild")
	n := nftpolRun{bin: bin, config: writePolicy(t, manyAccounts(300)), netns: ns, stateDir: t.TempDir()}
	n.apply(t)
	sets := func(p planJSON) map[string]string {
		m := map[string]string{}
		for _, s := range p.Sets {
			m[s.Name] = fmt.Sprintf("%s +%d -%d", s.Action, s.Add, s.Delete)
		}
		return m
	}

	n.setPolicy(t, manyAccounts(285))
	p, _ := n.runJSON(t, 0, "apply", "-o", "json", "--allow-removals")
	base := func(m map[string]string) (changed []string) {
		for name, change := range m {
			if strings.HasPrefix(name, "tcp_ports_") || strings.HasPrefix(name, "udp_ports_") {
				changed = append(changed, name+" "+change)
			}
		}
		slices.Sort(changed)
		return changed
	}
	if got := sets(p); len(base(got)) > 0 || got["tcp_moved"] != "update +15 -0" {
		t.Errorf("removing 15 accounts: set changes %v, want tcp_moved +15 and nothing in tcp_ports_*, udp_ports_*", got)
	}
	n.planExit(t, 0)

	n.setPolicy(t, manyAccounts(25))
	p, _ = n.runJSON(t, 0, "apply", "-o", "json", "--allow-removals")
	// Rebuilt under their other names (rules/stage.go): each shard
	// created as <name>_b, the old one deleted.
	got := base(sets(p))
	for _, proto := range []string{"tcp", "udp"} {
		for k := range rules.Shards {
			name := fmt.Sprintf("%s_ports_%d", proto, k)
			if !slices.Contains(got, name+" delete +0 -0") && !slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, name+" delete ") }) ||
				!slices.ContainsFunc(got, func(s string) bool { return strings.HasPrefix(s, name+"_b create ") }) {
				t.Errorf("removing 275 accounts did not rebuild %s as %s_b: %v", name, name, got)
			}
		}
	}
	n.planExit(t, 0)
	fresh := newNetns(t, "rebuild-ref")
	nftpolRun{bin: bin, config: n.config, netns: fresh, stateDir: t.TempDir()}.apply(t)
	// The accounts are enforced as a fresh apply of the smaller policy
	// enforces them, from sets of the same content under other names.
	read := func(ns string) *rules.Ruleset {
		k, err := kernel.Open(kernel.WithNetNS(ns))
		if err != nil {
			t.Fatal(err)
		}
		defer k.Close()
		rs, err := k.Read("nftpol")
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	rebuilt, ref := read(ns), read(fresh)
	if a, b := rules.Accounts(rebuilt), rules.Accounts(ref); !reflect.DeepEqual(a, b) || len(a[rules.TCP]) != 25 {
		t.Errorf("after the rebuild the accounts are\n%v\nfresh apply:\n%v", a, b)
	}
	if len(rebuilt.Sets) != len(ref.Sets) {
		t.Errorf("after the rebuild %d sets, a fresh apply %d", len(rebuilt.Sets), len(ref.Sets))
	}
	// Accounts added back go into the shards under their new names.
	n.setPolicy(t, manyAccounts(300))
	p, _ = n.runJSON(t, 0, "apply", "-o", "json")
	if got := sets(p); got["tcp_ports_0_b"] != "update +34 -0" || got["tcp_ports_0"] != "" {
		t.Errorf("adding 275 accounts back: %v", got)
	}
	n.planExit(t, 0)
}
