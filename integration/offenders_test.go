package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// offendersPolicy is contractPolicy with a terminate section.
func offendersPolicy(terminate string) string {
	return contractPolicy + "terminate: " + terminate + "\n"
}

// listenProc starts a probe listener like Topology.Listen and returns its
// process, whose PID holds the socket.
func listenProc(t *testing.T, tp *Topology, uid int, proto string, port int, extra ...string) *process {
	t.Helper()
	args := append([]string{"listen", "-netns", tp.Server, "-uid", strconv.Itoa(uid), "-gid", strconv.Itoa(uid),
		"-proto", proto, "-addr", ServerIPv4, "-port", strconv.Itoa(port), "-timeout", listenerLifetime.String()}, extra...)
	return startProbe(t, "ready", args...)
}

func exited(p *process) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// connectSoon tries a connection from the client in the background: a
// blocked one takes the client's timeout to fail.
func connectSoon(t *testing.T, tp *Topology, proto string, port int) {
	probe := probePath(t)
	go func() {
		_, _, _ = runCommand("ip", "netns", "exec", tp.Client, probe, "connect", "-proto", proto,
			"-addr", ServerIPv4, "-port", strconv.Itoa(port), "-timeout", "1s")
	}()
}

func eventIs(kind string, port int) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["event"] == kind && m["port"] == float64(port) }
}

// scrape reads the agent's /metrics over its unix socket.
func scrape(t *testing.T, sock string) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	resp, err := c.Get("http://agent/metrics")
	if err != nil {
		t.Fatalf("scraping %s: %v", sock, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("scraping %s: %s %v\n%s", sock, resp.Status, err, body)
	}
	return string(body)
}

