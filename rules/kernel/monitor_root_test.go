//go:build linux

package kernel

import (
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nftpol/nftpol/rules"
)

// requireRootNft skips the test unless it runs as root with nft and ip at
// hand; under CI (CI=true) it fails instead, as integration/ does: CI
// must never pass by skipping.
func requireRootNft(t testing.TB) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range []string{"nft", "ip"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := "the kernel tests need " + strings.Join(missing, ", ")
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: not skipping)")
	}
	t.Skip(msg)
}

var nsSeq atomic.Int64

// throwawayNetns creates a network namespace deleted when the test ends:
// the tests never touch the host's ruleset.
func throwawayNetns(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("nftpol-kt-%d-%d", os.Getpid(), nsSeq.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name
}

// nftIn runs nft with script on stdin (nft -f -) inside ns, and returns
// its pid and when it ended.
func nftIn(t testing.TB, ns, script string) (int, time.Time) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("nft -f - in %s: %v: %s\nscript:\n%.500s", ns, err, out.String(), script)
	}
	return cmd.Process.Pid, time.Now()
}

const monitorTable = `
table inet nftpol {
	set s { type inet_service; elements = { 1, 2, 3 } }
	chain c {
		type filter hook output priority 0;
		tcp dport @s accept
	}
}
`

// nextChange waits for the watcher's next change; none within d fails.
func nextChange(t testing.TB, w *Watcher, d time.Duration) (Change, time.Time) {
	t.Helper()
	select {
	case c, ok := <-w.Changes():
		if !ok {
			t.Fatal("the change channel closed")
		}
		return c, time.Now()
	case <-time.After(d):
		t.Fatalf("no change within %v", d)
	}
	panic("unreachable")
}

// noChange asserts that nothing is reported within d.
func noChange(t testing.TB, w *Watcher, d time.Duration) {
	t.Helper()
	select {
	case c := <-w.Changes():
		t.Fatalf("unexpected change: %v", c)
	case <-time.After(d):
	}
}

