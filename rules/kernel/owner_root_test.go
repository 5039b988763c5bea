//go:build linux

package kernel

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

// requireRootNetns skips a test that needs root when not root (and fails
// it under CI, which runs as root); as root it fails, never skips, when nft
// or ip is missing. It returns a fresh network namespace, deleted when the
// test ends.
func requireRootNetns(t testing.TB) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("this test needs root; CI runs as root")
		}
		t.Skip("needs root")
	}
	for _, tool := range []string{"nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("running as root, this test needs %s: %v", tool, err)
		}
	}
	name := fmt.Sprintf("nftpol-kt-%d-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"))
	if len(name) > 60 {
		name = name[:60]
	}
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	return name
}

// nftIn runs nft in namespace ns (another process, its own socket).
func nftArgsIn(ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func openIn(t *testing.T, ns string, opts ...Option) *Kernel {
	t.Helper()
	k, err := Open(append([]Option{WithNetNS(ns)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

func tableState(t *testing.T, k *Kernel, table string) TableState {
	t.Helper()
	st, err := k.TableOwner(table)
	if err != nil {
		t.Fatalf("TableOwner: %v", err)
	}
	return st
}

// ownedTestRuleset is a small table with one set and one chain.
func ownedTestRuleset(table string) *rules.Ruleset {
	rs := bigRuleset(3)
	rs.Table = table
	rs.Chains = []*rules.Chain{{Name: "output", Hook: rules.HookOutput, Rules: []rules.Rule{
		{Stmts: []rules.Stmt{rules.SkuidSportInSet{Proto: rules.TCP, Set: "tcp_ports"}, rules.Verdict{Kind: rules.Accept}}, Comment: rules.OwnerPrefix + "x"},
	}}}
	return rs
}

// TestTableOwnership runs ownership against the kernel: an owned table
// resists other processes, outlives its owner, is adopted by the next one;
// a table created without flags cannot be adopted but can be replaced.
func TestTableOwnership(t *testing.T) {
	ns := requireRootNetns(t)
	const table = "nftpol"

	probe := openIn(t, ns)
	gen0, err := probe.Generation()
	if err != nil {
		t.Fatal(err)
	}
	ok, err := probe.CanOwn()
	if err != nil {
		t.Fatalf("CanOwn: %v", err)
	}
	if gen, err := probe.Generation(); err != nil || gen != gen0 {
		t.Errorf("CanOwn moved the generation from %d to %d (%v)", gen0, gen, err)
	}
	if !ok {
		var u unix.Utsname
		_ = unix.Uname(&u)
		t.Fatalf("CanOwn: false on kernel %s; this test needs Linux 6.9 or later", unix.ByteSliceToString(u.Release[:]))
	}
	if out, err := nftArgsIn(ns, "list", "tables"); err != nil || strings.TrimSpace(out) != "" {
		t.Fatalf("CanOwn left something behind: %q %v", out, err)
	}

	agent := openIn(t, ns, WithOwnership())
	want := ownedTestRuleset(table)
	if _, err := agent.Apply(rules.SyncExact(nil, want).Plan, 0); err != nil {
		t.Fatalf("creating the owned table: %v", err)
	}
	st := tableState(t, agent, table)
	if !st.Exists || !st.Owned || !st.Persist || !st.Mine || st.PortID == 0 {
		t.Fatalf("after create: %+v", st)
	}
	if st.PID != os.Getpid() {
		t.Errorf("owner pid %d, want this process %d", st.PID, os.Getpid())
	}
	if err := agent.Own(table); err != nil {
		t.Errorf("Own of a table already owned: %v", err)
	}
	// Another Kernel of this process is another socket: not the owner.
	other := openIn(t, ns)
	if st := tableState(t, other, table); !st.Owned || st.Mine || st.PortID != agent.commitConn.PID() || st.PID != os.Getpid() {
		t.Errorf("seen from another Kernel: %+v (owner port %d, pid %d)", st, agent.commitConn.PID(), os.Getpid())
	}

	if out, err := nftArgsIn(ns, "flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v\n%s", err, out)
	}
	if rs, err := other.Read(table); err != nil || rs == nil || !rules.SyncExact(rs, want).Plan.Empty() {
		t.Fatalf("after nft flush ruleset the owned table reads %v (%v)", rs, err)
	}
	if out, err := nftArgsIn(ns, "delete", "table", "inet", table); err == nil || !strings.Contains(out, "Operation not permitted") {
		t.Fatalf("nft delete table of an owned table: %v\n%s", err, out)
	}

	// The one-shot CLI's commit is refused, and says by whom.
	err = other.Delete(table)
	var oe *OwnedByOtherError
	if !errors.As(err, &oe) || !errors.Is(err, ErrOwnedByOther) || !errors.Is(err, unix.EPERM) || oe.PortID != st.PortID {
		t.Fatalf("Delete by a non-owner: %v", err)
	}
	t.Logf("Delete by a non-owner: %v", err)
	if !strings.Contains(err.Error(), "table inet nftpol is owned by another process") || !strings.Contains(err.Error(), fmt.Sprint(st.PortID)) {
		t.Errorf("Delete by a non-owner: %v", err)
	}
	changed := ownedTestRuleset(table)
	changed.Set("tcp_ports").Elements[0].Hi++
	_, err = other.Apply(rules.SyncExact(want, changed).Plan, 0)
	if !errors.As(err, &oe) || !strings.Contains(err.Error(), "owned by another process") {
		t.Errorf("Apply by a non-owner: %v", err)
	}
	if err := other.Own(table); err == nil {
		t.Errorf("Own on a Kernel without ownership succeeded")
	}
	rival := openIn(t, ns, WithOwnership())
	if err := rival.Own(table); !errors.As(err, &oe) || oe.PortID != st.PortID {
		t.Errorf("Own of a table a live socket owns: %v", err)
	}

	// The owner goes: the table stays, ownerless.
	if err := agent.Close(); err != nil {
		t.Fatal(err)
	}
	st = tableState(t, other, table)
	if !st.Orphan() || st.Owned || st.PortID != 0 {
		t.Fatalf("after the owner closed: %+v", st)
	}
	if rs, err := other.Read(table); err != nil || rs == nil || !rules.SyncExact(rs, want).Plan.Empty() {
		t.Fatalf("after the owner closed the table reads %v (%v)", rs, err)
	}

	// The next agent adopts it, content and all.
	next := openIn(t, ns, WithOwnership())
	gen1, err := next.Generation()
	if err != nil {
		t.Fatal(err)
	}
	if err := next.Own(table); err != nil {
		t.Fatalf("Own of the orphan: %v", err)
	}
	if gen, err := next.Generation(); err != nil || gen != NextGeneration(gen1) {
		t.Errorf("adoption: generation %d to %d, want one transaction (%v)", gen1, gen, err)
	}
	if st := tableState(t, next, table); !st.Owned || !st.Persist || !st.Mine {
		t.Fatalf("after Own: %+v", st)
	}
	if rs, err := next.Read(table); err != nil || rs == nil || !rules.SyncExact(rs, want).Plan.Empty() {
		t.Fatalf("after Own the table reads %v (%v)", rs, err)
	}
	if out, err := nftArgsIn(ns, "delete", "table", "inet", table); err == nil {
		t.Fatalf("nft delete table after adoption succeeded\n%s", out)
	}
	// The owner's own plans still work, and its wake keeps the flags.
	if _, err := next.Apply(rules.SyncExact(want, changed).Plan, 0); err != nil {
		t.Fatalf("Apply by the adopter: %v", err)
	}
	if out, err := nftArgsIn(ns, "delete", "table", "inet", table); err == nil {
		t.Fatalf("nft delete table after the adopter's apply succeeded\n%s", out)
	}
	if err := next.Delete(table); err != nil {
		t.Fatalf("Delete by the owner: %v", err)
	}
	if st := tableState(t, next, table); st.Exists {
		t.Fatalf("after Delete: %+v", st)
	}

	// A table created with flags 0 (the one-shot CLI) cannot be adopted,
	// but the owner can replace it in one transaction.
	if _, err := other.Apply(rules.SyncExact(nil, want).Plan, 0); err != nil {
		t.Fatalf("plain create: %v", err)
	}
	if st := tableState(t, other, table); !st.Exists || st.Owned || st.Persist {
		t.Fatalf("plain table: %+v", st)
	}
	if err := next.Own(table); !errors.Is(err, ErrCannotAdopt) {
		t.Fatalf("Own of a flags-0 table: %v", err)
	}
	t.Logf("Own of a flags-0 table: %v", next.Own(table))
	rp := rules.SyncExact(nil, want).Plan
	rp.TableAction = rules.TableReplace
	if _, err := next.Apply(rp, 0); err != nil {
		t.Fatalf("replacing the flags-0 table: %v", err)
	}
	if st := tableState(t, other, table); !st.Owned || !st.Persist || st.PortID == 0 {
		t.Fatalf("after replace: %+v", st)
	}
	if rs, err := other.Read(table); err != nil || rs == nil || !rules.SyncExact(rs, want).Plan.Empty() {
		t.Fatalf("after replace the table reads %v (%v)", rs, err)
	}
	if out, err := nftArgsIn(ns, "delete", "table", "inet", table); err == nil {
		t.Fatalf("nft delete table after replace succeeded\n%s", out)
	}

	if err := next.Own("nftpol_absent"); !errors.Is(err, ErrNoTable) {
		t.Errorf("Own of a missing table: %v", err)
	}
}
