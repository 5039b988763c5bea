package policies

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nftpol/nftpol/policies/internal/document"
)

// decodeWith is an Option for tests: Load decodes files with opts added to
// its decoder's (see document.Option).
func decodeWith(opts ...document.Option) Option {
	return func(l *loader) { l.decoding = append(l.decoding, opts...) }
}

// loadGeneric is load with every account decoded generically: the
// reference the typed path (document.Account, plainAccount) must agree
// with.
func loadGeneric(load func(string, ...Option) (*Policy, error), file string, opts ...Option) (*Policy, error) {
	return load(file, append(opts, decodeWith(document.WithTypedAccounts(false)))...)
}

// accountItems returns the items of the document package's
// testdata/account-items.txt: accounts around the shape document.Account
// holds.
func accountItems(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("internal/document/testdata/account-items.txt")
	if err != nil {
		t.Fatal(err)
	}
	var items []string
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSuffix(line, "\n")
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := strconv.Unquote(line)
		if err != nil {
			t.Fatalf("account-items.txt: %q: %v", line, err)
		}
		items = append(items, s)
	}
	return items
}

// TestPlainAccounts loads each of the account items, in main files and
// include files, whole and split, with and without typed accounts: Load
// must say exactly the same.
func TestPlainAccounts(t *testing.T) {
	for i, item := range accountItems(t) {
		text := "zone: 40010-49999\nexempt: [33, 2001]\naccounts:\n  - " + item + "\n  - {name: z, uid: 2000, ports: [40500]}\n"
		dir := writeFiles(t, map[string]string{
			"policy.yaml":     text,
			"main.yaml":       "zone: 40010-49999\nexempt: [33, 2001]\ninclude: inc\n",
			"inc/policy.yaml": text,
		})
		for _, name := range []string{"policy.yaml", "main.yaml"} {
			file := filepath.Join(dir, name)
			for _, load := range []func(string, ...Option) (*Policy, error){Load, loadSplit} {
				p, err := load(file, WithLookup(fakeLookup))
				gp, gerr := loadGeneric(load, file, WithLookup(fakeLookup))
				if diff := cmp.Diff(gp, p); diff != "" {
					t.Errorf("item %d %q, %s: policies differ (-generic +typed):\n%s", i, item, name, diff)
				}
				if fmt.Sprint(err) != fmt.Sprint(gerr) {
					t.Errorf("item %d %q, %s: errors differ:\ngeneric: %v\ntyped:   %v", i, item, name, gerr, err)
				}
			}
		}
	}
}
