package policies

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/google/go-cmp/cmp"

	"github.com/nftpol/nftpol/policies/internal/document"
)

// fuzzFormats are the extensions FuzzLoad writes its input with, chosen by
// the input's first argument.
var fuzzFormats = []string{".yaml", ".toml", ".json"}

// FuzzLoad writes the fuzzed bytes as a main policy file (YAML, TOML or JSON)
// and, when inc is not empty, as a file of its include directory
// policies.d, then loads them. Load must never panic, and must return either
// a clean *ValidationError or a policy that keeps every promise Load makes
// (checkPolicy). The seeds in testdata/fuzz/FuzzLoad run with every go test.
func FuzzLoad(f *testing.F) {
	// Seeds besides the committed corpus: each example file, as YAML main
	// files and as include files.
	for _, name := range []string{"../examples/nftpol.yaml", "../examples/policies.d/site13.yaml"} {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(0), b, []byte(nil))
		f.Add(uint8(0), []byte("include: policies.d\n"), b)
	}
	if b, err := os.ReadFile("../examples/policies.d/site14.json"); err == nil {
		f.Add(uint8(2), b, []byte(nil))
	}
	f.Fuzz(func(t *testing.T, format uint8, main, inc []byte) {
		ext := fuzzFormats[int(format)%len(fuzzFormats)]
		dir := t.TempDir()
		file := filepath.Join(dir, "policy"+ext)
		if err := os.WriteFile(file, main, 0o644); err != nil {
			t.Fatal(err)
		}
		if len(inc) > 0 {
			if err := os.Mkdir(filepath.Join(dir, "policies.d"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "policies.d", "site"+ext), inc, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		p, err := Load(file, WithLookup(fakeLookup))
		// Decoding large YAML files in chunks must not change a thing:
		// with every file split as finely as it can be, Load says
		// exactly the same.
		sp, spErr := loadSplit(file, WithLookup(fakeLookup))
		if diff := cmp.Diff(p, sp); diff != "" {
			t.Fatalf("Load and Load with splitting differ (-whole +split):\n%s", diff)
		}
		if fmt.Sprint(err) != fmt.Sprint(spErr) {
			t.Fatalf("Load and Load with splitting differ:\n%v\n---\n%v", err, spErr)
		}
		// Nor must decoding accounts as plainAccounts, split or not.
		gp, gErr := loadGeneric(Load, file, WithLookup(fakeLookup))
		gsp, gspErr := loadGeneric(loadSplit, file, WithLookup(fakeLookup))
		if diff := cmp.Diff(gp, p) + cmp.Diff(gsp, sp); diff != "" {
			t.Fatalf("Load with and without typed accounts differ (-generic +typed):\n%s", diff)
		}
		if fmt.Sprint(gErr, gspErr) != fmt.Sprint(err, spErr) {
			t.Fatalf("Load with and without typed accounts differ:\n%v\n%v\n---\n%v\n%v", gErr, gspErr, err, spErr)
		}
		var ve *ValidationError
		switch {
		case err == nil:
			checkPolicy(t, p)
			// Loading is deterministic.
			again, err := Load(file, WithLookup(fakeLookup))
			if err != nil {
				t.Fatalf("second Load failed: %v", err)
			}
			if diff := cmp.Diff(p, again); diff != "" {
				t.Fatalf("two Loads differ (-first +second):\n%s", diff)
			}
		case errors.As(err, &ve):
			if p != nil {
				t.Fatal("Load returned a policy along with an error")
			}
			checkProblems(t, ve)
		default:
			// Reading the main file cannot fail: it was just written.
			t.Fatalf("Load returned %T, want *ValidationError: %v", err, err)
		}
	})
}

// checkPolicy fails t unless p keeps Load's promises: everything the
// compiler relies on without checking again.
func checkPolicy(t *testing.T, p *Policy) {
	t.Helper()
	if !tableName.MatchString(p.Table) || reservedTableNames[p.Table] {
		t.Errorf("table %q is not a valid table name", p.Table)
	}
	if p.Zone.Lo < 1 || p.Zone.Lo > p.Zone.Hi {
		t.Errorf("zone %v", p.Zone)
	}
	if p.Loopback != LoopbackAllow && p.Loopback != LoopbackEnforce {
		t.Errorf("loopback %q", p.Loopback)
	}
	if p.Action != Reject && p.Action != Drop {
		t.Errorf("action %q", p.Action)
	}
	checkProtocols(t, "policy", p.Protocols)
	if !slices.IsSorted(p.Exempt) || len(slices.Compact(slices.Clone(p.Exempt))) != len(p.Exempt) {
		t.Errorf("exempt %v is not sorted and unique", p.Exempt)
	}
	names := map[string]bool{}
	uids := map[uint32]bool{}
	for i, a := range p.Accounts {
		if i > 0 {
			b := p.Accounts[i-1]
			if b.UID > a.UID || b.UID == a.UID && b.Name >= a.Name {
				t.Errorf("accounts not sorted by uid then name: %q (%d) before %q (%d)", b.Name, b.UID, a.Name, a.UID)
			}
		}
		who := fmt.Sprintf("account %q", a.Name)
		if !accountName.MatchString(a.Name) {
			t.Errorf("%s: invalid name reached the policy", who)
		}
		// Names end up in set element comments: they must need no
		// sanitising there (see rules.SanitizeComment).
		for _, c := range []byte(a.Name) {
			if c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
				t.Errorf("%s: name holds %q", who, c)
			}
		}
		if names[a.Name] {
			t.Errorf("%s: name used twice", who)
		}
		names[a.Name] = true
		if uids[a.UID] {
			t.Errorf("%s: uid %d used twice", who, a.UID)
		}
		uids[a.UID] = true
		if a.UID < p.MinUID || a.UID > maxUID || slices.Contains(p.Exempt, a.UID) {
			t.Errorf("%s: uid %d is below min_uid %d, out of range or exempt %v", who, a.UID, p.MinUID, p.Exempt)
		}
		if a.File == "" {
			t.Errorf("%s: no file", who)
		}
		checkProtocols(t, who, a.Protocols)
		if len(a.Ports) == 0 {
			t.Errorf("%s: no ports", who)
		}
		for j, r := range a.Ports {
			if r.Lo > r.Hi || !p.Zone.Contains(r.Lo) || !p.Zone.Contains(r.Hi) {
				t.Errorf("%s: range %v is reversed or outside the zone %v", who, r, p.Zone)
			}
			if j > 0 && int(r.Lo) <= int(a.Ports[j-1].Hi)+1 {
				t.Errorf("%s: ranges %v not sorted and merged", who, a.Ports)
			}
		}
	}
	// No port of one protocol belongs to two accounts: the pairwise check,
	// independent of checkOverlaps' sweep.
	for i, a := range p.Accounts {
		for _, b := range p.Accounts[i+1:] {
			for _, proto := range Protocols {
				if !a.HasProtocol(proto) || !b.HasProtocol(proto) {
					continue
				}
				for _, ra := range a.Ports {
					for _, rb := range b.Ports {
						if ra.Lo <= rb.Hi && rb.Lo <= ra.Hi {
							t.Errorf("accounts %q and %q share %s ports: %v and %v", a.Name, b.Name, proto, ra, rb)
						}
					}
				}
			}
		}
	}
}

