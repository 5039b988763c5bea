// Package integration proves nftpol's contract (DESIGN.md) with real packets.
//
// Every test runs as root in network namespaces it creates itself: a server
// namespace, where the ruleset is installed and the accounts' daemons listen,
// and a client namespace playing "outside", joined by a veth pair. The host's
// own ruleset and interfaces are never touched. Traffic is made by the probe
// helper (integration/probe), which enters a namespace and takes on a UID
// before it creates its socket, since the socket's owner is what `meta skuid`
// matches.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Addresses of the topology; all from the ranges reserved for benchmarking
// (198.18.0.0/15) and documentation (2001:db8::/32).
const (
	ServerIPv4 = "198.18.0.1"
	ClientIPv4 = "198.18.0.2"
	ServerIPv6 = "2001:db8::1"
	ClientIPv6 = "2001:db8::2"
)

// Time limits for the processes tests start. They bound a broken run; none of
// them is an assertion.
const (
	// connectTimeout is how long a probe waits for a connection and its
	// echo before it reports "timeout". Blocked TCP connects end here.
	connectTimeout = 1500 * time.Millisecond
	// commandTimeout bounds a short command (ip, nft, nftpol, a connect).
	commandTimeout = 30 * time.Second
	// listenerLifetime bounds a listener or a stream that a cleanup failed
	// to end.
	listenerLifetime = 2 * time.Minute
	// startTimeout is how long a listener or stream may take to say it is
	// ready.
	startTimeout = 10 * time.Second
)

// binDir holds the binaries buildBinary builds, one per test run; 0755 so
// that the probe can be executed by any UID.
var binDir string

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "nftpol-it-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	binDir = dir
	return m.Run()
}

// requireRoot skips the test unless it runs as root with nft and ip at hand.
// Under CI (CI=true) it fails instead: CI must never pass by skipping.
func requireRoot(t *testing.T) {
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
	msg := "integration tests need " + strings.Join(missing, ", ")
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: not skipping)")
	}
	t.Skip(msg)
}

type build struct {
	once sync.Once
	path string
	err  error
}

var (
	buildsMu sync.Mutex
	builds   = map[string]*build{}
)

// buildBinary builds github.com/nftpol/nftpol/<pkg> once per test run and
// returns the path of the binary (in a 0755 directory).
func buildBinary(t *testing.T, pkg string) string {
	t.Helper()
	buildsMu.Lock()
	b, ok := builds[pkg]
	if !ok {
		b = &build{}
		builds[pkg] = b
	}
	buildsMu.Unlock()
	b.once.Do(func() {
		out := filepath.Join(binDir, filepath.Base(pkg))
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/nftpol/nftpol/"+pkg)
		if msg, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, msg)
			return
		}
		b.err = os.Chmod(out, 0o755)
		b.path = out
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// probePath returns the probe binary, built on first use.
func probePath(t *testing.T) string {
	t.Helper()
	return buildBinary(t, "integration/probe")
}

// run runs a short command, bounded by commandTimeout, and fails the test
// with its output if it does not exit 0. It returns standard output.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	stdout, stderr, err := runCommand(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, stdout, stderr)
	}
	return stdout
}

