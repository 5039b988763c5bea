//go:build linux

package kernel

import (
	"bytes"
	"fmt"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"

	"github.com/nftpol/nftpol/rules"
)

// A rule is a list of statements; each statement is a short run of
// expressions. The encoding and decoding of each statement sit side by side
// in the stmt_*.go files (encodeX next to decodeX); this file dispatches to
// them. A new statement takes an encoder and a decoder there and one case in
// each of encodeRule and decodeStmt.
//
// The encodings mirror what nft 1.0.6 generates for the same text (compare
// `nft --debug=netlink -f` of an export), so that `nft list`, the
// independent reader we test against, prints our table as we render it.

// Registers: reg 1 is the first 16-byte register; concatenations use the
// 4-byte register view, where reg 9 is the second word of reg 1.
const (
	reg1      = 1
	reg1word2 = 9
)

// ruleEncoder collects the expressions of one rule.
type ruleEncoder struct {
	out   []expr.Any
	proto rules.Proto // transport protocol already matched in this rule
}

func (w *ruleEncoder) add(es ...expr.Any) { w.out = append(w.out, es...) }

// dep matches the transport protocol p, unless the rule already matched it:
// the dependency of a port match, as nft writes it.
func (w *ruleEncoder) dep(p rules.Proto) {
	if w.proto == p {
		return
	}
	w.add(
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{p.Number()}})
	w.proto = p
}

func encodeRule(r rules.Rule) ([]expr.Any, error) {
	var w ruleEncoder
	for _, s := range r.Stmts {
		var err error
		switch s := s.(type) {
		case rules.Loopback:
			encodeLoopback(&w, s)
		case rules.CtDirectionOriginal, rules.CtDirectionReply, rules.CtStateNotNew:
			err = encodeCt(&w, s)
		case rules.SkuidCmp:
			err = encodeSkuidCmp(&w, s)
		case rules.SkuidMask:
			encodeSkuidMask(&w, s)
		case rules.SkuidInSet:
			encodeSkuidInSet(&w, s)
		case rules.L4Proto:
			w.dep(s.Proto)
		case rules.SkuidSportInSet:
			encodeSkuidSportInSet(&w, s)
		case rules.DportRange:
			encodeDportRange(&w, s)
		case rules.DportNotInSet:
			encodeDportNotInSet(&w, s)
		case rules.Counter:
			w.add(&expr.Counter{})
		case rules.UpdateSet:
			encodeUpdateSet(&w, s)
		case rules.UpdateSetTransport:
			w.add(encodeUpdateTransport(s)...)
		case rules.L4ProtoNot:
			w.add(encodeL4ProtoNot(s)...)
		case rules.Limit:
			err = encodeLimit(&w, s)
		case rules.Log:
			encodeLog(&w, s)
		case rules.Verdict:
			err = encodeVerdict(&w, s)
		default:
			return nil, fmt.Errorf("statement %q cannot be written to the kernel", s)
		}
		if err != nil {
			return nil, err
		}
	}
	return w.out, nil
}

// modulesFor names the kernel modules the statements of r need beyond
// nf_tables itself (whose core holds cmp, payload, lookup, dynset, counter,
// immediate and byteorder), in a stable order.
func modulesFor(r rules.Rule) []string {
	need := map[string]bool{}
	for _, s := range r.Stmts {
		switch s := s.(type) {
		case rules.CtDirectionOriginal, rules.CtDirectionReply, rules.CtStateNotNew:
			need["nft_ct"] = true
		case rules.Limit:
			need["nft_limit"] = true
		case rules.Log:
			need["nft_log"] = true
		case rules.Verdict:
			if s.Kind == rules.RejectTCPReset || s.Kind == rules.RejectPortUnreachable {
				need["nft_reject_inet"] = true
			}
		}
	}
	var out []string
	for _, m := range []string{"nft_ct", "nft_limit", "nft_log", "nft_reject_inet"} {
		if need[m] {
			out = append(out, m)
		}
	}
	return out
}

func ruleUserData(r rules.Rule) []byte {
	if r.Comment == "" {
		return nil
	}
	return userdata.AppendString(nil, userdata.TypeComment, rules.SanitizeComment(r.Comment))
}

// decodeRule maps kernel expressions back to statements. It recognises
// exactly the encodings encodeRule writes; anything else becomes a
// rules.Unknown statement, which equals nothing, so the plan rewrites the
// chain: somebody changed nftpol's table and apply puts it back.
func decodeRule(exprs []expr.Any, ud []byte) rules.Rule {
	var r rules.Rule
	if c, ok := userdata.GetString(ud, userdata.TypeComment); ok {
		r.Comment = c
	}
	var proto rules.Proto
	for i := 0; i < len(exprs); {
		s, n, p := decodeStmt(exprs[i:], proto)
		if n == 0 {
			desc := fmt.Sprintf("%T", exprs[i])
			if o, ok := exprs[i].(opaque); ok {
				desc = o.Name
			}
			r.Stmts = append(r.Stmts, rules.Unknown{Desc: desc})
			return r
		}
		if p != "" {
			proto = p
		}
		r.Stmts = append(r.Stmts, s)
		i += n
	}
	return r
}

// decodeStmt decodes the statement at the head of es. proto is the
// transport protocol already matched earlier in the rule. It returns the
// statement, how many expressions it took (0: not recognised) and the
// protocol the statement matched, if any.
func decodeStmt(es []expr.Any, proto rules.Proto) (rules.Stmt, int, rules.Proto) {
	if len(es) == 0 {
		return nil, 0, ""
	}
	// A transport protocol match, possibly the dependency of what follows.
	if p, ok := l4proto(es); ok {
		rest := es[2:]
		if s, n, _ := decodeStmt(rest, p); n > 0 {
			switch s := s.(type) {
			case rules.SkuidSportInSet, rules.DportRange, rules.DportNotInSet, rules.UpdateSet:
				return s, n + 2, p
			}
		}
		return rules.L4Proto{Proto: p}, 2, p
	}
	var s rules.Stmt
	n := 0
	switch e := es[0].(type) {
	case *expr.Meta:
		if t, ok := isUpdateTransport(es); ok {
			return t, 4, ""
		}
		if t, ok := isL4ProtoNot(es); ok {
			return t, 2, ""
		}
		if s, n = decodeLoopback(e, es); n == 0 {
			s, n = decodeSkuid(e, es, proto)
		}
	case *expr.Ct:
		s, n = decodeCt(e, es)
	case *expr.Payload:
		s, n = decodeDport(e, es, proto)
	case *expr.Counter:
		s, n = rules.Counter{}, 1
	case *expr.Limit:
		s, n = decodeLimit(e)
	case *expr.Log:
		s, n = decodeLog(e)
	case *expr.Verdict:
		s, n = decodeVerdict(e)
	case *expr.Reject:
		s, n = decodeReject(e)
	}
	return s, n, ""
}

func isCmp(e expr.Any, op expr.CmpOp, data []byte) bool {
	c, ok := e.(*expr.Cmp)
	return ok && c.Op == op && c.Register == reg1 && bytes.Equal(c.Data, data)
}

func cmpData(e expr.Any, op expr.CmpOp, n int) ([]byte, bool) {
	c, ok := e.(*expr.Cmp)
	if !ok || c.Op != op || c.Register != reg1 || len(c.Data) != n {
		return nil, false
	}
	return c.Data, true
}
