package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRestoreAfterReboot: apply in namespace A, lose the policy, restore the
// same state into a fresh namespace B (a reboot): B lists exactly what A
// lists and the contract holds in B. restore must not need the policy.
func TestRestoreAfterReboot(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	a := newNetns(t, "boot-a")
	state := filepath.Join(t.TempDir(), "state")
	config := writePolicy(t, contractPolicy)
	n := nftpolRun{bin: bin, config: config, netns: a, stateDir: state}
	n.apply(t)
	want := nftStateless(t, a)

	// The boot: no policy file (and a broken one would not matter either).
	if err := os.Remove(config); err != nil {
		t.Fatal(err)
	}
	tp := newTopology(t)
	b := nftpolRun{bin: bin, config: config, netns: tp.Server, stateDir: state}
	stdout, stderr, code := b.run(t, "restore")
	if code != 0 {
		t.Fatalf("restore exited %d\n%s\n%s", code, stdout, stderr)
	}
	if got := nftStateless(t, tp.Server); got != want {
		t.Errorf("restored table differs from the applied one:\nrestored:\n%s\napplied:\n%s", got, want)
	}
	// A second restore is a no-op.
	stdout, _, code = b.run(t, "restore", "-o", "json")
	var p planJSON
	if code != 0 || json.Unmarshal([]byte(stdout), &p) != nil || p.Changes || p.Applied == nil || p.Applied.Messages != 0 {
		t.Errorf("second restore: exit %d, %s", code, stdout)
	}
	runMatrix(t, tp, contractMatrix)
}

// TestRestoreRefusesBadState: missing, truncated, corrupt or tampered state
// gives a non-zero exit, a message that says what to do, and leaves the
// kernel exactly as it was.
func TestRestoreRefusesBadState(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	good := filepath.Join(t.TempDir(), "state")
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: newNetns(t, "bad-a"), stateDir: good}
	n.apply(t)
	stateText, err := os.ReadFile(filepath.Join(good, "state"))
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]byte{
		"missing":   nil,
		"truncated": stateText[:len(stateText)/2],
		"empty":     {},
		"garbage":   []byte("not a state at all\n"),
		// Well formed, but an element changed by hand: the digest catches it.
		"tampered": []byte(strings.Replace(string(stateText), "1001\t40010\t40019\talpha\n", "1001\t40010\t40099\talpha\n", 1)),
	}
	if string(cases["tampered"]) == string(stateText) {
		t.Fatal("the tampering did not apply")
	}
	for name, content := range cases {
		t.Run(name, func(t *testing.T) {
			ns := newNetns(t, "bad-b")
			nftLoad(t, ns, foreignTable)
			before := nftList(t, ns)
			dir := filepath.Join(t.TempDir(), "state")
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if content != nil {
				if err := os.WriteFile(filepath.Join(dir, "state"), content, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			b := nftpolRun{bin: bin, config: "/nonexistent/nftpol.yaml", netns: ns, stateDir: dir}
			stdout, stderr, code := b.run(t, "restore")
			if code == 0 {
				t.Errorf("restore with %s state exited 0\n%s", name, stdout)
			}
			if !strings.Contains(stderr, "nftpol apply") {
				t.Errorf("the message does not say what to do: %s", stderr)
			}
			if got := nftList(t, ns); got != before {
				t.Errorf("restore with %s state changed the kernel:\nbefore:\n%s\nafter:\n%s", name, before, got)
			}
		})
	}
}

// TestConcurrentApplies: eight applies of the same policy at once all
// succeed and leave exactly one copy of everything.
func TestConcurrentApplies(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	ref := newNetns(t, "conc-ref")
	state := t.TempDir()
	config := writePolicy(t, contractPolicy)
	nftpolRun{bin: bin, config: config, netns: ref, stateDir: t.TempDir()}.apply(t)
	want := nftStateless(t, ref)

	ns := newNetns(t, "conc")
	n := nftpolRun{bin: bin, config: config, netns: ns, stateDir: state}
	var wg sync.WaitGroup
	codes := make([]int, 8)
	outs := make([]string, 8)
	for i := range codes {
		wg.Go(func() {
			stdout, stderr, code := n.run(t, "apply")
			codes[i], outs[i] = code, stdout+stderr
		})
	}
	wg.Wait()
	changed := 0
	for i, code := range codes {
		if code != 0 {
			t.Errorf("apply %d exited %d:\n%s", i, code, outs[i])
		}
		if !strings.Contains(outs[i], "No changes.") {
			changed++
		}
	}
	if changed != 1 {
		t.Errorf("%d of 8 applies changed the kernel, want exactly 1 (the others must see fresh state)", changed)
	}
	if got := nftStateless(t, ns); got != want {
		t.Errorf("after 8 concurrent applies:\n%s\nwant:\n%s", got, want)
	}
}

// TestLockTimeoutNamesHolder: while another process holds the lock, apply
// waits --lock-timeout and then fails saying who holds it.
func TestLockTimeoutNamesHolder(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	state := t.TempDir()
	if err := os.Chmod(state, 0o700); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(state, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "pid %d, nftpol apply, since a while\n", os.Getpid())
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: newNetns(t, "lock"), stateDir: state}
	_, stderr, code := n.run(t, "--lock-timeout", "300ms", "apply")
	if code != 1 || !strings.Contains(stderr, fmt.Sprintf("pid %d", os.Getpid())) || !strings.Contains(stderr, "--lock-timeout") {
		t.Errorf("apply against a held lock: exit %d, stderr %q", code, stderr)
	}
	if out := nftList(t, n.netns); strings.Contains(out, "nftpol") {
		t.Errorf("apply changed the kernel without the lock:\n%s", out)
	}
}

