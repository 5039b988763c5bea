package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// contractPolicyBetaWider is contractPolicy with beta's range widened from
// 40020-40029 to 40020-40039: a change to one account.
var contractPolicyBetaWider = strings.Replace(contractPolicy, `["40020-40029"]`, `["40020-40039"]`, 1)

// planJSON is the shape of `nftpol plan -o json` and `nftpol apply -o json`
// (which adds "applied").
type planJSON struct {
	Table       string        `json:"table"`
	Changes     bool          `json:"changes"`
	TableAction string        `json:"table_action"`
	Accounts    []accountJSON `json:"accounts"`
	Sets        []struct {
		Name   string `json:"name"`
		Action string `json:"action"`
		Add    int    `json:"add"`
		Delete int    `json:"delete"`
	} `json:"sets"`
	Chains []struct {
		Name   string `json:"name"`
		Action string `json:"action"`
		Rules  int    `json:"rules"`
	} `json:"chains"`
	Operations int    `json:"operations"`
	KernelRead string `json:"kernel_read"`
	Applied    *struct {
		Messages int `json:"netlink_messages"`
		Elements int `json:"elements"`
	} `json:"applied"`
}

type accountJSON struct {
	Name   string `json:"name"`
	UID    int    `json:"uid"`
	Action string `json:"action"`
	Ports  map[string]struct {
		Old []string `json:"old"`
		New []string `json:"new"`
	} `json:"ports"`
}

// runJSON runs nftpol with args (which include -o json), expects exit code
// want and decodes standard output.
func (n nftpolRun) runJSON(t *testing.T, want int, args ...string) (planJSON, string) {
	t.Helper()
	stdout, stderr, code := n.run(t, args...)
	if code != want {
		t.Fatalf("nftpol %s exited %d, want %d\nstdout:\n%s\nstderr:\n%s",
			strings.Join(args, " "), code, want, stdout, stderr)
	}
	var p planJSON
	if err := json.Unmarshal([]byte(stdout), &p); err != nil {
		t.Fatalf("nftpol %s: output is not a plan in JSON: %v\n%s", strings.Join(args, " "), err, stdout)
	}
	return p, stdout
}