func openNS(t testing.TB, ns string) *Kernel {
	t.Helper()
	k, err := Open(WithNetNS(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k
}

func watch(t testing.TB, k *Kernel, opts ...WatchOption) *Watcher {
	t.Helper()
	w, err := k.Watch("nftpol", opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// The pid nft commits with: `ip netns exec` execs nft in its own
// process, so the pid of the command is nft's.
func TestWatchRealKernel(t *testing.T) {
	requireRootNft(t)
	ns := throwawayNetns(t)
	nftIn(t, ns, monitorTable)
	k := openNS(t, ns)
	w := watch(t, k)

	t.Run("delete element", func(t *testing.T) {
		pid, _ := nftIn(t, ns, "delete element inet nftpol s { 2 }\n")
		c, _ := nextChange(t, w, 2*time.Second)
		gen, err := k.Generation()
		if err != nil {
			t.Fatal(err)
		}
		if c.Kinds != ElementsDeleted || c.Events != 1 || c.Transactions != 1 || c.Own != 0 || !c.Foreign() || c.Lost {
			t.Errorf("change %v, want one foreign transaction deleting one element", c)
		}
		if c.By.PID != uint32(pid) || c.By.Comm != "nft" || c.Generation != gen {
			t.Errorf("change %v, want by nft[%d] at generation %d", c, pid, gen)
		}
		if c.By.Port == 0 {
			t.Errorf("change %v: no committer port", c)
		}
	})

	t.Run("other table ignored", func(t *testing.T) {
		nftIn(t, ns, "add table inet other\nadd set inet other s { type inet_service; }\nadd element inet other s { 7 }\n")
		nftIn(t, ns, "add table ip nftpol\n") // same name, other family
		noChange(t, w, 200*time.Millisecond)
	})

	t.Run("flush ruleset", func(t *testing.T) {
		pid, end := nftIn(t, ns, "flush ruleset\n")
		c, at := nextChange(t, w, 2*time.Second)
		t.Logf("flush ruleset: %v, reported %v after nft exited", c, at.Sub(end))
		want := TableDeleted | ChainDeleted | SetDeleted | RuleDeleted
		if c.Kinds != want || c.Transactions != 1 || c.By.PID != uint32(pid) || c.By.Comm != "nft" {
			t.Errorf("change %v, want kinds %v in one transaction by nft[%d]", c, want, pid)
		}
	})

	t.Run("own apply", func(t *testing.T) {
		rs := bigRuleset(3)
		if _, err := k.Apply(rules.SyncExact(nil, rs).Plan, 0); err != nil {
			t.Fatal(err)
		}
		port, err := k.CommitPort()
		if err != nil {
			t.Fatal(err)
		}
		c, _ := nextChange(t, w, 2*time.Second)
		// NFTA_GEN_PROC_PID is the committing thread's id.
		_, err = os.Stat(fmt.Sprintf("/proc/self/task/%d", c.By.PID))
		if c.Transactions != 1 || c.Own != 1 || c.Foreign() || c.By.Port != port || err != nil {
			t.Errorf("change %v, want one own transaction from port %d by a thread of ours (%v)", c, port, err)
		}
		if c.Kinds&(TableAdded|SetAdded|ElementsAdded) != TableAdded|SetAdded|ElementsAdded {
			t.Errorf("change %v, want table, set and elements added", c)
		}
		// Our deletion is ours too.
		if err := k.Delete("nftpol"); err != nil {
			t.Fatal(err)
		}
		c, _ = nextChange(t, w, 2*time.Second)
		if c.Own != 1 || c.Foreign() || c.Kinds&TableDeleted == 0 {
			t.Errorf("change %v, want our own table deletion", c)
		}
	})

	t.Run("slow consumer coalesces", func(t *testing.T) {
		nftIn(t, ns, monitorTable)
		for i := 10; i < 15; i++ {
			nftIn(t, ns, fmt.Sprintf("add element inet nftpol s { %d }\n", i))
		}
		time.Sleep(100 * time.Millisecond)
		var got Change
		for got.Transactions < 6 {
			c, _ := nextChange(t, w, 2*time.Second)
			got.merge(c)
		}
		if got.Transactions != 6 || got.Kinds&ElementsAdded == 0 || got.Kinds&TableAdded == 0 {
			t.Errorf("merged %v, want 6 transactions", got)
		}
		noChange(t, w, 100*time.Millisecond)
	})
}

// TestWatchOverflow makes the socket overflow with a tiny receive buffer:
// the watcher must say events were lost and keep watching.
func TestWatchOverflow(t *testing.T) {
	requireRootNft(t)
	ns := throwawayNetns(t)
	nftIn(t, ns, monitorTable)
	k := openNS(t, ns)
	// The reader waits until the burst is in: the buffer overflows
	// however fast this machine reads.
	stall := make(chan struct{})
	w := watch(t, k, WatchBuffer(4096), func(c *watchConfig) { c.stall = stall })
	nftIn(t, ns, elementScript(5000))
	close(stall)
	c, _ := nextChange(t, w, 2*time.Second)
	if !c.Lost || !c.Foreign() {
		t.Fatalf("change %v, want lost events", c)
	}
	// Drain what else came of the burst, then the watch goes on.
	for {
		select {
		case <-w.Changes():
			continue
		case <-time.After(100 * time.Millisecond):
		}
		break
	}
	// The next transaction closes what arrived of the burst after the
	// overflow, if its NEWGEN was lost: it may be Lost too.
	nftIn(t, ns, "delete element inet nftpol s { 1 }\n")
	if c, _ = nextChange(t, w, 2*time.Second); c.Kinds&ElementsDeleted == 0 {
		t.Errorf("change after the overflow %v, want an element deleted", c)
	}
	pid, _ := nftIn(t, ns, "delete element inet nftpol s { 2 }\n")
	c, _ = nextChange(t, w, 2*time.Second)
	if c.Lost || c.Kinds != ElementsDeleted || c.By.PID != uint32(pid) {
		t.Errorf("change after the overflow %v, want one element deleted by nft[%d]", c, pid)
	}
}

// elementScript adds n elements (ports 1000...) to set s.
func elementScript(n int) string {
	var b strings.Builder
	b.WriteString("add element inet nftpol s { ")
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d", 1000+i)
	}
	b.WriteString(" }\n")
	return b.String()
}

// TestWatchMeasure measures the notification latency of `nft flush
// ruleset` and the cost of a 50,000-element change. NFTPOL_MEASURE=1.
func TestWatchMeasure(t *testing.T) {
	if os.Getenv("NFTPOL_MEASURE") == "" {
		t.Skip("NFTPOL_MEASURE=1 runs the measurements")
	}
	requireRootNft(t)
	ns := throwawayNetns(t)
	k := openNS(t, ns)
	w := watch(t, k)

	var lat []time.Duration
	for i := 0; i < 50; i++ {
		nftIn(t, ns, monitorTable)
		nextChange(t, w, 2*time.Second)
		_, end := nftIn(t, ns, "flush ruleset\n")
		c, at := nextChange(t, w, 2*time.Second)
		if c.Kinds&TableDeleted == 0 {
			t.Fatalf("change %v", c)
		}
		lat = append(lat, at.Sub(end))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("flush ruleset: nft exit -> change received: min %v median %v p90 %v max %v (negative: before nft exited)",
		lat[0], lat[len(lat)/2], lat[len(lat)*9/10], lat[len(lat)-1])

	// 50,000 elements added by nft.
	nftIn(t, ns, monitorTable)
	nextChange(t, w, 2*time.Second)
	script := elementScript(50000)
	before := w.Stats()
	start := time.Now()
	_, end := nftIn(t, ns, script)
	c, at := nextChange(t, w, 10*time.Second)
	after := w.Stats()
	t.Logf("nft add 50,000 elements: nft ran %v, change %v received %v after nft exited", end.Sub(start), c, at.Sub(end))
	t.Logf("  reader: %d datagrams, %d messages, %d bytes, busy %v",
		after.Datagrams-before.Datagrams, after.Messages-before.Messages, after.Bytes-before.Bytes, after.Busy-before.Busy)

	// The Kernel's own apply of 50,000 accounts, with and without a
	// listener (the kernel builds the notifications only for listeners).
	nftIn(t, ns, "flush ruleset\n")
	nextChange(t, w, 2*time.Second)
	rs := bigRuleset(50000)
	applyTime := func() time.Duration {
		start := time.Now()
		if _, err := k.Apply(rules.SyncExact(nil, rs).Plan, 0); err != nil {
			t.Fatal(err)
		}
		return time.Since(start)
	}
	before = w.Stats()
	with := applyTime()
	c, _ = nextChange(t, w, 10*time.Second)
	after = w.Stats()
	t.Logf("own Apply of 50,000 accounts with a watcher: %v; change %v; reader: %d datagrams, %d messages, %d bytes, busy %v",
		with, c, after.Datagrams-before.Datagrams, after.Messages-before.Messages, after.Bytes-before.Bytes, after.Busy-before.Busy)
	// Paused: the Watcher leaves the group for the commit.
	if err := k.Delete("nftpol"); err != nil {
		t.Fatal(err)
	}
	nextChange(t, w, 2*time.Second)
	gen, err := k.Generation()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Pause(); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if _, err := k.Apply(rules.SyncExact(nil, rs).Plan, gen); err != nil {
		t.Fatal(err)
	}
	paused := time.Since(start)
	if err := w.Resume(NextGeneration(gen)); err != nil {
		t.Fatal(err)
	}
	t.Logf("own Apply of 50,000 accounts, watcher paused: %v", paused)
	noChange(t, w, 100*time.Millisecond)

	// A whole heal as the agent would do it, minus its planning: nft
	// flush ruleset, the change, a paused Apply of the full table.
	var heals []time.Duration
	for i := 0; i < 5; i++ {
		_, end := nftIn(t, ns, "flush ruleset\n")
		c, _ := nextChange(t, w, 2*time.Second)
		if err := w.Pause(); err != nil {
			t.Fatal(err)
		}
		if _, err := k.Apply(rules.SyncExact(nil, rs).Plan, c.Generation); err != nil {
			t.Fatal(err)
		}
		heals = append(heals, time.Since(end))
		if err := w.Resume(NextGeneration(c.Generation)); err != nil {
			t.Fatal(err)
		}
	}
	sort.Slice(heals, func(i, j int) bool { return heals[i] < heals[j] })
	t.Logf("heal at 50,000 accounts (flush ruleset exit -> paused full Apply done): %v", heals)
	noChange(t, w, 100*time.Millisecond)

	w.Close()
	if err := k.Delete("nftpol"); err != nil {
		t.Fatal(err)
	}
	without := applyTime()
	t.Logf("own Apply of 50,000 accounts without a watcher: %v", without)
}

// TestWatchPause: a commit by somebody else while paused is reported at
// Resume, as lost events; our own is not.
func TestWatchPause(t *testing.T) {
	requireRootNft(t)
	ns := throwawayNetns(t)
	nftIn(t, ns, monitorTable)
	k := openNS(t, ns)
	w := watch(t, k)

	gen, err := k.Generation()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := k.Delete("nftpol"); err != nil {
		t.Fatal(err)
	}
	if err := w.Resume(NextGeneration(gen)); err != nil {
		t.Fatal(err)
	}
	noChange(t, w, 100*time.Millisecond)

	if err := w.Pause(); err != nil {
		t.Fatal(err)
	}
	nftIn(t, ns, monitorTable)
	if err := w.Resume(NextGeneration(gen)); err != nil {
		t.Fatal(err)
	}
	c, _ := nextChange(t, w, time.Second)
	if !c.Lost || c.Generation != NextGeneration(NextGeneration(gen)) {
		t.Errorf("change %v, want lost events at generation %d", c, gen+2)
	}
	// Watching again.
	nftIn(t, ns, "delete element inet nftpol s { 3 }\n")
	c, _ = nextChange(t, w, time.Second)
	if c.Lost || c.Kinds != ElementsDeleted {
		t.Errorf("change %v, want an element deleted", c)
	}
}
