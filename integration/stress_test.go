package integration

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/nftpol/nftpol/rules/kernel"
)

// The stress test: while nftpol flips the server between two rulesets
// again and again, on every path that changes the table (element changes,
// moves, rebuilds, a layout change, --adopt, restore, a first install),
// clients in the other namespace hammer ports that both rulesets allow and
// ports that both forbid. Every allowed connection must succeed and every
// forbidden one must be blocked: no packet may see half an apply.
//
// `make test` runs it bounded (stressBoundedSteps operations a path);
// `make stress` (NFTPOL_STRESS=long) keeps each path going until it made
// stressLongConnections connections; -stress.connections=N sets N.

var stressConnectionsFlag = flag.Int("stress.connections", 0,
	"TestStress: flip each path until it made at least this many connections (0: 200,000 with NFTPOL_STRESS=long, else the bounded run)")

const (
	// stressAccounts is the policies' size: 8 shards of 250, enough for a
	// rebuild to carry thousands of elements.
	stressAccounts = 2000
	stressUIDBase  = 10000
	// stressListeners: accounts 0..15 (UIDs 10000..10015, two in every
	// shard) run listeners. Accounts 0..7 are the same in every policy;
	// 8..15 change in the move and rebuild pairs, keeping the allowed port.
	stressListeners = 16
	stressSteady    = 8
	// stressClosedPort is a zone port no account has: closed whoever
	// listens (root does).
	stressClosedPort = 49990
	// stressExempt is a UID without an account that one element policy
	// exempts.
	stressExempt = 9000

	// stressBoundedSteps is how many operations (applies, restores, nft
	// loads) each path makes in the bounded run.
	stressBoundedSteps = 16
	// stressLongConnections is the long run's connections per path.
	stressLongConnections = 200_000
	// stressPace is the pause between two operations: the clients get
	// the CPU too, so that a timeout means a packet lost, not a starved
	// client (two shared cores).
	stressPace = 100 * time.Millisecond
	// stressClientTimeout is one connection's limit. A SYN-ACK dropped in
	// a window is retransmitted after 1 s, so a longer limit would hide
	// the window.
	stressClientTimeout = time.Second
	// stressClientPace is a client worker's pause between connections.
	stressClientPace = 20 * time.Millisecond
)

// stressBlock is account i's first port: accounts have 4 ports each.
func stressBlock(i int) int { return 40010 + 4*i }

// stressAllowedPort is listener i's own port in every policy.
func stressAllowedPort(i int) int { return stressBlock(i) }

// stressForbiddenPort is a port of another account (1000+i, which has it in
// every policy), where listener i also listens: forbidden to i everywhere.
func stressForbiddenPort(i int) int { return stressBlock(1000+i) + 1 }

// stressPolicy is one policy of the stress test: stressAccounts accounts of
// 4 ports, of which the changed ones keep only their first 2, plus extra
// accounts after the last, and the exempt UID or not.
type stressPolicy struct {
	changed func(i int) bool
	extra   int
	exempt  bool
}

func (sp stressPolicy) ports(i int) (lo, hi int) {
	lo = stressBlock(i)
	if sp.changed != nil && sp.changed(i) {
		return lo, lo + 1
	}
	return lo, lo + 3
}

func (sp stressPolicy) text() string {
	var b strings.Builder
	b.WriteString("zone: 40010-49999\nmin_uid: 1000\n")
	if sp.exempt {
		fmt.Fprintf(&b, "exempt: [%d]\n", stressExempt)
	}
	b.WriteString("accounts:\n")
	for i := range stressAccounts + sp.extra {
		lo, hi := sp.ports(i)
		fmt.Fprintf(&b, "  - {name: s%d, uid: %d, ports: [\"%d-%d\"]}\n", i, stressUIDBase+i, lo, hi)
	}
	return b.String()
}

var (
	// stressBase is policy A of every pair.
	stressBase = stressPolicy{}
	// stressElements adds three accounts at the end and an exempt UID:
	// elements added to and taken from live sets, nothing rebuilt.
	stressElements = stressPolicy{extra: 3, exempt: true}
	// stressMoves changes 24 accounts (listeners 8..15 among them): moves,
	// below rules.MaxMoved.
	stressMoves = stressPolicy{changed: func(i int) bool { return i >= stressSteady && i < 32 }}
	// stressRebuild changes 404 accounts (listeners 8..15 and every fifth
	// from 20): past rules.MaxMoved, so the shards are rebuilt.
	stressRebuild = stressPolicy{changed: func(i int) bool {
		return i >= stressSteady && i < stressListeners || i >= stressListeners && i%5 == 0
	}}
)

