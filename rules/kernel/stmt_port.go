//go:build linux

package kernel

import (
	"encoding/binary"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"

	"github.com/nftpol/nftpol/rules"
)

// The transport protocol (meta l4proto) and the destination port: a range,
// or a lookup in a set of ports. A port match depends on its protocol
// match, which encodeRule writes once per rule (ruleEncoder.dep) and
// decodeStmt takes together with the statement that follows it.

// l4proto decodes a transport protocol match, of TCP or UDP.
func l4proto(es []expr.Any) (rules.Proto, bool) {
	if len(es) < 2 {
		return "", false
	}
	m, ok := es[0].(*expr.Meta)
	if !ok || m.Key != expr.MetaKeyL4PROTO || m.Register != reg1 || m.SourceRegister {
		return "", false
	}
	for _, p := range rules.Protos {
		if isCmp(es[1], expr.CmpOpEq, []byte{p.Number()}) {
			return p, true
		}
	}
	return "", false
}

func encodeDportRange(w *ruleEncoder, s rules.DportRange) {
	w.dep(s.Proto)
	w.add(dport(),
		&expr.Cmp{Op: expr.CmpOpGte, Register: reg1, Data: binaryutil.BigEndian.PutUint16(s.Lo)},
		&expr.Cmp{Op: expr.CmpOpLte, Register: reg1, Data: binaryutil.BigEndian.PutUint16(s.Hi)})
}

func encodeDportNotInSet(w *ruleEncoder, s rules.DportNotInSet) {
	w.dep(s.Proto)
	w.add(dport(), &expr.Lookup{SourceRegister: reg1, SetName: s.Set, Invert: true})
}

// decodeDport decodes the port matches; proto is the transport protocol
// matched earlier in the rule, without which they are not ours.
func decodeDport(e *expr.Payload, es []expr.Any, proto rules.Proto) (rules.Stmt, int) {
	if proto == "" || *e != *dport() || len(es) < 2 {
		return nil, 0
	}
	if l, ok := es[1].(*expr.Lookup); ok && l.SourceRegister == reg1 && l.Invert && !l.IsDestRegSet {
		return rules.DportNotInSet{Proto: proto, Set: l.SetName}, 2
	}
	if len(es) >= 3 {
		lo, ok1 := cmpData(es[1], expr.CmpOpGte, 2)
		hi, ok2 := cmpData(es[2], expr.CmpOpLte, 2)
		if ok1 && ok2 {
			return rules.DportRange{Proto: proto, Lo: binary.BigEndian.Uint16(lo), Hi: binary.BigEndian.Uint16(hi)}, 3
		}
	}
	return nil, 0
}

// dport loads the destination port into reg 1.
func dport() *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
}
