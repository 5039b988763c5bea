package bindguard

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nftpol/nftpol/policies"
)

func TestCompile(t *testing.T) {
	d, err := Compile(testPolicy())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		proto Proto
		port  uint16
		want  Port
	}{
		{TCP, 40010, Port{uidA, FlagZone | FlagOwned}},
		{UDP, 40029, Port{uidB, FlagZone | FlagOwned}},
		{TCP, 40030, Port{uidC, FlagZone | FlagOwned}},
		{UDP, 40030, Port{0, FlagZone}}, // c has TCP only
		{TCP, 40050, Port{0, FlagZone}},
		{TCP, 40090, Port{0, FlagZone | FlagReserved}},
		{UDP, 3306, Port{0, FlagReserved}},
		{TCP, 8080, Port{}},
		{UDP, 40100, Port{}},
	} {
		if got := d.Lookup(tc.proto, tc.port); got != tc.want {
			t.Errorf("%s %d: %+v, want %+v", tc.proto, tc.port, got, tc.want)
		}
	}
	if d.MinUID != 1000 || len(d.Exempt) != 1 || d.Exempt[0] != uidExempt {
		t.Errorf("min_uid %d exempt %v", d.MinUID, d.Exempt)
	}
}

func TestCompileRefuses(t *testing.T) {
	p := testPolicy()
	p.Accounts[1].Ports = []policies.PortRange{{Lo: 40015, Hi: 40015}}
	if _, err := Compile(p); err == nil || !strings.Contains(err.Error(), "tcp port 40015 is given to UID 2001 and to UID 2002") {
		t.Errorf("overlap: %v", err)
	}
	p = testPolicy()
	p.BindGuard.Reserved = []policies.PortRange{{Lo: 40011, Hi: 40011}}
	if _, err := Compile(p); err == nil || !strings.Contains(err.Error(), "port 40011 of UID 2001 is reserved") {
		t.Errorf("reserved: %v", err)
	}
	p = testPolicy()
	p.Exempt = make([]uint32, MaxExempt+1)
	for i := range p.Exempt {
		p.Exempt[i] = uint32(i)
	}
	if _, err := Compile(p); err == nil {
		t.Error("too many exempt UIDs: no error")
	}
}

func TestDiff(t *testing.T) {
	p := testPolicy()
	old, _ := Compile(p)
	if d := diffData(old, old, true); !d.Empty() {
		t.Errorf("same data: %+v", d)
	}
	if d := diffData(old, old, false); d.MinUID == nil || len(d.Ports) != 0 {
		t.Errorf("config not valid: %+v", d)
	}
	p.MinUID = 2000
	p.Exempt = []uint32{4000}
	p.Accounts[2].Ports = []policies.PortRange{{Lo: 40031, Hi: 40031}}
	next, _ := Compile(p)
	d := diffData(old, next, true)
	if d.MinUID == nil || d.MinUID[1] != 2000 || len(d.ExemptAdd) != 1 || d.ExemptAdd[0] != 4000 || len(d.ExemptDel) != 1 || d.ExemptDel[0] != uidExempt {
		t.Errorf("settings: %+v", d)
	}
	want := []PortChange{
		{TCP, 40030, Port{uidC, FlagZone | FlagOwned}, Port{0, FlagZone}},
		{TCP, 40031, Port{0, FlagZone}, Port{uidC, FlagZone | FlagOwned}},
	}
	if len(d.Ports) != len(want) || d.Ports[0] != want[0] || d.Ports[1] != want[1] {
		t.Errorf("ports: %+v, want %+v", d.Ports, want)
	}
	// Nothing installed: every entry that is not zero.
	if d := diffData(&Data{}, old, false); len(d.Ports) != 2*(90+1) {
		t.Errorf("fresh: %d entries, want %d", len(d.Ports), 2*91)
	}
}

func TestCgroupRootFrom(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, text, want string
	}{
		{"hybrid", "25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup/unified"},
		{"unified", "30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n", "/sys/fs/cgroup"},
		{"escaped", `30 24 0:26 / /mnt/with\040space rw - cgroup2 cgroup2 rw` + "\n", "/mnt/with space"},
		{"bind mount of a child is not the root", "30 24 0:26 /sub /mnt/sub rw - cgroup2 cgroup2 rw\n", ""},
		{"none", "25 1 0:23 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(dir, tc.name)
			os.WriteFile(f, []byte(tc.text), 0o644)
			got, err := cgroupRootFrom(f)
			if tc.want == "" {
				if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "needs cgroup v2") || !strings.Contains(err.Error(), "nftables enforcement is unaffected") {
					t.Errorf("got %q, %v; want an error wrapping ErrUnsupported naming cgroup v2", got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestNoBPFFS: a pin directory off bpffs is refused, naming what is
// missing, before anything is created.
func TestNoBPFFS(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nftpol", "x")
	err := New(Config{PinDir: dir}).checkBPFFS()
	if !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), "needs bpffs") || !strings.Contains(err.Error(), "mount -t bpf bpf /sys/fs/bpf") {
		t.Errorf("checkBPFFS = %v", err)
	}
	if _, err := os.Stat(filepath.Dir(dir)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("checkBPFFS created %s", filepath.Dir(dir))
	}
	// Status on a machine without bpffs says why, too.
	if _, err := New(Config{PinDir: dir}).Status(nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Status = %v", err)
	}
}

// TestRefuses: audit's reading of the data refuses what the programs
// refuse: another account's zone port, an unassigned zone port, a reserved
// port, for enforced UIDs only, never port 0.
func TestRefuses(t *testing.T) {
	p := &policies.Policy{Zone: policies.PortRange{Lo: 40000, Hi: 40099}, MinUID: 1000, Exempt: []uint32{1500},
		BindGuard: policies.BindGuard{Enabled: true, Reserved: []policies.PortRange{{Lo: 3306, Hi: 3306}}},
		Accounts:  []*policies.Account{{Name: "a", UID: 1001, Ports: []policies.PortRange{{Lo: 40000, Hi: 40009}}, Protocols: []policies.Protocol{policies.TCP}}}}
	d, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		uid   uint32
		proto Proto
		port  uint16
		want  bool
	}{
		{1001, TCP, 40005, false}, // its own
		{1001, UDP, 40005, true},  // its own, but for tcp only
		{1002, TCP, 40005, true},  // another account's
		{1001, TCP, 40050, true},  // unassigned zone port
		{1001, TCP, 8080, false},  // outside the zone
		{1001, TCP, 3306, true},   // reserved
		{1001, TCP, 0, false},     // the kernel picks
		{999, TCP, 40005, false},  // below min_uid
		{1500, TCP, 3306, false},  // exempt
	} {
		if got := d.Refuses(c.uid, c.proto, c.port); got != c.want {
			t.Errorf("uid %d %s %d: refused %v, want %v", c.uid, c.proto, c.port, got, c.want)
		}
	}
}