// stressLegacyLoads returns, for policy sp, the table of the layout before
// the shards in two nft transactions over nftpol's live (sharded) table:
// first the unsharded sets, filled, which no rule reads yet; then the
// output chain's rules switched to them and the shards deleted. The test's
// own change must not open the window it looks for, so it is made the way
// the issue asks nftpol to make its own. The result is what an nftpol from
// before the shards left (unshardedContractTable); the moved sets keep the
// sharded layout's comments, which nftpol does not judge.
func stressLegacyLoads(sp stressPolicy) (sets, switchRules string) {
	var b strings.Builder
	for _, proto := range []string{"tcp", "udp"} {
		fmt.Fprintf(&b, "add set inet nftpol %s_ports { type uid . inet_service; flags interval; comment \"nftpol: ports each account may serve %s from\"; elements = { ", proto, proto)
		for i := range stressAccounts + sp.extra {
			lo, hi := sp.ports(i)
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%d . %d-%d comment \"s%d\"", stressUIDBase+i, lo, hi, i)
		}
		b.WriteString(" }; }\n")
	}
	sets = b.String()
	b.Reset()
	b.WriteString("flush chain inet nftpol output\n")
	for _, r := range []string{
		`oif "lo" accept comment "nftpol: loopback is not enforced"`,
		`ct direction original accept comment "nftpol: connections opened from this host"`,
		`meta skuid < 1000 accept comment "nftpol: uids below min_uid"`,
		`meta skuid @exempt accept comment "nftpol: exempt uids"`,
		`meta skuid @tcp_moved meta skuid . tcp sport @tcp_moved_ports accept comment "nftpol: accounts serve tcp from their own ports (changed since tcp_ports was built)"`,
		`meta skuid != @tcp_moved meta skuid . tcp sport @tcp_ports accept comment "nftpol: accounts serve tcp from their own ports"`,
		`meta skuid @udp_moved meta skuid . udp sport @udp_moved_ports accept comment "nftpol: accounts serve udp from their own ports (changed since udp_ports was built)"`,
		`meta skuid != @udp_moved meta skuid . udp sport @udp_ports accept comment "nftpol: accounts serve udp from their own ports"`,
		`meta l4proto tcp ct direction reply meta skuid >= 1000 update @tcp_violations { meta skuid . tcp sport } counter reject with tcp reset comment "nftpol: tcp served outside the account's ports"`,
		`meta l4proto udp ct direction reply meta skuid >= 1000 update @udp_violations { meta skuid . udp sport } counter reject comment "nftpol: udp served outside the account's ports"`,
	} {
		fmt.Fprintf(&b, "add rule inet nftpol output %s\n", r)
	}
	for _, proto := range []string{"tcp", "udp"} {
		for k := range 8 {
			fmt.Fprintf(&b, "delete set inet nftpol %s_ports_%d\n", proto, k)
		}
	}
	return sets, b.String()
}

// stressForeignTable is a same-named table nftpol did not write (no
// "nftpol:" comments), replacing nftpol's in one transaction. It enforces
// the same outcome for the test's listeners — each on its own port only,
// the closed port refused — with rules alone: it has no set, so its own
// load opens no window.
func stressForeignTable() string {
	var b strings.Builder
	b.WriteString(`delete table inet nftpol
table inet nftpol {
	chain output {
		type filter hook output priority filter; policy accept;
		oif "lo" accept
		ct direction original accept
		meta skuid < 1000 accept
`)
	for i := range stressListeners {
		for _, proto := range []string{"tcp", "udp"} {
			fmt.Fprintf(&b, "\t\tmeta skuid %d %s sport %d accept\n", stressUIDBase+i, proto, stressAllowedPort(i))
		}
	}
	fmt.Fprintf(&b, `		meta l4proto tcp ct direction reply meta skuid >= 1000 reject with tcp reset
		meta l4proto udp ct direction reply meta skuid >= 1000 reject
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iif "lo" accept
		ct state != new accept
		tcp dport %[1]d reject with tcp reset
		udp dport %[1]d reject
	}
}
`, stressClosedPort)
	return b.String()
}