// setPolicy replaces the policy file's text.
func (n nftpolRun) setPolicy(t *testing.T, text string) {
	t.Helper()
	if err := os.WriteFile(n.config, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestApplyOneAccountChange changes one account's ports on a live table:
// the plan names that account only, the apply is a few set element
// operations in a few netlink messages, established connections keep going,
// and the new port serves.
func TestApplyOneAccountChange(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: tp.Server, stateDir: t.TempDir()}
	n.apply(t)

	// Before the change beta's 40035 is a closed zone port.
	tp.Listen(t, uidBeta, "tcp", ServerIPv4, 40035)
	if got := tp.Connect(t, "tcp", ServerIPv4, 40035); !blocked(got) {
		t.Errorf("beta tcp 40035 before the change: got %q, want blocked", got)
	}

	streams := startStreams(t, tp, "across_change", 40012, 40013)
	n.setPolicy(t, contractPolicyBetaWider)

	text, stderr, code := n.run(t, "plan")
	if code != 0 {
		t.Fatalf("nftpol plan exited %d\n%s%s", code, text, stderr)
	}
	if !strings.Contains(text, "beta") || !strings.Contains(text, "40020-40029 -> 40020-40039") {
		t.Errorf("plan does not show beta's change 40020-40029 -> 40020-40039:\n%s", text)
	}
	if strings.Contains(text, "alpha") || strings.Contains(text, "1001") {
		t.Errorf("plan names alpha, which did not change:\n%s", text)
	}

	plan, raw := n.runJSON(t, 0, "plan", "-o", "json")
	checkBetaChange(t, "plan -o json", plan, raw)

	applied, raw := n.runJSON(t, 0, "apply", "-o", "json")
	checkBetaChange(t, "apply -o json", applied, raw)
	if applied.Applied == nil {
		t.Fatalf("apply -o json has no \"applied\":\n%s", raw)
	}
	t.Logf("one-account change: %d netlink messages (%d elements, %d operations)",
		applied.Applied.Messages, applied.Applied.Elements, applied.Operations)
	if m := applied.Applied.Messages; m < 1 || m > 6 {
		t.Errorf("one-account change took %d netlink messages, want 1..6\n%s", m, raw)
	}

	n.planExit(t, 0)
	finishStreams(t, streams)
	if got := tp.Connect(t, "tcp", ServerIPv4, 40035); got != "ok" {
		t.Errorf("beta tcp 40035 after the change: got %q, want ok", got)
	}
	tp.Listen(t, uidBeta, "tcp", ServerIPv6, 40036)
	if got := tp.Connect(t, "tcp", ServerIPv6, 40036); got != "ok" {
		t.Errorf("beta tcp [%s]:40036 after the change: got %q, want ok", ServerIPv6, got)
	}
}

// checkBetaChange checks that a JSON plan is exactly beta's widening: one
// account changed, no chain touched, only TCP set updates.
func checkBetaChange(t *testing.T, what string, p planJSON, raw string) {
	t.Helper()
	if !p.Changes || p.TableAction != "update" {
		t.Errorf("%s: changes=%v table_action=%q, want true and update\n%s", what, p.Changes, p.TableAction, raw)
	}
	if len(p.Accounts) != 1 {
		t.Fatalf("%s: %d accounts, want 1 (beta)\n%s", what, len(p.Accounts), raw)
	}
	a := p.Accounts[0]
	if a.Name != "beta" || a.UID != uidBeta || a.Action != "change" {
		t.Errorf("%s: account %q uid %d action %q, want beta uid %d change\n%s", what, a.Name, a.UID, a.Action, uidBeta, raw)
	}
	tcp, ok := a.Ports["tcp"]
	if len(a.Ports) != 1 || !ok ||
		!slices.Equal(tcp.Old, []string{"40020-40029"}) || !slices.Equal(tcp.New, []string{"40020-40039"}) {
		t.Errorf("%s: beta's ports %+v, want tcp old [40020-40029] new [40020-40039]\n%s", what, a.Ports, raw)
	}
	if p.Chains == nil || len(p.Chains) != 0 {
		t.Errorf("%s: chains %+v, want [] (no chain changes)\n%s", what, p.Chains, raw)
	}
	if len(p.Sets) == 0 {
		t.Errorf("%s: no set changes\n%s", what, raw)
	}
	// Beta's elements stay in tcp_ports_2, where deleting costs the kernel
	// a scan of the set: beta moves to tcp_moved and tcp_moved_ports.
	for _, s := range p.Sets {
		if s.Action != "update" || (s.Name != "tcp_moved" && s.Name != "tcp_moved_ports" && s.Name != "tcp_open") {
			t.Errorf("%s: set change %+v, want only updates of tcp_moved, tcp_moved_ports and tcp_open\n%s", what, s, raw)
		}
	}
}

// TestOverlayEnforcesChanges: accounts changed, removed and added over a
// live table are enforced as the policy says, with real sockets and
// packets, while their old elements stay in the per-account sets (nothing
// is deleted from them); going back leaves the moved sets; and the state of
// such a table restores to the same table.
func TestOverlayEnforcesChanges(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: tp.Server, stateDir: t.TempDir()}
	n.apply(t)

	// alpha moves to 40050-40059, beta goes, gamma comes with the ports
	// both had, so those stay open in the zone and only the output
	// chain's per-account check can block alpha and beta there.
	moved := `zone: 40010-49999
min_uid: 1000
exempt: [1500]
accounts:
  - {name: alpha, uid: 1001, ports: ["40050-40059"], protocols: [tcp, udp]}
  - {name: gamma, uid: 1003, ports: ["40010-40029"], protocols: [tcp]}
`
	n.setPolicy(t, moved)
	applied, raw := n.runJSON(t, 0, "apply", "-o", "json")
	for _, s := range applied.Sets {
		if (strings.HasPrefix(s.Name, "tcp_ports_") || strings.HasPrefix(s.Name, "udp_ports_")) && (s.Delete > 0 || s.Action != "update") {
			t.Errorf("a small change deletes from %s: %+v\n%s", s.Name, s, raw)
		}
	}
	if got := run(t, "ip", "netns", "exec", tp.Server, "nft", "list", "set", "inet", "nftpol", "tcp_moved"); !strings.Contains(got, "1001") || !strings.Contains(got, "1002") {
		t.Errorf("tcp_moved does not hold alpha and beta:\n%s", got)
	}
	n.planExit(t, 0)
	if _, stderr, code := n.run(t, "--full-read", "plan", "--detailed-exitcode"); code != 0 {
		t.Errorf("--full-read plan after the change exited %d, want 0\n%s", code, stderr)
	}

	// Each probe listens on a port of its own: listeners live until the
	// test ends.
	type probe struct {
		uid   int
		proto string
		port  int
		reach bool
	}
	check := func(when string, cases []probe) {
		t.Helper()
		for _, c := range cases {
			tp.Listen(t, c.uid, c.proto, ServerIPv4, c.port)
			got := tp.Connect(t, c.proto, ServerIPv4, c.port)
			if c.reach && got != "ok" || !c.reach && !blocked(got) {
				t.Errorf("%s: uid %d %s %d: got %q, want reachable=%v", when, c.uid, c.proto, c.port, got, c.reach)
			}
		}
	}
	check("after the change", []probe{
		{uidAlpha, "tcp", 40052, true},  // moved: its new ports
		{uidAlpha, "udp", 40053, true},  // on both protocols
		{uidAlpha, "tcp", 40012, false}, // its old element is still in tcp_ports_1, masked
		{uidAlpha, "udp", 40013, false},
		{uidBeta, "tcp", 40022, false}, // removed: moved with no ports
		{uidGamma, "tcp", 40014, true}, // new: added to tcp_ports_3
		{uidGamma, "tcp", 40024, true},
	})

	// Back to the first policy: alpha and beta match their shards of
	// tcp_ports again and leave the moved sets; gamma, now in tcp_ports_3,
	// is moved out.
	n.setPolicy(t, contractPolicy)
	n.apply(t)
	n.planExit(t, 0)
	if got := run(t, "ip", "netns", "exec", tp.Server, "nft", "list", "set", "inet", "nftpol", "tcp_moved"); strings.Contains(got, "1001") || !strings.Contains(got, "1003") {
		t.Errorf("tcp_moved after going back, want gamma (1003) only:\n%s", got)
	}
	check("after going back", []probe{
		{uidAlpha, "tcp", 40016, true},
		{uidAlpha, "udp", 40017, true},
		{uidBeta, "tcp", 40026, true},
		{uidGamma, "tcp", 40018, false},
		{uidAlpha, "tcp", 40056, false},
	})

	// The state of an overlaid table restores to the same table (the
	// violation records and counts the blocked probes left are kernel
	// state, not part of it).
	for _, set := range []string{"tcp_violations", "udp_violations"} {
		run(t, "ip", "netns", "exec", tp.Server, "nft", "flush", "set", "inet", "nftpol", set)
	}
	fresh := newNetns(t, "overlay-restore")
	r := n
	r.netns = fresh
	if _, stderr, code := r.run(t, "restore"); code != 0 {
		t.Fatalf("restore exited %d\n%s", code, stderr)
	}
	if got, want := nftStateless(t, fresh), nftStateless(t, tp.Server); got != want {
		t.Errorf("restored table differs:\n%s\nwant:\n%s", got, want)
	}
}

