package integration

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// transportsMatrix is the contract for a transport no account is granted,
// proven with UDP-Lite: any user can open a UDP-Lite socket, and this
// kernel has it built in (it has no SCTP, whose rule is the same rule: the
// output chain's refusal names no protocol, see TestTransports).
var transportsMatrix = []matrixCase{
	{name: "alpha_udplite_8090_outside_zone", route: inbound, uid: uidAlpha, proto: "udplite", port: 8090,
		why: "1: no transport but tcp and udp is granted; outside the zone the reply is dropped on the way out"},
	{name: "alpha_udplite_45000_unassigned", route: inbound, uid: uidAlpha, proto: "udplite", port: 45000,
		why: "1, 2: the zone is closed to udplite"},
	{name: "alpha_udplite_40025_betas", route: inbound, uid: uidAlpha, proto: "udplite", port: 40025,
		why: "1, 2: not on another account's port"},
	{name: "alpha_udplite_40012_own", route: inbound, uid: uidAlpha, proto: "udplite", port: 40012,
		why: "1: alpha's own port, but for tcp and udp only"},
	{name: "uid999_udplite_8093", route: inbound, uid: uidSystem, proto: "udplite", port: 8093, reach: true,
		why: "3: UIDs below min_uid are untouched"},
	{name: "exempt_udplite_8094", route: inbound, uid: uidExempt, proto: "udplite", port: 8094, reach: true,
		why: "3: exempt UIDs are untouched"},
	{name: "root_udplite_8095", route: inbound, uid: uidRoot, proto: "udplite", port: 8095, reach: true,
		why: "3: UIDs outside E are untouched"},
	{name: "alpha_udplite_8096_loopback", route: loopback, uid: uidAlpha, peer: uidBeta, proto: "udplite", port: 8096, reach: true,
		why: "3: loopback is untouched (loopback: allow)"},
	{name: "alpha_udplite_out_9001", route: outbound, uid: uidAlpha, proto: "udplite", port: 9001,
		why: "1: accounts use tcp and udp only, as clients too (conntrack cannot tell a UDP-Lite reply from a first packet)"},
	{name: "root_udplite_out_9002", route: outbound, uid: uidRoot, proto: "udplite", port: 9002, reach: true,
		why: "3: UIDs outside E are untouched"},
	{name: "alpha_udp_40011_own", route: inbound, uid: uidAlpha, proto: "udp", port: 40011, reach: true,
		why: "1: tcp and udp are judged as before"},
	{name: "alpha_tcp_8080_outside_zone", route: inbound, uid: uidAlpha, proto: "tcp", port: 8080,
		why: "1: tcp and udp are judged as before"},
}

