package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// contractPolicy is the policy the contract matrix is checked against.
const contractPolicy = `zone: 40010-49999
min_uid: 1000
exempt: [1500]
accounts:
  - {name: alpha, uid: 1001, ports: ["40010-40019"], protocols: [tcp, udp]}
  - {name: beta,  uid: 1002, ports: ["40020-40029"], protocols: [tcp]}
`

// contractPolicyGamma is contractPolicy plus one account: applying it over
// contractPolicy is a small change to a live table.
const contractPolicyGamma = contractPolicy +
	`  - {name: gamma, uid: 1003, ports: ["40030-40039"], protocols: [tcp]}
`

// UIDs in contractPolicy.
const (
	uidRoot   = 0
	uidSystem = 999 // below min_uid
	uidAlpha  = 1001
	uidBeta   = 1002
	uidGamma  = 1003 // only in contractPolicyGamma
	uidExempt = 1500
)

// foreignTable belongs to somebody else; nftpol must leave it as it is.
const foreignTable = `table inet foreign {
	chain c {
		type filter hook input priority 10; policy accept;
		tcp dport 1 counter
	}
}
`

// family is one IP version of the topology.
type family struct {
	name     string
	server   string // the server's address on the veth
	client   string // the client's address on the veth
	loopback string
}

var families = []family{
	{name: "ipv4", server: ServerIPv4, client: ClientIPv4, loopback: "127.0.0.1"},
	{name: "ipv6", server: ServerIPv6, client: ClientIPv6, loopback: "::1"},
}

// route says where a matrix case listens and where it connects from.
type route int

const (
	// inbound: the listener is in the server namespace on the server's
	// address; the client namespace connects (as root).
	inbound route = iota
	// loopback: the listener is in the server namespace on the loopback
	// address; peer connects from the server namespace.
	loopback
	// unixSocket: a UNIX stream socket in the server namespace; peer
	// connects. Run once, not per family.
	unixSocket
	// outbound: root listens in the client namespace; the account uid
	// connects from the server namespace (its own client traffic).
	outbound
)

// matrixCase is one line of the contract, proven with one connection.
type matrixCase struct {
	name  string
	route route
	uid   int // who listens (outbound: the account that connects)
	peer  int // who connects (loopback, unixSocket)
	proto string
	port  int
	reach bool // whether the echo must come back
	why   string
}

// contractMatrix is the contract (DESIGN.md) under contractPolicy.
var contractMatrix = []matrixCase{
	{name: "alpha_tcp_40010_own", route: inbound, uid: uidAlpha, proto: "tcp", port: 40010, reach: true,
		why: "1: an account serves on its own ports"},
	{name: "alpha_udp_40011_own", route: inbound, uid: uidAlpha, proto: "udp", port: 40011, reach: true,
		why: "1: an account serves on its own ports"},
	{name: "beta_tcp_40020_own", route: inbound, uid: uidBeta, proto: "tcp", port: 40020, reach: true,
		why: "1: an account serves on its own ports"},
	{name: "alpha_tcp_40025_betas", route: inbound, uid: uidAlpha, proto: "tcp", port: 40025,
		why: "1: not on another account's port"},
	{name: "alpha_tcp_45000_unassigned", route: inbound, uid: uidAlpha, proto: "tcp", port: 45000,
		why: "1, 2: not on an unassigned zone port"},
	{name: "alpha_tcp_8080_outside_zone", route: inbound, uid: uidAlpha, proto: "tcp", port: 8080,
		why: "1: not outside the zone"},
	{name: "alpha_udp_8085_outside_zone", route: inbound, uid: uidAlpha, proto: "udp", port: 8085,
		why: "1: not outside the zone, UDP too"},
	{name: "beta_udp_40021_tcp_only", route: inbound, uid: uidBeta, proto: "udp", port: 40021,
		why: "1, 2: beta has TCP ports only"},
	{name: "root_tcp_45001_unassigned", route: inbound, uid: uidRoot, proto: "tcp", port: 45001,
		why: "2: an unassigned zone port is closed whoever listens"},
	{name: "root_tcp_8081", route: inbound, uid: uidRoot, proto: "tcp", port: 8081, reach: true,
		why: "3: UIDs outside E are untouched"},
	{name: "exempt_tcp_8082", route: inbound, uid: uidExempt, proto: "tcp", port: 8082, reach: true,
		why: "3: exempt UIDs are untouched"},
	{name: "uid999_tcp_8083", route: inbound, uid: uidSystem, proto: "tcp", port: 8083, reach: true,
		why: "3: UIDs below min_uid are untouched"},
	{name: "uid999_udp_8083", route: inbound, uid: uidSystem, proto: "udp", port: 8083, reach: true,
		why: "3: UIDs below min_uid are untouched"},
	{name: "alpha_tcp_8084_loopback", route: loopback, uid: uidAlpha, peer: uidBeta, proto: "tcp", port: 8084, reach: true,
		why: "3: loopback is untouched (loopback: allow)"},
	{name: "alpha_unix_socket", route: unixSocket, uid: uidAlpha, peer: uidBeta, proto: "unix", reach: true,
		why: "3: UNIX domain sockets are untouched"},
	{name: "alpha_tcp_out_9000", route: outbound, uid: uidAlpha, proto: "tcp", port: 9000, reach: true,
		why: "3: connections an account opens itself are untouched"},
	{name: "alpha_udp_out_9000", route: outbound, uid: uidAlpha, proto: "udp", port: 9000, reach: true,
		why: "3: connections an account opens itself are untouched"},
}

