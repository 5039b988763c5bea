//go:build linux

package sockets

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestHolders runs the /proc scan on a fake /proc.
func TestHolders(t *testing.T) {
	root := t.TempDir()
	proc := func(pid int, comm string, links ...string) {
		dir := filepath.Join(root, strconv.Itoa(pid))
		if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "comm"), []byte(comm+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		for i, l := range links {
			if err := os.Symlink(l, filepath.Join(dir, "fd", strconv.Itoa(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	proc(300, "node", "/dev/null", "socket:[11]", "socket:[11]", "socket:[12]")
	proc(20, "nginx", "socket:[13]", "pipe:[99]")
	proc(21, "nginx", "socket:[13]")
	proc(22, "other", "socket:[14]")
	if err := os.MkdirAll(filepath.Join(root, "self"), 0o755); err != nil { // not a PID
		t.Fatal(err)
	}

	got, unreadable, err := Holders(root, []uint64{11, 13, 15})
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint64][]Process{
		11: {{300, "node"}},
		13: {{20, "nginx"}, {21, "nginx"}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("holders (-want +got):\n%s", diff)
	}
	if unreadable != 0 {
		t.Errorf("unreadable = %d, want 0", unreadable)
	}
	if ok, err := Holds(root, 300, 12); err != nil || !ok {
		t.Errorf("Holds(300, 12) = %v, %v; want true", ok, err)
	}
	if ok, err := Holds(root, 22, 12); err != nil || ok {
		t.Errorf("Holds(22, 12) = %v, %v; want false", ok, err)
	}
}

func TestSocketInode(t *testing.T) {
	for in, want := range map[string]uint64{"socket:[123]": 123, "socket:[]": 0, "pipe:[5]": 0, "socket:[9": 0, "/dev/null": 0} {
		got, ok := socketInode(in)
		if got != want || ok != (want != 0) {
			t.Errorf("socketInode(%q) = %d, %v", in, got, ok)
		}
	}
}
