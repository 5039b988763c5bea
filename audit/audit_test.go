package audit

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/sockets"
)

// policy loads a policy from YAML text, with a fake user database.
func policy(t *testing.T, yaml string) *policies.Policy {
	t.Helper()
	file := filepath.Join(t.TempDir(), "nftpol.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := policies.Load(file, policies.WithLookup(func(name string) (uint32, error) {
		if name == "www-data" {
			return 33, nil
		}
		return 0, fmt.Errorf("%w %q", policies.ErrUnknownUser, name)
	}))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// The example policy, flattened: site12 has 40010-40019 and 40500 (tcp,
// udp), site13 40020-40029 (tcp only), site14 40030-40049 (tcp, udp).
const examplePolicy = `
zone: 40010-49999
min_uid: 1000
exempt: [www-data]
loopback: LOOPBACK
accounts:
  - {name: site12, uid: 1012, ports: ["40010-40019", 40500]}
  - {name: site13, uid: 1013, ports: ["40020-40029"], protocols: [tcp]}
  - {name: site14, uid: 1014, ports: ["40030-40049"]}
`

func examples(t *testing.T, loopback string) *policies.Policy {
	t.Helper()
	return policy(t, strings.ReplaceAll(examplePolicy, "LOOPBACK", loopback))
}

func sock(proto, addr string, port uint16, uid uint32) sockets.Socket {
	return sockets.Socket{Proto: sockets.Proto(proto), Addr: netip.MustParseAddr(addr), Port: port, UID: uid}
}

