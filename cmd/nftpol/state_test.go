package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
)

func testRuleset(t *testing.T) (*policies.Policy, *rules.Ruleset) {
	t.Helper()
	p := &policies.Policy{Table: "nftpol", Zone: policies.PortRange{Lo: 40010, Hi: 49999}, MinUID: 1000,
		Loopback: policies.LoopbackAllow, Action: policies.Reject,
		Accounts: []policies.Account{{Name: "a", UID: 1001, Ports: []policies.PortRange{{Lo: 40010, Hi: 40019}}, Protocols: []policies.Protocol{policies.TCP}}}}
	rs, err := compiler.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, rs
}

func TestStateRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	p, rs := testRuleset(t)
	if err := saveState(dir, p, rs, nil); err != nil {
		t.Fatal(err)
	}
	st, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rules.RenderString(st.ruleset), rules.RenderString(rs); got != want {
		t.Errorf("state round trip:\n%s\nwant\n%s", got, want)
	}
	text, _ := os.ReadFile(filepath.Join(dir, "ruleset.nft"))
	if string(text) != rules.RenderString(rs) {
		t.Error("ruleset.nft differs from the export")
	}
	for _, f := range []string{"", "state.json", "ruleset.nft"} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o600)
		if f == "" {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", filepath.Join(dir, f), fi.Mode().Perm(), want)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
}

func TestStateRefusesSymlinkAndMissing(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	link := filepath.Join(base, "link")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	p, rs := testRuleset(t)
	if err := saveState(link, p, rs, nil); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("saveState through a symlinked directory: %v", err)
	}
	if _, err := loadState(real); !errors.Is(err, errNoState) {
		t.Errorf("loadState of an empty directory: %v, want errNoState", err)
	}
}

func TestRemovalGuardUnit(t *testing.T) {
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
		err := removalGuard(rules.Diff(cur, want), cur)
		if (err != nil) != c.refused {
			t.Errorf("%d installed, %d kept: err = %v, want refused=%v", c.installed, c.kept, err, c.refused)
		}
	}
}
