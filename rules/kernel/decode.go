package kernel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

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
		if s, ok := isUpdateTransport(es); ok {
			return s, 4, ""
		}
		if s, ok := isL4ProtoNot(es); ok {
			return s, 2, ""
		}
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
	for _, p := range rules.Protos {
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

// decodeSet maps a kernel set's definition to the model. A set nftpol would
// never write (a map, timeouts, another key type) decodes with Key 0, which
// no desired set has, so the plan replaces the table.
func decodeSet(s kset) *rules.Set {
	has := func(flag uint32) bool { return s.flags&flag != 0 }
	interval, concat := has(unix.NFT_SET_INTERVAL), has(nftSetConcat)
	rs := &rules.Set{Name: s.name, Interval: interval, Comment: s.comment, Counter: s.counter}
	timeout := has(unix.NFT_SET_TIMEOUT) || s.hasTimeout
	if has(unix.NFT_SET_MAP) || has(unix.NFT_SET_ANONYMOUS) || has(unix.NFT_SET_CONSTANT) || has(unix.NFT_SET_EVAL) != timeout {
		return rs
	}
	if has(unix.NFT_SET_EVAL) {
		rs.Dynamic, rs.Timeout, rs.Size = true, s.timeout, s.size
	}
	switch s.keyType {
	case nftables.TypeUID.GetNFTMagic():
		rs.Key = rules.KeyUID
	case nftables.TypeInetService.GetNFTMagic():
		rs.Key = rules.KeyPort
	case uidPortType.GetNFTMagic():
		if concat == interval {
			rs.Key = rules.KeyUIDPort
		}
	case uidProtoPortType.GetNFTMagic():
		if !concat && !interval {
			rs.Key = rules.KeyUIDProtoPort
		}
	}
	return rs
}

// nftSetConcat is NFT_SET_CONCAT (not in x/sys/unix).
const nftSetConcat = 0x80

// kelem is a set element as the kernel lists it: its key (and key end, for
// a concatenated interval), whether it ends an interval, and its comment.
type kelem struct {
	key, keyEnd []byte
	end         bool
	comment     string
}

// decodeElements maps kernel elements back to model elements, sorted. It
// reports an error for an element it cannot read, rather than guessing.
func decodeElements(s *rules.Set, es []kelem) ([]rules.Element, error) {
	var out []rules.Element
	switch {
	case s.Key == rules.KeyUID:
		for _, e := range es {
			if len(e.key) != 4 {
				return nil, fmt.Errorf("set %s: uid element of %d bytes", s.Name, len(e.key))
			}
			out = append(out, rules.Element{UID: binaryutil.NativeEndian.Uint32(e.key), Comment: e.comment})
		}
	case s.Key == rules.KeyUIDPort:
		for _, e := range es {
			if len(e.key) != 8 || len(e.keyEnd) != 8 {
				return nil, fmt.Errorf("set %s: uid . inet_service element without a proper key and key end", s.Name)
			}
			out = append(out, rules.Element{
				UID:     binary.BigEndian.Uint32(e.key),
				Lo:      binary.BigEndian.Uint16(e.key[4:]),
				Hi:      binary.BigEndian.Uint16(e.keyEnd[4:]),
				Comment: e.comment,
			})
		}
	case s.Key == rules.KeyPort && s.Interval:
		return decodeIntervals(s, es)
	case s.Key == rules.KeyPort:
		for _, e := range es {
			if len(e.key) != 2 {
				return nil, fmt.Errorf("set %s: port element of %d bytes", s.Name, len(e.key))
			}
			p := binary.BigEndian.Uint16(e.key)
			out = append(out, rules.Element{Lo: p, Hi: p, Comment: e.comment})
		}
	default:
		return nil, nil
	}
	return rules.SortElements(out), nil
}

// decodeIntervals pairs the start and end elements of an rbtree interval
// set. nft also writes an end element at 0 before the first interval; it
// closes nothing and is skipped.
func decodeIntervals(s *rules.Set, es []kelem) ([]rules.Element, error) {
	type point struct {
		port    uint32
		end     bool
		comment string
	}
	pts := make([]point, 0, len(es))
	for _, e := range es {
		if len(e.key) != 2 {
			return nil, fmt.Errorf("set %s: port element of %d bytes", s.Name, len(e.key))
		}
		pts = append(pts, point{uint32(binary.BigEndian.Uint16(e.key)), e.end, e.comment})
	}
	// At the same port an end sorts before a start: [a,b] followed by
	// [b+1,c] shares the point b+1.
	slices.SortFunc(pts, func(a, b point) int {
		if a.port != b.port {
			return int(a.port) - int(b.port)
		}
		if a.end != b.end {
			if a.end {
				return -1
			}
			return 1
		}
		return 0
	})
	var out []rules.Element
	open := false
	var cur rules.Element
	for _, p := range pts {
		switch {
		case !p.end && !open:
			cur, open = rules.Element{Lo: uint16(p.port), Comment: p.comment}, true
		case p.end && open:
			cur.Hi = uint16(p.port - 1)
			out = append(out, cur)
			open = false
		case p.end && !open:
			// nft's leading end marker, or a stray end: nothing to close.
		default:
			return nil, fmt.Errorf("set %s: interval starting at %d inside another", s.Name, p.port)
		}
	}
	if open {
		cur.Hi = 0xffff
		out = append(out, cur)
	}
	return rules.SortElements(out), nil
}
