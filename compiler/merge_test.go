package compiler

import (
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
)

// TestShortcuts checks the shortcuts Compile takes for 50,000 accounts
// against what they stand for: ports isMerged accepts are what Merge makes of
// them, and elementComment is rules.SanitizeComment.
func TestShortcuts(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 100000 {
		rs := make([]policies.PortRange, rng.IntN(4))
		reversed := false
		for i := range rs {
			lo := uint16(rng.IntN(20) + 65520)
			rs[i] = policies.PortRange{Lo: lo, Hi: lo + uint16(rng.IntN(int(65535-lo)+1))}
			if rng.IntN(10) == 0 {
				rs[i].Lo, rs[i].Hi = rs[i].Hi, rs[i].Lo
				reversed = reversed || rs[i].Lo != rs[i].Hi
			}
		}
		if isMerged(rs) && len(rs) > 0 && !slices.Equal(Merge(rs), rs) {
			t.Fatalf("isMerged(%v), but Merge gives %v", rs, Merge(rs))
		}
		if m := Merge(rs); !reversed && len(m) > 0 && !isMerged(m) {
			t.Fatalf("Merge(%v) = %v, which isMerged refuses", rs, m)
		}
	}
	for _, name := range []string{"", "site12", "a b", `a"b`, `a\b`, "a\nb", "é", "\x7f", "~", strings.Repeat("x", rules.MaxCommentLen), strings.Repeat("x", rules.MaxCommentLen+1)} {
		if got, want := elementComment(name), rules.SanitizeComment(name); got != want {
			t.Errorf("elementComment(%q) = %q, want %q", name, got, want)
		}
	}
}
