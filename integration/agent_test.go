package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// agentLifetime bounds an agent a test starts.
const agentLifetime = 3 * time.Minute

// agentProc is a running `nftpol watch`.
type agentProc struct {
	cmd    *exec.Cmd
	cancel context.CancelFunc
	done   chan struct{}
	err    error

	mu    sync.Mutex
	lines []map[string]any // its log, one JSON object per line
	raw   strings.Builder
	seen  chan struct{} // a value after each new line
}

// startAgent starts `nftpol watch` for n with extra watch flags and waits
// until it says it is ready. It is stopped (SIGTERM, then killed) when the
// test ends.
func startAgent(t *testing.T, n nftpolRun, extra ...string) *agentProc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), agentLifetime)
	args := append([]string{"--config", n.config, "--netns", n.netns, "--state-dir", n.stateDir, "--run-dir", n.runDirectory(), "watch"}, extra...)
	cmd := exec.CommandContext(ctx, n.bin, args...)
	cmd.Cancel = func() error { return cmd.Process.Kill() }
	stderr, err := cmd.StderrPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	a := &agentProc{cmd: cmd, cancel: cancel, done: make(chan struct{}), seen: make(chan struct{}, 1)}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<16), 1<<22)
		for sc.Scan() {
			var m map[string]any
			line := sc.Text()
			a.mu.Lock()
			a.raw.WriteString(line + "\n")
			if json.Unmarshal([]byte(line), &m) == nil {
				a.lines = append(a.lines, m)
			}
			a.mu.Unlock()
			select {
			case a.seen <- struct{}{}:
			default:
			}
		}
		if err := sc.Err(); err != nil {
			// A line too long to scan: say so, and keep draining the
			// pipe, or the agent blocks writing to it for good.
			a.mu.Lock()
			a.raw.WriteString("<<reading the agent's log stopped: " + err.Error() + ">>\n")
			a.mu.Unlock()
			_, _ = io.Copy(io.Discard, stderr)
		}
		a.err = cmd.Wait()
		close(a.done)
	}()
	t.Cleanup(func() { a.stop(t) })
	a.waitLog(t, 20*time.Second, func(m map[string]any) bool { return m["msg"] == "ready" })
	return a
}

// stop ends the agent with SIGTERM, as systemd does, and checks it exits 0.
func (a *agentProc) stop(t *testing.T) {
	t.Helper()
	select {
	case <-a.done:
		a.cancel()
		return
	default:
	}
	_ = a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		if a.err != nil {
			t.Errorf("the agent exited with %v after SIGTERM\n%s", a.err, a.log())
		}
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		<-a.done
		t.Errorf("the agent did not end within 10s of SIGTERM\n%s", a.log())
	}
	a.cancel()
}

// kill ends the agent with SIGKILL.
func (a *agentProc) kill() {
	_ = a.cmd.Process.Kill()
	<-a.done
	a.cancel()
}

func (a *agentProc) log() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.raw.String()
}

// count is how many log lines match.
func (a *agentProc) count(match func(map[string]any) bool) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, m := range a.lines {
		if match(m) {
			n++
		}
	}
	return n
}

// waitLog waits until a log line matches and returns it.
func (a *agentProc) waitLog(t *testing.T, within time.Duration, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.After(within)
	for i := 0; ; {
		a.mu.Lock()
		for ; i < len(a.lines); i++ {
			if match(a.lines[i]) {
				m := a.lines[i]
				a.mu.Unlock()
				return m
			}
		}
		a.mu.Unlock()
		select {
		case <-a.seen:
		case <-a.done:
			a.mu.Lock()
			n := len(a.lines)
			a.mu.Unlock()
			if i >= n {
				t.Fatalf("the agent exited (%v) before the log line the test waits for\n%s", a.err, a.log())
			}
		case <-deadline:
			t.Fatalf("no such agent log line within %s\n%s", within, a.log())
		}
	}
}

func msgIs(msg string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["msg"] == msg }
}

// eventually polls cond every 10 ms until it holds or within passes; it
// returns how long it took.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("%s: not within %s", what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return time.Since(start)
}

