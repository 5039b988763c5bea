//go:build linux

package kernel

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

// The socket's UID (meta skuid): compared by value, masked (the shard of an
// account), looked up alone or concatenated with the source port, and
// written with the source port into a dynamic set.
//
// nft converts the UID to network byte order (skuidHton) for ordering
// comparisons and for interval keys (the concatenations with a port range);
// for a hash lookup, a mask and a dynamic set key it stays in host order.

func encodeSkuidCmp(w *ruleEncoder, s rules.SkuidCmp) error {
	op := expr.CmpOpLt
	if s.Op == rules.Ge {
		op = expr.CmpOpGte
	} else if s.Op != rules.Lt {
		return fmt.Errorf("skuid comparison: unknown operator %d", s.Op)
	}
	w.add(skuidHton()...)
	w.add(&expr.Cmp{Op: op, Register: reg1, Data: binaryutil.BigEndian.PutUint32(s.UID)})
	return nil
}

func encodeSkuidMask(w *ruleEncoder, s rules.SkuidMask) {
	// The UID stays in host byte order: nft converts it only
	// for ordering comparisons and interval keys.
	w.add(
		&expr.Meta{Key: expr.MetaKeySKUID, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(s.Mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(s.Value)})
}

func encodeSkuidInSet(w *ruleEncoder, s rules.SkuidInSet) {
	w.add(
		&expr.Meta{Key: expr.MetaKeySKUID, Register: reg1},
		&expr.Lookup{SourceRegister: reg1, SetName: s.Set, Invert: s.Not})
}

func encodeSkuidSportInSet(w *ruleEncoder, s rules.SkuidSportInSet) {
	w.dep(s.Proto)
	w.add(skuidHton()...)
	w.add(
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1word2, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Lookup{SourceRegister: reg1, SetName: s.Set})
}

func encodeUpdateSet(w *ruleEncoder, s rules.UpdateSet) {
	// The key is loaded without byteorder conversion: nft only
	// converts a UID to network order for interval lookups.
	w.dep(s.Proto)
	w.add(
		&expr.Meta{Key: expr.MetaKeySKUID, Register: reg1},
		&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1word2, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Dynset{SrcRegKey: reg1, SetName: s.Set, Operation: unix.NFT_DYNSET_OP_UPDATE})
}

// decodeSkuid decodes the statements that start by loading the socket's
// UID. proto is the transport protocol matched earlier in the rule: the
// ones with a source port need it.
func decodeSkuid(e *expr.Meta, es []expr.Any, proto rules.Proto) (rules.Stmt, int) {
	if e.Key != expr.MetaKeySKUID || e.Register != reg1 || len(es) < 2 {
		return nil, 0
	}
	if l, ok := es[1].(*expr.Lookup); ok && l.SourceRegister == reg1 && !l.IsDestRegSet {
		return rules.SkuidInSet{Set: l.SetName, Not: l.Invert}, 2
	}
	if b, ok := es[1].(*expr.Bitwise); ok && len(es) >= 3 && b.SourceRegister == reg1 && b.DestRegister == reg1 &&
		b.Len == 4 && len(b.Mask) == 4 && bytes.Equal(b.Xor, make([]byte, 4)) {
		if c, ok := es[2].(*expr.Cmp); ok && c.Op == expr.CmpOpEq && c.Register == reg1 && len(c.Data) == 4 {
			return rules.SkuidMask{Mask: binary.NativeEndian.Uint32(b.Mask), Value: binary.NativeEndian.Uint32(c.Data)}, 3
		}
	}
	if proto != "" && len(es) >= 3 && isSport(es[1]) {
		if d, ok := es[2].(*expr.Dynset); ok && isUpdate(d) {
			return rules.UpdateSet{Proto: proto, Set: d.SetName}, 3
		}
	}
	if !isHton(es[1]) {
		return nil, 0
	}
	rest := es[2:]
	const n = 2 // meta skuid, hton
	if len(rest) >= 1 {
		if c, ok := rest[0].(*expr.Cmp); ok && c.Register == reg1 && len(c.Data) == 4 {
			uid := binary.BigEndian.Uint32(c.Data)
			switch c.Op {
			case expr.CmpOpLt:
				return rules.SkuidCmp{Op: rules.Lt, UID: uid}, n + 1
			case expr.CmpOpGte:
				return rules.SkuidCmp{Op: rules.Ge, UID: uid}, n + 1
			}
		}
	}
	if proto != "" && len(rest) >= 2 {
		if isSport(rest[0]) {
			if l, ok := rest[1].(*expr.Lookup); ok && l.SourceRegister == reg1 && !l.Invert && !l.IsDestRegSet {
				return rules.SkuidSportInSet{Proto: proto, Set: l.SetName}, n + 2
			}
		}
	}
	return nil, 0
}

// skuidHton loads the socket's UID and converts it to network byte order, as
// nft does before comparing it by value or concatenating it.
func skuidHton() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: reg1},
		&expr.Byteorder{SourceRegister: reg1, DestRegister: reg1, Op: expr.ByteorderHton, Len: 4, Size: 4},
	}
}

func isHton(e expr.Any) bool {
	b, ok := e.(*expr.Byteorder)
	return ok && *b == expr.Byteorder{SourceRegister: reg1, DestRegister: reg1, Op: expr.ByteorderHton, Len: 4, Size: 4}
}

// isSport is the source port loaded into the second word of reg 1, for a
// concatenation after the UID.
func isSport(e expr.Any) bool {
	p, ok := e.(*expr.Payload)
	return ok && *p == expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1word2, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2}
}

// isUpdate is a dynset update keyed by reg 1. The kernel reports the set's
// counter template as the dynset's expression; nftpol writes none.
func isUpdate(d *expr.Dynset) bool {
	if d.SrcRegKey != reg1 || d.SrcRegData != 0 || d.Operation != unix.NFT_DYNSET_OP_UPDATE || d.Timeout != 0 || d.Invert {
		return false
	}
	for _, x := range d.Exprs {
		if _, ok := x.(*expr.Counter); !ok {
			return false
		}
	}
	return true
}