// runCommand runs a short command, bounded by commandTimeout.
func runCommand(name string, args ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	var o, e bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

var netnsSeq atomic.Int64

// newNetns creates a network namespace with a name unique to this process,
// brings its lo up, and deletes it when the test ends, also on failure.
// Interfaces inside it go with it.
func newNetns(t *testing.T, role string) string {
	t.Helper()
	name := fmt.Sprintf("nftpol-it-%d-%d-%s", os.Getpid(), netnsSeq.Add(1), role)
	run(t, "ip", "netns", "add", name)
	t.Cleanup(func() {
		if _, stderr, err := runCommand("ip", "netns", "del", name); err != nil {
			t.Errorf("deleting namespace %s: %v: %s", name, err, stderr)
		}
	})
	run(t, "ip", "-n", name, "link", "set", "lo", "up")
	return name
}

// Topology is a server namespace and a client namespace joined by a veth
// pair: the server has ServerIPv4/24 and ServerIPv6/64, the client
// ClientIPv4/24 and ClientIPv6/64.
type Topology struct {
	// Server is the namespace where nftpol's table lives and the accounts
	// listen.
	Server string
	// Client is the namespace that plays "outside the server".
	Client string
}

// newTopology creates a Topology and removes it when the test ends.
func newTopology(t *testing.T) *Topology {
	t.Helper()
	tp := &Topology{Server: newNetns(t, "srv"), Client: newNetns(t, "cli")}
	// Created inside the server namespace, its peer directly inside the
	// client namespace: the host never sees either end.
	run(t, "ip", "-n", tp.Server, "link", "add", "veth-srv", "type", "veth",
		"peer", "name", "veth-cli", "netns", tp.Client)
	for _, end := range []struct{ ns, dev, v4, v6 string }{
		{tp.Server, "veth-srv", ServerIPv4, ServerIPv6},
		{tp.Client, "veth-cli", ClientIPv4, ClientIPv6},
	} {
		// No duplicate address detection on this private link, for the
		// link-local address either: it would hold the link back ~2s.
		run(t, "ip", "netns", "exec", end.ns, "sysctl", "-qw", "net.ipv6.conf."+end.dev+".accept_dad=0")
		run(t, "ip", "-n", end.ns, "addr", "add", end.v4+"/24", "dev", end.dev)
		run(t, "ip", "-n", end.ns, "addr", "add", end.v6+"/64", "dev", end.dev, "nodad")
		run(t, "ip", "-n", end.ns, "link", "set", end.dev, "up")
	}
	waitUsable(t, tp.Server, "veth-srv")
	waitUsable(t, tp.Client, "veth-cli")
	return tp
}

// waitUsable waits until dev in ns has carrier and no tentative IPv6
// address, so the first connect is not lost to link setup.
func waitUsable(t *testing.T, ns, dev string) {
	t.Helper()
	deadline := time.Now().Add(startTimeout)
	for {
		link := run(t, "ip", "-n", ns, "-o", "link", "show", "dev", dev)
		tentative := run(t, "ip", "-n", ns, "-6", "-o", "addr", "show", "dev", dev, "tentative")
		if strings.Contains(link, "LOWER_UP") && strings.TrimSpace(tentative) == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s in %s not usable after %v:\n%s%s", dev, ns, startTimeout, link, tentative)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// process is a long-running probe: it is killed when the test ends.
type process struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string // standard output, line by line; closed at EOF
	stderr *lockedBuffer
	done   chan struct{} // closed once the process has been waited for
	err    error         // from Wait, valid after done
	desc   string
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// startProbe starts the probe with args and waits for its first line, which
// must be want ("ready" or "connected"). The process is bounded by
// listenerLifetime and killed in the test's cleanup.
func startProbe(t *testing.T, want string, args ...string) *process {
	t.Helper()
	return startProcess(t, listenerLifetime, want, probePath(t), args...)
}

// startProcess is startProbe for any command, bounded by lifetime.
func startProcess(t *testing.T, lifetime time.Duration, want, name string, args ...string) *process {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), lifetime)
	cmd := exec.CommandContext(ctx, name, args...)
	p := &process{
		cmd:    cmd,
		lines:  make(chan string, 16),
		stderr: &lockedBuffer{},
		done:   make(chan struct{}),
		desc:   filepath.Base(name) + " " + strings.Join(args, " "),
	}
	cmd.Stderr = p.stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	p.stdin = stdin
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("%s: %v", p.desc, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
		close(p.lines)
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stdin.Close()
		_ = cmd.Process.Kill()
		go func() {
			for range p.lines {
			}
		}()
		<-p.done
		cancel()
	})
	select {
	case line, ok := <-p.lines:
		if !ok {
			<-p.done
			t.Fatalf("%s exited before %q: %v\n%s", p.desc, want, p.err, p.stderr)
		}
		if line != want {
			t.Fatalf("%s said %q, want %q\n%s", p.desc, line, want, p.stderr)
		}
	case <-time.After(startTimeout):
		t.Fatalf("%s did not say %q within %v\n%s", p.desc, want, startTimeout, p.stderr)
	}
	return p
}

// Listener is a probe echoing on one socket, owned by UID, in a namespace.
type Listener struct {
	Netns string
	UID   int
	Proto string // tcp, udp or unix
	Addr  string
	Port  int
	Path  string // UNIX socket path
}

// Listen starts an echo listener in the server namespace owned by uid (and
// gid uid) and returns once its socket is bound. It is killed when the test
// ends.
func (tp *Topology) Listen(t *testing.T, uid int, proto, addr string, port int) *Listener {
	t.Helper()
	return listenIn(t, tp.Server, uid, proto, addr, port, "")
}

// ListenClient starts an echo listener in the client namespace, for traffic
// that the server's accounts open themselves.
func (tp *Topology) ListenClient(t *testing.T, uid int, proto, addr string, port int) *Listener {
	t.Helper()
	return listenIn(t, tp.Client, uid, proto, addr, port, "")
}

// ListenUnix starts a UNIX stream socket echo listener owned by uid at path
// (its directory must let uid create it). The socket file is mode 0777.
func (tp *Topology) ListenUnix(t *testing.T, uid int, path string) *Listener {
	t.Helper()
	return listenIn(t, tp.Server, uid, "unix", "", 0, path)
}

