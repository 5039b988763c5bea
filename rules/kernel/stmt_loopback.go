//go:build linux

package kernel

import (
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"

	"github.com/nftpol/nftpol/rules"
)

// Loopback: iif "lo" / oif "lo", the interface index compared in reg 1.

// loIfindex is the loopback interface's index, 1 in every network namespace.
const loIfindex = 1

func encodeLoopback(w *ruleEncoder, s rules.Loopback) {
	key := expr.MetaKeyIIF
	if s.Out {
		key = expr.MetaKeyOIF
	}
	w.add(
		&expr.Meta{Key: key, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(loIfindex)})
}

func decodeLoopback(e *expr.Meta, es []expr.Any) (rules.Stmt, int) {
	if (e.Key == expr.MetaKeyIIF || e.Key == expr.MetaKeyOIF) && e.Register == reg1 && len(es) >= 2 {
		if isCmp(es[1], expr.CmpOpEq, binaryutil.NativeEndian.PutUint32(loIfindex)) {
			return rules.Loopback{Out: e.Key == expr.MetaKeyOIF}, 2
		}
	}
	return nil, 0
}