// nftTry runs nft in ns and returns its combined output and error.
func nftTry(ns string, args ...string) (string, error) {
	out, errOut, err := runCommand("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...)
	return out + errOut, err
}

// agentPolicyDir is a main policy file with an include directory, for the
// tests that change account files one at a time.
func agentPolicyDir(t *testing.T, main string) (config, include string) {
	t.Helper()
	dir := t.TempDir()
	include = filepath.Join(dir, "policies.d")
	if err := os.Mkdir(include, 0o755); err != nil {
		t.Fatal(err)
	}
	config = filepath.Join(dir, "nftpol.yaml")
	if err := os.WriteFile(config, []byte(main+"include: "+include+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return config, include
}

// writeAtomically writes a file as config management does: a temporary
// file renamed into place.
func writeAtomically(t *testing.T, path, text string) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestAgentFollowsPolicyFiles: an include file added, changed and removed
// changes what the world can reach within a second, with no apply run; a
// broken file changes nothing and shows in status (served by the agent)
// until it is fixed; a second agent on the same state directory refuses to
// start, naming the first; SIGTERM ends the agent with exit 0 and leaves the
// table.
func TestAgentFollowsPolicyFiles(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	config, include := agentPolicyDir(t, "zone: 40010-49999\nmin_uid: 1000\naccounts:\n  - {name: alpha, uid: 1001, ports: [\"40010-40019\"]}\n")
	n := nftpolRun{bin: bin, config: config, netns: tp.Server, stateDir: t.TempDir()}
	ag := startAgent(t, n)

	// The agent applied the policy at its start.
	tp.Listen(t, uidAlpha, "tcp", ServerIPv4, 40010)
	if got := tp.Connect(t, "tcp", ServerIPv4, 40010); got != "ok" {
		t.Fatalf("alpha's own port after the agent started: %q, want ok\n%s", got, ag.log())
	}
	tp.Listen(t, uidBeta, "tcp", ServerIPv4, 40025)
	if got := tp.Connect(t, "tcp", ServerIPv4, 40025); !blocked(got) {
		t.Fatalf("beta's 40025 before beta exists: %q, want blocked", got)
	}

	reach := func(port int) func() bool {
		return func() bool { return tp.Connect(t, "tcp", ServerIPv4, port) == "ok" }
	}
	notReach := func(port int) func() bool {
		return func() bool { return blocked(tp.Connect(t, "tcp", ServerIPv4, port)) }
	}
	beta := filepath.Join(include, "beta.yaml")
	writeAtomically(t, beta, "accounts:\n  - {name: beta, uid: 1002, ports: [\"40020-40029\"]}\n")
	took := eventually(t, 3*time.Second, "beta's port reachable after beta.yaml was added", reach(40025))
	t.Logf("include file added: reachable after %s (connect attempts included)", took)

	tp.Listen(t, uidBeta, "tcp", ServerIPv4, 40035)
	writeAtomically(t, beta, "accounts:\n  - {name: beta, uid: 1002, ports: [\"40030-40039\"]}\n")
	eventually(t, 3*time.Second, "beta's new port reachable after beta.yaml changed", reach(40035))
	if got := tp.Connect(t, "tcp", ServerIPv4, 40025); !blocked(got) {
		t.Errorf("beta's old port after the change: %q, want blocked", got)
	}

	// A broken file: nothing changes, status says why.
	writeAtomically(t, beta, "accounts:\n  - {name: beta, uid: 1002, ports: [\"40030-40039\"], colour: blue}\n")
	ag.waitLog(t, 5*time.Second, msgIs("policy not applied; the last good policy stays enforced"))
	if got := tp.Connect(t, "tcp", ServerIPv4, 40035); got != "ok" {
		t.Errorf("beta's port with a broken beta.yaml: %q, want ok (the last good policy)", got)
	}
	status, stderr, code := n.run(t, "status")
	if code != 0 || !strings.Contains(status, "Agent:") || !strings.Contains(status, "NOT APPLIED") ||
		!strings.Contains(status, "beta.yaml") || !strings.Contains(status, "colour") {
		t.Errorf("status with a broken file (exit %d):\n%s%s", code, status, stderr)
	}
	var sj struct {
		Agent *struct {
			PolicyError string `json:"policy_error"`
			Mode        string `json:"mode"`
			PID         int    `json:"pid"`
		} `json:"agent"`
	}
	out, _, _ := n.run(t, "status", "-o", "json")
	if err := json.Unmarshal([]byte(out), &sj); err != nil || sj.Agent == nil || !strings.Contains(sj.Agent.PolicyError, "colour") || sj.Agent.PID != ag.cmd.Process.Pid {
		t.Errorf("status -o json: %v %+v\n%s", err, sj.Agent, out)
	}
	// Fixed: applied, and status is clean again.
	writeAtomically(t, beta, "accounts:\n  - {name: beta, uid: 1002, ports: [\"40020-40029\"]}\n")
	eventually(t, 3*time.Second, "beta's port back after the fix", reach(40025))
	if status, _, _ := n.run(t, "status"); strings.Contains(status, "NOT APPLIED") {
		t.Errorf("status after the fix still shows the error:\n%s", status)
	}

	// Removed: the port closes.
	if err := os.Remove(beta); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, "beta's port blocked after beta.yaml was removed", notReach(40025))

	// The CLI is served by the agent.
	n.planExit(t, 0)
	if ag.count(msgIs("served")) < 3 {
		t.Errorf("the agent served %d commands, want the status and plan runs\n%s", ag.count(msgIs("served")), ag.log())
	}

	// A second agent refuses, naming the first.
	second := exec.Command(bin, "--config", n.config, "--netns", n.netns, "--state-dir", n.stateDir, "--run-dir", n.runDirectory(), "watch")
	msg, err := second.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), fmt.Sprintf("another nftpol watch serves the state directory %s (pid %d,", n.stateDir, ag.cmd.Process.Pid)) {
		t.Errorf("second agent: %v\n%s", err, msg)
	}

	// SIGTERM: exit 0, the table stays and enforces.
	ag.stop(t)
	if got := tp.Connect(t, "tcp", ServerIPv4, 40010); got != "ok" {
		t.Errorf("alpha after the agent stopped: %q, want ok", got)
	}
	if got := tp.Connect(t, "tcp", ServerIPv4, 40025); !blocked(got) {
		t.Errorf("beta's 40025 after the agent stopped: %q, want blocked", got)
	}
	// Without the agent the CLI works alone again.
	n.planExit(t, 0)
}

