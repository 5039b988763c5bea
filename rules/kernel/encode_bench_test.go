//go:build linux

package kernel

import (
	"fmt"
	"testing"

	"github.com/nftpol/nftpol/rules"
)

// benchAccounts is the size the scale targets are set at.
const benchAccounts = 50000

// benchTable builds nftpol's table for n accounts, as the compiler makes
// it: account i is uid 100000+i on port 10000+i, TCP and UDP, in the zone
// 10000-65000, with the chains' rules. With widenLast the last account has
// 11 ports instead of one.
func benchTable(n int, widenLast bool) *rules.Ruleset {
	const lo, zoneHi = 10000, 65000
	rs := &rules.Ruleset{Table: "nftpol"}
	hi := uint16(lo + n - 1)
	if widenLast {
		hi += 10
	}
	protos := []rules.Proto{rules.TCP, rules.UDP}
	for _, p := range protos {
		var ports [rules.Shards]*rules.Set
		for k := range ports {
			ports[k] = &rules.Set{Name: rules.PortsSet(p, uint32(k)), Key: rules.KeyUIDPort, Interval: true, Comment: rules.OwnerPrefix + "ports of " + string(p)}
		}
		for i := range n {
			port := uint16(lo + i)
			e := rules.Element{UID: uint32(100000 + i), Lo: port, Hi: port, Comment: fmt.Sprintf("acct-%06d", i)}
			if widenLast && i == n-1 {
				e.Hi += 10
			}
			s := ports[rules.Shard(e.UID)]
			s.Elements = append(s.Elements, e)
		}
		open := &rules.Set{Name: rules.OpenSet(p), Key: rules.KeyPort, Interval: true, Comment: rules.OwnerPrefix + "open " + string(p),
			Elements: []rules.Element{{Lo: lo, Hi: hi}}}
		rs.Sets = append(append(rs.Sets, ports[:]...), open)
	}
	rs.Sets = append(rs.Sets, &rules.Set{Name: rules.ExemptSet, Key: rules.KeyUID, Comment: rules.OwnerPrefix + "exempt",
		Elements: []rules.Element{{UID: 33}}})

	accept := rules.Verdict{Kind: rules.Accept}
	mark := func(stmts ...rules.Stmt) rules.Rule {
		return rules.Rule{Stmts: stmts, Comment: rules.OwnerPrefix + "bench"}
	}
	out := &rules.Chain{Name: "output", Hook: rules.HookOutput, Rules: []rules.Rule{
		mark(rules.Loopback{Out: true}, accept),
		mark(rules.CtDirectionOriginal{}, accept),
		mark(rules.SkuidCmp{Op: rules.Lt, UID: 1000}, accept),
		mark(rules.SkuidInSet{Set: rules.ExemptSet}, accept),
	}}
	in := &rules.Chain{Name: "input", Hook: rules.HookInput, Rules: []rules.Rule{
		mark(rules.Loopback{}, accept),
		mark(rules.CtStateNotNew{}, accept),
	}}
	for _, p := range protos {
		for k := uint32(0); k < rules.Shards; k++ {
			out.Rules = append(out.Rules, mark(rules.SkuidMask{Mask: rules.Shards - 1, Value: k}, rules.SkuidSportInSet{Proto: p, Set: rules.PortsSet(p, k)}, accept))
		}
		in.Rules = append(in.Rules, mark(rules.DportRange{Proto: p, Lo: lo, Hi: zoneHi}, rules.DportNotInSet{Proto: p, Set: rules.OpenSet(p)},
			rules.Counter{}, rules.Verdict{Kind: rules.RejectTCPReset}))
	}
	for _, p := range protos {
		out.Rules = append(out.Rules, mark(rules.L4Proto{Proto: p}, rules.CtDirectionReply{}, rules.SkuidCmp{Op: rules.Ge, UID: 1000},
			rules.Counter{}, rules.Verdict{Kind: rules.Drop}))
	}
	rs.Chains = []*rules.Chain{out, in}
	return rs
}

// BenchmarkEncodeBatch50k turns the plan of a full apply of 50,000 accounts
// into the buffer it sends (buildBatch, encode, marshalBatch): everything
// Apply does before the batch reaches a socket.
func BenchmarkEncodeBatch50k(b *testing.B) {
	msgs, bytes := benchEncode(b, rules.SyncExact(nil, benchTable(benchAccounts, false)).Plan)
	b.ReportMetric(float64(msgs), "msgs/op")
	b.ReportMetric(float64(bytes), "batch-bytes/op")
}

// benchEncode runs b's loop over what Apply does with p before the socket
// and returns the messages and bytes of the batch.
func benchEncode(b *testing.B, p *rules.Plan) (msgs, bytes int) {
	b.ReportAllocs()
	for b.Loop() {
		bt, err := buildBatch(p, 0)
		if err != nil {
			b.Fatal(err)
		}
		ms, fill, err := encode(bt.ops)
		if err != nil {
			b.Fatal(err)
		}
		buf, _, _ := marshalBatch(ms, fill, bt.bytes+64*len(bt.ops), 1)
		msgs, bytes = len(ms), len(buf)
	}
	return msgs, bytes
}

// BenchmarkEncodeBatchOneAccount50k encodes a one-account change against a
// table of 50,000 accounts: its cost must not depend on the table's size.
func BenchmarkEncodeBatchOneAccount50k(b *testing.B) {
	msgs, _ := benchEncode(b, rules.SyncExact(benchTable(benchAccounts, false), benchTable(benchAccounts, true)).Plan)
	b.ReportMetric(float64(msgs), "msgs/op")
}

// BenchmarkDecodeElements50k decodes a 50,000-element uid . port interval
// set from its kernel form: the element half of reading the table back.
func BenchmarkDecodeElements50k(b *testing.B) {
	// All shards' elements in one set: 50,000 of them.
	s := &rules.Set{Name: "ports", Key: rules.KeyUIDPort, Interval: true, Elements: rules.Accounts(benchTable(benchAccounts, false))[rules.TCP]}
	kes := kelems(encodeElements(s, s.Elements))
	b.ReportAllocs()
	for b.Loop() {
		es, err := decodeElements(s, kes)
		if err != nil {
			b.Fatal(err)
		}
		if len(es) != benchAccounts {
			b.Fatalf("decoded %d elements, want %d", len(es), benchAccounts)
		}
	}
}