// promtool checks an exposition with Prometheus's own linter.
func promtool(t *testing.T, exposition string) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		msg := "promtool (Debian package prometheus) is needed to check the metrics"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + " (CI=true: not skipping)")
		}
		t.Skip(msg)
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = strings.NewReader(exposition)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestAgentTerminatesOffenders: an account's listener outside its range,
// hit by a client, is named in an episode event within a second (UID,
// account, port, pid), and with terminate {after: 2s, grace: 1s} it is gone
// within 4 s, one that ignores SIGTERM within 5 s; the account's own-port
// listener, a UID below min_uid and an exempt UID keep running. /metrics
// shows the violation and the terminations and passes promtool; status
// shows the terminations.
func TestAgentTerminatesOffenders(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	n := nftpolRun{bin: bin, config: writePolicy(t, offendersPolicy("{after: 2s, grace: 1s}")), netns: tp.Server, stateDir: t.TempDir()}
	metrics := filepath.Join(t.TempDir(), "metrics.sock")
	ag := startAgent(t, n, "--metrics-listen", "unix:"+metrics)

	own := listenProc(t, tp, uidAlpha, "tcp", 40010)
	system := listenProc(t, tp, uidSystem, "tcp", 40027) // beta's port, but not enforced
	exempt := listenProc(t, tp, uidExempt, "tcp", 40028)
	offender := listenProc(t, tp, uidAlpha, "tcp", 40025)                 // beta's port
	stubborn := listenProc(t, tp, uidAlpha, "tcp", 40026, "-ignore-term") // beta's port

	begin := time.Now()
	connectSoon(t, tp, "tcp", 40025)
	connectSoon(t, tp, "tcp", 40026)
	for _, port := range []int{40010, 40027, 40028} {
		if got := tp.Connect(t, "tcp", ServerIPv4, port); got != "ok" {
			t.Errorf("port %d: %q, want ok", port, got)
		}
	}
	ev := ag.waitLog(t, 5*time.Second, eventIs("episode_start", 40025))
	// Within a second of the first blocked packet: first_seen is when the
	// kernel's violation set recorded it, time when the agent said so.
	seen, err1 := time.Parse(time.RFC3339Nano, fmt.Sprint(ev["first_seen"]))
	said, err2 := time.Parse(time.RFC3339Nano, fmt.Sprint(ev["time"]))
	if err1 != nil || err2 != nil || said.Sub(seen) > time.Second || seen.Before(begin.Add(-time.Second)) {
		t.Errorf("episode event at %v for a first blocked packet at %v (%v %v), want within 1s", ev["time"], ev["first_seen"], err1, err2)
	}
	t.Logf("episode event %s after the first blocked packet, %s after the first connection attempt: %v",
		said.Sub(seen).Round(time.Millisecond), time.Since(begin).Round(time.Millisecond), ev)
	if ev["uid"] != float64(uidAlpha) || ev["account"] != "alpha" || ev["proto"] != "tcp" ||
		ev["pid"] != float64(offender.cmd.Process.Pid) || ev["command"] != "probe" {
		t.Errorf("episode event %v, want uid %d, alpha, tcp, pid %d (probe)", ev, uidAlpha, offender.cmd.Process.Pid)
	}
	if r, _ := ev["reason"].(string); !strings.Contains(r, "beta") {
		t.Errorf("episode event reason %q, want another account's port (beta)", ev["reason"])
	}

	// The offender ends within 4 s of its first blocked packet, the
	// stubborn one (SIGKILL after the grace) within 5 s.
	eventually(t, 4*time.Second-time.Since(begin), "the offender gone", func() bool { return exited(offender) })
	t.Logf("offender gone %s after its first blocked packet", time.Since(begin).Round(time.Millisecond))
	eventually(t, 5*time.Second-time.Since(begin), "the offender that ignores SIGTERM gone", func() bool { return exited(stubborn) })
	t.Logf("stubborn offender gone %s after its first blocked packet", time.Since(begin).Round(time.Millisecond))
	for _, p := range []*process{own, system, exempt} {
		if exited(p) {
			t.Errorf("%s ended; only the offenders may be", p.desc)
		}
	}
	tm := ag.waitLog(t, time.Second, func(m map[string]any) bool {
		return m["event"] == "termination" && m["pid"] == float64(stubborn.cmd.Process.Pid)
	})
	if tm["signals"] != "SIGTERM,SIGKILL" || tm["outcome"] != "exited" || tm["dry_run"] != false {
		t.Errorf("termination of the stubborn offender: %v", tm)
	}
	ag.waitLog(t, 2*time.Second, func(m map[string]any) bool {
		return m["event"] == "episode_end" && m["port"] == 40025.0 && m["why"] == "terminated"
	})
	if c := ag.count(func(m map[string]any) bool { return m["event"] == "termination" }); c != 2 {
		t.Errorf("%d termination events, want 2\n%s", c, ag.log())
	}

	body := scrape(t, metrics)
	for _, want := range []string{
		`nftpol_table_installed 1`,
		`nftpol_in_sync 1`,
		fmt.Sprintf(`nftpol_violation_packets{account="alpha",port="40025",proto="tcp",uid="%d"}`, uidAlpha),
		`nftpol_episodes_total{proto="tcp"} 2`,
		`nftpol_terminations_total{dry_run="false",outcome="exited"} 2`,
		`nftpol_heal_duration_seconds_bucket`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	promtool(t, body)
	var excerpt []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "nftpol_") && !strings.HasPrefix(l, "nftpol_heal_duration_seconds_bucket") {
			excerpt = append(excerpt, l)
		}
	}
	t.Logf("/metrics (nftpol_ lines):\n%s", strings.Join(excerpt, "\n"))
	ag.count(func(m map[string]any) bool {
		if m["event"] != nil {
			line, _ := json.Marshal(m)
			t.Logf("event: %s", line)
		}
		return false
	})

	status, _, _ := n.run(t, "status")
	if !strings.Contains(status, "Terminated:") || !strings.Contains(status, fmt.Sprintf("probe[%d]", stubborn.cmd.Process.Pid)) {
		t.Errorf("status after the terminations:\n%s", status)
	}
	t.Logf("status:\n%s", status)
}

