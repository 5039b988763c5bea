package agent

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/reconcile"
	"github.com/nftpol/nftpol/rules"
)

func policyOf(uids ...uint32) *policies.Policy {
	p := &policies.Policy{}
	for _, u := range uids {
		p.Accounts = append(p.Accounts, &policies.Account{Name: fmt.Sprintf("a%d", u), UID: u,
			Ports: []policies.PortRange{{Lo: uint16(40000 + u), Hi: uint16(40000 + u)}}})
	}
	return p
}

func uids(from, to uint32) []uint32 {
	var out []uint32
	for u := from; u < to; u++ {
		out = append(out, u)
	}
	return out
}

// TestBurstOfRemovals: accounts removed one change at a time are judged
// against the accounts of the burst's start, so deleting the include
// files one by one stops at half of them, while the same removals spread
// wider apart than the burst window pass.
func TestBurstOfRemovals(t *testing.T) {
	var r removals
	now := time.Unix(1e9, 0)
	installed := policyOf(uids(1, 21)...) // 20 accounts
	step := 0
	for n := 20; n > 0; n-- {
		next := policyOf(uids(1, uint32(n))...) // one fewer
		removes, err := r.check(now, installed, next)
		removed := 21 - n
		if want := 2*removed > 20; (err != nil) != want {
			t.Fatalf("removing %d of 20 one at a time: refused %v, want %v (%v)", removed, err != nil, want, err)
		}
		if err != nil {
			if !strings.Contains(err.Error(), "refusing to remove 11 of the 20 accounts") || !strings.Contains(err.Error(), "--allow-removals") {
				t.Errorf("refusal says %q", err)
			}
			break
		}
		if !removes {
			t.Fatalf("step %d removes an account, check says it does not", step)
		}
		r.applied(now, installed, removes)
		installed = next
		now = now.Add(time.Second)
		step++
	}
	if step != 10 {
		t.Errorf("%d removals passed, want 10", step)
	}
	// Once the burst is over (no removal for longer than the window),
	// the accounts installed then are the new base.
	now = now.Add(burstWindow + time.Second)
	next := policyOf(uids(1, 9)...)
	if _, err := r.check(now, installed, next); err != nil {
		t.Errorf("after the window: %v", err)
	}
	// An operator's confirmation ends the burst.
	r.reset()
	if _, err := r.check(now, policyOf(uids(1, 30)...), policyOf(1)); err == nil {
		t.Error("removing 28 of 29 at once passed")
	}
	// Few accounts: never refused.
	if _, err := r.check(now, policyOf(uids(1, 10)...), policyOf()); err != nil {
		t.Errorf("9 accounts removed: %v", err)
	}
}

// TestSocketServesRoot: a command sent to the agent's socket runs there,
// its stdout, stderr and exit code come back as written; a caller that is
// not root is refused; a socket nobody serves is no agent.
func TestSocketServesRoot(t *testing.T) {
	dir := t.TempDir()
	var log bytes.Buffer
	a := New(Config{StateDir: dir, Log: slog.New(slog.NewTextHandler(&log, nil)),
		Settings: map[string]string{"config": "/etc/nftpol/nftpol.yaml"},
		Serve: func(_ context.Context, _ *Host, req Request, stdout, stderr io.Writer) int {
			fmt.Fprintf(stdout, "ran %s\n", strings.Join(req.Args, " "))
			fmt.Fprintf(stderr, "warning\n")
			stdout.Write(bytes.Repeat([]byte("x"), 3<<20)) // more than one frame
			return 3
		}})
	ln, err := a.listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.accept(ctx, ln)
	go func() {
		for {
			select {
			case s := <-a.requests:
				a.serve(ctx, s)
			case <-ctx.Done():
				return
			}
		}
	}()
	if fi, err := os.Stat(filepath.Join(dir, SocketName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket: %v, mode %v; want 0600", err, fi.Mode())
	}
	var out, errOut bytes.Buffer
	code, err := Forward(dir, Request{Args: []string{"plan", "-o", "json"}, Settings: map[string]string{"config": "/etc/nftpol/nftpol.yaml"}}, &out, &errOut)
	if err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		if code != 1 || !strings.Contains(errOut.String(), "is not root") {
			t.Errorf("non-root caller: exit %d, stderr %q; want 1 and a refusal", code, errOut.String())
		}
	} else {
		if code != 3 || !strings.HasPrefix(out.String(), "ran plan -o json\n") || out.Len() != len("ran plan -o json\n")+3<<20 || errOut.String() != "warning\n" {
			t.Errorf("exit %d, stdout %.40q (%d bytes), stderr %q", code, out.String(), out.Len(), errOut.String())
		}
		// Another policy file than the agent's: refused, saying so.
		out.Reset()
		errOut.Reset()
		code, err = Forward(dir, Request{Args: []string{"apply"}, Settings: map[string]string{"config": "/tmp/other.yaml"}}, &out, &errOut)
		if err != nil || code != 1 || !strings.Contains(errOut.String(), `works with --config "/etc/nftpol/nftpol.yaml", not "/tmp/other.yaml"`) || out.Len() != 0 {
			t.Errorf("other config: %v, exit %d, stderr %q, stdout %q", err, code, errOut.String(), out.String())
		}
	}
	ln.Close()
	if _, err := Forward(dir, Request{}, io.Discard, io.Discard); !errors.Is(err, ErrNoAgent) {
		t.Errorf("no socket: %v, want ErrNoAgent", err)
	}
	// A socket file left by an agent that died: nobody listens.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, SocketName), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := Forward(dir, Request{}, io.Discard, io.Discard); !errors.Is(err, ErrNoAgent) {
		t.Errorf("stale socket: %v, want ErrNoAgent", err)
	}
}

