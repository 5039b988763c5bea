package kernel

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

// transportRules are the rules the compiler writes for the transports no
// account is granted.
func transportRules() []rules.Rule {
	guard := []rules.Stmt{rules.CtDirectionReply{}, rules.SkuidCmp{Op: rules.Ge, UID: 1000}}
	return []rules.Rule{
		{Stmts: append(guard[:2:2], rules.UpdateSetTransport{Set: "other_violations"})},
		{Stmts: append(guard[:2:2], rules.Counter{}, rules.Verdict{Kind: rules.Drop})},
		{Stmts: []rules.Stmt{rules.DportRange{Proto: rules.UDPLite, Lo: 40010, Hi: 49999}, rules.Counter{}, rules.Verdict{Kind: rules.RejectPortUnreachable}}},
		{Stmts: []rules.Stmt{rules.DportRange{Proto: rules.SCTP, Lo: 40010, Hi: 49999}, rules.Counter{}, rules.Verdict{Kind: rules.Drop}}},
		{Stmts: []rules.Stmt{rules.DportRange{Proto: rules.DCCP, Lo: 40010, Hi: 49999}, rules.Counter{}, rules.Verdict{Kind: rules.Drop}}},
		{Stmts: []rules.Stmt{rules.L4Proto{Proto: rules.UDPLite}, rules.UpdateSetTransport{Set: "v"}}},
		{Stmts: []rules.Stmt{rules.L4ProtoNot{Proto: rules.TCP}, rules.L4ProtoNot{Proto: rules.UDP}, rules.L4ProtoNot{Proto: rules.ICMP},
			rules.L4ProtoNot{Proto: rules.ICMPv6}, rules.SkuidCmp{Op: rules.Ge, UID: 1000}, rules.SkuidInSet{Set: "exempt", Not: true},
			rules.UpdateSetTransport{Set: "other_violations"}, rules.Counter{}, rules.Verdict{Kind: rules.Drop}}},
		{Stmts: []rules.Stmt{rules.L4ProtoNot{Proto: rules.SCTP}, rules.L4Proto{Proto: rules.TCP}, rules.Verdict{Kind: rules.Accept}}},
	}
}

// TestEncodeTransportsAsNft: the expressions are the ones nft 1.0.6 lists
// with --debug=netlink for the same text (captured in a throwaway network
// namespace):
//
//	ct direction reply meta skuid >= 1000 update @other_violations { meta skuid . meta l4proto . th sport }
//	  [ ct load direction => reg 1 ]
//	  [ cmp eq reg 1 0x00000001 ]
//	  [ meta load skuid => reg 1 ]
//	  [ byteorder reg 1 = hton(reg 1, 4, 4) ]
//	  [ cmp gte reg 1 0xe8030000 ]
//	  [ meta load skuid => reg 1 ]
//	  [ meta load l4proto => reg 9 ]
//	  [ payload load 2b @ transport header + 0 => reg 10 ]
//	  [ dynset update reg_key 1 set other_violations ]
//	udplite dport 40010-49999 counter reject
//	  [ meta load l4proto => reg 1 ]
//	  [ cmp eq reg 1 0x00000088 ]
//	  [ payload load 2b @ transport header + 2 => reg 1 ]
//	  [ cmp gte reg 1 0x00004a9c ]
//	  [ cmp lte reg 1 0x00004fc3 ]
//	  [ counter pkts 0 bytes 0 ]
//	  [ reject type 2 code 1 ]
//	sctp dport 40010-49999 ...: the same with 0x00000084; dccp with 0x00000021.
func TestEncodeTransportsAsNft(t *testing.T) {
	got, err := encodeRule(transportRules()[0])
	if err != nil {
		t.Fatal(err)
	}
	want := []expr.Any{
		&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{1}},
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		&expr.Byteorder{SourceRegister: 1, DestRegister: 1, Op: expr.ByteorderHton, Len: 4, Size: 4},
		&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: []byte{0, 0, 0x03, 0xe8}},
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 9},
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 10, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Dynset{SrcRegKey: 1, SetName: "other_violations", Operation: unix.NFT_DYNSET_OP_UPDATE},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("update @other_violations encodes as\n%s\nwant\n%s", exprList(got), exprList(want))
	}
	// meta l4proto != tcp meta l4proto != udp meta l4proto != icmp meta l4proto != ipv6-icmp
	//   [ meta load l4proto => reg 1 ] [ cmp neq reg 1 0x00000006 ] ... 0x11, 0x01, 0x3a
	got, err = encodeRule(transportRules()[6])
	if err != nil {
		t.Fatal(err)
	}
	for i, num := range []byte{6, 17, 1, 58} {
		w := []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{num}}}
		if !reflect.DeepEqual(got[2*i:2*i+2], w) {
			t.Errorf("meta l4proto != %d encodes as\n%s", num, exprList(got[2*i:2*i+2]))
		}
	}
	for i, num := range []byte{0x88, 0x84, 0x21} {
		got, err := encodeRule(transportRules()[2+i])
		if err != nil {
			t.Fatal(err)
		}
		want := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{num}},
			&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: []byte{0x9c, 0x4a}},
			&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: []byte{0xc3, 0x4f}},
			&expr.Counter{},
		}
		if !reflect.DeepEqual(got[:len(want)], want) {
			t.Errorf("%s encodes as\n%s\nwant\n%s", transportRules()[2+i], exprList(got), exprList(want))
		}
	}
}

