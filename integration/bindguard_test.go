package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/bindguard"
)

// guardCgroup creates a child cgroup of the cgroup v2 hierarchy for one
// test, and removes it in Cleanup (after the test's processes ended and the
// guard was detached). The host's own cgroups are never attached to.
func guardCgroup(t *testing.T) string {
	t.Helper()
	root, err := bindguard.CgroupRoot()
	if err != nil {
		t.Fatalf("no cgroup v2 hierarchy for the bind guard tests: %v", err)
	}
	dir := filepath.Join(root, fmt.Sprintf("nftpol-it-%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(dir); err != nil {
			t.Errorf("removing cgroup %s: %v", dir, err)
		}
	})
	return dir
}

// guardBPFFS mounts a bpffs of the test's own on a temporary directory (the
// guard's --bpf-dir), unmounted in Cleanup with everything pinned in it.
func guardBPFFS(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mounting a bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
	})
	return dir
}

// TestBindGuardThroughTheCLI: apply installs the bind guard the policy
// asks for, with the table; a changed account's next bind follows the next
// apply; status reports it; remove detaches it; restore installs it again
// from the state alone. Binds are made by real UIDs inside the test's own
// cgroup, in the server namespace.
func TestBindGuardThroughTheCLI(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	probe := probePath(t)
	ns := newNetns(t, "guard")
	cg := guardCgroup(t)
	bpf := guardBPFFS(t)
	policy := func(alpha string) string {
		return strings.Replace(contractPolicy, `["40010-40019"]`, alpha, 1) +
			fmt.Sprintf("bind_guard: {enabled: true, cgroup: %q, reserved: [3306]}\n", cg)
	}
	n := nftpolRun{bin: bin, config: writePolicy(t, policy(`["40010-40019"]`)), netns: ns, stateDir: t.TempDir()}
	cli := func(want int, args ...string) string {
		t.Helper()
		stdout, stderr, code := n.run(t, append(args, "--bpf-dir", bpf)...)
		if code != want {
			t.Fatalf("nftpol %s exited %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, stdout, stderr)
		}
		return stdout
	}
	bind := func(inCgroup bool, uid int, proto string, port int) string {
		t.Helper()
		args := []string{"bind", "-netns", ns, "-uid", fmt.Sprint(uid), "-proto", proto, "-port", fmt.Sprint(port)}
		if proto == "udplite" {
			args = append(args, "-addr", "::")
		}
		if inCgroup {
			args = append(args, "-cgroup", cg)
		}
		return strings.TrimSpace(run(t, probe, args...))
	}
	expect := func(when string, cases ...any) {
		t.Helper()
		for i := 0; i < len(cases); i += 5 {
			in, uid, proto, port, want := cases[i].(bool), cases[i+1].(int), cases[i+2].(string), cases[i+3].(int), cases[i+4].(string)
			if got := bind(in, uid, proto, port); got != want {
				t.Errorf("%s: uid %d binds %s %d (in the cgroup: %v): %q, want %q", when, uid, proto, port, in, got, want)
			}
		}
	}

	if out := cli(2, "plan", "--detailed-exitcode"); !strings.Contains(out, "Bind guard: ") || !strings.Contains(out, "port entries") {
		t.Errorf("plan does not show the guard:\n%s", out)
	}
	if out := cli(0, "apply"); !strings.Contains(out, "Bind guard: applied") {
		t.Errorf("apply does not say it applied the guard:\n%s", out)
	}
	cli(0, "plan", "--detailed-exitcode")
	expect("after apply",
		true, uidAlpha, "tcp", 40012, "ok", // its own
		true, uidAlpha, "udp", 40012, "ok",
		true, uidAlpha, "udplite", 40012, "ok", // UDP-Lite binds as UDP
		true, uidAlpha, "tcp", 40021, "denied", // beta's
		true, uidAlpha, "tcp", 45000, "denied", // unassigned zone port
		true, uidAlpha, "tcp", 3306, "denied", // reserved
		true, uidBeta, "udp", 40021, "denied", // beta has tcp only
		true, uidAlpha, "tcp", 8080, "ok", // outside the zone
		true, uidSystem, "tcp", 40021, "ok", // below min_uid
		true, uidExempt, "tcp", 3306, "ok", // exempt
		false, uidAlpha, "tcp", 40021, "ok", // outside the cgroup
	)
	if out := cli(0, "status"); !strings.Contains(out, "Bind guard:") || !strings.Contains(out, "attached to "+cg) ||
		!strings.Contains(out, "in sync") || !strings.Contains(out, "bind") {
		t.Errorf("status does not show the guard and its refused binds:\n%s", out)
	}

	// An apply of a policy without a guard from another state directory
	// (another deployment, a test) leaves this one's guard alone: the pins
	// are the host's.
	other := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: newNetns(t, "guard-other"), stateDir: t.TempDir()}
	if stdout, stderr, code := other.run(t, "apply", "--bpf-dir", bpf); code != 0 || strings.Contains(stdout, "Bind guard") {
		t.Fatalf("apply from another state directory: exit %d\n%s\n%s", code, stdout, stderr)
	}
	expect("after another state directory's apply", true, uidAlpha, "tcp", 40021, "denied")

	// alpha gets 40030-40039 as well: the maps follow, only what changed.
	n.setPolicy(t, policy(`["40010-40019", "40030-40039"]`))
	if out := cli(0, "apply"); !strings.Contains(out, "Bind guard: applied, 20 port entries") {
		t.Errorf("apply of a changed account:\n%s", out)
	}
	expect("after the change", true, uidAlpha, "tcp", 40035, "ok", true, uidBeta, "tcp", 40035, "denied")

	// The policy turns it off: the next apply removes it; on again.
	n.setPolicy(t, strings.Replace(policy(`["40010-40019", "40030-40039"]`), "enabled: true", "enabled: false", 1))
	if out := cli(0, "apply"); !strings.Contains(out, "Bind guard: off in the policy; removed.") {
		t.Errorf("apply with the guard turned off:\n%s", out)
	}
	expect("with the guard off", true, uidAlpha, "tcp", 40021, "ok")
	n.setPolicy(t, policy(`["40010-40019", "40030-40039"]`))
	cli(0, "apply")
	expect("with the guard on again", true, uidAlpha, "tcp", 40021, "denied")

	// remove detaches it; restore installs table and guard from the state.
	if out := cli(0, "remove"); !strings.Contains(out, "Removed the bind guard") {
		t.Errorf("remove:\n%s", out)
	}
	expect("after remove", true, uidAlpha, "tcp", 40021, "ok")
	// As after a reboot: a fresh cgroup (the same path, made again) and a
	// fresh network namespace; restore needs neither policy nor NSS.
	if err := os.Remove(cg); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatal(err)
	}
	n.netns = newNetns(t, "guard-boot")
	if out := cli(0, "restore"); !strings.Contains(out, "Bind guard: restored") {
		t.Errorf("restore:\n%s", out)
	}
	if got := nftList(t, n.netns); !strings.Contains(got, "table inet nftpol") {
		t.Errorf("restore did not install the table in the fresh namespace:\n%s", got)
	}
	expect("after restore", true, uidAlpha, "tcp", 40021, "denied", true, uidAlpha, "tcp", 40035, "ok")
	cli(0, "remove")
}
