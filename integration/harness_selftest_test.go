package integration

import (
	"fmt"
	"strings"
	"testing"
)

// referenceRuleset is the ruleset shape of DESIGN.md written out by hand for
// contractPolicy. Loaded with nft, it lets the harness prove that it tells
// reachable from blocked without depending on nftpol itself.
const referenceRuleset = `table inet nftpol {
	set tcp_ports { type uid . inet_service; flags interval; elements = { 1001 . 40010-40019, 1002 . 40020-40029 }; }
	set udp_ports { type uid . inet_service; flags interval; elements = { 1001 . 40010-40019 }; }
	set tcp_open { type inet_service; flags interval; elements = { 40010-40029 }; }
	set udp_open { type inet_service; flags interval; elements = { 40010-40019 }; }
	set exempt { type uid; elements = { 1500 }; }
	chain output {
		type filter hook output priority filter; policy accept;
		oif "lo" accept
		ct direction original accept
		meta skuid < 1000 accept
		meta skuid @exempt accept
		meta skuid . tcp sport @tcp_ports accept
		meta skuid . udp sport @udp_ports accept
		meta l4proto tcp meta skuid >= 1000 counter reject with tcp reset
		meta l4proto udp meta skuid >= 1000 counter reject
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iif "lo" accept
		ct state != new accept
		tcp dport 40010-49999 tcp dport != @tcp_open counter reject with tcp reset
		udp dport 40010-49999 udp dport != @udp_open counter reject
	}
}
`

// TestHarnessBaseline runs the matrix in a namespace without any ruleset:
// everything must get through, so a "blocked" elsewhere is the ruleset's
// doing, not the harness's. It also checks that listeners really are owned
// by the UID they were asked for.
func TestHarnessBaseline(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	runMatrix(t, tp, allReachable(contractMatrix))

	for _, uid := range []int{uidSystem, uidAlpha, uidExempt} {
		port := 8090 + uid%10
		tp.Listen(t, uid, "tcp", ServerIPv4, port)
		ss := run(t, "ip", "netns", "exec", tp.Server, "ss", "-Htlne", fmt.Sprintf("sport = :%d", port))
		if !strings.Contains(ss, fmt.Sprintf(" uid:%d ", uid)) {
			t.Errorf("listener on %d is not owned by uid %d:\n%s", port, uid, ss)
		}
	}
}

// TestHarnessReferenceRuleset runs the contract matrix against
// referenceRuleset loaded with nft: the harness must see the contract's
// answers for a ruleset known to implement it, blocked cases included.
func TestHarnessReferenceRuleset(t *testing.T) {
	requireRoot(t)
	tp := newTopology(t)
	nftLoad(t, tp.Server, foreignTable)
	foreign := nftListTable(t, tp.Server, "inet", "foreign")

	// A stream established before any ruleset exists: conntrack first sees
	// it mid-connection once the table is loaded.
	streams := startStreams(t, tp, "before_load", 40012, 40013)
	nftLoad(t, tp.Server, referenceRuleset)
	streams = append(streams, startStreams(t, tp, "before_change", 40014, 40015)...)
	nftLoad(t, tp.Server, "add element inet nftpol tcp_ports { 1003 . 40030-40039 }\n"+
		"add element inet nftpol tcp_open { 40030-40039 }\n")
	finishStreams(t, streams)

	runMatrix(t, tp, contractMatrix)

	if got := nftListTable(t, tp.Server, "inet", "foreign"); got != foreign {
		t.Errorf("table inet foreign changed:\nbefore:\n%s\nafter:\n%s", foreign, got)
	}
}
