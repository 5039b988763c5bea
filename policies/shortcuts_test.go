package policies

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

// The names the loader accepts, as regular expressions: validTableName and
// validAccountName are these written out.
var (
	tableName   = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,31}$`)
	accountName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)
)

// TestValidTableName checks validTableName against the tableName regexp.
func TestValidTableName(t *testing.T) {
	names := []string{"", "a", "7", "_a", "a_", "nftpol", "a7_b", "a-b", "a b", "é", "a\x00",
		strings.Repeat("x", 31), strings.Repeat("x", 32), strings.Repeat("x", 33)}
	sameAsRegexp(t, "validTableName", validTableName, tableName, names, "aZ09_-. \n\xc3\xa9", 36, 5)
}

// TestValidAccountName checks validAccountName, which the loader uses for
// 50,000 names, against the accountName regexp it stands for.
func TestValidAccountName(t *testing.T) {
	names := []string{"", "a", "7", "site12", "-a", ".a", "_a", "@a", "a-", "a.b_c@d-e", "a b", "a\n", "é", "a\x00",
		strings.Repeat("x", 63), strings.Repeat("x", 64), strings.Repeat("x", 65)}
	sameAsRegexp(t, "validAccountName", validAccountName[string], accountName, names, "aZ09._@-/ \n\x00\xc3\xa9\"'", 70, 3)
}

// sameAsRegexp checks that valid answers as re does for names and for
// 200,000 random strings of alphabet, up to maxLen bytes long.
func sameAsRegexp(t *testing.T, what string, valid func(string) bool, re *regexp.Regexp, names []string, alphabet string, maxLen int, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed+1))
	for range 200000 {
		b := make([]byte, rng.IntN(maxLen))
		for i := range b {
			b[i] = alphabet[rng.IntN(len(alphabet))]
		}
		names = append(names, string(b))
	}
	for _, name := range names {
		if got, want := valid(name), re.MatchString(name); got != want {
			t.Fatalf("%s(%q) = %v, regexp says %v", what, name, got, want)
		}
	}
}