func listenIn(t *testing.T, ns string, uid int, proto, addr string, port int, path string) *Listener {
	t.Helper()
	args := []string{"listen", "-netns", ns, "-uid", strconv.Itoa(uid), "-gid", strconv.Itoa(uid),
		"-proto", proto, "-timeout", listenerLifetime.String()}
	if proto == "unix" {
		args = append(args, "-path", path)
	} else {
		args = append(args, "-addr", addr, "-port", strconv.Itoa(port))
	}
	startProbe(t, "ready", args...)
	return &Listener{Netns: ns, UID: uid, Proto: proto, Addr: addr, Port: port, Path: path}
}

// Connect connects from the client namespace (as root) to addr:port, sends
// "ping" and returns the probe's word: ok, refused, timeout, reset, closed
// or "error: ...".
func (tp *Topology) Connect(t *testing.T, proto, addr string, port int) string {
	t.Helper()
	return connectIn(t, tp.Client, -1, proto, addr, port, "")
}

// ServerConnect connects from the server namespace as uid: to a loopback
// address for local traffic, or to a listener in the client namespace for a
// connection the account opens itself. It returns the probe's word.
func (tp *Topology) ServerConnect(t *testing.T, uid int, proto, addr string, port int) string {
	t.Helper()
	return connectIn(t, tp.Server, uid, proto, addr, port, "")
}

// ConnectUnix connects to the UNIX stream socket at path as uid and returns
// the probe's word.
func (tp *Topology) ConnectUnix(t *testing.T, uid int, path string) string {
	t.Helper()
	return connectIn(t, tp.Server, uid, "unix", "", 0, path)
}

func connectIn(t *testing.T, ns string, uid int, proto, addr string, port int, path string) string {
	t.Helper()
	word, err := probeConnect(probePath(t), ns, uid, proto, addr, port, path)
	if err != nil {
		t.Fatal(err)
	}
	return word
}

// probeConnect runs `probe connect` and returns its word. It does not need a
// *testing.T, so that many connects can run at once in goroutines.
func probeConnect(probe, ns string, uid int, proto, addr string, port int, path string) (string, error) {
	args := []string{"connect", "-netns", ns, "-uid", strconv.Itoa(uid), "-proto", proto,
		"-timeout", connectTimeout.String()}
	if proto == "unix" {
		args = append(args, "-path", path)
	} else {
		args = append(args, "-addr", addr, "-port", strconv.Itoa(port))
	}
	stdout, stderr, err := runCommand(probe, args...)
	if err != nil {
		return "", fmt.Errorf("probe %s: %v\n%s%s", strings.Join(args, " "), err, stdout, stderr)
	}
	return strings.TrimSpace(stdout), nil
}

// Stream is an established connection from the client namespace that
// exchanges a message every 50ms until Finish.
type Stream struct {
	p *process
}

// Stream connects from the client namespace to addr:port, makes a first
// exchange and returns; the connection then keeps exchanging messages.
func (tp *Topology) Stream(t *testing.T, proto, addr string, port int) *Stream {
	t.Helper()
	p := startProbe(t, "connected", "stream", "-netns", tp.Client, "-proto", proto,
		"-addr", addr, "-port", strconv.Itoa(port), "-interval", "50ms",
		"-timeout", connectTimeout.String(), "-max", listenerLifetime.String())
	return &Stream{p: p}
}

// Finish ends the stream and returns its verdict: "ok N" when all N
// exchanges were answered, "fail N: WORD" at the first that was not.
func (s *Stream) Finish(t *testing.T) string {
	t.Helper()
	s.p.stdin.Close()
	var out []string
	for line := range s.p.lines {
		out = append(out, line)
	}
	<-s.p.done
	if s.p.err != nil {
		t.Fatalf("%s: %v\n%s", s.p.desc, s.p.err, s.p.stderr)
	}
	return strings.Join(out, "\n")
}

// nftList returns `nft list ruleset` inside ns.
func nftList(t *testing.T, ns string) string {
	t.Helper()
	return run(t, "ip", "netns", "exec", ns, "nft", "list", "ruleset")
}

// nftListTable returns `nft list table FAMILY NAME` inside ns.
func nftListTable(t *testing.T, ns, family, name string) string {
	t.Helper()
	return run(t, "ip", "netns", "exec", ns, "nft", "list", "table", family, name)
}

// nftLoad loads ruleset text with `nft -f` inside ns.
func nftLoad(t *testing.T, ns, ruleset string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "ruleset.nft")
	if err := os.WriteFile(file, []byte(ruleset), 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "netns", "exec", ns, "nft", "-f", file)
}

// sharedDir makes a world-writable, sticky directory with a short path (for
// UNIX sockets of several UIDs; sun_path is 108 bytes) and removes it when
// the test ends.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nftpol-it-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o1777); err != nil {
		t.Fatal(err)
	}
	return dir
}

// blocked reports whether a probe word means the traffic did not get
// through: refused, timed out, reset, or denied (dropped on the way out of
// the connecting host).
func blocked(word string) bool {
	switch word {
	case "refused", "timeout", "reset", "denied":
		return true
	}
	return false
}
