package kernel

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

// The encodings below mirror what nft 1.0.6 generates for the same text
// (compare `nft --debug=netlink -f` of an export), so that `nft list`, the
// independent reader we test against, prints our table as we render it.

// Registers: reg 1 is the first 16-byte register; concatenations use the
// 4-byte register view, where reg 9 is the second word of reg 1.
const (
	reg1      = 1
	reg1word2 = 9
)

// ctStateNew is NF_CT_STATE_BIT(IP_CT_NEW) as seen by `ct state`.
const ctStateNew = 1 << 3

// ctDirOriginal is IP_CT_DIR_ORIGINAL, the value `ct direction original` loads.
const ctDirOriginal = 0

// ctDirReply is IP_CT_DIR_REPLY.
const ctDirReply = 1

// loIfindex is the loopback interface's index, 1 in every network namespace.
const loIfindex = 1

func encodeRule(r rules.Rule) ([]expr.Any, error) {
	var out []expr.Any
	var proto rules.Proto // transport protocol already matched in this rule
	dep := func(p rules.Proto) {
		if proto == p {
			return
		}
		out = append(out,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{p.Number()}})
		proto = p
	}
	for _, s := range r.Stmts {
		switch s := s.(type) {
		case rules.Loopback:
			key := expr.MetaKeyIIF
			if s.Out {
				key = expr.MetaKeyOIF
			}
			out = append(out,
				&expr.Meta{Key: key, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(loIfindex)})
		case rules.CtDirectionOriginal:
			out = append(out,
				&expr.Ct{Key: expr.CtKeyDIRECTION, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{ctDirOriginal}})
		case rules.CtDirectionReply:
			out = append(out,
				&expr.Ct{Key: expr.CtKeyDIRECTION, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{ctDirReply}})
		case rules.CtStateNotNew:
			out = append(out,
				&expr.Ct{Key: expr.CtKeySTATE, Register: reg1},
				&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(ctStateNew)})
		case rules.SkuidCmp:
			op := expr.CmpOpLt
			if s.Op == rules.Ge {
				op = expr.CmpOpGte
			} else if s.Op != rules.Lt {
				return nil, fmt.Errorf("skuid comparison: unknown operator %d", s.Op)
			}
			out = append(out, skuidHton()...)
			out = append(out, &expr.Cmp{Op: op, Register: reg1, Data: binaryutil.BigEndian.PutUint32(s.UID)})
		case rules.SkuidMask:
			// The UID stays in host byte order: nft converts it only
			// for ordering comparisons and interval keys.
			out = append(out,
				&expr.Meta{Key: expr.MetaKeySKUID, Register: reg1},
				&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
					Mask: binaryutil.NativeEndian.PutUint32(s.Mask), Xor: make([]byte, 4)},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(s.Value)})
		case rules.SkuidInSet:
			out = append(out,
				&expr.Meta{Key: expr.MetaKeySKUID, Register: reg1},
				&expr.Lookup{SourceRegister: reg1, SetName: s.Set, Invert: s.Not})
		case rules.L4Proto:
			dep(s.Proto)
		case rules.SkuidSportInSet:
			dep(s.Proto)
			out = append(out, skuidHton()...)
			out = append(out,
				&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1word2, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
				&expr.Lookup{SourceRegister: reg1, SetName: s.Set})
		case rules.DportRange:
			dep(s.Proto)
			out = append(out, dport(),
				&expr.Cmp{Op: expr.CmpOpGte, Register: reg1, Data: binaryutil.BigEndian.PutUint16(s.Lo)},
				&expr.Cmp{Op: expr.CmpOpLte, Register: reg1, Data: binaryutil.BigEndian.PutUint16(s.Hi)})
		case rules.DportNotInSet:
			dep(s.Proto)
			out = append(out, dport(), &expr.Lookup{SourceRegister: reg1, SetName: s.Set, Invert: true})
		case rules.Counter:
			out = append(out, &expr.Counter{})
		case rules.UpdateSet:
			// The key is loaded without byteorder conversion: nft only
			// converts a UID to network order for interval lookups.
			dep(s.Proto)
			out = append(out,
				&expr.Meta{Key: expr.MetaKeySKUID, Register: reg1},
				&expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1word2, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
				&expr.Dynset{SrcRegKey: reg1, SetName: s.Set, Operation: unix.NFT_DYNSET_OP_UPDATE})
		case rules.Limit:
			unit, ok := limitUnits[s.Unit]
			if !ok {
				return nil, fmt.Errorf("limit: unknown unit %q", s.Unit)
			}
			out = append(out, &expr.Limit{Type: expr.LimitTypePkts, Rate: s.Rate, Unit: unit, Burst: limitBurst})
		case rules.Log:
			out = append(out, &expr.Log{
				Key:   1<<unix.NFTA_LOG_PREFIX | 1<<unix.NFTA_LOG_FLAGS,
				Data:  []byte(rules.SanitizeComment(s.Prefix)),
				Flags: expr.LogFlagsUID,
			})
		case rules.Verdict:
			switch s.Kind {
			case rules.Accept:
				out = append(out, &expr.Verdict{Kind: expr.VerdictAccept})
			case rules.Drop:
				out = append(out, &expr.Verdict{Kind: expr.VerdictDrop})
			case rules.RejectTCPReset:
				out = append(out, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
			case rules.RejectPortUnreachable:
				out = append(out, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})
			default:
				return nil, fmt.Errorf("unknown verdict %d", s.Kind)
			}
		default:
			return nil, fmt.Errorf("statement %q cannot be written to the kernel", s)
		}
	}
	return out, nil
}