// agents are the agents TestThroughTheAgent started, by state directory.
var agents sync.Map

// throughAgent starts an agent for n's state directory after its first
// successful apply or restore, when the test runs under
// TestThroughTheAgent: from then on the test's plan, apply, restore, remove
// and status are served by the agent. It follows the kernel but not the
// policy files (--follow-policy=false), so the test's own plan of a
// changed policy sees the change before its apply. It follows the kernel
// without owning the table (--own-table=no): to own a table the one-shot
// CLI created, an agent replaces it (staged, under the other set names),
// which the tests' expectations of set names do not know.
func throughAgent(t *testing.T, n nftpolRun) {
	if !strings.HasPrefix(t.Name(), "TestThroughTheAgent/") {
		return
	}
	if _, ok := agents.Load(n.stateDir); ok {
		return
	}
	t.Helper()
	ag := startAgent(t, n, "--follow-policy=false", "--own-table=no")
	agents.Store(n.stateDir, ag)
	t.Cleanup(func() {
		agents.Delete(n.stateDir)
		if ag.count(msgIs("served")) == 0 {
			t.Errorf("the agent on %s served no command: the test did not run through it\n%s", n.stateDir, ag.log())
		}
	})
}

// TestThroughTheAgent runs integration tests of plan, apply, restore,
// remove and status again with an agent serving them: their interface,
// output, JSON and exit codes must be the same. Left out are the tests
// that work on one state directory from several namespaces or processes
// at once (an agent refuses a command for another namespace than its own,
// and serves concurrent applies one after the other) and those that tamper
// with the table by hand to see plan report it (the agent heals it first).
func TestThroughTheAgent(t *testing.T) {
	for _, tc := range []struct {
		name string
		test func(*testing.T)
	}{
		{"ApplyOneAccountChange", TestApplyOneAccountChange},
		{"RenamedTableIsRetired", TestRenamedTableIsRetired},
		{"RemoveTouchesOnlyItsTable", TestRemoveTouchesOnlyItsTable},
		{"UpgradeFromUnshardedTable", TestUpgradeFromUnshardedTable},
		{"RemovalGuard", TestRemovalGuard},
		{"StatusReportsViolation", TestStatusReportsViolation},
		{"ApplyState", TestApplyState},
		{"Contract", TestContract},
		{"PortsAsAccounts", TestPortsAsAccounts},
	} {
		t.Run(tc.name, tc.test)
	}
}