func checkProtocols(t *testing.T, who string, ps []Protocol) {
	t.Helper()
	if len(ps) == 0 {
		t.Errorf("%s: no protocols", who)
	}
	last := -1
	for _, p := range ps {
		i := slices.Index(Protocols, p)
		if i <= last {
			t.Errorf("%s: protocols %v unknown, repeated or out of order", who, ps)
		}
		last = i
	}
}

// checkProblems fails t unless every problem names its file and prints as one
// line of plain text: nothing a policy file holds may break the one problem
// per line output or reach the terminal as a control character.
func checkProblems(t *testing.T, ve *ValidationError) {
	t.Helper()
	if len(ve.Problems) == 0 {
		t.Fatal("ValidationError without problems")
	}
	for _, p := range ve.Problems {
		if p.File == "" || p.Message == "" {
			t.Errorf("problem without a file or message: %#v", p)
		}
		for _, r := range p.String() {
			if r == '\n' || !unicode.IsPrint(r) && r != ' ' {
				t.Errorf("problem prints %q: %q", r, p.String())
				break
			}
		}
	}
	if got := strings.Count(ve.Error(), "\n") + 1; got != len(ve.Problems) {
		t.Errorf("%d problems print as %d lines", len(ve.Problems), got)
	}
}

// loadSplit is Load with every file that can be split into chunks (see
// the document package's split.go) split into chunks of one account.
func loadSplit(file string, opts ...Option) (*Policy, error) {
	return Load(file, append(opts, decodeWith(document.WithSplit(0, 0)))...)
}