// TestAgentOffendersDryRun: with dry_run the event says what would be
// ended, and nothing is; status shows the open episode.
func TestAgentOffendersDryRun(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	n := nftpolRun{bin: bin, config: writePolicy(t, offendersPolicy("{after: 1s, grace: 1s, dry_run: true}")), netns: tp.Server, stateDir: t.TempDir()}
	ag := startAgent(t, n)
	offender := listenProc(t, tp, uidAlpha, "tcp", 40025)
	connectSoon(t, tp, "tcp", 40025)
	tm := ag.waitLog(t, 4*time.Second, eventIs("termination", 40025))
	if tm["dry_run"] != true || tm["outcome"] != "would-end" || tm["pid"] != float64(offender.cmd.Process.Pid) || tm["signals"] != "none" {
		t.Errorf("dry-run event %v, want would-end for pid %d", tm, offender.cmd.Process.Pid)
	}
	time.Sleep(time.Second)
	if exited(offender) {
		t.Fatal("a dry run ended the offender")
	}
	if got := tp.Connect(t, "tcp", ServerIPv4, 40025); !blocked(got) {
		t.Errorf("40025 in a dry run: %q, want blocked (the packets are blocked all the same)", got)
	}
	status, _, _ := n.run(t, "status")
	if !strings.Contains(status, "Serving:") || !strings.Contains(status, fmt.Sprintf("probe[%d]", offender.cmd.Process.Pid)) ||
		!strings.Contains(status, "would-end (dry run)") {
		t.Errorf("status in a dry run:\n%s", status)
	}
	t.Logf("status:\n%s", status)
}

// TestAgentFloodOfBlockedPackets: a flood of blocked packets costs the
// agent a bounded amount of CPU and memory: the doorbell is rate-limited
// in the kernel and the agent reads the violation sets, never a packet.
func TestAgentFloodOfBlockedPackets(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy+"action: drop\n"), netns: tp.Server, stateDir: t.TempDir()}
	ag := startAgent(t, n)
	// beta on alpha's UDP port answers one client datagram with a flood:
	// every datagram it sends is blocked on the way out (dropped: a
	// reject's ICMP error for each would halve the rate this machine
	// reaches).
	const seconds = 5
	// Two of them, one per CPU of the test machines.
	ports := []int{40015, 40016}
	for _, port := range ports {
		listenProc(t, tp, uidBeta, "udp", port, "-blast", fmt.Sprintf("%ds", seconds))
	}
	cpu0, _ := procCPU(t, ag.cmd.Process.Pid)
	start := time.Now()
	for _, port := range ports {
		connectSoon(t, tp, "udp", port)
	}
	time.Sleep(time.Until(start.Add(seconds * time.Second)))
	elapsed := time.Since(start)
	cpu1, rss := procCPU(t, ag.cmd.Process.Pid)
	blockedPkts := violationPackets(t, tp.Server, "udp_violations")
	rate := float64(blockedPkts) / elapsed.Seconds()
	share := (cpu1 - cpu0).Seconds() / elapsed.Seconds()
	t.Logf("flood: %d packets blocked in %s (%.0f a second); agent CPU %s (%.2f%% of a core), RSS %d KiB",
		blockedPkts, elapsed.Round(time.Millisecond), rate, (cpu1 - cpu0).Round(time.Millisecond), 100*share, rss)
	ag.waitLog(t, time.Second, eventIs("episode_start", 40015))
	if blockedPkts < 10000 {
		t.Fatalf("only %d packets blocked: no flood to speak of", blockedPkts)
	}
	// Bounded: a few reads of the sets a second, whatever the rate.
	if share > 0.05 {
		t.Errorf("the agent used %.1f%% of a core during a flood of %.0f blocked packets a second, want at most 5%%", 100*share, rate)
	}
	if rss > 60<<10 {
		t.Errorf("agent RSS %d KiB during the flood, want at most 60 MiB", rss)
	}
}

// procCPU is a process's user+system time and resident set (KiB).
func procCPU(t *testing.T, pid int) (time.Duration, int64) {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	_, rest, _ := strings.Cut(string(stat), ") ")
	f := strings.Fields(rest)
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var rss int64
	for _, l := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			rss, _ = strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
	}
	tick := time.Second / 100 // USER_HZ
	return time.Duration(utime+stime) * tick, rss
}

// violationPackets adds up the packet counters of a violation set, as nft
// lists them.
func violationPackets(t *testing.T, ns, set string) int64 {
	t.Helper()
	out := run(t, "ip", "netns", "exec", ns, "nft", "list", "set", "inet", "nftpol", set)
	var total int64
	for _, f := range strings.Split(out, "counter packets ")[1:] {
		v, _ := strconv.ParseInt(strings.Fields(f)[0], 10, 64)
		total += v
	}
	return total
}
