//go:build linux

package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

// bigRuleset has n accounts with one port range each, labelled with names
// of realistic length, so the element lists are as large as they get.
func bigRuleset(n int) *rules.Ruleset {
	ports := &rules.Set{Name: "tcp_ports", Key: rules.KeyUIDPort, Interval: true}
	open := &rules.Set{Name: rules.OpenSet(rules.TCP), Key: rules.KeyPort, Interval: true}
	for i := 0; i < n; i++ {
		lo := uint16(1 + i)
		ports.Elements = append(ports.Elements, rules.Element{UID: uint32(100000 + i), Lo: lo, Hi: lo, Comment: fmt.Sprintf("customer-account-%06d", i)})
	}
	// Non-adjacent single ports, the worst case for an rbtree set: a start
	// and an end element each.
	for i := 0; i < n && 2*i+2 < 0xffff; i++ {
		p := uint16(2*i + 1)
		open.Elements = append(open.Elements, rules.Element{Lo: p, Hi: p})
	}
	return &rules.Ruleset{Table: "nftpol", Sets: []*rules.Set{ports, open}}
}

// recordBatch applies p through a fake netlink dial and returns the
// messages the kernel would have received.
func recordBatch(t *testing.T, p *rules.Plan) ([]netlink.Message, Stats) {
	t.Helper()
	var got []netlink.Message
	k, err := Open(WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		got = append(got, req...)
		// Acknowledge every message, as the kernel does on success.
		var acks []netlink.Message
		for _, m := range req {
			acks = append(acks, netlink.Message{
				Header: netlink.Header{Type: netlink.Error, Sequence: m.Header.Sequence, PID: m.Header.PID},
				Data:   make([]byte, 4),
			})
		}
		return acks, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	st, err := k.Apply(p, 0)
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return got, st
}

// TestElementListsFitNetlinkAttributes proves the 16-bit attribute length
// limit is respected: google/nftables puts all elements of one call into
// one attribute, and past 65,535 bytes its length wraps silently. Every
// element must arrive, in attributes that each fit.
func TestElementListsFitNetlinkAttributes(t *testing.T) {
	const n = 50000
	rs := bigRuleset(n)
	msgs, st := recordBatch(t, rules.SyncExact(nil, rs).Plan)

	elems := map[string]int{}
	elemMsgs := 0
	for _, m := range msgs {
		if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8|unix.NFT_MSG_NEWSETELEM) {
			continue
		}
		elemMsgs++
		set, count := "", 0
		ad, err := netlink.NewAttributeDecoder(m.Data[4:]) // after nfgenmsg
		if err != nil {
			t.Fatal(err)
		}
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_SET_ELEM_LIST_SET:
				set = ad.String()
			case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
				if l := len(ad.Bytes()) + 4; l > 65535 {
					t.Errorf("element list attribute of %d bytes exceeds 65535", l)
				}
				inner, err := netlink.NewAttributeDecoder(ad.Bytes())
				if err != nil {
					t.Fatal(err)
				}
				for inner.Next() {
					count++
				}
				if err := inner.Err(); err != nil {
					t.Fatalf("decoding element list: %v", err)
				}
			}
		}
		if err := ad.Err(); err != nil {
			t.Fatalf("decoding message: %v", err)
		}
		elems[set] += count
	}
	wantOpen := 2 * len(rs.Set("tcp_open").Elements)
	if elems["tcp_ports"] != n || elems["tcp_open"] != wantOpen {
		t.Errorf("elements sent: %v, want tcp_ports=%d tcp_open=%d", elems, n, wantOpen)
	}
	if elemMsgs < 2 {
		t.Errorf("expected the element lists to be split across messages, got %d", elemMsgs)
	}
	if st.Elements != n+wantOpen {
		t.Errorf("Stats.Elements = %d, want %d", st.Elements, n+wantOpen)
	}
	if st.Messages != len(msgs)-2 { // minus batch begin and end
		t.Errorf("Stats.Messages = %d, batch held %d messages", st.Messages, len(msgs)-2)
	}
}

