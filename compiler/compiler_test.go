package compiler

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// fakeUsers resolves the user names the examples use, so the golden files
// do not depend on this machine's passwd database.
func fakeUsers(name string) (uint32, error) {
	if uid, ok := map[string]uint32{"www-data": 33}[name]; ok {
		return uid, nil
	}
	return 0, fmt.Errorf("unknown user %q", name)
}

// TestGoldenExports pins the export of every example policy. Run with
// -update after an intended change and review the diff.
func TestGoldenExports(t *testing.T) {
	cases := map[string]string{
		"examples.nft": "../examples/nftpol.yaml",
		"drop.nft":     "testdata/drop.yaml",
	}
	for golden, file := range cases {
		t.Run(golden, func(t *testing.T) {
			// The permission check would refuse a checkout owned by
			// another user than the one running the tests.
			p, err := policies.Load(file, policies.WithLookup(fakeUsers), policies.WithPermissionCheck(false))
			if err != nil {
				t.Fatal(err)
			}
			rs, err := Compile(p)
			if err != nil {
				t.Fatal(err)
			}
			got := rules.RenderString(rs)
			path := filepath.Join("testdata", golden)
			if *update {
				if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("export of %s differs from %s:\n%s", file, path, got)
			}
			nftCheck(t, got)
		})
	}
}

// nftCheck asks nft, an independent parser, whether the text is a valid
// ruleset (-c: check only, nothing is loaded). Where nft is missing the
// check is skipped, except under CI where nft is always installed.
func nftCheck(t *testing.T, text string) {
	t.Helper()
	nft, err := exec.LookPath("nft")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("nft not installed under CI")
		}
		t.Log("nft not installed: export not checked with nft -c")
		return
	}
	f := filepath.Join(t.TempDir(), "export.nft")
	if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(nft, "-c", "-f", f).CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "Operation not permitted") {
			t.Log("nft -c needs CAP_NET_ADMIN here: export not checked")
			return
		}
		t.Errorf("nft -c -f rejects the export: %v\n%s", err, out)
	}
}

func policy(accounts ...*policies.Account) *policies.Policy {
	return &policies.Policy{
		Table: "nftpol", Zone: policies.PortRange{Lo: 40010, Hi: 49999}, MinUID: 1000,
		Loopback: policies.LoopbackAllow, Action: policies.Reject,
		Protocols: []policies.Protocol{policies.TCP, policies.UDP}, Accounts: accounts,
	}
}

func TestCompileDeterministic(t *testing.T) {
	accs := []*policies.Account{
		{Name: "b", UID: 1002, Ports: []policies.PortRange{{Lo: 40020, Hi: 40029}}, Protocols: []policies.Protocol{policies.TCP}},
		{Name: "a", UID: 1001, Ports: []policies.PortRange{{Lo: 40500, Hi: 40500}, {Lo: 40010, Hi: 40019}}, Protocols: []policies.Protocol{policies.TCP, policies.UDP}},
	}
	rs1, err := Compile(policy(accs...))
	if err != nil {
		t.Fatal(err)
	}
	slices.Reverse(accs)
	rs2, err := Compile(policy(accs...))
	if err != nil {
		t.Fatal(err)
	}
	if a, b := rules.RenderString(rs1), rules.RenderString(rs2); a != b {
		t.Errorf("account order changed the export:\n%s\n---\n%s", a, b)
	}
}

// TestNoPerAccountRules: the rules are the same whatever the accounts; only
// set elements grow with them.
func TestNoPerAccountRules(t *testing.T) {
	small, _ := Compile(policy(&policies.Account{Name: "a", UID: 1001, Ports: []policies.PortRange{{Lo: 40010, Hi: 40010}}, Protocols: []policies.Protocol{policies.TCP}}))
	var many []*policies.Account
	for i := 0; i < 500; i++ {
		p := uint16(40010 + 2*i)
		many = append(many, &policies.Account{Name: fmt.Sprint("u", i), UID: uint32(2000 + i), Ports: []policies.PortRange{{Lo: p, Hi: p}}, Protocols: []policies.Protocol{policies.TCP, policies.UDP}})
	}
	big, _ := Compile(policy(many...))
	for i := range small.Chains {
		if !small.Chains[i].Equal(big.Chains[i]) {
			t.Errorf("chain %s differs between 1 and 500 accounts", small.Chains[i].Name)
		}
	}
	// UIDs 2000..2499 spread evenly over the shards, each in its own.
	for k := uint32(0); k < rules.Shards; k++ {
		s := big.Set(rules.PortsSet(rules.TCP, k))
		if n := len(s.Elements); n < 500/rules.Shards || n > 500/rules.Shards+1 {
			t.Errorf("%s holds %d elements, want 500/%d", s.Name, n, rules.Shards)
		}
		for _, e := range s.Elements {
			if rules.Shard(e.UID) != k {
				t.Errorf("%s holds uid %d, of shard %d", s.Name, e.UID, rules.Shard(e.UID))
			}
		}
	}
	if n := len(big.Set("udp_open").Elements); n != 500 {
		t.Errorf("udp_open holds %d elements, want 500 (non-adjacent ports)", n)
	}
}

