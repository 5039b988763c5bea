package integration

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// auditPolicy: alpha has 40010-40019 for TCP and UDP, beta 40020-40029 for
// TCP only; UID 1500 is exempt.
const auditPolicy = `zone: 40010-49999
min_uid: 1000
exempt: [1500]
accounts:
  - {name: alpha, uid: 1001, ports: ["40010-40019"]}
  - {name: beta,  uid: 1002, ports: ["40020-40029"], protocols: [tcp]}
`

// auditCase is one listener in the server namespace and what audit must
// say about it.
type auditCase struct {
	uid     int
	proto   string
	addr    string // "" listens on every address (IPv6 and IPv4)
	port    int
	account string
	verdict string
	reason  string // for blocked
	other   string // for another-account
}

var auditCases = []auditCase{
	{uidAlpha, "tcp", ServerIPv4, 40010, "alpha", "reachable", "", ""},
	{uidAlpha, "udp", ServerIPv6, 40011, "alpha", "reachable", "", ""},
	{uidAlpha, "tcp", "", 40012, "alpha", "reachable", "", ""},
	{uidBeta, "tcp", ServerIPv6, 40020, "beta", "reachable", "", ""},
	{uidAlpha, "tcp", ServerIPv4, 40025, "alpha", "blocked", "another-account", "beta"},
	{uidBeta, "udp", ServerIPv6, 40021, "beta", "blocked", "protocol-not-assigned", ""},
	{uidAlpha, "tcp", ServerIPv6, 41000, "alpha", "blocked", "outside-ranges", ""},
	{uidAlpha, "udp", "", 8085, "alpha", "blocked", "outside-ranges", ""},
	{2000, "tcp", ServerIPv4, 8080, "", "blocked", "outside-ranges", ""}, // enforced, no account
	{uidRoot, "tcp", ServerIPv4, 45001, "", "blocked", "unassigned-zone-port", ""},
	{uidExempt, "udp", ServerIPv6, 45002, "", "blocked", "unassigned-zone-port", ""},
	{uidRoot, "tcp", ServerIPv4, 8081, "", "not-enforced", "", ""},
	{uidExempt, "udp", ServerIPv4, 8082, "", "not-enforced", "", ""},
	{uidSystem, "tcp", "", 40013, "", "not-enforced", "", ""}, // alpha's port, but uid 999 is not enforced
	{uidAlpha, "tcp", "127.0.0.1", 41001, "alpha", "local-only", "", ""},
	{uidRoot, "udp", "::1", 45003, "", "local-only", "", ""},
}

// auditJSON is the shape of `nftpol audit -o json`.
type auditJSON struct {
	Netns   string `json:"netns"`
	Sockets []struct {
		Proto     string `json:"proto"`
		Address   string `json:"address"`
		Port      int    `json:"port"`
		UID       int    `json:"uid"`
		Account   string `json:"account"`
		Processes []struct {
			PID     int    `json:"pid"`
			Command string `json:"command"`
		} `json:"processes"`
		Verdict      string `json:"verdict"`
		Reason       string `json:"reason"`
		OtherAccount string `json:"other_account"`
		Explanation  string `json:"explanation"`
		MaybeClient  bool   `json:"maybe_client"`
	} `json:"sockets"`
	Summary    map[string]int `json:"summary"`
	Terminated []struct {
		PID     int      `json:"pid"`
		Command string   `json:"command"`
		Sockets []string `json:"sockets"`
		Signals []string `json:"signals"`
		Outcome string   `json:"outcome"`
		Detail  string   `json:"detail"`
	} `json:"terminated"`
}