// allReachable returns the matrix with every case expected to get through:
// what a namespace without any ruleset gives.
func allReachable(m []matrixCase) []matrixCase {
	out := append([]matrixCase(nil), m...)
	for i := range out {
		out[i].reach = true
		out[i].why = "no ruleset"
	}
	return out
}

// runMatrix starts every case's listener, makes all the connections at once
// (so blocked ones, which end by timeout, cost the time of one) and then
// reports one subtest per case and family.
func runMatrix(t *testing.T, tp *Topology, matrix []matrixCase) {
	t.Helper()
	probe := probePath(t)
	dir := sharedDir(t)
	type job struct {
		name    string
		c       matrixCase
		connect func() (string, error)
	}
	var jobs []job
	for _, fam := range families {
		for _, c := range matrix {
			name := fam.name + "/" + c.name
			switch c.route {
			case inbound:
				tp.Listen(t, c.uid, c.proto, fam.server, c.port)
				jobs = append(jobs, job{name, c, func() (string, error) {
					return probeConnect(probe, tp.Client, -1, c.proto, fam.server, c.port, "")
				}})
			case loopback:
				tp.Listen(t, c.uid, c.proto, fam.loopback, c.port)
				jobs = append(jobs, job{name, c, func() (string, error) {
					return probeConnect(probe, tp.Server, c.peer, c.proto, fam.loopback, c.port, "")
				}})
			case outbound:
				tp.ListenClient(t, uidRoot, c.proto, fam.client, c.port)
				jobs = append(jobs, job{name, c, func() (string, error) {
					return probeConnect(probe, tp.Server, c.uid, c.proto, fam.client, c.port, "")
				}})
			case unixSocket:
				if fam.name != families[0].name {
					continue // not an IP socket: once is enough
				}
				name = "unix/" + c.name
				path := filepath.Join(dir, c.name+".sock")
				tp.ListenUnix(t, c.uid, path)
				jobs = append(jobs, job{name, c, func() (string, error) {
					return probeConnect(probe, tp.Server, c.peer, "unix", "", 0, path)
				}})
			}
		}
	}

	words := make([]string, len(jobs))
	errs := make([]error, len(jobs))
	var wg sync.WaitGroup
	for i, j := range jobs {
		wg.Go(func() { words[i], errs[i] = j.connect() })
	}
	wg.Wait()

	for i, j := range jobs {
		t.Run(j.name, func(t *testing.T) {
			if errs[i] != nil {
				t.Fatal(errs[i])
			}
			word := words[i]
			switch {
			case j.c.reach && word != "ok":
				t.Errorf("got %q, want ok (contract %s)", word, j.c.why)
			case !j.c.reach && !blocked(word):
				t.Errorf("got %q, want refused, timeout or reset (contract %s)", word, j.c.why)
			default:
				t.Logf("%s (contract %s)", word, j.c.why)
			}
		})
	}
	if t.Failed() {
		t.Logf("ruleset in %s:\n%s", tp.Server, nftList(t, tp.Server))
	}
}

// writePolicy writes a policy file into a fresh temporary directory.
func writePolicy(t *testing.T, text string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "nftpol.yaml")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

// nftpolRun is one configured nftpol working on the server namespace.
type nftpolRun struct {
	bin, config, netns, stateDir string
	// runDir is where apply publishes the account views; "" is beside
	// the state directory (stateDir.run), never the host's /run/nftpol.
	runDir string
}

// runDirectory is n's --run-dir.
func (n nftpolRun) runDirectory() string {
	if n.runDir != "" {
		return n.runDir
	}
	return filepath.Clean(n.stateDir) + ".run"
}

// run runs `nftpol --config … --netns … --state-dir … --run-dir … ARGS…` and
// returns its output and exit code; it fails the test only if nftpol could
// not be run.
func (n nftpolRun) run(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	all := append([]string{"--config", n.config, "--netns", n.netns, "--state-dir", n.stateDir, "--run-dir", n.runDirectory()}, args...)
	var o, e bytes.Buffer
	cmd := exec.CommandContext(ctx, n.bin, all...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && ctx.Err() == nil:
		code = exit.ExitCode()
	default:
		t.Fatalf("nftpol %s: %v\n%s", strings.Join(all, " "), err, e.String())
	}
	if code == 0 && len(args) > 0 && (args[0] == "apply" || args[0] == "restore") {
		throughAgent(t, n)
	}
	return o.String(), e.String(), code
}