// TestAgentKilledDuringChanges: the agent killed with SIGKILL at random
// moments while the policy changes 100 times leaves the kernel holding a
// whole ruleset, the new one or one before it, never a mix; and an agent
// started again converges, so that a plan finds nothing to do.
func TestAgentKilledDuringChanges(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	ns := newNetns(t, "kill9")
	policyText := func(i int) string {
		// gamma moves through the zone; delta comes and goes.
		s := contractPolicy + fmt.Sprintf("  - {name: gamma, uid: 1003, ports: [\"%d-%d\"], protocols: [tcp, udp]}\n", 41000+10*i, 41004+10*i)
		if i%3 == 0 {
			s += "  - {name: delta, uid: 1004, ports: [\"45000-45009\"]}\n"
		}
		return s
	}
	config := writePolicy(t, policyText(0))
	n := nftpolRun{bin: bin, config: config, netns: ns, stateDir: t.TempDir()}
	variant := func(i int) nftpolRun {
		v := n
		v.config = filepath.Join(t.TempDir(), "nftpol.yaml")
		if err := os.WriteFile(v.config, []byte(policyText(i)), 0o644); err != nil {
			t.Fatal(err)
		}
		return v
	}
	ag := startAgent(t, n)
	// since is the change the running agent started at: ready means it
	// applied that one (or a later one).
	since := 0
	rng := newRand(t)
	kills := 0
	for i := 1; i <= 100; i++ {
		writeAtomically(t, config, policyText(i))
		if rng.Intn(8) != 0 {
			time.Sleep(time.Duration(rng.Intn(3000)) * time.Microsecond)
			continue
		}
		time.Sleep(time.Duration(rng.Intn(20000)) * time.Microsecond)
		ag.kill()
		kills++
		// Whole: a full read of the kernel equals one of the policies
		// the agent may have applied, the newest first: the one it
		// started with, or any change since (changes pile up while
		// an apply runs, and it applies the newest when it is done).
		whole := -1
		for j := i; j >= since && whole < 0; j-- {
			if _, _, c := variant(j).run(t, "--full-read", "plan", "--detailed-exitcode"); c == 0 {
				whole = j
			}
		}
		if whole < 0 {
			t.Fatalf("change %d: after kill -9 the kernel holds none of the rulesets of changes %d to %d\n%s\n%s",
				i, since, i, nftListTable(t, ns, "inet", "nftpol"), ag.log())
		}
		ag = startAgent(t, n)
		since = i
	}
	// The last agent converges to the last policy.
	ag.waitLog(t, 10*time.Second, func(m map[string]any) bool { return m["msg"] == "ready" })
	eventually(t, 5*time.Second, "plan finds nothing to do after the changes", func() bool {
		_, _, code := n.run(t, "plan", "--detailed-exitcode")
		return code == 0
	})
	if kills < 5 {
		t.Errorf("only %d kills: the test proves little", kills)
	}
	t.Logf("%d kills during 100 policy changes", kills)
}

