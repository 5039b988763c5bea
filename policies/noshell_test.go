package policies

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestNothingRunsPrograms: the packages that carry policy data from the
// files to the kernel (this one, the compiler, the ruleset model and its
// netlink encoder) start no programs at all, so nothing from a policy can
// reach a shell. A tripwire: should one of them ever need os/exec, the
// arguments it builds from the policy need a review first.
func TestNothingRunsPrograms(t *testing.T) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go command not found")
	}
	pkgs := []string{"github.com/nftpol/nftpol/policies", "github.com/nftpol/nftpol/compiler",
		"github.com/nftpol/nftpol/rules", "github.com/nftpol/nftpol/rules/kernel"}
	out, err := exec.Command(gobin, append([]string{"list", "-deps"}, pkgs...)...).Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if slices.Contains(deps, "os/exec") {
		t.Errorf("os/exec is among the dependencies of %s", strings.Join(pkgs, ", "))
	}
}
