//go:build linux

package kernel

import (
	"fmt"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

// Verdicts: accept and drop are immediates into the verdict register (see
// parseExpr), the two rejects a reject expression.

func encodeVerdict(w *ruleEncoder, s rules.Verdict) error {
	switch s.Kind {
	case rules.Accept:
		w.add(&expr.Verdict{Kind: expr.VerdictAccept})
	case rules.Drop:
		w.add(&expr.Verdict{Kind: expr.VerdictDrop})
	case rules.RejectTCPReset:
		w.add(&expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
	case rules.RejectPortUnreachable:
		w.add(&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})
	default:
		return fmt.Errorf("unknown verdict %d", s.Kind)
	}
	return nil
}

func decodeVerdict(e *expr.Verdict) (rules.Stmt, int) {
	switch {
	case e.Kind == expr.VerdictAccept && e.Chain == "":
		return rules.Verdict{Kind: rules.Accept}, 1
	case e.Kind == expr.VerdictDrop && e.Chain == "":
		return rules.Verdict{Kind: rules.Drop}, 1
	}
	return nil, 0
}

func decodeReject(e *expr.Reject) (rules.Stmt, int) {
	switch {
	case e.Type == unix.NFT_REJECT_TCP_RST && e.Code == 0:
		return rules.Verdict{Kind: rules.RejectTCPReset}, 1
	case e.Type == unix.NFT_REJECT_ICMPX_UNREACH && e.Code == unix.NFT_REJECT_ICMPX_PORT_UNREACH:
		return rules.Verdict{Kind: rules.RejectPortUnreachable}, 1
	}
	return nil, 0
}