func TestJudge(t *testing.T) {
	tests := []struct {
		name     string
		loopback string
		s        sockets.Socket
		verdict  Verdict
		reason   Reason
		other    string
		explain  string
	}{
		{"own port", "allow", sock("tcp", "0.0.0.0", 40010, 1012), Reachable, "", "", ""},
		{"own single port over ipv6", "allow", sock("udp", "2001:db8::1", 40500, 1012), Reachable, "", "", ""},
		{"another account's port", "allow", sock("tcp", "::", 40020, 1012), Blocked, OtherAccount, "site13", "another account's port (site13)"},
		{"outside the ranges, in the zone", "allow", sock("tcp", "0.0.0.0", 41000, 1012), Blocked, OutsideRanges, "", "outside the account's ranges"},
		{"outside the zone", "allow", sock("tcp", "0.0.0.0", 8080, 1012), Blocked, OutsideRanges, "", "outside the account's ranges"},
		{"protocol not assigned", "allow", sock("udp", "0.0.0.0", 40020, 1013), Blocked, ProtocolNotAssigned, "", "protocol not assigned"},
		{"unknown enforced uid", "allow", sock("tcp", "0.0.0.0", 8080, 5000), Blocked, OutsideRanges, "", "outside the account's ranges"},
		{"unknown enforced uid on an account's port", "allow", sock("tcp", "0.0.0.0", 40030, 5000), Blocked, OtherAccount, "site14", "another account's port (site14)"},
		{"root on an unassigned zone port", "allow", sock("tcp", "0.0.0.0", 45000, 0), Blocked, UnassignedZonePort, "", "unassigned zone port"},
		{"exempt on an unassigned zone port", "allow", sock("udp", "::", 45000, 33), Blocked, UnassignedZonePort, "", "unassigned zone port"},
		{"exempt on udp of a tcp-only port", "allow", sock("udp", "::", 40025, 33), Blocked, UnassignedZonePort, "", "unassigned zone port"},
		{"root outside the zone", "allow", sock("tcp", "0.0.0.0", 22, 0), NotEnforced, "", "", ""},
		{"system uid on an account's port", "allow", sock("tcp", "0.0.0.0", 40010, 999), NotEnforced, "", "", ""},
		{"exempt outside the zone", "allow", sock("tcp", "::", 80, 33), NotEnforced, "", "", ""},
		{"loopback, allowed", "allow", sock("tcp", "127.0.0.1", 41000, 1012), LocalOnly, "", "", ""},
		{"ipv6 loopback, allowed", "allow", sock("udp", "::1", 45000, 0), LocalOnly, "", "", ""},
		{"loopback, enforced, own port", "enforce", sock("tcp", "127.0.0.1", 40010, 1012), LocalOnly, "", "", ""},
		{"loopback, enforced, another's port", "enforce", sock("tcp", "::1", 40030, 1012), Blocked, OtherAccount, "site14", "another account's port (site14)"},
		{"loopback, enforced, root on an unassigned zone port", "enforce", sock("tcp", "127.0.0.1", 45000, 0), Blocked, UnassignedZonePort, "", "unassigned zone port"},
		{"loopback, enforced, root outside the zone", "enforce", sock("tcp", "127.0.0.1", 25, 0), LocalOnly, "", "", ""},
		{"udplite outside the zone", "allow", sock("udplite", "0.0.0.0", 8090, 1012), Blocked, TransportNotGranted, "", "udplite is never granted (only tcp and udp)"},
		{"udplite on the account's own port", "allow", sock("udplite", "::", 40010, 1012), Blocked, TransportNotGranted, "", "udplite is never granted (only tcp and udp)"},
		{"udplite on another account's port", "allow", sock("udplite", "2001:db8::1", 40020, 1012), Blocked, TransportNotGranted, "", "udplite is never granted (only tcp and udp)"},
		{"sctp on an unassigned zone port", "allow", sock("sctp", "0.0.0.0", 45000, 1014), Blocked, TransportNotGranted, "", "sctp is never granted (only tcp and udp)"},
		{"root udplite on an account's port", "allow", sock("udplite", "0.0.0.0", 40010, 0), Blocked, UnassignedZonePort, "", "unassigned zone port"},
		{"root udplite outside the zone", "allow", sock("udplite", "0.0.0.0", 8090, 0), NotEnforced, "", "", ""},
		{"exempt sctp outside the zone", "allow", sock("sctp", "::", 8090, 33), NotEnforced, "", "", ""},
		{"system uid udplite outside the zone", "allow", sock("udplite", "::", 8090, 999), NotEnforced, "", "", ""},
		{"udplite on loopback", "allow", sock("udplite", "127.0.0.1", 8090, 1012), LocalOnly, "", "", ""},
		{"bound to lo by device", "allow", sockets.Socket{Proto: "tcp", Addr: netip.MustParseAddr("0.0.0.0"), Port: 41000, UID: 1012, Interface: 1}, LocalOnly, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := New(examples(t, tt.loopback))
			if err != nil {
				t.Fatal(err)
			}
			f, err := j.Judge(tt.s)
			if err != nil {
				t.Fatal(err)
			}
			if f.Verdict != tt.verdict || f.Reason != tt.reason || f.Other != tt.other || f.Explain() != tt.explain {
				t.Errorf("got %s %s %q %q, want %s %s %q %q", f.Verdict, f.Reason, f.Other, f.Explain(), tt.verdict, tt.reason, tt.other, tt.explain)
			}
			if (f.Verdict == Blocked) != (f.Rule != "") {
				t.Errorf("verdict %s with rule %q", f.Verdict, f.Rule)
			}
		})
	}
}

