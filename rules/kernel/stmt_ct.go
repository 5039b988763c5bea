//go:build linux

package kernel

import (
	"fmt"
	"slices"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"

	"github.com/nftpol/nftpol/rules"
)

// Conntrack: a ct key loaded into reg 1 and compared with a constant. One
// table serves both directions.

// ctStateNew is NF_CT_STATE_BIT(IP_CT_NEW) as seen by `ct state`.
const ctStateNew = 1 << 3

// ctDirOriginal is IP_CT_DIR_ORIGINAL, the value `ct direction original` loads.
const ctDirOriginal = 0

// ctDirReply is IP_CT_DIR_REPLY.
const ctDirReply = 1

var ctMatches = []struct {
	stmt rules.Stmt
	key  expr.CtKey
	op   expr.CmpOp
	data []byte
}{
	{rules.CtDirectionOriginal{}, expr.CtKeyDIRECTION, expr.CmpOpEq, []byte{ctDirOriginal}},
	{rules.CtDirectionReply{}, expr.CtKeyDIRECTION, expr.CmpOpEq, []byte{ctDirReply}},
	{rules.CtStateNotNew{}, expr.CtKeySTATE, expr.CmpOpNeq, binaryutil.NativeEndian.PutUint32(ctStateNew)},
}

// encodeCt encodes s, one of the statements of ctMatches.
func encodeCt(w *ruleEncoder, s rules.Stmt) error {
	for _, m := range ctMatches {
		if m.stmt == s {
			w.add(
				&expr.Ct{Key: m.key, Register: reg1},
				&expr.Cmp{Op: m.op, Register: reg1, Data: slices.Clone(m.data)})
			return nil
		}
	}
	return fmt.Errorf("statement %q cannot be written to the kernel", s)
}

func decodeCt(e *expr.Ct, es []expr.Any) (rules.Stmt, int) {
	if e.Register != reg1 || e.SourceRegister || len(es) < 2 {
		return nil, 0
	}
	for _, m := range ctMatches {
		if e.Key == m.key && isCmp(es[1], m.op, m.data) {
			return m.stmt, 2
		}
	}
	return nil, 0
}