// TestApplyCorrectsDrift changes the owned table by hand, behind nftpol's
// back: plan shows it, the traffic shows it, apply repairs it.
func TestApplyCorrectsDrift(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: tp.Server, stateDir: t.TempDir()}
	n.apply(t)
	tp.Listen(t, uidBeta, "tcp", ServerIPv4, 40020)
	if got := tp.Connect(t, "tcp", ServerIPv4, 40020); got != "ok" {
		t.Fatalf("beta tcp 40020 after apply: got %q, want ok", got)
	}

	t.Run("deleted_element", func(t *testing.T) {
		run(t, "ip", "netns", "exec", tp.Server, "nft", "delete", "element", "inet", "nftpol", "tcp_ports_2",
			"{ 1002 . 40020-40029 }")
		stdout, stderr, code := n.run(t, "plan", "--detailed-exitcode")
		if code != 2 || !strings.Contains(stdout, "beta") {
			t.Errorf("plan --detailed-exitcode after the drift exited %d, want 2 and beta named\nstdout:\n%s\nstderr:\n%s",
				code, stdout, stderr)
		}
		if got := tp.Connect(t, "tcp", ServerIPv4, 40020); !blocked(got) {
			t.Errorf("beta tcp 40020 without its element: got %q, want blocked", got)
		}
		n.apply(t)
		n.planExit(t, 0)
		if got := tp.Connect(t, "tcp", ServerIPv4, 40020); got != "ok" {
			t.Errorf("beta tcp 40020 after apply repaired the drift: got %q, want ok", got)
		}
	})

	t.Run("deleted_rule", func(t *testing.T) {
		// Beta (uid 1002) is looked up in shard 2 only.
		const rule = "meta skuid & 7 == 2 meta skuid != @tcp_moved meta skuid . tcp sport @tcp_ports_2 accept"
		before := run(t, "ip", "netns", "exec", tp.Server, "nft", "-s", "list", "chain", "inet", "nftpol", "output")
		listing := run(t, "ip", "netns", "exec", tp.Server, "nft", "-a", "list", "chain", "inet", "nftpol", "output")
		handle := ruleHandle(t, listing, rule)
		run(t, "ip", "netns", "exec", tp.Server, "nft", "delete", "rule", "inet", "nftpol", "output", "handle", handle)
		if got := tp.Connect(t, "tcp", ServerIPv4, 40020); !blocked(got) {
			t.Errorf("beta tcp 40020 without the rule %q: got %q, want blocked", rule, got)
		}
		n.planExit(t, 2)
		n.apply(t)
		n.planExit(t, 0)
		after := run(t, "ip", "netns", "exec", tp.Server, "nft", "-s", "list", "chain", "inet", "nftpol", "output")
		if after != before {
			t.Errorf("chain output after apply differs from before the deletion:\nbefore:\n%s\nafter:\n%s", before, after)
		}
		if got := tp.Connect(t, "tcp", ServerIPv4, 40020); got != "ok" {
			t.Errorf("beta tcp 40020 after apply restored the rule: got %q, want ok", got)
		}
	})
}