// manyAccounts is a policy with n accounts, uids 2000.., one port each.
func manyAccounts(n int) string {
	var b strings.Builder
	b.WriteString("zone: 40010-49999\nmin_uid: 1000\naccounts:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "  - {name: site%d, uid: %d, ports: [%d]}\n", i, 2000+i, 40010+i)
	}
	return b.String()
}

// TestRemovalGuard: an apply that would remove more than half of the
// installed accounts is refused (listing them) unless --allow-removals.
func TestRemovalGuard(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	ns := newNetns(t, "guard")
	n := nftpolRun{bin: bin, config: writePolicy(t, manyAccounts(12)), netns: ns, stateDir: t.TempDir()}
	n.apply(t)
	before := nftStateless(t, ns)

	// Removing 6 of 12 is exactly half: allowed.
	n.setPolicy(t, manyAccounts(6))
	stdout, stderr, code := n.run(t, "plan")
	if code != 0 {
		t.Fatalf("plan: %d %s", code, stderr)
	}
	_ = stdout
	// An empty render of the policy removes all 12: refused.
	n.setPolicy(t, manyAccounts(0))
	stdout, stderr, code = n.run(t, "apply")
	if code != 1 || !strings.Contains(stderr, "refusing to remove 12 of the 12 installed accounts") ||
		!strings.Contains(stderr, "site11 (uid 2011)") || !strings.Contains(stderr, "--allow-removals") {
		t.Errorf("apply removing all accounts: exit %d\n%s\n%s", code, stdout, stderr)
	}
	if got := nftStateless(t, ns); got != before {
		t.Errorf("a refused apply changed the kernel")
	}
	// 7 of 12 is more than half: refused; with the flag it goes through.
	n.setPolicy(t, manyAccounts(5))
	if _, stderr, code := n.run(t, "apply"); code != 1 || !strings.Contains(stderr, "refusing to remove 7 of the 12") {
		t.Errorf("apply removing 7 of 12: exit %d %s", code, stderr)
	}
	if stdout, stderr, code := n.run(t, "apply", "--allow-removals"); code != 0 {
		t.Fatalf("apply --allow-removals: exit %d\n%s\n%s", code, stdout, stderr)
	}
	n.planExit(t, 0)
	// Half of what is installed now (5 -> 0 is all of 5): at 10 or fewer
	// accounts the guard does not apply.
	n.setPolicy(t, manyAccounts(0))
	if _, stderr, code := n.run(t, "apply"); code != 0 {
		t.Errorf("removing all of 5 accounts: exit %d %s", code, stderr)
	}
}