// TestChunkElementsBoundary checks the split right at the limit.
func TestChunkElementsBoundary(t *testing.T) {
	e := nftables.SetElement{Key: make([]byte, 8), KeyEnd: make([]byte, 8)}
	per := maxElemsAttr / elementSize(e)
	es := make([]nftables.SetElement, per+1)
	for i := range es {
		es[i] = e
	}
	chunks := chunk(es, elementSize)
	if len(chunks) != 2 || len(chunks[0]) != per || len(chunks[1]) != 1 {
		t.Errorf("chunks of %d elements: got %d chunks", len(es), len(chunks))
	}
	if got := chunk(es[:per], elementSize); len(got) != 1 {
		t.Errorf("%d elements that fit: got %d chunks", per, len(got))
	}
}

func sampleRules() []rules.Rule {
	acc := rules.Verdict{Kind: rules.Accept}
	return []rules.Rule{
		{Stmts: []rules.Stmt{rules.Loopback{Out: true}, acc}, Comment: rules.OwnerPrefix + "loopback"},
		{Stmts: []rules.Stmt{rules.Loopback{}, acc}},
		{Stmts: []rules.Stmt{rules.CtDirectionOriginal{}, acc}},
		{Stmts: []rules.Stmt{rules.CtStateNotNew{}, acc}},
		{Stmts: []rules.Stmt{rules.SkuidCmp{Op: rules.Lt, UID: 1000}, acc}},
		{Stmts: []rules.Stmt{rules.SkuidInSet{Set: "exempt"}, acc}},
		{Stmts: []rules.Stmt{rules.SkuidInSet{Set: "tcp_moved"}, rules.SkuidSportInSet{Proto: rules.TCP, Set: "tcp_moved_ports"}, acc}},
		{Stmts: []rules.Stmt{rules.SkuidInSet{Set: "tcp_moved", Not: true}, rules.SkuidSportInSet{Proto: rules.TCP, Set: "tcp_ports"}, acc}},
		{Stmts: []rules.Stmt{rules.SkuidSportInSet{Proto: rules.TCP, Set: "tcp_ports"}, acc}},
		{Stmts: []rules.Stmt{rules.SkuidMask{Mask: 7, Value: 3}, rules.SkuidInSet{Set: "tcp_moved", Not: true}, rules.SkuidSportInSet{Proto: rules.TCP, Set: "tcp_ports_3"}, acc}},
		{Stmts: []rules.Stmt{rules.SkuidMask{Mask: 7, Value: 0}, rules.SkuidSportInSet{Proto: rules.UDP, Set: "udp_ports_0"}, acc}},
		{Stmts: []rules.Stmt{rules.SkuidMask{Mask: 0xffff0000, Value: 0x10000}, acc}},
		{Stmts: []rules.Stmt{rules.SkuidSportInSet{Proto: rules.UDP, Set: "udp_ports"}, acc}},
		{Stmts: []rules.Stmt{rules.L4Proto{Proto: rules.TCP}, rules.CtDirectionReply{}, rules.SkuidCmp{Op: rules.Ge, UID: 1000}, rules.Counter{}, rules.Verdict{Kind: rules.RejectTCPReset}}},
		{Stmts: []rules.Stmt{rules.L4Proto{Proto: rules.UDP}, rules.SkuidCmp{Op: rules.Ge, UID: 0}, rules.Counter{}, rules.Verdict{Kind: rules.RejectPortUnreachable}}},
		{Stmts: []rules.Stmt{rules.DportRange{Proto: rules.TCP, Lo: 40010, Hi: 49999}, rules.DportNotInSet{Proto: rules.TCP, Set: "tcp_open"}, rules.Counter{}, rules.Verdict{Kind: rules.Drop}}},
		{Stmts: []rules.Stmt{rules.L4Proto{Proto: rules.TCP}, rules.CtDirectionReply{}, rules.Limit{Rate: 10, Unit: rules.PerMinute}, rules.Log{Prefix: "nftpol: blocked "}}},
		{Stmts: []rules.Stmt{rules.L4Proto{Proto: rules.TCP}, rules.CtDirectionReply{}, rules.Limit{Rate: 4, Unit: rules.PerSecond}, rules.Log{Prefix: "nftpol", Group: 9781}}},
		{Stmts: []rules.Stmt{rules.L4Proto{Proto: rules.UDP}, rules.CtDirectionReply{}, rules.UpdateSet{Proto: rules.UDP, Set: "udp_violations"}, rules.Counter{}, rules.Verdict{Kind: rules.Drop}}},
		{Stmts: []rules.Stmt{rules.Limit{Rate: 3, Unit: rules.PerSecond}, rules.Verdict{Kind: rules.Accept}}},
		{Stmts: []rules.Stmt{rules.DportRange{Proto: rules.UDP, Lo: 1, Hi: 65535}, rules.DportNotInSet{Proto: rules.UDP, Set: "udp_open"}, rules.Verdict{Kind: rules.RejectPortUnreachable}}},
	}
}