func TestCompileMergesAndSplitsByProtocol(t *testing.T) {
	rs, err := Compile(policy(
		&policies.Account{Name: "a", UID: 1001, Ports: []policies.PortRange{{Lo: 40010, Hi: 40019}, {Lo: 40020, Hi: 40025}, {Lo: 40015, Hi: 40016}}, Protocols: []policies.Protocol{policies.TCP, policies.UDP}},
		&policies.Account{Name: "b", UID: 1002, Ports: []policies.PortRange{{Lo: 40026, Hi: 40030}}, Protocols: []policies.Protocol{policies.TCP}},
	))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"tcp_ports_1": "[{1001 40010 40025 a}]",
		"tcp_ports_2": "[{1002 40026 40030 b}]",
		"udp_ports_1": "[{1001 40010 40025 a}]",
		"udp_ports_2": "[]",
		"tcp_open":    "[{0 40010 40030 }]", // two accounts' adjacent ranges form one interval
		"udp_open":    "[{0 40010 40025 }]",
		"exempt":      "[]",
	}
	for name, w := range want {
		if got := fmt.Sprint(rs.Set(name).Elements); got != w {
			t.Errorf("%s = %s, want %s", name, got, w)
		}
	}
}

func TestCompileActionAndLoopback(t *testing.T) {
	p := policy()
	p.Action, p.Loopback = policies.Drop, policies.LoopbackEnforce
	rs, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	text := rules.RenderString(rs)
	if strings.Contains(text, "reject") || strings.Contains(text, `"lo"`) {
		t.Errorf("drop + loopback enforce still rejects or exempts lo:\n%s", text)
	}
	if !rs.Owned() {
		t.Error("compiled ruleset lacks the owner mark")
	}
}

func TestMerge(t *testing.T) {
	got := Merge([]policies.PortRange{{Lo: 5, Hi: 6}, {Lo: 1, Hi: 2}, {Lo: 3, Hi: 3}, {Lo: 65535, Hi: 65535}, {Lo: 10, Hi: 12}, {Lo: 11, Hi: 11}})
	want := []policies.PortRange{{Lo: 1, Hi: 3}, {Lo: 5, Hi: 6}, {Lo: 10, Hi: 12}, {Lo: 65535, Hi: 65535}}
	if !slices.Equal(got, want) {
		t.Errorf("Merge = %v, want %v", got, want)
	}
}

// TestCompileSharesProtocols: when every account has both protocols, TCP's
// and UDP's sets are compiled once and share their elements; when one
// account has only TCP, they differ by it.
func TestCompileSharesProtocols(t *testing.T) {
	both := []policies.Protocol{policies.TCP, policies.UDP}
	accs := []*policies.Account{
		{Name: "a", UID: 1001, Ports: []policies.PortRange{{Lo: 40010, Hi: 40019}}, Protocols: both},
		{Name: "b", UID: 1002, Ports: []policies.PortRange{{Lo: 40020, Hi: 40029}}, Protocols: both},
	}
	rs, err := Compile(policy(accs...))
	if err != nil {
		t.Fatal(err)
	}
	for k := uint32(1); k <= 2; k++ {
		tcp, udp := rs.Set(rules.PortsSet(rules.TCP, k)).Elements, rs.Set(rules.PortsSet(rules.UDP, k)).Elements
		if len(tcp) != 1 || &tcp[0] != &udp[0] {
			t.Errorf("shard %d: tcp %v and udp %v not shared", k, tcp, udp)
		}
	}
	accs[1].Protocols = []policies.Protocol{policies.TCP}
	rs, err = Compile(policy(accs...))
	if err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(rs.Set(rules.PortsSet(rules.UDP, 2)).Elements, rs.Set(rules.PortsSet(rules.TCP, 2)).Elements); got != "[] [{1002 40020 40029 b}]" {
		t.Errorf("b without udp: udp and tcp shard 2 = %s", got)
	}
	if got := fmt.Sprint(rs.Set(rules.OpenSet(rules.UDP)).Elements); got != "[{0 40010 40019 }]" {
		t.Errorf("b without udp: udp_open = %s", got)
	}
}