// TestStatusReportsViolation: a refused connection to an account's foreign
// port shows up in status with that UID and port.
func TestStatusReportsViolation(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: tp.Server, stateDir: t.TempDir()}
	n.apply(t)
	tp.Listen(t, uidAlpha, "tcp", ServerIPv4, 40025) // beta's port
	if got := tp.Connect(t, "tcp", ServerIPv4, 40025); !blocked(got) {
		t.Fatalf("alpha on beta's port: %q, want blocked", got)
	}
	stdout, stderr, code := n.run(t, "status", "-o", "json")
	if code != 0 {
		t.Fatalf("status: exit %d %s", code, stderr)
	}
	var st struct {
		Installed, Owned bool
		InSync           *bool `json:"in_sync"`
		Accounts         int
		Violations       []struct {
			UID     uint32
			Account string
			Proto   string
			Port    uint16
			Packets uint64
		}
	}
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	if !st.Installed || !st.Owned || st.InSync == nil || !*st.InSync || st.Accounts != 2 {
		t.Errorf("status: %s", stdout)
	}
	found := false
	for _, v := range st.Violations {
		if v.UID == uidAlpha && v.Port == 40025 && v.Proto == "tcp" && v.Packets > 0 && v.Account == "alpha" {
			found = true
		}
	}
	if !found {
		t.Errorf("status does not report alpha (uid %d) on tcp 40025: %s", uidAlpha, stdout)
	}
	prom, _, _ := n.run(t, "status", "--format", "prometheus")
	if !strings.Contains(prom, `nftpol_violation_packets{table="nftpol",uid="1001",account="alpha",proto="tcp",port="40025"}`) {
		t.Errorf("prometheus output lacks the violation:\n%s", prom)
	}
	t.Logf("status after the violation:\n%s", func() string { s, _, _ := n.run(t, "status"); return s }())
}

// TestRemoveTouchesOnlyItsTable: remove deletes nftpol's table, leaves a
// foreign table byte-identical, keeps the state unless --purge.
func TestRemoveTouchesOnlyItsTable(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	ns := newNetns(t, "remove")
	nftLoad(t, ns, foreignTable)
	state := t.TempDir()
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: ns, stateDir: state}
	n.apply(t)
	foreign := run(t, "ip", "netns", "exec", ns, "nft", "-a", "list", "table", "inet", "foreign")
	if _, stderr, code := n.run(t, "remove"); code != 0 {
		t.Fatalf("remove: %d %s", code, stderr)
	}
	if got := run(t, "ip", "netns", "exec", ns, "nft", "-a", "list", "table", "inet", "foreign"); got != foreign {
		t.Errorf("remove changed the foreign table:\n%s\nwant:\n%s", got, foreign)
	}
	if tables := run(t, "ip", "netns", "exec", ns, "nft", "list", "tables"); strings.Contains(tables, "nftpol") {
		t.Errorf("table still there:\n%s", tables)
	}
	if _, err := os.Stat(filepath.Join(state, "state")); err != nil {
		t.Errorf("remove without --purge lost the state: %v", err)
	}
	// The state still restores it.
	if _, stderr, code := n.run(t, "restore"); code != 0 {
		t.Fatalf("restore after remove: %d %s", code, stderr)
	}
	// What an agent that died handing the table over leaves: the ruleset
	// in the handover table too. remove deletes it with the table.
	export, _, _ := n.run(t, "export")
	nftLoad(t, ns, strings.Replace(export, "table inet nftpol {", "table inet nftpol_handover {", 1))
	out, stderr, code := n.run(t, "remove", "--purge")
	if code != 0 {
		t.Fatalf("remove --purge: %d %s", code, stderr)
	}
	if tables := run(t, "ip", "netns", "exec", ns, "nft", "list", "tables"); strings.Contains(tables, "nftpol") || !strings.Contains(out, "nftpol_handover") {
		t.Errorf("remove with a handover table left:\n%s\ntables:\n%s", out, tables)
	}
	if _, err := os.Stat(filepath.Join(state, "state")); !os.IsNotExist(err) {
		t.Errorf("--purge kept the state: %v", err)
	}
	// A same-named table nftpol did not create is refused.
	nftLoad(t, ns, handMadeTable)
	if _, stderr, code := n.run(t, "remove"); code != 1 || !strings.Contains(stderr, "not created by nftpol") {
		t.Errorf("remove of a hand-made table: %d %s", code, stderr)
	}
}