// limitBurst is nft's default burst, which it leaves out when listing.
const limitBurst = 5

var limitUnits = map[rules.LimitUnit]expr.LimitTime{
	rules.PerSecond: expr.LimitTimeSecond,
	rules.PerMinute: expr.LimitTimeMinute,
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

// skuidHton loads the socket's UID and converts it to network byte order, as
// nft does before comparing it by value or concatenating it.
func skuidHton() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeySKUID, Register: reg1},
		&expr.Byteorder{SourceRegister: reg1, DestRegister: reg1, Op: expr.ByteorderHton, Len: 4, Size: 4},
	}
}

func dport() *expr.Payload {
	return &expr.Payload{OperationType: expr.PayloadLoad, DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}
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
	switch e := es[0].(type) {
	case opaque:
		return nil, 0, ""
	case *expr.Meta:
		switch {
		case (e.Key == expr.MetaKeyIIF || e.Key == expr.MetaKeyOIF) && e.Register == reg1 && len(es) >= 2:
			if isCmp(es[1], expr.CmpOpEq, binaryutil.NativeEndian.PutUint32(loIfindex)) {
				return rules.Loopback{Out: e.Key == expr.MetaKeyOIF}, 2, ""
			}
		case e.Key == expr.MetaKeySKUID && e.Register == reg1 && len(es) >= 2:
			if l, ok := es[1].(*expr.Lookup); ok && l.SourceRegister == reg1 && !l.IsDestRegSet {
				return rules.SkuidInSet{Set: l.SetName, Not: l.Invert}, 2, ""
			}
			if b, ok := es[1].(*expr.Bitwise); ok && len(es) >= 3 && b.SourceRegister == reg1 && b.DestRegister == reg1 &&
				b.Len == 4 && len(b.Mask) == 4 && bytes.Equal(b.Xor, make([]byte, 4)) {
				if c, ok := es[2].(*expr.Cmp); ok && c.Op == expr.CmpOpEq && c.Register == reg1 && len(c.Data) == 4 {
					return rules.SkuidMask{Mask: binary.NativeEndian.Uint32(b.Mask), Value: binary.NativeEndian.Uint32(c.Data)}, 3, ""
				}
			}
			if proto != "" && len(es) >= 3 && isSport(es[1]) {
				if d, ok := es[2].(*expr.Dynset); ok && isUpdate(d) {
					return rules.UpdateSet{Proto: proto, Set: d.SetName}, 3, ""
				}
			}
			if !isHton(es[1]) {
				break
			}
			rest := es[2:]
			const n = 2 // meta skuid, hton
			if len(rest) >= 1 {
				if c, ok := rest[0].(*expr.Cmp); ok && c.Register == reg1 && len(c.Data) == 4 {
					uid := binary.BigEndian.Uint32(c.Data)
					switch c.Op {
					case expr.CmpOpLt:
						return rules.SkuidCmp{Op: rules.Lt, UID: uid}, n + 1, ""
					case expr.CmpOpGte:
						return rules.SkuidCmp{Op: rules.Ge, UID: uid}, n + 1, ""
					}
				}
			}
			if proto != "" && len(rest) >= 2 {
				if isSport(rest[0]) {
					if l, ok := rest[1].(*expr.Lookup); ok && l.SourceRegister == reg1 && !l.Invert && !l.IsDestRegSet {
						return rules.SkuidSportInSet{Proto: proto, Set: l.SetName}, n + 2, ""
					}
				}
			}
		}
	case *expr.Ct:
		if e.Register != reg1 || e.SourceRegister || len(es) < 2 {
			break
		}
		switch {
		case e.Key == expr.CtKeyDIRECTION && isCmp(es[1], expr.CmpOpEq, []byte{ctDirOriginal}):
			return rules.CtDirectionOriginal{}, 2, ""
		case e.Key == expr.CtKeyDIRECTION && isCmp(es[1], expr.CmpOpEq, []byte{ctDirReply}):
			return rules.CtDirectionReply{}, 2, ""
		case e.Key == expr.CtKeySTATE && isCmp(es[1], expr.CmpOpNeq, binaryutil.NativeEndian.PutUint32(ctStateNew)):
			return rules.CtStateNotNew{}, 2, ""
		}
	case *expr.Payload:
		if proto == "" || *e != *dport() || len(es) < 2 {
			break
		}
		if l, ok := es[1].(*expr.Lookup); ok && l.SourceRegister == reg1 && l.Invert && !l.IsDestRegSet {
			return rules.DportNotInSet{Proto: proto, Set: l.SetName}, 2, ""
		}
		if len(es) >= 3 {
			lo, ok1 := cmpData(es[1], expr.CmpOpGte, 2)
			hi, ok2 := cmpData(es[2], expr.CmpOpLte, 2)
			if ok1 && ok2 {
				return rules.DportRange{Proto: proto, Lo: binary.BigEndian.Uint16(lo), Hi: binary.BigEndian.Uint16(hi)}, 3, ""
			}
		}
	case *expr.Counter:
		return rules.Counter{}, 1, ""
	case *expr.Limit:
		if e.Type != expr.LimitTypePkts || e.Over || e.Burst != limitBurst {
			break
		}
		for u, t := range limitUnits {
			if t == e.Unit {
				return rules.Limit{Rate: e.Rate, Unit: u}, 1, ""
			}
		}
	case *expr.Log:
		// The kernel reports the default level (warn) it filled in.
		if e.Flags == expr.LogFlagsUID && e.Group == 0 && (e.Level == 0 || e.Level == expr.LogLevelWarning) &&
			e.Key&^(1<<unix.NFTA_LOG_PREFIX|1<<unix.NFTA_LOG_FLAGS|1<<unix.NFTA_LOG_LEVEL) == 0 {
			return rules.Log{Prefix: string(e.Data)}, 1, ""
		}
	case *expr.Verdict:
		switch {
		case e.Kind == expr.VerdictAccept && e.Chain == "":
			return rules.Verdict{Kind: rules.Accept}, 1, ""
		case e.Kind == expr.VerdictDrop && e.Chain == "":
			return rules.Verdict{Kind: rules.Drop}, 1, ""
		}
	case *expr.Reject:
		switch {
		case e.Type == unix.NFT_REJECT_TCP_RST && e.Code == 0:
			return rules.Verdict{Kind: rules.RejectTCPReset}, 1, ""
		case e.Type == unix.NFT_REJECT_ICMPX_UNREACH && e.Code == unix.NFT_REJECT_ICMPX_PORT_UNREACH:
			return rules.Verdict{Kind: rules.RejectPortUnreachable}, 1, ""
		}
	}
	return nil, 0, ""
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

func l4proto(es []expr.Any) (rules.Proto, bool) {
	if len(es) < 2 {
		return "", false
	}
	m, ok := es[0].(*expr.Meta)
	if !ok || m.Key != expr.MetaKeyL4PROTO || m.Register != reg1 || m.SourceRegister {
		return "", false
	}
	for _, p := range []rules.Proto{rules.TCP, rules.UDP} {
		if isCmp(es[1], expr.CmpOpEq, []byte{p.Number()}) {
			return p, true
		}
	}
	return "", false
}

func isHton(e expr.Any) bool {
	b, ok := e.(*expr.Byteorder)
	return ok && *b == expr.Byteorder{SourceRegister: reg1, DestRegister: reg1, Op: expr.ByteorderHton, Len: 4, Size: 4}
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
