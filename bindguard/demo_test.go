package bindguard

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestBpftool reads the guard back with bpftool, a second opinion that
// does not share cilium/ebpf's view of the kernel. Without bpftool (Debian
// package bpftool; .ci/run installs it) it is skipped, and fails under CI.
func TestBpftool(t *testing.T) {
	if _, err := exec.LookPath("bpftool"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("bpftool is missing (apt-get install bpftool)")
		}
		t.Skip("bpftool not installed")
	}
	g, cg := installTest(t, testPolicy())
	out, err := exec.Command("bpftool", "cgroup", "show", cg).CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool cgroup show: %v: %s", err, out)
	}
	for _, want := range []string{"cgroup_inet4_bind", "nftpol_bind4", "cgroup_inet6_bind", "nftpol_bind6", "cgroup_inet_ingress", "nftpol_ingress"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("bpftool cgroup show %s: no %s in\n%s", cg, want, out)
		}
	}
	// Port 40020 of TCP (key 0x00009c54) is b's: owner 2002 (0x7d2), zone|owned.
	out, err = exec.Command("bpftool", "map", "lookup", "pinned", g.PinDir()+"/ports", "key", "0x54", "0x9c", "0", "0").CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool map lookup: %v: %s", err, out)
	}
	if !strings.Contains(string(out), "value: d2 07 00 00 03 00 00 00") {
		t.Errorf("bpftool map lookup ports 40020: %s", out)
	}
}