func exprList(es []expr.Any) string {
	s := ""
	for _, e := range es {
		s += fmt.Sprintf("  %T %+v\n", e, e)
	}
	return s
}

// TestTransportRulesRoundTrip: as TestRuleRoundTrip, for the new statements.
func TestTransportRulesRoundTrip(t *testing.T) {
	for _, r := range transportRules() {
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
	// The l4proto of the record goes to reg 9: loaded into reg 1, it is a
	// protocol match of somebody else's, not the record.
	bad := []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: 10, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Dynset{SrcRegKey: 1, SetName: "other_violations", Operation: unix.NFT_DYNSET_OP_UPDATE},
	}
	if got := decodeRule(bad, nil); got.Equal(rules.Rule{Stmts: []rules.Stmt{rules.UpdateSetTransport{Set: "other_violations"}}}) {
		t.Errorf("a record with the protocol in reg 1 decoded as ours: %s", got)
	}
}

// TestTransportSet: the violation set of the other transports is created
// as nft creates `type uid . inet_proto . inet_service` (nft --debug=mnl:
// key type 0x0001830d, key length 12, flags dynamic|timeout, no concat
// flag), and reads back as the same model set.
func TestTransportSet(t *testing.T) {
	s := &rules.Set{Name: "other_violations", Key: rules.KeyUIDProtoPort, Dynamic: true, Timeout: time.Hour, Size: 65536, Counter: true, Comment: "nftpol: x"}
	ns, err := encodeSet(&nftables.Table{Name: "nftpol", Family: nftables.TableFamilyINet}, s)
	if err != nil {
		t.Fatal(err)
	}
	if ns.KeyType.GetNFTMagic() != 0x0001830d || ns.KeyType.Bytes != 12 || ns.Concatenation || ns.Interval || !ns.Dynamic || !ns.HasTimeout {
		t.Errorf("set encodes as magic %#x, %d bytes, concat %v, interval %v, dynamic %v, timeout %v",
			ns.KeyType.GetNFTMagic(), ns.KeyType.Bytes, ns.Concatenation, ns.Interval, ns.Dynamic, ns.HasTimeout)
	}
	got := decodeSet(kset{name: s.Name, flags: unix.NFT_SET_EVAL | unix.NFT_SET_TIMEOUT, keyType: 0x0001830d,
		hasTimeout: true, timeout: time.Hour, size: 65536, comment: s.Comment, counter: true})
	if !got.SameDefinition(s) {
		t.Errorf("decoded %+v, want %+v", got, s)
	}
	// With the concat flag nft would make it a pipapo set: not ours.
	if got := decodeSet(kset{name: s.Name, flags: unix.NFT_SET_EVAL | unix.NFT_SET_TIMEOUT | nftSetConcat, keyType: 0x0001830d, hasTimeout: true}); got.Key != 0 {
		t.Errorf("a concat-flagged set decoded with key %s", got.Key)
	}
}

// TestTransportHit: an element as the packet path adds it (UID in host
// order, protocol byte, port in network order) names the protocol.
func TestTransportHit(t *testing.T) {
	key := make([]byte, 12)
	copy(key, binaryutil.NativeEndian.PutUint32(1001))
	key[4] = 136
	binary.BigEndian.PutUint16(key[8:], 8090)
	got := transportHit(nftables.SetElement{Key: key, Expires: time.Minute, Counter: &expr.Counter{Packets: 3, Bytes: 120}})
	want := Hit{UID: 1001, Proto: "udplite", Port: 8090, Packets: 3, Bytes: 120, Expires: time.Minute}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	for n, name := range map[uint8]string{6: "tcp", 17: "udp", 132: "sctp", 33: "dccp", 1: "icmp", 58: "ipv6-icmp", 47: "47"} {
		if got := rules.ProtoName(n); got != name {
			t.Errorf("ProtoName(%d) = %q, want %q", n, got, name)
		}
	}
}