// TestRuleRoundTrip encodes every statement and decodes it back. Leaving
// out any single expression must break the match: the decoder accepts
// exactly what the encoder writes.
func TestRuleRoundTrip(t *testing.T) {
	for _, r := range sampleRules() {
		exprs, err := encodeRule(r)
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		if got := decodeRule(exprs, ruleUserData(r)); !got.Equal(r) {
			t.Errorf("decoded %s\n\twant %s", got, r)
		}
		for i := range exprs {
			short := append(append([]expr.Any{}, exprs[:i]...), exprs[i+1:]...)
			if got := decodeRule(short, ruleUserData(r)); got.Equal(r) {
				t.Errorf("%s: still decoded equal without expression %d (%T)", r, i, exprs[i])
			}
		}
	}
}

// TestDecodeForeignRule: expressions nftpol never writes must not decode
// into something that equals one of its rules.
func TestDecodeForeignRule(t *testing.T) {
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.LittleEndian.AppendUint32(nil, 1001)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}
	got := decodeRule(exprs, nil)
	for _, r := range sampleRules() {
		if got.Equal(r) {
			t.Errorf("foreign rule decoded as %s", r)
		}
	}
	if got.Equal(got) {
		t.Errorf("a rule with unknown statements must not even equal itself: %s", got)
	}
	// A rule that ends right after a protocol match (nft add rule ...
	// meta l4proto tcp) decodes without running off the end.
	tail := decodeRule([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{6}},
	}, nil)
	if len(tail.Stmts) != 1 || tail.Stmts[0] != (rules.L4Proto{Proto: rules.TCP}) {
		t.Errorf("meta l4proto tcp alone decoded as %s", tail)
	}
	if opq := decodeRule([]expr.Any{opaque{Name: "queue"}}, nil); len(opq.Stmts) != 1 || opq.Stmts[0] != (rules.Unknown{Desc: "queue"}) {
		t.Errorf("opaque expression decoded as %s", opq)
	}
}

func TestElementRoundTrip(t *testing.T) {
	cases := []struct {
		set *rules.Set
		es  []rules.Element
	}{
		{&rules.Set{Name: "p", Key: rules.KeyUIDPort, Interval: true}, []rules.Element{
			{UID: 1001, Lo: 40010, Hi: 40019, Comment: "alpha"}, {UID: 1001, Lo: 40500, Hi: 40500, Comment: "alpha"}, {UID: 4294967294, Lo: 1, Hi: 65535},
		}},
		{&rules.Set{Name: "o", Key: rules.KeyPort, Interval: true}, []rules.Element{
			{Lo: 1, Hi: 1}, {Lo: 40010, Hi: 40029}, {Lo: 40030 + 1, Hi: 40040}, {Lo: 65000, Hi: 65535},
		}},
		{&rules.Set{Name: "e", Key: rules.KeyUID}, []rules.Element{{UID: 0}, {UID: 33}, {UID: 65534}}},
	}
	for _, c := range cases {
		got, err := decodeElements(c.set, kelems(encodeElements(c.set, c.es)))
		if err != nil {
			t.Fatalf("%s: %v", c.set.Name, err)
		}
		if fmt.Sprint(got) != fmt.Sprint(rules.SortElements(c.es)) {
			t.Errorf("%s: got %v, want %v", c.set.Name, got, c.es)
		}
	}
}