// newRand is a random source whose seed the test logs, so a failure can be
// replayed with NFTPOL_TEST_SEED.
func newRand(t *testing.T) *rand.Rand {
	seed := time.Now().UnixNano()
	if s := os.Getenv("NFTPOL_TEST_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("random seed %d (NFTPOL_TEST_SEED)", seed)
	return rand.New(rand.NewSource(seed))
}

// prober is a client trying a blocked port from outside about 100 times a
// second (the probe's hammer: twenty workers, 200 ms each at most) until
// finished.
type prober struct{ h *hammerProc }

func startProber(t *testing.T, tp *Topology, port int) *prober {
	t.Helper()
	lifetime := 2 * time.Minute
	p := startProcess(t, lifetime, "ready", "ip", "netns", "exec", tp.Client, probePath(t), "hammer",
		"-targets", fmt.Sprintf("tcp:%d:blocked", port), "-addrs", ServerIPv4,
		"-workers", "1", "-blocked-workers", "20", "-pace", "10ms",
		"-timeout", "200ms", "-max", lifetime.String())
	return &prober{h: readHammer(p)}
}

// finish stops the client and says how many connections it tried and how
// many succeeded.
func (p *prober) finish(t *testing.T) (tries, ok int) {
	t.Helper()
	res := p.h.finish(t)
	for _, tg := range res.Targets {
		for word, n := range tg.Words {
			tries += n
			if word == "ok" {
				ok += n
			}
		}
	}
	return tries, ok
}

// ownedTable is what the owner-mode test compares: the table without set
// elements (the violation sets fill while the client tries), and the
// elements of every set nftpol writes.
func ownedTable(t *testing.T, ns string) string {
	t.Helper()
	out := run(t, "ip", "netns", "exec", ns, "nft", "-t", "-s", "list", "table", "inet", "nftpol")
	// The table's own flags and owner comment say who holds it: the
	// agent, or nobody after it died (nft 1.0.6 prints PERSIST alone as
	// an empty "flags").
	_, out, _ = strings.Cut(out, "\n\tflags ")
	_, out, _ = strings.Cut(out, "\n")
	for _, set := range []string{"tcp_open", "udp_open", "exempt", "tcp_ports_1", "tcp_ports_2", "udp_ports_1"} {
		out += run(t, "ip", "netns", "exec", ns, "nft", "list", "set", "inet", "nftpol", set)
	}
	return out
}

// disturbances are what other tools do to nftpol's table on a live host.
var disturbances = []struct {
	name string
	args []string
}{
	{"nft flush ruleset", []string{"flush", "ruleset"}},
	{"nft delete table", []string{"delete", "table", "inet", "nftpol"}},
	{"nft delete element", []string{"delete", "element", "inet", "nftpol", "tcp_open", "{ 40010-40029 }"}},
	{"nft add rule", []string{"add", "rule", "inet", "nftpol", "input", "tcp", "dport", "40025", "accept"}},
}

// TestAgentOwnsTable: an agent that owns the table (kernel 6.9 and later)
// makes every other process's flush, delete and edit of it fail or pass it
// by, while a client tries a blocked port: no connection succeeds and the
// table never changes. kill -9 of the agent leaves the table enforcing, and
// a new agent adopts it.
func TestAgentOwnsTable(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: tp.Server, stateDir: t.TempDir()}
	ag := startAgent(t, n, "--own-table=yes")
	if m := ag.waitLog(t, time.Second, msgIs("ready")); m["mode"] != "owner" {
		t.Fatalf("agent mode %v, want owner\n%s", m["mode"], ag.log())
	}
	tp.Listen(t, uidAlpha, "tcp", ServerIPv4, 40025) // beta's port: blocked
	want := ownedTable(t, tp.Server)
	pr := startProber(t, tp, 40025)
	for _, d := range disturbances {
		out, err := nftTry(tp.Server, d.args...)
		t.Logf("%s: %v %s", d.name, err, strings.TrimSpace(out))
		if d.name != "nft flush ruleset" && err == nil {
			t.Errorf("%s succeeded on a table the agent owns", d.name)
		}
		if got := ownedTable(t, tp.Server); got != want {
			t.Fatalf("after %s the table changed:\n%s", d.name, got)
		}
	}
	// Only the agent can change it; so kill -9: the table stays
	// (PERSIST) and still blocks.
	ag.kill()
	time.Sleep(100 * time.Millisecond)
	if got := ownedTable(t, tp.Server); got != want {
		t.Fatalf("after kill -9 of the agent the table changed:\n%s", got)
	}
	if got := tp.Connect(t, "tcp", ServerIPv4, 40025); !blocked(got) {
		t.Errorf("40025 after kill -9: %q, want blocked", got)
	}
	// Nobody owns it now: the flags say PERSIST alone.
	if head := run(t, "ip", "netns", "exec", tp.Server, "nft", "-t", "list", "table", "inet", "nftpol"); strings.Contains(head, "flags owner") {
		t.Errorf("still owned after kill -9:\n%.200s", head)
	}
	// A new agent adopts it: owned again, nothing rebuilt.
	startAgent(t, n, "--own-table=yes")
	if head := run(t, "ip", "netns", "exec", tp.Server, "nft", "-t", "list", "table", "inet", "nftpol"); !strings.Contains(head, "flags owner") {
		t.Errorf("not owned after a new agent started:\n%.200s", head)
	}
	if _, err := nftTry(tp.Server, "delete", "table", "inet", "nftpol"); err == nil {
		t.Error("nft delete table succeeded after a new agent adopted the table")
	}
	if got := ownedTable(t, tp.Server); got != want {
		t.Errorf("the new agent changed the table it adopted:\n%s", got)
	}
	tries, ok := pr.finish(t)
	if ok != 0 || tries < 20 {
		t.Errorf("%d of %d connections to a blocked port succeeded (want 0 of at least 20)", ok, tries)
	}
	t.Logf("%d connections tried during the disturbances, %d succeeded", tries, ok)
	n.planExit(t, 0)
}

