//go:build linux

package kernel

// Transports no account is granted (UDP-Lite, SCTP, DCCP, any other IP
// protocol): what the kernel needs beyond the TCP and UDP encodings of
// encode.go and decode.go. The zone rules for those transports need nothing
// new (a DportRange of rules.UDPLite encodes as one of rules.UDP does, with
// the protocol's number); the violation record does: its key names the
// protocol, so that `nftpol status` can say which one an account served.

import (
	"encoding/binary"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

// reg1word3 is the third 4-byte word of reg 1, where a concatenation puts
// its third field.
const reg1word3 = 10

// uidProtoPortType is "uid . inet_proto . inet_service": 12 bytes, each
// field padded to the 4-byte register word.
var uidProtoPortType = nftables.MustConcatSetType(nftables.TypeUID, nftables.TypeInetProto, nftables.TypeInetService)

// encodeUpdateTransport is what nft 1.0.6 writes for
// `update @SET { meta skuid . meta l4proto . th sport }`
// (nft --debug=netlink):
//
//	[ meta load skuid => reg 1 ]
//	[ meta load l4proto => reg 9 ]
//	[ payload load 2b @ transport header + 0 => reg 10 ]
//	[ dynset update reg_key 1 set SET ]
//
// The UID stays in host byte order, as in UpdateSet: nft converts it only
// for ordering comparisons and interval keys. `th` implies no protocol
// match, so nothing precedes the load.
func encodeUpdateTransport(s rules.UpdateSetTransport) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: reg1},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1word2},
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1word3, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Dynset{SrcRegKey: reg1, SetName: s.Set, Operation: unix.NFT_DYNSET_OP_UPDATE},
	}
}

// encodeL4ProtoNot is nft's `meta l4proto != P`:
//
//	[ meta load l4proto => reg 1 ]
//	[ cmp neq reg 1 0x000000NN ]
func encodeL4ProtoNot(s rules.L4ProtoNot) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{s.Proto.Number()}},
	}
}

// isL4ProtoNot reports whether es starts with encodeL4ProtoNot's
// expressions for a protocol the model names.
func isL4ProtoNot(es []expr.Any) (rules.L4ProtoNot, bool) {
	if len(es) < 2 {
		return rules.L4ProtoNot{}, false
	}
	m, ok := es[0].(*expr.Meta)
	if !ok || *m != (expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1}) {
		return rules.L4ProtoNot{}, false
	}
	for _, p := range append(rules.Protos[:len(rules.Protos):len(rules.Protos)], rules.ICMP, rules.ICMPv6) {
		if isCmp(es[1], expr.CmpOpNeq, []byte{p.Number()}) {
			return rules.L4ProtoNot{Proto: p}, true
		}
	}
	return rules.L4ProtoNot{}, false
}

// isUpdateTransport reports whether es starts with encodeUpdateTransport's
// expressions, and returns the statement.
func isUpdateTransport(es []expr.Any) (rules.UpdateSetTransport, bool) {
	if len(es) < 4 {
		return rules.UpdateSetTransport{}, false
	}
	m0, ok0 := es[0].(*expr.Meta)
	m1, ok1 := es[1].(*expr.Meta)
	p, ok2 := es[2].(*expr.Payload)
	d, ok3 := es[3].(*expr.Dynset)
	if !ok0 || !ok1 || !ok2 || !ok3 ||
		*m0 != (expr.Meta{Key: expr.MetaKeySKUID, Register: reg1}) ||
		*m1 != (expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1word2}) ||
		*p != (expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1word3, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2}) ||
		!isUpdate(d) {
		return rules.UpdateSetTransport{}, false
	}
	return rules.UpdateSetTransport{Set: d.SetName}, true
}

// transportHit reads an element of a uid . inet_proto . inet_service
// dynamic set: the UID in host byte order (no hton before a hash lookup),
// the protocol in the first byte of its word, the port in network order.
func transportHit(e nftables.SetElement) Hit {
	h := Hit{
		UID:     binaryutil.NativeEndian.Uint32(e.Key[:4]),
		Proto:   rules.ProtoName(e.Key[4]),
		Port:    binary.BigEndian.Uint16(e.Key[8:10]),
		Expires: e.Expires,
	}
	if e.Counter != nil {
		h.Packets, h.Bytes = e.Counter.Packets, e.Counter.Bytes
	}
	return h
}