// TestDecodeIntervalsAsNftWritesThem reads an rbtree set as nft 1.0.6 fills
// it: a leading end element at 0, then start/end pairs.
func TestDecodeIntervalsAsNftWritesThem(t *testing.T) {
	be := func(p uint16) []byte { return binary.BigEndian.AppendUint16(nil, p) }
	es := []nftables.SetElement{
		{Key: be(40020), IntervalEnd: true}, {Key: be(0), IntervalEnd: true}, {Key: be(40010)}, {Key: be(40500)},
	}
	s := &rules.Set{Name: "o", Key: rules.KeyPort, Interval: true}
	got, err := decodeElements(s, kelems(es))
	if err != nil {
		t.Fatal(err)
	}
	want := []rules.Element{{Lo: 40010, Hi: 40019}, {Lo: 40500, Hi: 65535}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

// TestOneAccountChangeIsElementOps: changing one account's ports sends only
// element messages, and their number does not grow with the table.
func TestOneAccountChangeIsElementOps(t *testing.T) {
	for _, n := range []int{10, 20000} {
		cur := bigRuleset(n)
		want := bigRuleset(n)
		ps := want.Set("tcp_ports")
		ps.Elements[n/2].Hi++ // widen one account's range by one port
		msgs, st := recordBatch(t, rules.SyncExact(cur, want).Plan)
		for _, m := range msgs[1 : len(msgs)-1] {
			typ := m.Header.Type & 0xff
			if typ != unix.NFT_MSG_NEWSETELEM && typ != unix.NFT_MSG_DELSETELEM {
				t.Errorf("n=%d: non-element message type %d in a one-account change", n, typ)
			}
		}
		if st.Messages != 2 {
			t.Errorf("n=%d: one-account change sent %d messages, want 2 (delete + add)", n, st.Messages)
		}
	}
}

func TestModulesFor(t *testing.T) {
	r := rules.Rule{Stmts: []rules.Stmt{rules.L4Proto{Proto: rules.TCP}, rules.CtDirectionReply{}, rules.Limit{Rate: 1, Unit: rules.PerMinute}, rules.Log{Prefix: "x"}}}
	if got := fmt.Sprint(modulesFor(r)); got != "[nft_ct nft_limit nft_log]" {
		t.Errorf("modulesFor = %s", got)
	}
	r = rules.Rule{Stmts: []rules.Stmt{rules.DportRange{Proto: rules.TCP, Lo: 1, Hi: 2}, rules.Counter{}, rules.Verdict{Kind: rules.RejectTCPReset}}}
	if got := fmt.Sprint(modulesFor(r)); got != "[nft_reject_inet]" {
		t.Errorf("modulesFor = %s", got)
	}
	e := &RefusedError{Index: 3, Count: 9, Op: "add rule 3", Err: unix.ENOENT, Modules: []string{"nft_ct"}}
	if !strings.Contains(e.Error(), "modules nft_ct are available") || !errors.Is(e, unix.ENOENT) {
		t.Errorf("RefusedError: %v", e)
	}
}

// TestReplaceBatchOrder: a rebuilt set is deleted only after the rules that
// use it are flushed, and the rules come back after the new set.
func TestReplaceBatchOrder(t *testing.T) {
	cur := bigRuleset(50)
	cur.Chains = []*rules.Chain{{Name: "output", Hook: rules.HookOutput, Rules: []rules.Rule{
		{Stmts: []rules.Stmt{rules.SkuidSportInSet{Proto: rules.TCP, Set: "tcp_ports"}, rules.Verdict{Kind: rules.Accept}}, Comment: rules.OwnerPrefix + "x"},
	}}}
	want := bigRuleset(50)
	want.Chains = cur.Chains
	want.Set("tcp_ports").Elements = want.Set("tcp_ports").Elements[20:]
	ch := rules.SyncExact(cur, want)
	order := func(p *rules.Plan) string {
		t.Helper()
		b, err := buildBatch(p, 0)
		if err != nil {
			t.Fatal(err)
		}
		var order []string
		for _, o := range b.ops {
			order = append(order, strings.Fields(o.desc)[0]+" "+strings.Fields(o.desc)[1]+" "+strings.Fields(o.desc)[2])
		}
		return strings.Join(order, ", ")
	}
	// The set is rebuilt under its other name: created and filled first,
	// in a transaction of its own that no rule reads; then the rules are
	// switched to it and the old set deleted.
	if got, want := order(ch.Plan), "flush chain output, add set tcp_ports_b, add 30 elements, delete set tcp_ports, add rule 1"; got != want {
		t.Errorf("batch order:\n%s\nwant\n%s", got, want)
	}
	txs := ch.Transactions()
	if len(txs) != 2 {
		t.Fatalf("%d transactions for a rebuild, want 2", len(txs))
	}
	if got, want := order(txs[0]), "add set tcp_ports_b, add 30 elements"; got != want {
		t.Errorf("first transaction:\n%s\nwant\n%s", got, want)
	}
	if got, want := order(txs[1]), "flush chain output, delete set tcp_ports, add rule 1"; got != want {
		t.Errorf("second transaction:\n%s\nwant\n%s", got, want)
	}
}

// TestModelElementSize: the size computed from a model element equals the
// size of what it encodes to, for every kind of set and comment length.
func TestModelElementSize(t *testing.T) {
	sets := []*rules.Set{
		{Name: "u", Key: rules.KeyUID},
		{Name: "up", Key: rules.KeyUIDPort, Interval: true},
		{Name: "p", Key: rules.KeyPort, Interval: true},
		{Name: "ph", Key: rules.KeyPort},
	}
	for _, s := range sets {
		for _, e := range []rules.Element{
			{UID: 1, Lo: 1, Hi: 1}, {UID: 2, Lo: 10, Hi: 65535, Comment: "a"}, {UID: 3, Lo: 5, Hi: 9, Comment: "abcd"},
			{UID: 4, Lo: 65535, Hi: 65535, Comment: strings.Repeat("x", 200)},
		} {
			want := 0
			for _, ke := range encodeElements(s, []rules.Element{e}) {
				want += elementSize(ke)
			}
			if got := modelElementSize(s, e); got != want {
				t.Errorf("set %s, element %+v: modelElementSize %d, encoded %d", s.Name, e, got, want)
			}
		}
	}
}

// TestShareEqualElements: sets read with the same elements share one
// slice (clipped, so an append to one never writes into the other); sets
// with other elements keep theirs.
func TestShareEqualElements(t *testing.T) {
	els := func(uids ...uint32) []rules.Element {
		out := make([]rules.Element, 0, len(uids)+4)
		for _, u := range uids {
			out = append(out, rules.Element{UID: u, Lo: 40000, Hi: 40000, Comment: "a"})
		}
		return out
	}
	tcp := &rules.Set{Name: "tcp_ports_0", Elements: els(8, 16, 24)}
	udp := &rules.Set{Name: "udp_ports_0", Elements: els(8, 16, 24)}
	other := &rules.Set{Name: "tcp_ports_1", Elements: els(9, 17, 25)}
	empty := &rules.Set{Name: "exempt"}
	shareEqualElements([]*rules.Set{tcp, other, empty, udp})
	if &tcp.Elements[0] != &udp.Elements[0] {
		t.Error("equal sets keep two slices")
	}
	if cap(udp.Elements) != len(udp.Elements) {
		t.Error("the shared slice is not clipped")
	}
	if &other.Elements[0] == &tcp.Elements[0] || other.Elements[0].UID != 9 || empty.Elements != nil {
		t.Error("sets with other elements changed")
	}
}