var handleRE = regexp.MustCompile(`# handle (\d+)\s*$`)

// ruleHandle finds the handle of the rule whose text is rule in an
// `nft -a list chain` listing.
func ruleHandle(t *testing.T, listing, rule string) string {
	t.Helper()
	for line := range strings.SplitSeq(listing, "\n") {
		m := handleRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		// The rule as written, possibly followed by its comment.
		if text := strings.TrimSpace(line[:len(line)-len(m[0])]); text == rule || strings.HasPrefix(text, rule+" comment ") {
			return m[1]
		}
	}
	t.Fatalf("no rule %q in:\n%s", rule, listing)
	return ""
}

// handMadeTable has nftpol's table name but was not made by nftpol.
const handMadeTable = `table inet nftpol {
	chain x {
		type filter hook input priority 0; policy accept;
	}
}
`

// TestApplyOwnership: nftpol refuses a same-named table it did not create,
// leaving it untouched, and takes it over only with --adopt.
func TestApplyOwnership(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	nftLoad(t, tp.Server, handMadeTable)
	before := nftListTable(t, tp.Server, "inet", "nftpol")
	stateDir := filepath.Join(t.TempDir(), "state")
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: tp.Server, stateDir: stateDir}

	for _, args := range [][]string{{"apply"}, {"plan", "--detailed-exitcode"}} {
		stdout, stderr, code := n.run(t, args...)
		if code != 1 || !strings.Contains(stderr, "not created by nftpol") {
			t.Errorf("nftpol %s over a hand-made table exited %d, want 1 with \"not created by nftpol\"\nstdout:\n%s\nstderr:\n%s",
				strings.Join(args, " "), code, stdout, stderr)
		}
		if got := nftListTable(t, tp.Server, "inet", "nftpol"); got != before {
			t.Fatalf("nftpol %s changed the hand-made table:\nbefore:\n%s\nafter:\n%s", strings.Join(args, " "), before, got)
		}
	}
	if _, err := os.Stat(filepath.Join(stateDir, "state")); !os.IsNotExist(err) {
		t.Errorf("a refused apply recorded state (stat: %v)", err)
	}

	stdout, stderr, code := n.run(t, "apply", "--adopt")
	if code != 0 {
		t.Fatalf("nftpol apply --adopt exited %d\nstdout:\n%s\nstderr:\n%s", code, stdout, stderr)
	}
	n.planExit(t, 0)
	if got := nftListTable(t, tp.Server, "inet", "nftpol"); strings.Contains(got, "chain x") {
		t.Errorf("the hand-made chain x survived the adoption:\n%s", got)
	}
	runMatrix(t, tp, pickCases(t, "alpha_tcp_40010_own", "alpha_tcp_40025_betas", "root_tcp_45001_unassigned",
		"alpha_tcp_out_9000"))
}