func (n nftpolRun) audit(t *testing.T, wantCode int, args ...string) auditJSON {
	t.Helper()
	stdout, stderr, code := n.run(t, append([]string{"audit", "-o", "json"}, args...)...)
	if code != wantCode {
		t.Fatalf("nftpol audit %s exited %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, wantCode, stdout, stderr)
	}
	var a auditJSON
	if err := json.Unmarshal([]byte(stdout), &a); err != nil {
		t.Fatalf("nftpol audit -o json: %v\n%s", err, stdout)
	}
	return a
}

// listenProbe starts a probe listener like Topology.Listen, but returns the
// process, whose PID audit must report.
func listenProbe(t *testing.T, ns string, uid int, proto, addr string, port int) *process {
	t.Helper()
	return startProbe(t, "ready", "listen", "-netns", ns, "-uid", strconv.Itoa(uid), "-gid", strconv.Itoa(uid),
		"-proto", proto, "-timeout", listenerLifetime.String(), "-addr", addr, "-port", strconv.Itoa(port))
}

// key names a socket the way both the cases and audit's JSON can.
func auditKey(proto, addr string, port, uid int) string {
	if addr == "" {
		addr = "::" // Go listens on [::] with IPv4 mapped in for an empty host
	}
	return fmt.Sprintf("%s %s uid %d", proto, netip.AddrPortFrom(netip.MustParseAddr(addr), uint16(port)), uid)
}

func alive(p *process) bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// TestAudit starts listeners as several UIDs in the server namespace and
// checks that audit reports exactly them, with the right UIDs, accounts,
// processes and verdicts; that what it calls blocked is what the kernel
// blocks once the policy is applied; and that --terminate ends exactly the
// processes behind blocked sockets (SIGTERM, and SIGKILL after --grace for
// one that does not stop).
func TestAudit(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	// As the README advises: the kernel never gives a zone port to a
	// socket that binds none, so every UDP socket in the zone is a
	// server's, and --terminate deals with those too.
	run(t, "ip", "netns", "exec", tp.Server, "sysctl", "-qw", "net.ipv4.ip_local_reserved_ports=40010-49999")
	n := nftpolRun{bin: bin, config: writePolicy(t, auditPolicy), netns: tp.Server, stateDir: t.TempDir()}

	// An empty namespace: nothing listens, nothing is blocked.
	if a := n.audit(t, 0); len(a.Sockets) != 0 || a.Netns != tp.Server {
		t.Fatalf("audit of an empty namespace: %+v", a)
	}

	procs := map[string]*process{}
	cases := map[string]auditCase{}
	for _, c := range auditCases {
		k := auditKey(c.proto, c.addr, c.port, c.uid)
		procs[k] = listenProbe(t, tp.Server, c.uid, c.proto, c.addr, c.port)
		cases[k] = c
	}

	// Audit judges the policy file; nothing is applied yet.
	a := n.audit(t, 3)
	checkAudit(t, a, cases, procs)
	if t.Failed() {
		t.FailNow()
	}

	// The kernel agrees: once applied, a client from outside gets through
	// to exactly the sockets audit calls reachable or not enforced.
	n.apply(t)
	probe := probePath(t)
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range cases {
			if cases[k].verdict != "local-only" && !yield(k) {
				return
			}
		}
	})
	words := make([]string, len(keys))
	errs := make([]error, len(keys))
	var wg sync.WaitGroup
	for i, k := range keys {
		c := cases[k]
		addr := c.addr
		if addr == "" {
			addr = ServerIPv4
		}
		wg.Go(func() { words[i], errs[i] = probeConnect(probe, tp.Client, -1, c.proto, addr, c.port, "") })
	}
	wg.Wait()
	for i, k := range keys {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if got, want := blocked(words[i]), cases[k].verdict == "blocked"; got != want {
			t.Errorf("%s: a client from outside got %q, but audit said %s", k, words[i], cases[k].verdict)
		}
	}

	// --terminate ends exactly the processes behind blocked sockets. The
	// grace is long, but every probe stops at SIGTERM, so audit does not
	// wait it out.
	a = n.audit(t, 3, "--terminate", "--grace", "60s")
	var wantPIDs, gotPIDs []int
	for k, c := range cases {
		if c.verdict == "blocked" {
			wantPIDs = append(wantPIDs, procs[k].cmd.Process.Pid)
		}
	}
	for _, term := range a.Terminated {
		gotPIDs = append(gotPIDs, term.PID)
		if term.Outcome != "exited" || strings.Join(term.Signals, ",") != "SIGTERM" || term.Command != "probe" || len(term.Sockets) != 1 {
			t.Errorf("--terminate did this to pid %d: %+v, want SIGTERM, exited, one socket", term.PID, term)
		}
	}
	slices.Sort(wantPIDs)
	slices.Sort(gotPIDs)
	if !slices.Equal(gotPIDs, wantPIDs) {
		t.Errorf("--terminate signalled pids %v, want %v (the blocked listeners)", gotPIDs, wantPIDs)
	}
	for k, c := range cases {
		p := procs[k]
		if c.verdict == "blocked" {
			select {
			case <-p.done:
			case <-time.After(startTimeout):
				t.Errorf("%s: blocked listener still running after --terminate", k)
			}
		} else if !alive(p) {
			t.Errorf("%s: %s listener was ended by --terminate:\n%s", k, c.verdict, p.stderr)
		}
	}
	// What is left is exactly what was not blocked.
	a = n.audit(t, 0)
	left := map[string]auditCase{}
	for k, c := range cases {
		if c.verdict != "blocked" {
			left[k] = c
		}
	}
	checkAudit(t, a, left, procs)

	// A listener that does not stop at SIGTERM (it is stopped, so the
	// signal stays pending) gets SIGKILL once the grace period is over.
	stuck := listenProbe(t, tp.Server, uidAlpha, "tcp", ServerIPv4, 41002)
	if err := syscall.Kill(stuck.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	a = n.audit(t, 3, "--terminate", "--grace", "0s")
	if len(a.Terminated) != 1 || a.Terminated[0].PID != stuck.cmd.Process.Pid ||
		strings.Join(a.Terminated[0].Signals, ",") != "SIGTERM,SIGKILL" || a.Terminated[0].Outcome != "exited" {
		t.Errorf("--terminate of a stopped listener: %+v, want pid %d: SIGTERM, SIGKILL, exited", a.Terminated, stuck.cmd.Process.Pid)
	}
	select {
	case <-stuck.done:
	case <-time.After(startTimeout):
		t.Error("the stopped listener is still there after SIGKILL")
	}
	for k, p := range procs {
		if cases[k].verdict != "blocked" && !alive(p) {
			t.Errorf("%s: %s listener was ended by the second --terminate", k, cases[k].verdict)
		}
	}
}