// apply runs `nftpol apply` and fails the test with its output unless it
// exits 0.
func (n nftpolRun) apply(t *testing.T) {
	t.Helper()
	stdout, stderr, code := n.run(t, "apply")
	if code != 0 {
		t.Fatalf("nftpol apply exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
}

// planExit runs `nftpol plan --detailed-exitcode` and checks its exit code.
func (n nftpolRun) planExit(t *testing.T, want int) {
	t.Helper()
	stdout, stderr, code := n.run(t, "plan", "--detailed-exitcode")
	if code != want {
		t.Errorf("nftpol plan --detailed-exitcode exited %d, want %d\nstdout:\n%s\nstderr:\n%s",
			code, want, stdout, stderr)
	}
}

func TestContract(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	nftLoad(t, tp.Server, foreignTable)
	foreign := nftListTable(t, tp.Server, "inet", "foreign")
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: tp.Server, stateDir: t.TempDir()}

	n.planExit(t, 2)
	n.apply(t)
	if got := nftListTable(t, tp.Server, "inet", "foreign"); got != foreign {
		t.Errorf("apply changed table inet foreign:\nbefore:\n%s\nafter:\n%s", foreign, got)
	}
	nftListTable(t, tp.Server, "inet", "nftpol") // the owned table is there
	n.planExit(t, 0)
	stdout, stderr, code := n.run(t, "plan", "-o", "json")
	if code != 0 || !json.Valid([]byte(stdout)) {
		t.Errorf("nftpol plan -o json exited %d, want 0 and JSON\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}

	runMatrix(t, tp, contractMatrix)

	if got := nftListTable(t, tp.Server, "inet", "foreign"); got != foreign {
		t.Errorf("table inet foreign changed during the test:\nbefore:\n%s\nafter:\n%s", foreign, got)
	}
}

// TestContractEstablishedSurvivesApply proves that applying keeps
// established connections to an account's own ports working: both the first
// apply on a server that already has traffic, and a later change.
func TestContractEstablishedSurvivesApply(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	config := writePolicy(t, contractPolicy)
	n := nftpolRun{bin: bin, config: config, netns: tp.Server, stateDir: t.TempDir()}

	streams := startStreams(t, tp, "before_first_apply", 40012, 40013)
	n.apply(t)
	streams = append(streams, startStreams(t, tp, "before_change", 40014, 40015)...)
	if err := os.WriteFile(config, []byte(contractPolicyGamma), 0o644); err != nil {
		t.Fatal(err)
	}
	n.planExit(t, 2)
	n.apply(t)
	finishStreams(t, streams)

	// The change took effect: gamma now serves, and alpha still does.
	tp.Listen(t, uidGamma, "tcp", ServerIPv4, 40030)
	if got := tp.Connect(t, "tcp", ServerIPv4, 40030); got != "ok" {
		t.Errorf("gamma tcp 40030 after the change: got %q, want ok", got)
	}
	tp.Listen(t, uidAlpha, "tcp", ServerIPv6, 40016)
	if got := tp.Connect(t, "tcp", ServerIPv6, 40016); got != "ok" {
		t.Errorf("alpha tcp 40016 after the change: got %q, want ok", got)
	}
}

type namedStream struct {
	name string
	s    *Stream
}

// startStreams starts alpha listeners on tcpPort and udpPort (both alpha's
// own ports) for both families and a stream to each.
func startStreams(t *testing.T, tp *Topology, label string, tcpPort, udpPort int) []namedStream {
	t.Helper()
	var out []namedStream
	for _, fam := range families {
		for _, pp := range []struct {
			proto string
			port  int
		}{{"tcp", tcpPort}, {"udp", udpPort}} {
			tp.Listen(t, uidAlpha, pp.proto, fam.server, pp.port)
			out = append(out, namedStream{
				name: fmt.Sprintf("%s/%s/alpha_%s_%d", label, fam.name, pp.proto, pp.port),
				s:    tp.Stream(t, pp.proto, fam.server, pp.port),
			})
		}
	}
	return out
}

// finishStreams ends every stream and checks that none missed an exchange.
func finishStreams(t *testing.T, streams []namedStream) {
	t.Helper()
	for _, ns := range streams {
		got := ns.s.Finish(t)
		if !strings.HasPrefix(got, "ok ") {
			t.Errorf("%s: %q, want every exchange answered (ok N)", ns.name, got)
		} else {
			t.Logf("%s: %s", ns.name, got)
		}
	}
}