// pickCases returns the named cases of contractMatrix.
func pickCases(t *testing.T, names ...string) []matrixCase {
	t.Helper()
	var out []matrixCase
	for _, name := range names {
		i := slices.IndexFunc(contractMatrix, func(c matrixCase) bool { return c.name == name })
		if i < 0 {
			t.Fatalf("no matrix case %q", name)
		}
		out = append(out, contractMatrix[i])
	}
	return out
}

// TestExportMatchesApply cross-checks the netlink encoding against nft's
// own: the table nftpol applies and the table nft loads from `nftpol export`
// must list the same.
func TestExportMatchesApply(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	a, b := newNetns(t, "a"), newNetns(t, "b")
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: a, stateDir: t.TempDir()}
	n.apply(t)
	export, stderr, code := n.run(t, "export")
	if code != 0 {
		t.Fatalf("nftpol export exited %d\n%s", code, stderr)
	}
	nftLoad(t, b, export)
	applied, loaded := nftListTable(t, a, "inet", "nftpol"), nftListTable(t, b, "inet", "nftpol")
	if applied != loaded {
		t.Errorf("nftpol apply and nft -f of nftpol export give different tables:\napplied:\n%s\nloaded:\n%s", applied, loaded)
	}
	// And nftpol reads nft's encoding back as its own.
	nb := n
	nb.netns = b
	nb.planExit(t, 0)
}

// untrackTable makes alpha's own connections to the client's port 9000
// untracked, and counts the untracked packets that get past nftpol's output
// chain (priority filter) so the test knows its premise held.
const untrackTable = `table inet foreign {
	chain raw_out {
		type filter hook output priority raw; policy accept;
		tcp dport 9000 notrack
	}
	chain raw_pre {
		type filter hook prerouting priority raw; policy accept;
		tcp sport 9000 notrack
	}
	chain seen_out {
		type filter hook output priority 100; policy accept;
		tcp dport 9000 ct state untracked counter
	}
}
`

var counterRE = regexp.MustCompile(`counter packets (\d+)`)

// TestUntrackedTrafficUntouched: packets without a conntrack entry (notrack
// by another table) are neither a reply nor new; an account's own outgoing
// connection made of them must pass.
func TestUntrackedTrafficUntouched(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	nftLoad(t, tp.Server, untrackTable)
	foreign := run(t, "ip", "netns", "exec", tp.Server, "nft", "-s", "list", "table", "inet", "foreign")
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: tp.Server, stateDir: t.TempDir()}
	n.apply(t)
	if got := run(t, "ip", "netns", "exec", tp.Server, "nft", "-s", "list", "table", "inet", "foreign"); got != foreign {
		t.Errorf("apply changed table inet foreign:\nbefore:\n%s\nafter:\n%s", foreign, got)
	}

	for _, fam := range families {
		tp.ListenClient(t, uidRoot, "tcp", fam.client, 9000)
		if got := tp.ServerConnect(t, uidAlpha, "tcp", fam.client, 9000); got != "ok" {
			t.Errorf("%s: alpha's untracked connection to the client's 9000: got %q, want ok (contract 3)", fam.name, got)
		}
	}
	seen := run(t, "ip", "netns", "exec", tp.Server, "nft", "list", "chain", "inet", "foreign", "seen_out")
	m := counterRE.FindStringSubmatch(seen)
	if m == nil || m[1] == "0" {
		t.Errorf("no untracked packet to port 9000 passed the output hook; the test's premise failed:\n%s", seen)
	}
}