// TestTransports proves with real UDP-Lite sockets, as real UIDs, over IPv4
// and IPv6, that an account serves over no transport but TCP and UDP, that
// the violation is recorded under the account's UID and the protocol, that
// audit calls such a socket blocked, and that ICMP errors (which have no
// owning socket) still pass. The kernel here has no SCTP module: the rule
// that covers SCTP and every other protocol is the UDP-Lite one, which
// names only the protocols it lets through, and nft (read back as a second
// opinion) lists it so.
//
// On this kernel conntrack marks every inbound UDP-Lite datagram invalid
// (checksum check), so a server's answer starts a connection in the
// original direction: the case outside the zone proves that the refusal
// does not depend on the conntrack direction.
func TestTransports(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: tp.Server, stateDir: t.TempDir()}
	n.apply(t)
	n.planExit(t, 0) // the new statements read back as written

	runMatrix(t, tp, transportsMatrix)

	// The zone is closed to new UDP-Lite connections whoever listens. This
	// kernel's conntrack takes inbound UDP-Lite for invalid (checksum
	// check), and the input chain, as for TCP and UDP, judges only new
	// connections: with the check off in this namespace, it sees them.
	run(t, "ip", "netns", "exec", tp.Server, "sysctl", "-qw", "net.netfilter.nf_conntrack_checksum=0")
	for _, fam := range families {
		tp.Listen(t, uidSystem, "udplite", fam.server, 40013)
		if got := tp.Connect(t, "udplite", fam.server, 40013); got != "refused" {
			t.Errorf("%s: uid %d udplite on zone port 40013: %q, want refused (contract 2: the zone is closed whoever listens)", fam.name, uidSystem, got)
		}
	}
	run(t, "ip", "netns", "exec", tp.Server, "sysctl", "-qw", "net.netfilter.nf_conntrack_checksum=1")

	// A UDP-Lite datagram to a port outside the zone where nobody
	// listens: the kernel's port unreachable is a reply-direction packet
	// without an owning socket, which the refusal must let through.
	if got := tp.Connect(t, "udplite", ServerIPv4, 8099); got != "refused" {
		t.Errorf("udplite to a closed port outside the zone: %q, want refused (the kernel's ICMP error passes)", got)
	}

	// status names the UID, the account and the protocol.
	stdout, stderr, code := n.run(t, "status", "-o", "json")
	if code != 0 {
		t.Fatalf("status: exit %d %s", code, stderr)
	}
	var st struct {
		Violations []struct {
			UID     uint32
			Account string
			Proto   string
			Port    uint16
			Packets uint64
		}
	}
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	var found bool
	for _, v := range st.Violations {
		switch {
		case v.UID == uidAlpha && v.Account == "alpha" && v.Proto == "udplite" && v.Port == 8090 && v.Packets >= 2:
			found = true // one datagram per family at least
		case v.Proto == "udplite" && v.UID == uidAlpha && (v.Port == 45000 || v.Port == 40025 || v.Port == 40012):
			// In the zone the input chain refuses a new
			// connection; this kernel's conntrack takes the
			// datagram for invalid, so it reaches alpha's socket
			// and the answer is refused and counted on the way out.
			t.Logf("counted on the way out: %+v", v)
		}
	}
	if !found {
		t.Errorf("status does not report alpha (uid %d) on udplite 8090:\n%s", uidAlpha, stdout)
	}
	prom, _, _ := n.run(t, "status", "--format", "prometheus")
	if !strings.Contains(prom, `uid="1001",account="alpha",proto="udplite",port="8090"}`) {
		t.Errorf("prometheus output lacks the udplite violation:\n%s", prom)
	}
	text, _, _ := n.run(t, "status")
	t.Logf("status:\n%s", text)

	// nft, as a second opinion, reads the rules as nftpol renders them:
	// the refusal names only the protocols it lets through, so it covers
	// SCTP, DCCP and any other IP protocol as it covers UDP-Lite; it comes
	// before the original-direction accept, and it counted the UDP-Lite
	// replies.
	list := nftListTable(t, tp.Server, "inet", "nftpol")
	for _, re := range []string{
		`\n\t\toif "lo" accept comment "nftpol: loopback is not enforced"\n` +
			`\t\tmeta l4proto != tcp meta l4proto != udp meta l4proto != icmp meta l4proto != ipv6-icmp meta skuid >= 1000 meta skuid != @exempt limit rate 10/minute log prefix "nftpol: blocked transport: " flags skuid comment "nftpol: log transports no account is granted"\n` +
			`\t\tmeta l4proto != tcp meta l4proto != udp meta l4proto != icmp meta l4proto != ipv6-icmp meta skuid >= 1000 meta skuid != @exempt limit rate 4/second log prefix "nftpol" group 9781 comment "nftpol: tell nftpol watch: transports no account is granted"\n` +
			`\t\tmeta l4proto != tcp meta l4proto != udp meta l4proto != icmp meta l4proto != ipv6-icmp meta skuid >= 1000 meta skuid != @exempt update @other_violations \{ meta skuid \. meta l4proto \. th sport \} counter packets [1-9][0-9]* bytes [0-9]+ drop comment "nftpol: accounts use tcp and udp only"\n` +
			`\t\tct direction original accept comment`,
		`\n\t\tudplite dport 40010-49999 counter packets [1-9][0-9]* bytes [0-9]+ reject comment`, // the zone check above
		`\n\t\tsctp dport 40010-49999 counter packets 0 bytes 0 reject comment`,
		`\n\t\tdccp dport 40010-49999 counter packets 0 bytes 0 reject comment`,
		`type uid \. inet_proto \. inet_service\n`,
		`1001 \. udplite \. 8090 (counter|expires)`,
	} {
		if !regexp.MustCompile(re).MatchString(list) {
			t.Errorf("nft list table inet nftpol does not match %s:\n%s", re, list)
		}
	}

	// audit lists the UDP-Lite sockets and judges them by the chains.
	stdout, stderr, code = n.run(t, "audit", "-o", "json")
	if code != 3 {
		t.Errorf("audit: exit %d, want 3 (something is blocked)\n%s", code, stderr)
	}
	var a auditJSON
	if err := json.Unmarshal([]byte(stdout), &a); err != nil {
		t.Fatalf("%v\n%s", err, stdout)
	}
	want := map[int]string{8090: "blocked transport-not-granted", 45000: "blocked transport-not-granted",
		40025: "blocked transport-not-granted", 40012: "blocked transport-not-granted", 40013: "blocked unassigned-zone-port",
		// 40013: uid 999's listener of the zone check above
		8093: "not-enforced ", 8094: "not-enforced ", 8095: "not-enforced ", 8096: "local-only "}
	for _, s := range a.Sockets {
		if s.Proto != "udplite" {
			continue
		}
		w, ok := want[s.Port]
		if !ok {
			continue
		}
		if got := s.Verdict + " " + s.Reason; got != w {
			t.Errorf("audit: udplite %s:%d uid %d: %q, want %q", s.Address, s.Port, s.UID, got, w)
		}
		if s.Port == 8090 && s.Explanation != "udplite is never granted (only tcp and udp)" {
			t.Errorf("audit explains udplite 8090 as %q", s.Explanation)
		}
		delete(want, s.Port)
	}
	for port, w := range want {
		t.Errorf("audit does not list the udplite socket on port %d (want %s)", port, w)
	}
}