// TestAgentOwnsTableRestoreInstalled: at boot nftpol-restore.service
// installs the table before nftpol-watch.service starts, and a table the
// one-shot CLI created has no owner flags, which the kernel never adds to
// an existing table. So the agent creates it anew, through a handover table
// (rules.Change.Handover): while a client uses an account's own port and
// tries another's, no allowed connection fails and no blocked one
// succeeds. Then the table is owned (flush passes it by, delete fails), no
// handover table is left, and the offender watcher reads the new table's
// violation sets, whose names alternated with the rebuild.
func TestAgentOwnsTableRestoreInstalled(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	n := nftpolRun{bin: bin, config: writePolicy(t, offendersPolicy("{after: 1h}")), netns: tp.Server, stateDir: t.TempDir()}
	n.apply(t)
	head := func() string {
		return run(t, "ip", "netns", "exec", tp.Server, "nft", "-t", "list", "table", "inet", "nftpol")
	}
	if h := head(); strings.Contains(h, "flags owner") {
		t.Fatalf("the CLI's table is owned:\n%.200s", h)
	}
	// What a handover interrupted before it replaced the table leaves:
	// the ruleset whole in the handover table (the agent deletes it,
	// since it is in the way of its own).
	export, _, code := n.run(t, "export")
	if code != 0 {
		t.Fatalf("export: exit %d", code)
	}
	leftover := strings.Replace(export, "table inet nftpol {", "table inet nftpol_handover {", 1)
	nftLoad(t, tp.Server, leftover)

	tp.Listen(t, uidAlpha, "tcp", ServerIPv4, 40010)      // alpha's own port
	offender := listenProc(t, tp, uidAlpha, "tcp", 40025) // beta's port
	lifetime := time.Minute
	p := startProcess(t, lifetime, "ready", "ip", "netns", "exec", tp.Client, probePath(t), "hammer",
		"-targets", "tcp:40010:ok,tcp:40025:blocked", "-addrs", ServerIPv4,
		"-workers", "4", "-blocked-workers", "4", "-pace", "1ms", "-timeout", "200ms", "-max", lifetime.String())
	h := readHammer(p)
	time.Sleep(300 * time.Millisecond)

	ag := startAgent(t, n, "--own-table=yes")
	if m := ag.waitLog(t, 5*time.Second, msgIs("applied")); m["transactions"] != 5.0 {
		t.Errorf("the agent's first apply: %v, want the five transactions of a handover", m)
	}
	ag.waitLog(t, 5*time.Second, msgIs("ready"))
	time.Sleep(300 * time.Millisecond)
	res := h.finish(t)
	for _, tg := range res.Targets {
		total := 0
		for _, c := range tg.Words {
			total += c
		}
		least := 200
		if tg.Expect == "blocked" {
			least = 10 // each waits for the client's timeout
		}
		switch {
		case total < least:
			t.Errorf("%s: %d attempts, want at least %d", tg.Target, total, least)
		case tg.Expect == "ok" && tg.Words["ok"] != total:
			t.Errorf("%s, allowed: %v during the handover, want all ok", tg.Target, tg.Words)
		case tg.Expect == "blocked" && tg.Words["ok"] != 0:
			t.Errorf("%s, blocked: %v during the handover, want none ok", tg.Target, tg.Words)
		}
		t.Logf("%s (%s) during the agent's start: %v", tg.Target, tg.Expect, tg.Words)
	}

	if h := head(); !strings.Contains(h, "flags owner") {
		t.Errorf("not owned after the agent started:\n%.200s", h)
	}
	if out, err := nftTry(tp.Server, "delete", "table", "inet", "nftpol"); err == nil {
		t.Errorf("nft delete table succeeded on the table the agent owns\n%s", out)
	}
	if out, err := nftTry(tp.Server, "flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v\n%s", err, out)
	}
	if got := run(t, "ip", "netns", "exec", tp.Server, "nft", "list", "tables"); strings.TrimSpace(got) != "table inet nftpol" {
		t.Errorf("tables after the handover and a flush:\n%s\nwant the table alone", got)
	}
	if got := tp.Connect(t, "tcp", ServerIPv4, 40025); !blocked(got) {
		t.Errorf("40025 after the flush: %q, want blocked", got)
	}

	ev := ag.waitLog(t, 5*time.Second, eventIs("episode_start", 40025))
	if ev["pid"] != float64(offender.cmd.Process.Pid) {
		t.Errorf("episode event %v, want pid %d", ev, offender.cmd.Process.Pid)
	}
	if c := ag.count(msgIs("reading the violation sets")); c != 0 {
		t.Errorf("the agent failed to read the violation sets %d times\n%s", c, ag.log())
	}
	n.planExit(t, 0)
}

