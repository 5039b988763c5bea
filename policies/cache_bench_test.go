package policies_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/policies"
)

// writeIncludePolicy writes a main file and n include files of one account
// each, as BenchmarkLoad50kIncludeFiles does, and returns the main file.
func writeIncludePolicy(b testing.TB, n int) (file, inc string) {
	dir := b.TempDir()
	file = filepath.Join(dir, "nftpol.yaml")
	if err := os.WriteFile(file, []byte("zone: \"10000-65000\"\nmin_uid: 1000\ninclude: policies.d\n"), 0o644); err != nil {
		b.Fatal(err)
	}
	inc = filepath.Join(dir, "policies.d")
	if err := os.Mkdir(inc, 0o755); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		if err := os.WriteFile(filepath.Join(inc, fmt.Sprintf("acct-%06d.yaml", i)), includeText(i, 10000+i), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	return file, inc
}

func includeText(i, port int) []byte {
	return fmt.Appendf(nil, "accounts:\n  - name: acct-%06d\n    uid: %d\n    ports: [\"%d\"]\n", i, 100000+i, port)
}

var benchSizes = []int{1000, 10000, 50000}

// BenchmarkCacheReload changes one include file (written to a temporary
// file and renamed over it, as config management does) and reloads it;
// with compile, the result is compiled too, as the agent does. The rename
// is part of the time. Load is the full read for comparison.
func BenchmarkCacheReload(b *testing.B) {
	for _, n := range benchSizes {
		file, inc := writeIncludePolicy(b, n)
		for _, compile := range []bool{false, true} {
			name := fmt.Sprintf("files=%d", n)
			if compile {
				name += "/compile"
			}
			reload := func(b *testing.B, ioOnly bool) {
				c := policies.NewCache(file)
				if _, err := c.Load(); err != nil {
					b.Fatal(err)
				}
				target := filepath.Join(inc, fmt.Sprintf("acct-%06d.yaml", n/2))
				tmp := filepath.Join(inc, ".tmp")
				b.ReportAllocs()
				k := 0
				for b.Loop() {
					k++
					if err := os.WriteFile(tmp, includeText(n/2, []int{10000 + n/2, 64000}[k%2]), 0o644); err != nil {
						b.Fatal(err)
					}
					if err := os.Rename(tmp, target); err != nil {
						b.Fatal(err)
					}
					if ioOnly {
						continue
					}
					p, err := c.Reload([]string{tmp, target})
					if err != nil {
						b.Fatal(err)
					}
					if compile {
						if _, err := compiler.Compile(p); err != nil {
							b.Fatal(err)
						}
					}
				}
			}
			b.Run(name+"/reload", func(b *testing.B) { reload(b, false) })
			if !compile {
				// The write and the rename alone, to subtract.
				b.Run(name+"/rename", func(b *testing.B) { reload(b, true) })
			}
			b.Run(name+"/load", func(b *testing.B) {
				b.ReportAllocs()
				for b.Loop() {
					p, err := policies.Load(file)
					if err != nil {
						b.Fatal(err)
					}
					if compile {
						if _, err := compiler.Compile(p); err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
	}
}

// TestCacheReloadSharesAccounts: a policy the Cache reads after one file
// changed holds the very accounts of the policy before for every other file
// (a one-file change copies pointers, not accounts), and a new one for the
// changed file; the policy before is left as it was.
func TestCacheReloadSharesAccounts(t *testing.T) {
	const n = 200
	file, inc := writeIncludePolicy(t, n)
	c := policies.NewCache(file)
	before, err := c.Load()
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(inc, fmt.Sprintf("acct-%06d.yaml", n/2))
	if err := os.WriteFile(target, includeText(n/2, 64000), 0o644); err != nil {
		t.Fatal(err)
	}
	after, err := c.Reload([]string{target})
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Accounts) != n || len(before.Accounts) != n {
		t.Fatalf("%d accounts after, %d before; want %d", len(after.Accounts), len(before.Accounts), n)
	}
	for i, a := range after.Accounts {
		switch {
		case i == n/2 && (a == before.Accounts[i] || a.Ports[0].Lo != 64000 || before.Accounts[i].Ports[0].Lo != uint16(10000+i)):
			t.Errorf("the changed account: %+v, before %+v", *a, *before.Accounts[i])
		case i != n/2 && a != before.Accounts[i]:
			t.Errorf("account %d (%s) is a copy, not the one before", i, a.Name)
		}
	}
}