// TestApplyState: apply records the policy and the ruleset, readable by root
// only, in a file that ends with the sha256 of all of it; export --applied
// prints the recorded ruleset, which after a first apply is what export
// prints, and after a move what nft lists.
func TestApplyState(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	stateDir := filepath.Join(t.TempDir(), "state") // nftpol creates it
	ns := newNetns(t, "state")
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: ns, stateDir: stateDir}
	n.apply(t)
	export, stderr, code := n.run(t, "export")
	if code != 0 {
		t.Fatalf("nftpol export exited %d\n%s", code, stderr)
	}

	fi, err := os.Stat(filepath.Join(stateDir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("the state has mode %04o, want 0600", perm)
	}
	applied, stderr, code := n.run(t, "export", "--applied")
	if code != 0 || applied != export {
		t.Errorf("export --applied (exit %d) differs from export after a first apply:\n%s\nexport:\n%s%s", code, applied, export, stderr)
	}
	b, err := os.ReadFile(filepath.Join(stateDir, "state"))
	if err != nil {
		t.Fatal(err)
	}
	// The state starts with its format line and ends with its header, in
	// JSON, and the digest of everything before it.
	text := string(b)
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	last := lines[len(lines)-1]
	if len(lines) < 3 || lines[0] != "nftpol state 2" || !strings.HasPrefix(last, "sha256 ") {
		t.Fatalf("the state does not have its format line, header and digest:\n%s", b)
	}
	var head struct {
		Version string `json:"version"`
		Policy  string `json:"policy_sha256"`
	}
	if err := json.Unmarshal([]byte(lines[len(lines)-2]), &head); err != nil || head.Version == "" || len(head.Policy) != 64 {
		t.Errorf("the state's header: %v, %+v\n%s", err, head, lines[len(lines)-2])
	}
	sum := sha256.Sum256([]byte(text[:len(text)-len(last)-1]))
	if want := "sha256 " + hex.EncodeToString(sum[:]); last != want {
		t.Errorf("the state ends with %q, want %q", last, want)
	}

	// After a move, export --applied is what nft lists (counters aside).
	n.setPolicy(t, contractPolicyBetaWider)
	n.apply(t)
	applied, stderr, code = n.run(t, "export", "--applied")
	if code != 0 {
		t.Fatalf("export --applied exited %d\n%s", code, stderr)
	}
	ref := newNetns(t, "state-ref")
	nftLoad(t, ref, applied)
	if got, want := nftStateless(t, ref), nftStateless(t, ns); got != want {
		t.Errorf("export --applied loaded by nft:\n%s\ndiffers from the table apply left:\n%s", got, want)
	}
}