// TestMakeInstall: make install honours DESTDIR and PREFIX and installs the
// binary, the systemd units (pointing at the installed binary) and an
// example config that validates.
func TestMakeInstall(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make not installed")
	}
	dest := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout*4)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "-C", "..", "install", "DESTDIR="+dest, "PREFIX=/usr")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	for _, f := range []string{
		"usr/sbin/nftpol", "usr/lib/systemd/system/nftpol-restore.service", "usr/lib/systemd/system/nftpol-watch.service",
		"etc/nftpol/nftpol.yaml", "usr/share/doc/nftpol/examples/nftpol.yaml",
	} {
		if _, err := os.Stat(filepath.Join(dest, f)); err != nil {
			t.Errorf("make install did not install %s: %v", f, err)
		}
	}
	unit, _ := os.ReadFile(filepath.Join(dest, "usr/lib/systemd/system/nftpol-restore.service"))
	for _, want := range []string{"ExecStart=/usr/sbin/nftpol restore", "DefaultDependencies=no", "Before=network-pre.target", "Wants=network-pre.target", "After=local-fs.target"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("nftpol-restore.service lacks %q:\n%s", want, unit)
		}
	}
	out, err := exec.CommandContext(ctx, filepath.Join(dest, "usr/sbin/nftpol"), "--config", filepath.Join(dest, "etc/nftpol/nftpol.yaml"), "validate").CombinedOutput()
	if err != nil {
		t.Errorf("the installed example config does not validate: %v\n%s", err, out)
	}
}

// TestUnitsVerify: systemd-analyze verify finds nothing to say about any
// unit nftpol ships (it exits 0 on unknown keys and bad values, so its
// output must be empty too), with the paths filled in as make install does.
func TestUnitsVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("systemd-analyze is missing (CI=true: not skipping)")
		}
		t.Skip("systemd-analyze not installed")
	}
	bin := buildBinary(t, "cmd/nftpol")
	units, _ := filepath.Glob("../packaging/systemd/*.service")
	if len(units) < 2 {
		t.Fatalf("units %v, want nftpol-restore.service and nftpol-watch.service", units)
	}
	dir := t.TempDir()
	var files []string
	for _, u := range units {
		text, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		filled := strings.NewReplacer("@SBINDIR@", filepath.Dir(bin), "@SYSCONFDIR@", "/etc").Replace(string(text))
		out := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(out, []byte(filled), 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, out)
	}
	stdout, stderr, err := runCommand("systemd-analyze", append([]string{"verify", "--man=no"}, files...)...)
	if err != nil || stdout != "" || stderr != "" {
		t.Errorf("systemd-analyze verify: %v\n%s%s", err, stdout, stderr)
	}
	watch, _ := os.ReadFile(filepath.Join(dir, "nftpol-watch.service"))
	for _, want := range []string{"Type=notify", "Restart=on-failure", "After=nftables.service", "ReloadPropagatedFrom=nftables.service", "WatchdogSec=", " watch\n"} {
		if !strings.Contains(string(watch), want) {
			t.Errorf("nftpol-watch.service lacks %q", want)
		}
	}
}