// TestSecondAgentRefused: the agent lock names the agent that holds it.
func TestSecondAgentRefused(t *testing.T) {
	dir := t.TempDir()
	first, err := acquire(dir)
	if err != nil {
		t.Fatal(err)
	}
	_, err = acquire(dir)
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("another nftpol watch serves the state directory %s (pid %d, since ", dir, os.Getpid())) {
		t.Fatalf("second agent: %v", err)
	}
	first.release()
	again, err := acquire(dir)
	if err != nil {
		t.Fatalf("after the first released: %v", err)
	}
	again.release()
}

// TestFilesCoalesce: changes that arrive while the agent is busy wait
// together for the next take, and only the main file and the include
// directory count.
func TestFilesCoalesce(t *testing.T) {
	dir := t.TempDir()
	inc := filepath.Join(dir, "policies.d")
	if err := os.Mkdir(inc, 0o755); err != nil {
		t.Fatal(err)
	}
	main := filepath.Join(dir, "nftpol.yaml")
	os.WriteFile(main, []byte("zone: 40010-49999\n"), 0o644)
	f, err := newFiles(main, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	f.follow(inc)
	if _, all := f.take(); !all {
		t.Error("a newly followed include directory does not ask for a full read")
	}
	os.WriteFile(filepath.Join(dir, "unrelated"), []byte("x"), 0o644)
	for i := range 3 {
		tmp := filepath.Join(inc, fmt.Sprintf(".a%d.tmp", i))
		os.WriteFile(tmp, []byte("accounts: []\n"), 0o644)
		os.Rename(tmp, filepath.Join(inc, fmt.Sprintf("a%d.yaml", i)))
	}
	os.WriteFile(main, []byte("zone: 40010-49998\n"), 0o644)
	deadline := time.After(5 * time.Second)
	seen := map[string]bool{}
	for !seen[main] || !seen[filepath.Join(inc, "a2.yaml")] {
		select {
		case <-f.wake:
		case <-deadline:
			t.Fatalf("changes seen: %v", seen)
		}
		changed, _ := f.take()
		for _, c := range changed {
			seen[c] = true
		}
	}
	if seen[filepath.Join(dir, "unrelated")] {
		t.Error("a file beside the main file counts as a change")
	}
	for i := range 3 {
		if p := filepath.Join(inc, fmt.Sprintf("a%d.yaml", i)); !seen[p] {
			t.Errorf("%s not reported", p)
		}
	}
}

func TestSummary(t *testing.T) {
	items := []string{"a", "b", "c", "d"}
	if got := summary(items, 6); got != "a; b; c; d; and 2 more" {
		t.Errorf("summary of 6: %q", got)
	}
	if got := summary(items, 4); got != "a; b; c; d" {
		t.Errorf("summary of 4: %q", got)
	}
}

// TestFilesSync: once sync returns, every change made before it is among
// the changed paths (no sleep, no race), the marker is not, and peek
// leaves them for take.
func TestFilesSync(t *testing.T) {
	dir := t.TempDir()
	main := filepath.Join(dir, "nftpol.yaml")
	if err := os.WriteFile(main, []byte("accounts: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := newFiles(main, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	for i := range 20 {
		if err := os.WriteFile(main, fmt.Appendf(nil, "accounts: [] # %d\n", i), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := f.sync(time.Second); err != nil {
			t.Fatal(err)
		}
		changed, _ := f.peek()
		if !slices.Contains(changed, main) || slices.ContainsFunc(changed, func(p string) bool { return strings.Contains(p, syncMarker) }) {
			t.Fatalf("round %d: changed after sync %q, want %s only", i, changed, main)
		}
		if again, _ := f.take(); !slices.Equal(again, changed) {
			t.Fatalf("round %d: peek took the changes: take gave %q", i, again)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, syncMarker)); !os.IsNotExist(err) {
		t.Errorf("the marker is left behind: %v", err)
	}
}

// TestRemovalsJudgeUIDs: the guard counts UIDs given ports, whatever order
// a policy holds its accounts in; accounts without ports are not enforced,
// so losing them is no removal; a burst that ended forgets its accounts.
func TestRemovalsJudgeUIDs(t *testing.T) {
	var r removals
	now := time.Unix(1e9, 0)
	installed := policyOf(uids(1, 21)...)
	slices.Reverse(installed.Accounts) // not in UID order
	next := policyOf(uids(1, 10)...)   // 11 of 20 gone
	next.Accounts = append(next.Accounts, &policies.Account{Name: "a15", UID: 15})
	if _, err := r.check(now, installed, next); err == nil || !strings.Contains(err.Error(), "refusing to remove 11 of the 20") ||
		!strings.Contains(err.Error(), "a15 (uid 15)") || !strings.Contains(err.Error(), "and 1 more") {
		t.Errorf("11 of 20 gone, one of them left without ports: %v", err)
	}
	// Ten gone is half: allowed, and it begins a burst.
	ten := policyOf(uids(1, 11)...)
	removes, err := r.check(now, installed, ten)
	if err != nil || !removes {
		t.Fatalf("10 of 20: removes %v, %v", removes, err)
	}
	r.applied(now, installed, removes)
	if len(r.base) != 20 || r.last != now {
		t.Fatalf("after a removal: base of %d, last %v; want 20 and %v", len(r.base), r.last, now)
	}
	// A change that removes nothing, after the window, ends it.
	// Within the burst, a change that removes nothing more says so,
	// though the burst's base lost accounts.
	if removes, err := r.check(now, ten, ten); err != nil || removes {
		t.Errorf("nothing more removed in the burst: removes %v, %v", removes, err)
	}
	later := now.Add(burstWindow + time.Second)
	r.applied(later, ten, r.removes(ten, ten))
	if r.base != nil {
		t.Errorf("the burst ended, its %d accounts are still held", len(r.base))
	}
}

// BenchmarkRemovals50k: what the guard costs on each change at 50,000
// accounts (one moved): between policies that share the accounts no file
// change touched, as the Cache's do, and between policies that share none
// (a full read).
func BenchmarkRemovals50k(b *testing.B) {
	installed := policyOf(uids(1000, 51000)...)
	apart := policyOf(uids(1000, 51000)...)
	apart.Accounts[25000].Ports = []policies.PortRange{{Lo: 60000, Hi: 60010}}
	shared := *installed
	shared.Accounts = slices.Clone(installed.Accounts)
	shared.Accounts[25000] = apart.Accounts[25000]
	for _, c := range []struct {
		name string
		next *policies.Policy
	}{{"shared", &shared}, {"apart", apart}} {
		b.Run(c.name, func(b *testing.B) {
			var r removals
			now := time.Unix(1e9, 0)
			b.ReportAllocs()
			for b.Loop() {
				removes, err := r.check(now, installed, c.next)
				if err != nil || removes {
					b.Fatal(removes, err)
				}
				r.applied(now, installed, removes)
			}
		})
	}
}

// TestSamePolicy: the same accounts in the same memory and the same
// settings are the same policy; equal accounts elsewhere, or another
// setting, are not.
func TestSamePolicy(t *testing.T) {
	a := policyOf(uids(1, 5)...)
	b := *a
	if !samePolicy(a, &b) {
		t.Error("a copy sharing the accounts is not the same policy")
	}
	if samePolicy(a, policyOf(uids(1, 5)...)) {
		t.Error("equal accounts in other memory taken for the same policy")
	}
	b.MinUID = 7
	if samePolicy(a, &b) {
		t.Error("another min_uid taken for the same policy")
	}
	if samePolicy(nil, a) || !samePolicy(&policies.Policy{}, &policies.Policy{}) {
		t.Error("nil or empty policies")
	}
	var ag Agent
	d1 := ag.digest(a)
	c := *a
	if d2 := ag.digest(&c); fmt.Sprintf("%p", d1) != fmt.Sprintf("%p", d2) || d2() != a.Digest() {
		t.Error("the same policy's digest computed again")
	}
	if d3 := ag.digest(policyOf(1)); d3() == a.Digest() {
		t.Error("another policy's digest is the old one")
	}
}

// TestNoneLost: the removal guard's shortcut never says no UID is lost when
// one is (random changes to random policies, some of their accounts shared,
// against the walk of every account), and it does say so for policies that
// share all but the changed accounts, as the Cache's do.
func TestNoneLost(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	lostOf := func(installed, next *policies.Policy) bool {
		lost := false
		gone(func(yield func(enforcedUID)) { eachEnforced(byUID(installed), yield) }, byUID(next), func(enforcedUID) { lost = true })
		return lost
	}
	said := 0
	for range 2000 {
		installed := policyOf(uids(1000, 1000+uint32(r.IntN(40)))...)
		for _, a := range installed.Accounts {
			if r.IntN(6) == 0 {
				a.Ports = nil
			}
		}
		next := &policies.Policy{}
		for _, a := range installed.Accounts {
			switch r.IntN(12) {
			case 0: // removed
			case 1: // its ports taken away
				next.Accounts = append(next.Accounts, &policies.Account{Name: a.Name, UID: a.UID})
			case 2: // changed
				next.Accounts = append(next.Accounts, &policies.Account{Name: a.Name, UID: a.UID, Ports: []policies.PortRange{{Lo: 50000, Hi: 50000}}})
			case 3: // another account in front of it
				next.Accounts = append(next.Accounts, &policies.Account{Name: "new", UID: a.UID - 1, Ports: a.Ports}, a)
			default:
				next.Accounts = append(next.Accounts, a)
			}
		}
		slices.SortFunc(next.Accounts, func(a, b *policies.Account) int { return cmp.Compare(a.UID, b.UID) })
		next.Accounts = slices.CompactFunc(next.Accounts, func(a, b *policies.Account) bool { return a.UID == b.UID })
		if noneLost(installed.Accounts, next.Accounts) {
			said++
			if lostOf(installed, next) {
				t.Fatalf("noneLost says no UID is lost from %v to %v", enforcedOf(installed), enforcedOf(next))
			}
		}
	}
	if said == 0 {
		t.Error("noneLost never answered at once")
	}

	installed := policyOf(uids(1000, 51000)...)
	next := *installed
	next.Accounts = slices.Clone(installed.Accounts)
	next.Accounts[25000] = &policies.Account{Name: "moved", UID: next.Accounts[25000].UID, Ports: []policies.PortRange{{Lo: 60000, Hi: 60010}}}
	if !noneLost(installed.Accounts, next.Accounts) {
		t.Error("a one-account change between policies that share the rest: noneLost cannot tell")
	}
	next.Accounts = slices.Delete(next.Accounts, 25000, 25001)
	if noneLost(installed.Accounts, next.Accounts) {
		t.Error("an account removed: noneLost says none is lost")
	}
}

// waitingOffenders is an Offenders whose SetPolicy waits until released.
type waitingOffenders struct {
	release chan struct{}
	late    chan bool // true: SetPolicy gave up waiting
}

func (w *waitingOffenders) SetPolicy(*policies.Policy) {
	select {
	case <-w.release:
		w.late <- false
	case <-time.After(3 * time.Second):
		w.late <- true
	}
}

func (w *waitingOffenders) Report() ([]reconcile.Episode, []reconcile.TerminationRecord, string) {
	return nil, nil, ""
}

// TestNewsAfterTheAnswer: what a served apply tells the agent (Host.Applied:
// the burst, the offenders' policy, the views) is taken in after the client
// has its exit code, not before: the client does not wait for it. And it
// is taken in before serve returns, so the next event sees it.
func TestNewsAfterTheAnswer(t *testing.T) {
	dir := t.TempDir()
	off := &waitingOffenders{release: make(chan struct{}), late: make(chan bool, 1)}
	p := policyOf(1001, 1002)
	a := New(Config{StateDir: dir, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Offenders: off,
		Engine: reconcile.New(reconcile.Config{StateDir: dir}),
		Serve: func(_ context.Context, h *Host, _ Request, stdout, _ io.Writer) int {
			fmt.Fprintln(stdout, "applied")
			h.Applied(p, &rules.Ruleset{Table: "nftpol"}, false)
			return 0
		}})
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: filepath.Join(dir, "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	conn, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.serve(context.Background(), served{req: Request{Args: []string{"apply"}}, conn: conn})
	}()
	// The client reads frames up to the exit code while the agent has not
	// taken the news in (SetPolicy waits for the release).
	client.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		var head [5]byte
		if _, err := io.ReadFull(client, head[:]); err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		if head[0] == frameExit {
			break
		}
		if _, err := io.CopyN(io.Discard, client, int64(binary.BigEndian.Uint32(head[1:]))); err != nil {
			t.Fatal(err)
		}
	}
	close(off.release)
	if <-off.late {
		t.Fatal("the agent took the news in before it answered: the client waited for it")
	}
	<-done
	if a.good != p || a.applies != 1 {
		t.Errorf("after serve: good policy %p (want %p), %d applies", a.good, p, a.applies)
	}
}
