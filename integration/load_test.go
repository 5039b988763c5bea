package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Two policies that both let alpha serve on flipP and both forbid it
// flipQ (beta's port), but differ in almost everything else: flipping
// between them adds and deletes elements of every set on each apply.
const (
	flipP = 40010
	flipQ = 40025
)

func flipPolicy(second bool) string {
	if !second {
		return `zone: 40010-49999
min_uid: 1000
accounts:
  - {name: alpha, uid: 1001, ports: ["40010-40019"]}
  - {name: beta,  uid: 1002, ports: ["40020-40029"], protocols: [tcp]}
  - {name: gamma, uid: 1003, ports: ["40030-40039"]}
`
	}
	return `zone: 40010-49999
min_uid: 1000
accounts:
  - {name: alpha, uid: 1001, ports: ["40010-40012", 40500]}
  - {name: beta,  uid: 1002, ports: ["40020-40029", 40600], protocols: [tcp, udp]}
  - {name: delta, uid: 1004, ports: ["40013-40019", "40040-40049"]}
`
}

// TestNoPacketSeesHalfAnApply: while apply flips between two policies again
// and again, bursts of connections to a port both allow and a port both
// forbid never see anything else: no packet meets a half-applied ruleset.
func TestNoPacketSeesHalfAnApply(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	probe := probePath(t)
	tp := newTopology(t)
	policies := []string{writePolicy(t, flipPolicy(false)), writePolicy(t, flipPolicy(true))}
	state := t.TempDir()
	nftpolRun{bin: bin, config: policies[0], netns: tp.Server, stateDir: state}.apply(t)
	tp.Listen(t, uidAlpha, "tcp", ServerIPv4, flipP)
	tp.Listen(t, uidAlpha, "tcp", ServerIPv4, flipQ)

	// 100 applies, paced so that they span many bursts; meanwhile one loop
	// bursts at flipP and one at flipQ until the applies are done. A burst
	// at flipQ lasts its timeout (the SYN-ACK never leaves), so it sends
	// more connections at once.
	const applies = 100
	const pace = 100 * time.Millisecond
	done := make(chan struct{})
	var applyErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(done)
		for i := 1; i <= applies; i++ {
			n := nftpolRun{bin: bin, config: policies[i%2], netns: tp.Server, stateDir: state}
			if stdout, stderr, code := n.run(t, "apply"); code != 0 {
				applyErr = fmt.Errorf("apply %d exited %d:\n%s\n%s", i, code, stdout, stderr)
				return
			}
			time.Sleep(pace)
		}
	})
	type tally struct{ ok, refused, timeout, other, bursts int }
	burst := func(port, n int, into *tally) {
		ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", tp.Client, probe, "burst",
			"-proto", "tcp", "-addr", ServerIPv4, "-port", fmt.Sprint(port),
			"-n", fmt.Sprint(n), "-concurrency", fmt.Sprint(n), "-timeout", "400ms").CombinedOutput()
		if err != nil {
			t.Errorf("burst to %d: %v\n%s", port, err, out)
			return
		}
		var ok, refused, timeout, other int
		if _, err := fmt.Sscanf(string(out), "ok %d refused %d timeout %d other %d", &ok, &refused, &timeout, &other); err != nil {
			t.Errorf("burst output %q: %v", out, err)
			return
		}
		if other > 0 {
			t.Logf("burst to %d: %s", port, out)
		}
		into.ok += ok
		into.refused += refused
		into.timeout += timeout
		into.other += other
		into.bursts++
	}
	var p, q tally
	loop := func(port, n int, into *tally) {
		for {
			select {
			case <-done:
				return
			default:
			}
			burst(port, n, into)
			time.Sleep(20 * time.Millisecond)
		}
	}
	wg.Go(func() { loop(flipP, 50, &p) })
	wg.Go(func() { loop(flipQ, 100, &q) })
	wg.Wait()
	if applyErr != nil {
		t.Fatal(applyErr)
	}
	t.Logf("%d applies flipping two policies; port %d (allowed in both): %d bursts, %d attempts: %d ok, %d refused, %d timeout, %d other; "+
		"port %d (forbidden in both): %d bursts, %d attempts: %d accepted, %d refused, %d timeout, %d other",
		applies, flipP, p.bursts, p.ok+p.refused+p.timeout+p.other, p.ok, p.refused, p.timeout, p.other,
		flipQ, q.bursts, q.ok+q.refused+q.timeout+q.other, q.ok, q.refused, q.timeout, q.other)
	if p.refused+p.timeout+p.other != 0 {
		t.Errorf("port %d, allowed by both policies, failed %d times", flipP, p.refused+p.timeout+p.other)
	}
	if q.ok != 0 {
		t.Errorf("port %d, forbidden by both policies, was reached %d times", flipQ, q.ok)
	}
	if p.ok == 0 {
		t.Error("no connection was made: the test proves nothing")
	}
}

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
exec %[2]s --config %[3]s --netns %[4]s --state-dir %[1]s apply`, state, bin, n.config, ns)
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