// nftSetElements reads set inet nftpol NAME in ns with `nft -j` (nft's own
// decoder, independent of nftpol's) and returns its elements in nft's
// notation ("1001 . 40010-40019") with their comments.
func nftSetElements(t *testing.T, ns, name string) map[string]string {
	t.Helper()
	out := run(t, "ip", "netns", "exec", ns, "nft", "-j", "list", "set", "inet", "nftpol", name)
	var doc struct {
		Nftables []struct {
			Set *struct {
				Name string            `json:"name"`
				Elem []json.RawMessage `json:"elem"`
			} `json:"set"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("nft -j list set %s: %v", name, err)
	}
	elems := map[string]string{}
	found := false
	for _, o := range doc.Nftables {
		if o.Set == nil || o.Set.Name != name {
			continue
		}
		found = true
		for _, raw := range o.Set.Elem {
			var wrapped struct {
				Elem *struct {
					Val     json.RawMessage `json:"val"`
					Comment string          `json:"comment"`
				} `json:"elem"`
			}
			val, comment := raw, ""
			if json.Unmarshal(raw, &wrapped) == nil && wrapped.Elem != nil {
				val, comment = wrapped.Elem.Val, wrapped.Elem.Comment
			}
			s, err := nftValue(val)
			if err != nil {
				t.Fatalf("set %s: element %s: %v", name, raw, err)
			}
			if _, dup := elems[s]; dup {
				t.Fatalf("set %s: element %s listed twice", name, s)
			}
			elems[s] = comment
		}
	}
	if !found {
		t.Fatalf("nft -j list set %s: no set in the output", name)
	}
	return elems
}

// nftValue renders a value of nft's JSON: a number, {"range": [a, b]} or
// {"concat": [...]}.
func nftValue(raw json.RawMessage) (string, error) {
	var num json.Number
	if json.Unmarshal(raw, &num) == nil {
		return num.String(), nil
	}
	var obj struct {
		Range  []json.RawMessage `json:"range"`
		Concat []json.RawMessage `json:"concat"`
	}
	if err := json.Unmarshal(raw, &obj); err != nil {
		return "", err
	}
	var parts []string
	sep := ""
	switch {
	case len(obj.Range) == 2:
		parts, sep = make([]string, 0, 2), "-"
		for _, r := range obj.Range {
			s, err := nftValue(r)
			if err != nil {
				return "", err
			}
			parts = append(parts, s)
		}
	case len(obj.Concat) > 0:
		sep = " . "
		for _, c := range obj.Concat {
			s, err := nftValue(c)
			if err != nil {
				return "", err
			}
			parts = append(parts, s)
		}
	default:
		return "", fmt.Errorf("unexpected value %s", raw)
	}
	return strings.Join(parts, sep), nil
}

// unshardedContractTable is the table an nftpol from before the sharded
// per-account sets wrote for contractPolicy: one tcp_ports and one
// udp_ports, looked up by one rule each, after alpha's TCP ports were
// widened (moved) and an account gamma was removed (moved with no ports).
const unshardedContractTable = `table inet nftpol {
	set tcp_open { type inet_service; flags interval; comment "nftpol: zone ports some account has for tcp"; elements = { 40010-40029 }; }
	set udp_open { type inet_service; flags interval; comment "nftpol: zone ports some account has for udp"; elements = { 40010-40019 }; }
	set exempt { type uid; comment "nftpol: uids never enforced"; elements = { 1500 }; }
	set tcp_violations { type uid . inet_service; size 65536; flags dynamic,timeout; counter; timeout 1h; comment "nftpol: uid . port of blocked tcp serving, with counters"; }
	set udp_violations { type uid . inet_service; size 65536; flags dynamic,timeout; counter; timeout 1h; comment "nftpol: uid . port of blocked udp serving, with counters"; }
	set tcp_moved { type uid; comment "nftpol: accounts whose tcp ports changed since tcp_ports was built";
		elements = { 1001 comment "alpha", 1003 comment "gamma" }; }
	set udp_moved { type uid; comment "nftpol: accounts whose udp ports changed since udp_ports was built"; }
	set tcp_ports { type uid . inet_service; flags interval; comment "nftpol: ports each account may serve tcp from";
		elements = { 1001 . 40010-40012 comment "alpha", 1002 . 40020-40029 comment "beta", 1003 . 40030-40039 comment "gamma" }; }
	set udp_ports { type uid . inet_service; flags interval; comment "nftpol: ports each account may serve udp from";
		elements = { 1001 . 40010-40019 comment "alpha" }; }
	set tcp_moved_ports { type uid . inet_service; flags interval; comment "nftpol: ports those accounts may serve tcp from now";
		elements = { 1001 . 40010-40019 comment "alpha" }; }
	set udp_moved_ports { type uid . inet_service; flags interval; comment "nftpol: ports those accounts may serve udp from now"; }
	chain output {
		type filter hook output priority filter; policy accept;
		oif "lo" accept comment "nftpol: loopback is not enforced"
		ct direction original accept comment "nftpol: connections opened from this host"
		meta skuid < 1000 accept comment "nftpol: uids below min_uid"
		meta skuid @exempt accept comment "nftpol: exempt uids"
		meta skuid @tcp_moved meta skuid . tcp sport @tcp_moved_ports accept comment "nftpol: accounts serve tcp from their own ports (changed since tcp_ports was built)"
		meta skuid != @tcp_moved meta skuid . tcp sport @tcp_ports accept comment "nftpol: accounts serve tcp from their own ports"
		meta skuid @udp_moved meta skuid . udp sport @udp_moved_ports accept comment "nftpol: accounts serve udp from their own ports (changed since udp_ports was built)"
		meta skuid != @udp_moved meta skuid . udp sport @udp_ports accept comment "nftpol: accounts serve udp from their own ports"
		meta l4proto tcp ct direction reply meta skuid >= 1000 update @tcp_violations { meta skuid . tcp sport } counter reject with tcp reset comment "nftpol: tcp served outside the account's ports"
		meta l4proto udp ct direction reply meta skuid >= 1000 update @udp_violations { meta skuid . udp sport } counter reject comment "nftpol: udp served outside the account's ports"
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iif "lo" accept comment "nftpol: loopback is not enforced"
		ct state != new accept comment "nftpol: only new connections are checked"
		tcp dport 40010-49999 tcp dport != @tcp_open counter reject with tcp reset comment "nftpol: tcp zone ports no account has"
		udp dport 40010-49999 udp dport != @udp_open counter reject comment "nftpol: udp zone ports no account has"
	}
}
`

// TestUpgradeFromUnshardedTable: over the table an nftpol from before the
// shards left, moved accounts included, plan says the accounts are
// unchanged and the table is replaced; apply replaces it in one transaction, after which the old sets
// are gone, each account is in its UID's shard, and enforcement is the
// same before and after, with real sockets.
func TestUpgradeFromUnshardedTable(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	nftLoad(t, tp.Server, unshardedContractTable)
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: tp.Server, stateDir: t.TempDir()}
	tp.Listen(t, uidBeta, "tcp", ServerIPv4, 40020)
	tp.Listen(t, uidAlpha, "tcp", ServerIPv4, 40021) // in beta's range
	tp.Listen(t, uidAlpha, "tcp", ServerIPv4, 40015) // alpha's, from its moved ports
	enforced := func(when string) {
		t.Helper()
		if got := tp.Connect(t, "tcp", ServerIPv4, 40015); got != "ok" {
			t.Errorf("%s: alpha on its own port 40015: got %q, want ok", when, got)
		}
		if got := tp.Connect(t, "tcp", ServerIPv4, 40020); got != "ok" {
			t.Errorf("%s: beta on its own port 40020: got %q, want ok", when, got)
		}
		if got := tp.Connect(t, "tcp", ServerIPv4, 40021); !blocked(got) {
			t.Errorf("%s: alpha on beta's port 40021: got %q, want blocked", when, got)
		}
	}
	enforced("the unsharded table")

	plan, raw := n.runJSON(t, 2, "plan", "-o", "json", "--detailed-exitcode")
	if plan.TableAction != "replace" || len(plan.Accounts) != 0 {
		t.Errorf("plan over the unsharded table: table %q, %d accounts changed; want replace, none\n%s", plan.TableAction, len(plan.Accounts), raw)
	}
	applied, raw := n.runJSON(t, 0, "apply", "-o", "json")
	if applied.Applied == nil || applied.TableAction != "replace" {
		t.Fatalf("apply over the unsharded table: table %q, applied %v; want replace\n%s", applied.TableAction, applied.Applied, raw)
	}
	n.planExit(t, 0)
	listing := nftListTable(t, tp.Server, "inet", "nftpol")
	for _, gone := range []string{"set tcp_ports {", "set udp_ports {", "@tcp_ports accept"} {
		if strings.Contains(listing, gone) {
			t.Errorf("%q still in the table after the upgrade:\n%s", gone, listing)
		}
	}
	for set, want := range map[string]string{"tcp_ports_1": "1001 . 40010-40019", "tcp_ports_2": "1002 . 40020-40029", "udp_ports_1": "1001 . 40010-40019"} {
		if got := run(t, "ip", "netns", "exec", tp.Server, "nft", "list", "set", "inet", "nftpol", set); !strings.Contains(got, want) {
			t.Errorf("set %s does not hold %s:\n%s", set, want, got)
		}
	}
	enforced("the sharded table")
}
