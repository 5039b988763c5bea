package policies

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// benchAccounts is the scale DESIGN.md and issue 6 design for.
const benchAccounts = 50000

// benchAccount is account i as a flow mapping, the way the scale tests and
// config-management templates write one line per account.
func benchAccount(i int) string {
	return fmt.Sprintf("{name: acct-%06d, uid: %d, ports: [%d], protocols: [tcp, udp]}", i, 100000+i, 10000+i)
}

// BenchmarkLoad50kOneFile loads a main file that lists 50,000 accounts.
func BenchmarkLoad50kOneFile(b *testing.B) {
	var s strings.Builder
	s.WriteString("zone: \"10000-65000\"\nmin_uid: 1000\naccounts:\n")
	for i := range benchAccounts {
		s.WriteString("  - " + benchAccount(i) + "\n")
	}
	file := filepath.Join(b.TempDir(), "nftpol.yaml")
	if err := os.WriteFile(file, []byte(s.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	benchLoad(b, file)
}

// BenchmarkLoad50kIncludeFiles loads 50,000 accounts from 50,000 files of
// the include directory, one account each, as config management drops them.
func BenchmarkLoad50kIncludeFiles(b *testing.B) {
	dir := b.TempDir()
	file := filepath.Join(dir, "nftpol.yaml")
	if err := os.WriteFile(file, []byte("zone: \"10000-65000\"\nmin_uid: 1000\ninclude: policies.d\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	inc := filepath.Join(dir, "policies.d")
	if err := os.Mkdir(inc, 0o755); err != nil {
		b.Fatal(err)
	}
	for i := range benchAccounts {
		text := fmt.Sprintf("accounts:\n  - name: acct-%06d\n    uid: %d\n    ports: [\"%d\"]\n", i, 100000+i, 10000+i)
		if err := os.WriteFile(filepath.Join(inc, fmt.Sprintf("acct-%06d.yaml", i)), []byte(text), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	benchLoad(b, file)
}

// benchLoad loads file in a loop, with the permission check on as in
// production (the files belong to the user running the benchmark).
func benchLoad(b *testing.B, file string) {
	b.ReportAllocs()
	for b.Loop() {
		p, err := Load(file)
		if err != nil {
			b.Fatal(err)
		}
		if len(p.Accounts) != benchAccounts {
			b.Fatalf("loaded %d accounts, want %d", len(p.Accounts), benchAccounts)
		}
	}
}