// TestAgentHealsTable: an agent that follows the kernel without owning the
// table (older kernels, or --own-table=no) puts back every disturbance of
// another tool, names the tool that did it, and status counts the heals.
func TestAgentHealsTable(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: tp.Server, stateDir: t.TempDir()}
	ag := startAgent(t, n, "--own-table=no")
	if m := ag.waitLog(t, time.Second, msgIs("ready")); m["mode"] != "monitor" {
		t.Fatalf("agent mode %v, want monitor\n%s", m["mode"], ag.log())
	}
	tp.Listen(t, uidAlpha, "tcp", ServerIPv4, 40025) // beta's port: blocked
	want := ownedTable(t, tp.Server)
	for i, d := range disturbances {
		if out, err := nftTry(tp.Server, d.args...); err != nil {
			t.Fatalf("%s: %v %s", d.name, err, out)
		}
		took := eventually(t, 3*time.Second, "the table healed after "+d.name, func() bool {
			return ag.count(msgIs("healed a change to the table by somebody else")) > i
		})
		if got := ownedTable(t, tp.Server); got != want {
			t.Fatalf("after %s was healed the table differs:\n%s\nwant:\n%s", d.name, got, want)
		}
		if got := tp.Connect(t, "tcp", ServerIPv4, 40025); !blocked(got) {
			t.Errorf("40025 after %s was healed: %q, want blocked", d.name, got)
		}
		t.Logf("%s: healed within %s", d.name, took)
	}
	var causes []string
	ag.count(func(m map[string]any) bool {
		if m["msg"] == "healed a change to the table by somebody else" {
			causes = append(causes, fmt.Sprint(m["cause"]))
		}
		return false
	})
	for _, c := range causes {
		if !strings.HasPrefix(c, "nft[") {
			t.Errorf("heal cause %q, want the nft process that made the change (causes %q)", c, causes)
		}
	}
	status, _, code := n.run(t, "status")
	if code != 0 || !strings.Contains(status, fmt.Sprintf("%d heals", len(disturbances))) || !strings.Contains(status, "Last heal:") {
		t.Errorf("status after the heals (exit %d):\n%s", code, status)
	}
	t.Logf("status:\n%s", status)
	n.planExit(t, 0)
	t.Logf("the agent's log:\n%s", ag.log())
}