// stressTarget is one port the clients hammer, and whether it must answer.
type stressTarget struct {
	proto   string
	port    int
	allowed bool
}

func (st stressTarget) String() string { return st.proto + ":" + strconv.Itoa(st.port) }

func stressTargets(forbidden bool) []stressTarget {
	var out []stressTarget
	for i := range stressListeners {
		for _, proto := range []string{"tcp", "udp"} {
			out = append(out, stressTarget{proto, stressAllowedPort(i), true})
			if forbidden {
				out = append(out, stressTarget{proto, stressForbiddenPort(i), false})
			}
		}
	}
	if forbidden {
		out = append(out, stressTarget{"tcp", stressClosedPort, false}, stressTarget{"udp", stressClosedPort, false})
	}
	return out
}

// hammerResult is what `probe hammer` prints after "result " (see
// integration/probe/hammer.go).
type hammerResult struct {
	Targets []struct {
		Target string         `json:"target"`
		Expect string         `json:"expect"`
		Words  map[string]int `json:"words"`
	} `json:"targets"`
	Events []struct {
		Target string `json:"target"`
		Addr   string `json:"addr"`
		Word   string `json:"word"`
		Start  int64  `json:"start_unix_nano"`
		End    int64  `json:"end_unix_nano"`
	} `json:"events"`
	EventsLost int `json:"events_lost"`
}

// hammerProc is a running `probe hammer` in the client namespace.
type hammerProc struct {
	p        *process
	attempts atomic.Int64
	result   chan string
}

func startHammer(t *testing.T, tp *Topology, lifetime time.Duration, targets []stressTarget) *hammerProc {
	t.Helper()
	var list []string
	for _, tg := range targets {
		expect := "blocked"
		if tg.allowed {
			expect = "ok"
		}
		list = append(list, tg.String()+":"+expect)
	}
	p := startProcess(t, lifetime, "ready", "ip", "netns", "exec", tp.Client, probePath(t), "hammer",
		"-targets", strings.Join(list, ","), "-addrs", ServerIPv4+","+ServerIPv6,
		"-workers", "1", "-blocked-workers", "2", "-pace", stressClientPace.String(),
		"-timeout", stressClientTimeout.String(), "-max", lifetime.String())
	return readHammer(p)
}

// readHammer follows the output of a started `probe hammer`: its progress
// and, at the end, its result.
func readHammer(p *process) *hammerProc {
	h := &hammerProc{p: p, result: make(chan string, 1)}
	go func() {
		for line := range p.lines {
			if n, ok := strings.CutPrefix(line, "progress "); ok {
				if v, err := strconv.ParseInt(n, 10, 64); err == nil {
					h.attempts.Store(v)
				}
			} else if r, ok := strings.CutPrefix(line, "result "); ok {
				h.result <- r
			}
		}
		close(h.result)
	}()
	return h
}

// finish stops the clients and returns what they saw.
func (h *hammerProc) finish(t *testing.T) hammerResult {
	t.Helper()
	h.p.stdin.Close()
	var raw string
	select {
	case r, ok := <-h.result:
		if !ok {
			<-h.p.done
			t.Fatalf("%s ended without a result: %v\n%s", h.p.desc, h.p.err, h.p.stderr)
		}
		raw = r
	case <-time.After(stressClientTimeout + startTimeout):
		t.Fatalf("%s gave no result\n%s", h.p.desc, h.p.stderr)
	}
	var res hammerResult
	if err := json.Unmarshal([]byte(raw), &res); err != nil {
		t.Fatalf("hammer result %q: %v", raw, err)
	}
	return res
}

// stressOp is one operation of a path, for telling which one a failed
// connection overlapped.
type stressOp struct {
	what       string
	start, end time.Time
}

// stressTally is what the clients saw on one path.
type stressTally struct {
	path          string
	ops           int
	allowed       int            // attempts to allowed ports
	failed        map[string]int // allowed ports not reached, by word
	forbidden     int            // attempts to forbidden ports
	accepted      int            // forbidden ports reached
	forbiddenOdd  map[string]int // forbidden attempts neither reached nor blocked
	forbiddenSkip bool           // forbidden ports not judged on this path
}

