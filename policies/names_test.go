package policies

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nftpol/nftpol/rules"
)

// TestAccountNamesReachingTheKernel: an account's name becomes the comment
// of its set elements. The loader refuses every name that would need
// sanitising there (rules.SanitizeComment, the last line of defence) or that
// would not fit, and says so by the name field.
func TestAccountNamesReachingTheKernel(t *testing.T) {
	bad := []string{
		`site"12`, "site\n12", "site\r12", "site\x1b[31m", `site\12`, "site 12", "site\t12",
		"site12\x00", "sité12", "日本", "a\u202eb", "'site12'", "site;12", "$(reboot)", "`id`",
		"-site12", ".site12", "@site12", "",
		strings.Repeat("x", 65), strings.Repeat("x", rules.MaxCommentLen+1),
	}
	for _, name := range bad {
		dir := writeFiles(t, map[string]string{"policy.json": `{"accounts": [{"name": ` + jsonString(name) + `, "uid": 1012, "ports": [40010]}]}`})
		_, err := Load(filepath.Join(dir, "policy.json"), WithLookup(fakeLookup))
		var ve *ValidationError
		if !errors.As(err, &ve) {
			t.Errorf("name %q: Load() = %v, want a *ValidationError", name, err)
			continue
		}
		found := false
		for _, p := range ve.Problems {
			if p.Field == "name" || strings.HasSuffix(p.Field, ".name") {
				found = true
			}
		}
		if !found {
			t.Errorf("name %q: no problem with the name field:\n%v", name, err)
		}
	}

	good := []string{"site12", "a", "7", "site-12.example.org", "user@example.org", "A_b", strings.Repeat("x", 64)}
	for _, name := range good {
		dir := writeFiles(t, map[string]string{"policy.json": `{"accounts": [{"name": ` + jsonString(name) + `, "uid": 1012, "ports": [40010]}]}`})
		p, err := Load(filepath.Join(dir, "policy.json"), WithLookup(fakeLookup))
		if err != nil {
			t.Errorf("name %q: %v", name, err)
			continue
		}
		got := p.Accounts[0].Name
		if rules.SanitizeComment(got) != got || len(got) > rules.MaxCommentLen || rules.Quote(got) != `"`+got+`"` {
			t.Errorf("name %q would be changed on its way to the kernel", got)
		}
	}
}

// jsonString quotes s for JSON (which, unlike Go, has no \x escapes).
func jsonString(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20:
			b.WriteString(`\u00`)
			b.WriteByte("0123456789abcdef"[r>>4])
			b.WriteByte("0123456789abcdef"[r&15])
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// TestReservedTableNames: nft keywords are refused as table names, the same
// words in another case are not.
func TestReservedTableNames(t *testing.T) {
	for _, name := range []string{"counter", "table", "inet", "ip6", "log", "destroy", "vxlan"} {
		if !reservedTableNames[name] {
			t.Errorf("%q is not reserved", name)
		}
	}
	for _, name := range []string{"nftpol", "filter", "nat", "Counter", "web_fw"} {
		if reservedTableNames[name] {
			t.Errorf("%q is reserved, but nft reads it as a name", name)
		}
		dir := writeFiles(t, map[string]string{"policy.yaml": "table: " + name + "\naccounts: []\n"})
		if _, err := Load(filepath.Join(dir, "policy.yaml")); err != nil {
			t.Errorf("table %q: %v", name, err)
		}
	}
}

// TestProblemStringPlain: whatever a file name or a key holds, a problem
// prints as one line without control characters.
func TestProblemStringPlain(t *testing.T) {
	p := Problem{File: "/etc/nftpol/policies.d/a\nb\x1b[2J.yaml", Account: "x\ny", Field: "k\rey", Message: "m"}
	want := `"/etc/nftpol/policies.d/a\nb\x1b[2J.yaml": account "x\ny": "k\rey": m`
	if got := p.String(); got != want {
		t.Errorf("String() = %s\nwant       %s", got, want)
	}
	if got := printable("yaml: line 1: \x1b[31m\xff\u00e9\u2028"); got != `yaml: line 1: \x1b[31m\xffé\u2028` {
		t.Errorf("printable = %s", got)
	}
}

// TestPortRangeString: a range prints the way a policy file writes it, which
// messages quote back to the reader.
func TestPortRangeString(t *testing.T) {
	for _, tc := range []struct {
		r    PortRange
		want string
	}{
		{PortRange{40500, 40500}, "40500"},
		{PortRange{40010, 40019}, "40010-40019"},
		{PortRange{1, 65535}, "1-65535"},
		{PortRange{}, "0"},
	} {
		if got := tc.r.String(); got != tc.want {
			t.Errorf("%#v.String() = %q, want %q", tc.r, got, tc.want)
		}
	}
}
