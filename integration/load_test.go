package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestStateFullAfterCommit: the kernel accepted the batch but the state
// cannot be written (its file system is full). apply fails saying exactly
// that; the next apply and restore still do the right thing.
func TestStateFullAfterCommit(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("unshare"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("unshare (util-linux) is missing")
		}
		t.Skip("unshare missing")
	}
	bin := buildBinary(t, "cmd/nftpol")
	ns := newNetns(t, "full")
	state := filepath.Join(t.TempDir(), "state")
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: ns, stateDir: state}
	n.apply(t)
	n.setPolicy(t, contractPolicyGamma)

	// In a private mount namespace, a full 8 KiB tmpfs hides the state
	// directory: room for the lock file, none for the new state.
	script := fmt.Sprintf(`set -e
mount -t tmpfs -o size=8k,mode=0700 nftpol-test %[1]s
dd if=/dev/zero of=%[1]s/filler bs=1k count=64 2>/dev/null || true
exec %[2]s --config %[3]s --netns %[4]s --state-dir %[1]s --run-dir %[1]s.run apply`, state, bin, n.config, ns)
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "unshare", "--mount", "--propagation", "private", "sh", "-c", script).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("apply with a full state directory: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "the kernel is updated, but recording it") {
		t.Errorf("the error does not say the kernel was updated and the state was not:\n%s", out)
	}
	if got := nftStateless(t, ns); !strings.Contains(got, `"gamma"`) {
		t.Errorf("the kernel did not get the change:\n%s", got)
	}

	// The real state directory still holds the previous apply. The next
	// apply must see that the kernel moved on (no shortcut through the
	// stale state), change nothing and record the state.
	p, _ := n.runJSON(t, 0, "apply", "-o", "json")
	if p.Changes || p.KernelRead != "full" {
		t.Errorf("the apply after the failed record: changes=%v kernel_read=%q, want no changes from a full read", p.Changes, p.KernelRead)
	}
	// And restore installs the new ruleset into a fresh namespace.
	fresh := newNetns(t, "full-b")
	if stdout, stderr, code := (nftpolRun{bin: bin, config: n.config, netns: fresh, stateDir: state}).run(t, "restore"); code != 0 {
		t.Fatalf("restore: %d\n%s\n%s", code, stdout, stderr)
	}
	if got, want := nftStateless(t, fresh), nftStateless(t, ns); got != want {
		t.Errorf("restored:\n%s\nwant:\n%s", got, want)
	}
}