// checkAudit compares audit's report with the listeners that should be
// there, one by one.
func checkAudit(t *testing.T, a auditJSON, cases map[string]auditCase, procs map[string]*process) {
	t.Helper()
	seen := map[string]bool{}
	summary := map[string]int{}
	for _, s := range a.Sockets {
		k := auditKey(s.Proto, s.Address, s.Port, s.UID)
		c, ok := cases[k]
		if !ok {
			t.Errorf("audit reports %s, which no test listener is: %+v", k, s)
			continue
		}
		seen[k] = true
		summary[c.verdict]++
		if s.Verdict != c.verdict || s.Reason != c.reason || s.OtherAccount != c.other || s.Account != c.account || s.MaybeClient {
			t.Errorf("%s: audit says %s %q (%s) account %q maybe_client %v, want %s %q other %q account %q",
				k, s.Verdict, s.Reason, s.Explanation, s.Account, s.MaybeClient, c.verdict, c.reason, c.other, c.account)
		}
		if pid := procs[k].cmd.Process.Pid; len(s.Processes) != 1 || s.Processes[0].PID != pid || s.Processes[0].Command != "probe" {
			t.Errorf("%s: processes %+v, want pid %d (probe)", k, s.Processes, pid)
		}
	}
	for k := range cases {
		if !seen[k] {
			t.Errorf("audit does not report %s", k)
		}
	}
	for _, v := range []string{"reachable", "blocked", "local-only", "not-enforced"} {
		if a.Summary[v] != summary[v] {
			t.Errorf("summary %s = %d, want %d", v, a.Summary[v], summary[v])
		}
	}
}

// TestAuditEphemeralUDP: an unconnected UDP socket on a port the kernel
// gives sockets that bind none may be a client's. Audit still calls it
// blocked, marks it, and --terminate leaves its process alone, while it ends
// a TCP listener on the same kind of port, and a UDP socket on a reserved
// port.
func TestAuditEphemeralUDP(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	ns := newNetns(t, "eph")
	// Only this namespace's range changes; the zone port 45050 is in it.
	run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=45000 45100")
	run(t, "ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_local_reserved_ports=45070")
	n := nftpolRun{bin: bin, config: writePolicy(t, auditPolicy), netns: ns, stateDir: t.TempDir()}
	udp := listenProbe(t, ns, uidAlpha, "udp", "", 45050)
	tcp := listenProbe(t, ns, uidAlpha, "tcp", "", 45060)
	reserved := listenProbe(t, ns, uidAlpha, "udp", "", 45070)

	before := n.audit(t, 3)
	for _, s := range before.Sockets {
		if want := s.Port == 45050; s.Verdict != "blocked" || s.MaybeClient != want {
			t.Errorf("%s port %d: %s, maybe_client %v; want blocked, maybe_client %v", s.Proto, s.Port, s.Verdict, s.MaybeClient, want)
		}
	}
	a := n.audit(t, 3, "--terminate", "--grace", "60s")
	if len(a.Terminated) != 3 {
		t.Fatalf("--terminate: %+v, want three entries", a.Terminated)
	}
	for _, term := range a.Terminated {
		switch term.PID {
		case udp.cmd.Process.Pid:
			if term.Outcome != "skipped" || len(term.Signals) != 0 {
				t.Errorf("the ephemeral UDP socket's process: %+v, want skipped without signals", term)
			}
		case tcp.cmd.Process.Pid, reserved.cmd.Process.Pid:
			if term.Outcome != "exited" {
				t.Errorf("pid %d: %+v, want exited", term.PID, term)
			}
		default:
			t.Errorf("--terminate signalled pid %d, which no test listener is", term.PID)
		}
	}
	if !alive(udp) {
		t.Error("the process of the ephemeral UDP socket was ended")
	}
}