// TestJudgeAgreesWithPolicy checks, over every combination that matters,
// that what the compiled ruleset blocks is what DESIGN.md's contract
// blocks, stated here directly from the policy:
//
//   - a new inbound connection to a zone port no account has for the
//     protocol is refused, whoever listens (zone closed by default);
//   - an enforced UID (>= min_uid, not exempt) serves only from its own
//     ports for the protocol;
//   - with loopback allowed, loopback-bound sockets are never blocked.
func TestJudgeAgreesWithPolicy(t *testing.T) {
	uids := []uint32{0, 33, 999, 1000, 1012, 1013, 1014, 5000}
	ports := []uint16{22, 8080, 40009, 40010, 40019, 40020, 40029, 40030, 40049, 40050, 40499, 40500, 40501, 49999, 50000}
	addrs := []string{"0.0.0.0", "::", "198.18.0.1", "2001:db8::1", "127.0.0.1", "::1"}
	for _, lb := range []string{"allow", "enforce"} {
		p := examples(t, lb)
		j, err := New(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, proto := range []string{"tcp", "udp", "udplite", "sctp"} {
			for _, uid := range uids {
				for _, port := range ports {
					for _, addr := range addrs {
						s := sock(proto, addr, port, uid)
						f, err := j.Judge(s)
						if err != nil {
							t.Fatal(err)
						}
						want := contractBlocks(p, s)
						if (f.Verdict == Blocked) != want {
							t.Errorf("loopback %s: %s %s uid %d: verdict %s (%s), contract says blocked=%v",
								lb, proto, s.AddrPort(), uid, f.Verdict, f.Explain(), want)
						}
					}
				}
			}
		}
	}
}

func contractBlocks(p *policies.Policy, s sockets.Socket) bool {
	if s.LocalOnly() && p.Loopback == policies.LoopbackAllow {
		return false
	}
	proto := policies.Protocol(s.Proto)
	has := func(a *policies.Account) bool {
		return a.HasProtocol(proto) && slices.ContainsFunc(a.Ports, func(r policies.PortRange) bool { return r.Contains(s.Port) })
	}
	if p.Zone.Contains(s.Port) && !slices.ContainsFunc(p.Accounts, has) {
		return true
	}
	enforced := s.UID >= p.MinUID && !slices.Contains(p.Exempt, s.UID)
	if !enforced {
		return false
	}
	return !slices.ContainsFunc(p.Accounts, func(a *policies.Account) bool { return a.UID == s.UID && has(a) })
}

// TestJudgeRefusesUnknownStatements: a statement audit does not know must
// stop it, not be guessed.
func TestJudgeRefusesUnknownStatements(t *testing.T) {
	j, err := New(examples(t, "allow"))
	if err != nil {
		t.Fatal(err)
	}
	out := j.rs.Chain("output")
	out.Rules = append([]rules.Rule{{Stmts: []rules.Stmt{rules.Unknown{}, rules.Verdict{Kind: rules.Drop}}}}, out.Rules...)
	if _, err := j.Judge(sock("tcp", "0.0.0.0", 40010, 1012)); err == nil {
		t.Fatal("Judge evaluated an unknown statement without error")
	}
}

func TestJudgeAll(t *testing.T) {
	j, err := New(examples(t, "allow"))
	if err != nil {
		t.Fatal(err)
	}
	s := sock("tcp", "0.0.0.0", 40010, 1012)
	s.Inode = 77
	fs, err := j.JudgeAll([]sockets.Socket{s}, map[uint64][]sockets.Process{77: {{PID: 5, Command: "node"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(fs) != 1 || fs[0].Account != "site12" || len(fs[0].Processes) != 1 || fs[0].Processes[0].PID != 5 {
		t.Errorf("JudgeAll = %+v", fs)
	}
}

func TestJudgeMarksEphemeralUDP(t *testing.T) {
	j, err := New(examples(t, "allow"))
	if err != nil {
		t.Fatal(err)
	}
	j.SetAutoPorts(sockets.AutoPorts{Lo: 45000, Hi: 45999, Reserved: []sockets.PortRange{{Lo: 45200, Hi: 45299}, {Lo: 45400, Hi: 45400}}})
	for _, tt := range []struct {
		s     sockets.Socket
		maybe bool
	}{
		{sock("udp", "0.0.0.0", 45500, 1012), true},  // blocked, ephemeral
		{sock("tcp", "0.0.0.0", 45500, 1012), false}, // TCP listeners bind on purpose
		{sock("udp", "0.0.0.0", 44999, 1012), false}, // below the range
		{sock("udp", "0.0.0.0", 45250, 1012), false}, // reserved
		{sock("udp", "0.0.0.0", 45400, 1012), false}, // reserved
		{sock("udp", "0.0.0.0", 45401, 1012), true},
		{sock("udp", "0.0.0.0", 40010, 1012), false}, // not blocked
		{sock("udp", "127.0.0.1", 45500, 0), false},  // local only
	} {
		f, err := j.Judge(tt.s)
		if err != nil {
			t.Fatal(err)
		}
		if f.MaybeClient != tt.maybe {
			t.Errorf("%s %s: MaybeClient = %v, want %v", tt.s.Proto, tt.s.AddrPort(), f.MaybeClient, tt.maybe)
		}
	}
}