func (st *stressTally) add(o *stressTally) {
	st.ops += o.ops
	st.allowed += o.allowed
	st.forbidden += o.forbidden
	st.accepted += o.accepted
	for w, n := range o.failed {
		st.failed[w] += n
	}
	for w, n := range o.forbiddenOdd {
		st.forbiddenOdd[w] += n
	}
}

func newTally(path string) *stressTally {
	return &stressTally{path: path, failed: map[string]int{}, forbiddenOdd: map[string]int{}}
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// words prints a word count as "timeout 2, refused 1" (or "-").
func words(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	var out []string
	for _, w := range slices.Sorted(func(yield func(string) bool) {
		for w := range m {
			if !yield(w) {
				return
			}
		}
	}) {
		out = append(out, fmt.Sprintf("%s %d", w, m[w]))
	}
	return strings.Join(out, ", ")
}

// stressRun holds what every path shares.
type stressRun struct {
	t        *testing.T
	tp       *Topology
	bin      string
	state    string
	policies map[string]string // name -> policy file
	files    map[string]string // name -> nft file
	ops      []stressOp
}

func (s *stressRun) nftpol(config string, stateDir string) nftpolRun {
	return nftpolRun{bin: s.bin, config: s.policies[config], netns: s.tp.Server, stateDir: stateDir}
}

// op runs one operation, records when it ran and returns nftpol's plan
// (nil for nft). what is the operation as the report names it.
func (s *stressRun) op(what string, f func() *planJSON) *planJSON {
	start := time.Now()
	p := f()
	s.ops = append(s.ops, stressOp{what: what, start: start, end: time.Now()})
	return p
}

// apply runs nftpol ARGS -o json with policy config and the main state.
func (s *stressRun) apply(config string, args ...string) *planJSON {
	return s.nftpolJSON(s.nftpol(config, s.state), args...)
}

func (s *stressRun) nftpolJSON(n nftpolRun, args ...string) *planJSON {
	s.t.Helper()
	what := "nftpol " + strings.Join(args, " ") + " (" + filepath.Base(filepath.Dir(n.config)) + ")"
	return s.op(what, func() *planJSON {
		p, _ := n.runJSON(s.t, 0, append(args, "-o", "json")...)
		return &p
	})
}

// nft loads the nft file named name, naming the sets of nftpol's table as
// the kernel's table names them now: nftpol alternates a set it rebuilds
// between NAME and NAME_b (rules/stage.go), and the file is written with the
// first names.
func (s *stressRun) nft(name string) {
	s.t.Helper()
	file := s.files[name]
	if alts := s.altNames(); len(alts) > 0 {
		text, err := os.ReadFile(file)
		if err != nil {
			s.t.Fatal(err)
		}
		for _, alt := range alts {
			re := regexp.MustCompile(`\b` + regexp.QuoteMeta(strings.TrimSuffix(alt, "_b")) + `\b`)
			text = re.ReplaceAll(text, []byte(alt))
		}
		file = filepath.Join(filepath.Dir(file), "now-"+filepath.Base(file))
		if err := os.WriteFile(file, text, 0o644); err != nil {
			s.t.Fatal(err)
		}
	}
	s.op("nft -f "+name, func() *planJSON {
		run(s.t, "ip", "netns", "exec", s.tp.Server, "nft", "-f", file)
		return nil
	})
}

// altNames lists the sets of the server's nftpol table that now carry
// their other name (NAME_b).
func (s *stressRun) altNames() []string {
	s.t.Helper()
	k, err := kernel.Open(kernel.WithNetNS(s.tp.Server))
	if err != nil {
		s.t.Fatal(err)
	}
	defer k.Close()
	rs, err := k.Read("nftpol")
	if err != nil || rs == nil {
		return nil
	}
	var out []string
	for _, set := range rs.Sets {
		if strings.HasSuffix(set.Name, "_b") {
			out = append(out, set.Name)
		}
	}
	return out
}

// stressPath is one way the table changes. setup brings the kernel to the
// path's first state without clients; step makes operation i of the flip.
type stressPath struct {
	name string
	// forbidden is false where the forbidden ports cannot be judged (no
	// table at all between the operations).
	forbidden bool
	setup     func(s *stressRun)
	step      func(s *stressRun, i int)
}

func TestStress(t *testing.T) {
	requireRoot(t)
	minConns := *stressConnectionsFlag
	long := os.Getenv("NFTPOL_STRESS") == "long"
	if minConns == 0 && long {
		minConns = stressLongConnections
	}
	minSteps := stressBoundedSteps
	// A path's time limit: far above what its connections need, so that
	// a stuck path ends the test rather than hangs it.
	pathLimit := 2 * time.Minute
	if minConns > 0 {
		pathLimit = time.Duration(minConns/200) * time.Second
	}
	lifetime := 7*pathLimit + 5*time.Minute

	bin := buildBinary(t, "cmd/nftpol")
	probe := probePath(t)
	tp := newTopology(t)
	// Conntrack keeps a closed connection 120 s by default; at a thousand
	// connections a second the server namespace's table would fill.
	if _, stderr, err := runCommand("ip", "netns", "exec", tp.Server, "sysctl", "-qw",
		"net.netfilter.nf_conntrack_tcp_timeout_time_wait=5"); err != nil {
		t.Logf("shortening conntrack's TIME_WAIT in %s: %v %s (connections may be dropped past nf_conntrack_max)", tp.Server, err, stderr)
	}

	s := &stressRun{t: t, tp: tp, bin: bin, state: t.TempDir(), policies: map[string]string{}, files: map[string]string{}}
	for name, sp := range map[string]stressPolicy{"base": stressBase, "elements": stressElements, "moves": stressMoves, "rebuild": stressRebuild} {
		s.policies[name] = writePolicy(t, sp.text())
	}
	nftDir := t.TempDir()
	legacySets, legacySwitch := stressLegacyLoads(stressBase)
	for name, text := range map[string]string{"legacy-sets": legacySets, "legacy-switch": legacySwitch, "foreign": stressForeignTable()} {
		s.files[name] = filepath.Join(nftDir, name+".nft")
		if err := os.WriteFile(s.files[name], []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// Two recorded states for restore, each a first install of its policy
	// in a namespace of its own: the shards differ in 404 accounts.
	recA, recB := t.TempDir(), t.TempDir()
	for _, rec := range []struct{ config, dir string }{{"base", recA}, {"rebuild", recB}} {
		n := nftpolRun{bin: bin, config: s.policies[rec.config], netns: newNetns(t, "rec"), stateDir: rec.dir}
		n.apply(t)
	}

	// The listeners: each of accounts 0..15 on its own port and on
	// another account's, TCP and UDP, on every address; root on the
	// closed port.
	for i := range stressListeners {
		uid := strconv.Itoa(stressUIDBase + i)
		a, f := stressAllowedPort(i), stressForbiddenPort(i)
		startProcess(t, lifetime, "ready", probe, "listen", "-netns", tp.Server, "-uid", uid, "-gid", uid,
			"-sockets", fmt.Sprintf("tcp:%d,udp:%d,tcp:%d,udp:%d", a, a, f, f), "-timeout", lifetime.String())
	}
	startProcess(t, lifetime, "ready", probe, "listen", "-netns", tp.Server,
		"-sockets", fmt.Sprintf("tcp:%d,udp:%d", stressClosedPort, stressClosedPort), "-timeout", lifetime.String())

	// flip alternates between two operations: odd steps a, even steps b.
	flip := func(a, b func(s *stressRun)) func(s *stressRun, i int) {
		return func(s *stressRun, i int) {
			if i%2 == 0 {
				a(s)
			} else {
				b(s)
			}
		}
	}
	applyOf := func(config string, check func(p *planJSON) string) func(s *stressRun) {
		return func(s *stressRun) {
			p := s.apply(config, "apply")
			if msg := check(p); msg != "" {
				s.t.Errorf("apply of %s: %s: this path does not test what it says\ntable %s, sets %+v, chains %+v",
					config, msg, p.TableAction, p.Sets, p.Chains)
			}
		}
	}
	noRebuild := func(p *planJSON) string {
		if !p.Changes {
			return "no change"
		}
		if p.TableAction != "update" {
			return "table " + p.TableAction + ", want update"
		}
		for _, sc := range p.Sets {
			if sc.Action != "update" {
				return "set " + sc.Name + " " + sc.Action
			}
		}
		return ""
	}
	// Moving 24 accounts back rebuilds the moved ports (past
	// rules.ReplaceThreshold deletions), never a shard.
	noShardRebuild := func(p *planJSON) string {
		if !p.Changes {
			return "no change"
		}
		if p.TableAction != "update" {
			return "table " + p.TableAction + ", want update"
		}
		for _, sc := range p.Sets {
			if strings.Contains(sc.Name, "_ports_") && !strings.Contains(sc.Name, "_moved_ports") && sc.Action != "update" {
				return "set " + sc.Name + " " + sc.Action
			}
		}
		return ""
	}
	rebuilt := func(p *planJSON) string {
		for _, sc := range p.Sets {
			if strings.Contains(sc.Name, "_ports_") && !strings.Contains(sc.Name, "_moved_ports") && sc.Action != "update" {
				return ""
			}
		}
		return "no shard rebuilt"
	}
	changed := func(p *planJSON) string {
		if !p.Changes || p.TableAction == "none" {
			return "no change"
		}
		return ""
	}
	created := func(p *planJSON) string {
		if p.TableAction != "create" {
			return "table " + p.TableAction + ", want create"
		}
		return ""
	}
	applyBase := func(s *stressRun) { s.apply("base", "apply") }
	restoreFrom := func(dir string) func(s *stressRun) {
		return func(s *stressRun) {
			p := s.nftpolJSON(nftpolRun{bin: s.bin, config: s.policies["base"], netns: s.tp.Server, stateDir: dir}, "restore")
			if msg := rebuilt(p); msg != "" {
				s.t.Errorf("restore from %s: %s", dir, msg)
			}
		}
	}
	// The restore path starts from recorded state A, whatever the table
	// holds before (the adopt path leaves A itself).
	restoreSetup := func(s *stressRun) {
		s.nftpolJSON(nftpolRun{bin: s.bin, config: s.policies["base"], netns: s.tp.Server, stateDir: recA}, "restore")
	}
	paths := []stressPath{
		{name: "elements", forbidden: true, setup: applyBase,
			step: flip(applyOf("elements", noRebuild), applyOf("base", noRebuild))},
		{name: "moves", forbidden: true, setup: applyBase,
			step: flip(applyOf("moves", noShardRebuild), applyOf("base", noShardRebuild))},
		{name: "rebuild", forbidden: true, setup: applyBase,
			step: flip(applyOf("rebuild", rebuilt), applyOf("base", rebuilt))},
		{name: "layout", forbidden: true, setup: applyBase,
			step: flip(func(s *stressRun) { s.nft("legacy-sets"); s.nft("legacy-switch") }, applyOf("base", changed))},
		{name: "adopt", forbidden: true, setup: applyBase,
			step: flip(func(s *stressRun) { s.nft("foreign") }, func(s *stressRun) {
				if p := s.apply("base", "apply", "--adopt"); changed(p) != "" {
					s.t.Errorf("apply --adopt over the foreign table changed nothing")
				}
			})},
		{name: "restore", forbidden: true, setup: restoreSetup,
			step: flip(restoreFrom(recB), restoreFrom(recA))},
		{name: "first install", forbidden: false, setup: func(s *stressRun) {},
			step: flip(func(s *stressRun) {
				s.op("nftpol remove", func() *planJSON {
					if stdout, stderr, code := s.nftpol("base", s.state).run(s.t, "remove"); code != 0 {
						s.t.Fatalf("nftpol remove exited %d\n%s\n%s", code, stdout, stderr)
					}
					return nil
				})
			}, applyOf("base", created))},
	}

	total := newTally("total")
	var tallies []*stressTally
	for _, path := range paths {
		tally := s.runPath(path, minSteps, minConns, pathLimit, lifetime)
		tallies = append(tallies, tally)
		total.add(tally)
	}
	tallies = append(tallies, total)

	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "path\toperations\tallowed: attempts\tfailed\tfailures by kind\tforbidden: attempts\taccepted\tneither\t")
	for _, st := range tallies {
		forbidden, accepted := strconv.Itoa(st.forbidden), strconv.Itoa(st.accepted)
		if st.forbiddenSkip {
			forbidden, accepted = "n/a", "n/a"
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t\n", st.path, st.ops, st.allowed, sum(st.failed), words(st.failed),
			forbidden, accepted, words(st.forbiddenOdd))
	}
	tw.Flush()
	t.Logf("stress (%s; client timeout %v):\n%s", map[bool]string{true: fmt.Sprintf("at least %d connections a path", minConns), false: fmt.Sprintf("%d operations a path", minSteps)}[minConns > 0], stressClientTimeout, b.String())

	if total.allowed == 0 {
		t.Error("no connection was made: the test proves nothing")
	}
	for _, st := range tallies[:len(tallies)-1] {
		if st.allowed == 0 {
			t.Errorf("path %s made no connection to an allowed port: it proves nothing", st.path)
		}
		if n := sum(st.failed); n > 0 {
			t.Errorf("path %s: %d of %d connections to allowed ports failed (%s)", st.path, n, st.allowed, words(st.failed))
		}
		if st.accepted > 0 {
			t.Errorf("path %s: %d of %d connections to forbidden ports were accepted", st.path, st.accepted, st.forbidden)
		}
		if n := sum(st.forbiddenOdd); n > 0 {
			t.Errorf("path %s: %d connections to forbidden ports were neither accepted nor blocked (%s)", st.path, n, words(st.forbiddenOdd))
		}
	}
}

// runPath sets the path up, starts the clients, makes the path's operations
// until it made minSteps and the clients minConns connections, stops the
// clients and tallies what they saw.
func (s *stressRun) runPath(path stressPath, minSteps, minConns int, limit, lifetime time.Duration) *stressTally {
	t := s.t
	t.Helper()
	path.setup(s)
	s.ops = nil
	h := startHammer(t, s.tp, lifetime, stressTargets(path.forbidden))
	// Let every client worker make its first connection before the first
	// operation.
	time.Sleep(2 * stressClientPace)
	start := time.Now()
	steps := 0
	// Steps come in pairs, so that a path ends in the state it began
	// with (not in the foreign table, say) and the next path's setup
	// finds nftpol's table.
	for steps < minSteps || h.attempts.Load() < int64(minConns) || steps%2 != 0 {
		if time.Since(start) > limit && steps%2 == 0 {
			t.Errorf("path %s: %d operations and %d connections in %v, want %d connections", path.name, steps, h.attempts.Load(), limit, minConns)
			break
		}
		path.step(s, steps)
		steps++
		time.Sleep(stressPace)
	}
	// Connections that began during the last operation end within the
	// client timeout.
	time.Sleep(stressClientTimeout)
	res := h.finish(t)

	tally := newTally(path.name)
	tally.ops = len(s.ops)
	tally.forbiddenSkip = !path.forbidden
	for _, tg := range res.Targets {
		for w, n := range tg.Words {
			switch {
			case tg.Expect == "ok":
				tally.allowed += n
				if w != "ok" {
					tally.failed[w] += n
				}
			case w == "ok":
				tally.forbidden += n
				tally.accepted += n
			case w == "refused", w == "timeout", w == "reset":
				tally.forbidden += n
			default:
				tally.forbidden += n
				tally.forbiddenOdd[w] += n
			}
		}
	}
	// Each unexpected outcome with the operations running when it began
	// (its packets that matter, the first, go out within milliseconds;
	// a timeout is the rest): one during no operation is the machine's,
	// not a window's.
	const show = 20
	for i, ev := range res.Events {
		if i == show {
			t.Logf("path %s: %d more unexpected outcomes", path.name, len(res.Events)-show+res.EventsLost)
			break
		}
		evStart, evEnd := time.Unix(0, ev.Start), time.Unix(0, ev.End)
		var during []string
		for _, op := range s.ops {
			if op.start.Before(evStart.Add(50*time.Millisecond)) && op.end.After(evStart.Add(-5*time.Millisecond)) {
				during = append(during, fmt.Sprintf("%s [%+dms..%+dms]", op.what,
					op.start.Sub(evStart).Milliseconds(), op.end.Sub(evStart).Milliseconds()))
			}
		}
		if len(during) == 0 {
			during = []string{"no operation"}
		}
		t.Logf("path %s: %s at %s: %s after %v, during %s", path.name, ev.Target, ev.Addr, ev.Word,
			evEnd.Sub(evStart).Round(time.Millisecond), strings.Join(during, "; "))
	}
	return tally
}