// TestCompiledRoles: the compiler gives every set the role its name, key and
// flags stand for, which is also the one the state's and the kernel's
// decoders derive, and the role names the set.
func TestCompiledRoles(t *testing.T) {
	p, err := policies.Load("../examples/nftpol.yaml", policies.WithLookup(fakeUsers), policies.WithPermissionCheck(false))
	if err != nil {
		t.Fatal(err)
	}
	rs, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[rules.SetKind]int{}
	for _, s := range rs.Sets {
		bare := &rules.Set{Name: s.Name, Key: s.Key, Dynamic: s.Dynamic}
		if want := bare.DeriveRole().Role; s.Role != want || s.Role.Name() != s.Name {
			t.Errorf("set %s compiled with role %+v (naming %q), want %+v", s.Name, s.Role, s.Role.Name(), want)
		}
		kinds[s.Role.Kind]++
	}
	want := map[rules.SetKind]int{rules.SetPorts: 2 * rules.Shards, rules.SetOpen: 2, rules.SetExempt: 1,
		rules.SetViolations: 2, rules.SetMoved: 2, rules.SetMovedPorts: 2, rules.SetTransportViolations: 1}
	if fmt.Sprint(kinds) != fmt.Sprint(want) {
		t.Errorf("compiled sets by kind %v, want %v", kinds, want)
	}
}

// TestCompileOtherTransports: every transport but TCP, UDP and ICMP is
// refused to enforced accounts on the way out by two rules that come before
// the original-direction accept (conntrack cannot always tell a UDP-Lite
// reply from a first packet), that keep the skuid guard and the exempt set,
// and that drop whatever the action; the zone is closed to the ungranted
// transports on the way in.
func TestCompileOtherTransports(t *testing.T) {
	p := policy()
	rs, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	out := rs.Chain("output").Rules
	orig := slices.IndexFunc(out, func(r rules.Rule) bool { return slices.Contains(r.Stmts, rules.Stmt(rules.CtDirectionOriginal{})) })
	guard := "meta l4proto != tcp meta l4proto != udp meta l4proto != icmp meta l4proto != ipv6-icmp meta skuid >= 1000 meta skuid != @exempt "
	want := []string{
		guard + `limit rate 10/minute log prefix "nftpol: blocked transport: " flags skuid`,
		guard + `limit rate 4/second log prefix "nftpol" group 9781`,
		guard + "update @other_violations { meta skuid . meta l4proto . th sport } counter drop",
	}
	if orig != len(want)+1 {
		t.Fatalf("the original-direction accept is rule %d, want %d (after lo and the three rules):\n%s", orig, len(want)+1, rules.RenderString(rs))
	}
	for i, w := range want {
		if got := out[1+i].String(); !strings.HasPrefix(got, w+" comment ") {
			t.Errorf("rule %d: %s\nwant %s", 1+i, got, w)
		}
	}
	for _, r := range out[orig:] {
		if strings.Contains(r.String(), "@other_violations") {
			t.Errorf("other transports judged again after the accept: %s", r)
		}
	}
	if s := rs.Set(rules.TransportViolationsSet); s == nil || s.Key != rules.KeyUIDProtoPort || !s.Dynamic || !s.Counter {
		t.Errorf("set %s: %+v", rules.TransportViolationsSet, s)
	}
	in := rules.RenderString(&rules.Ruleset{Table: "t", Chains: []*rules.Chain{rs.Chain("input")}})
	for _, proto := range Ungranted {
		w := fmt.Sprintf("%s dport %d-%d counter reject comment", proto, p.Zone.Lo, p.Zone.Hi)
		if i, j := strings.Index(in, w), strings.Index(in, "ct state != new accept"); i < 0 || i < j {
			t.Errorf("input lacks %q after the accept of packets that are not new:\n%s", w, in)
		}
	}
	// With action drop, and a min_uid of 0, the guards stay.
	p.Action, p.MinUID = policies.Drop, 0
	rs, err = Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := rs.Chain("output").Rules[3].String(); !strings.Contains(got, "meta skuid >= 0 meta skuid != @exempt update @other_violations") || !strings.Contains(got, " counter drop ") {
		t.Errorf("min_uid 0: %s", got)
	}
}
