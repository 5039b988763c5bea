package bindguard

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// requireRoot skips a test that needs root, or fails it under CI, where
// every test must run.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("bind guard tests need root; CI runs as root")
	}
	t.Skip("bind guard tests need root")
}

// testBPFFS mounts a bpffs of the test's own on a temporary directory, so
// no test pins anything in the machine's /sys/fs/bpf, and returns a pin
// directory inside it. The mount goes in Cleanup, with everything pinned.
func testBPFFS(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "bindguard-bpffs-")
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		os.Remove(dir)
		t.Fatalf("mounting bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmounting %s: %v", dir, err)
		}
		os.Remove(dir)
	})
	return filepath.Join(dir, "nftpol", "test")
}

// testCgroup creates a child cgroup of the cgroup v2 root for the test,
// named after the test and the process, and removes it in Cleanup after
// moving out any process left in it. The guard is attached only to such
// cgroups, never to the host's.
func testCgroup(t testing.TB, suffix string) string {
	t.Helper()
	root, err := CgroupRoot()
	if err != nil {
		t.Fatal(err)
	}
	name := strings.NewReplacer("/", "-", " ", "_").Replace(t.Name())
	dir := filepath.Join(root, fmt.Sprintf("nftpol-%s%s-%d", name, suffix, os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Processes still inside (a helper that did not exit) go back
		// to the root, or rmdir fails with EBUSY.
		if b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs")); err == nil {
			for _, pid := range strings.Fields(string(b)) {
				os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(pid), 0o644)
			}
		}
		if err := os.Remove(dir); err != nil {
			t.Errorf("removing cgroup %s: %v", dir, err)
		}
	})
	return dir
}
