package kernel

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
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
		case rules.UpdateSetTransport:
			out = append(out, encodeUpdateTransport(s)...)
		case rules.L4ProtoNot:
			out = append(out, encodeL4ProtoNot(s)...)
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

// uidPortType is "uid . inet_service".
var uidPortType = nftables.MustConcatSetType(nftables.TypeUID, nftables.TypeInetService)

func encodeSet(t *nftables.Table, s *rules.Set) (*nftables.Set, error) {
	ns := &nftables.Set{Table: t, Name: s.Name, Interval: s.Interval, Comment: rules.SanitizeComment(s.Comment)}
	switch s.Key {
	case rules.KeyUID:
		ns.KeyType = nftables.TypeUID
		ns.KeyByteOrder = binaryutil.NativeEndian
	case rules.KeyPort:
		ns.KeyType = nftables.TypeInetService
		ns.KeyByteOrder = binaryutil.BigEndian
	case rules.KeyUIDPort:
		ns.KeyType = uidPortType
		// As nft does: the concat flag (and the field sizes that come
		// with it) only where the kernel needs them, for the pipapo
		// backend of interval sets.
		ns.Concatenation = s.Interval
	case rules.KeyUIDProtoPort:
		ns.KeyType = uidProtoPortType
	default:
		return nil, fmt.Errorf("set %s: unknown key type", s.Name)
	}
	if s.Interval && s.Key == rules.KeyUID {
		return nil, fmt.Errorf("set %s: uid sets have no intervals", s.Name)
	}
	if s.Dynamic {
		if s.Interval {
			return nil, fmt.Errorf("set %s: a dynamic set cannot hold intervals", s.Name)
		}
		ns.Dynamic, ns.HasTimeout, ns.Timeout, ns.Size, ns.Counter = true, true, s.Timeout, s.Size, s.Counter
	}
	return ns, nil
}

// maxElemsAttr bounds the payload of one NFTA_SET_ELEM_LIST_ELEMENTS
// attribute. google/nftables v0.3.0 puts every element of one call into one
// attribute whose length field has 16 bits: past 65,535 bytes the length
// wraps and the kernel refuses the batch or keeps a truncated list. We stay
// below with room for the attribute header.
const maxElemsAttr = 65535 - 4

func align4(n int) int { return (n + 3) &^ 3 }

// modelElementSize is the encoded size of the kernel elements one model
// element becomes (elementSize of each of encodeElements' output), computed
// without encoding it.
func modelElementSize(s *rules.Set, e rules.Element) int {
	comment := 0
	if c := rules.SanitizeComment(e.Comment); c != "" {
		comment = 4 + align4(2+len(c)+1)
	}
	switch {
	case s.Key == rules.KeyUID:
		return 4 + 8 + 4 + comment
	case s.Key == rules.KeyUIDPort:
		return 4 + 2*(8+8) + comment
	case s.Interval:
		n := 4 + 8 + 4 + comment
		if e.Hi < 0xffff {
			n += 4 + 8 + 8 + 4
		}
		return n
	default:
		return 4 + 8 + 4 + comment
	}
}

// chunk splits es so that the sizes of no chunk's items add up to more than
// maxElemsAttr bytes, the payload of one element list attribute. An
// interval's start and end elements may land in different chunks: they are
// still in the same batch, which is what the kernel needs.
func chunk[E any](es []E, size func(E) int) [][]E {
	var out [][]E
	start, total := 0, 0
	for i, e := range es {
		n := size(e)
		if total+n > maxElemsAttr && i > start {
			out = append(out, es[start:i])
			start, total = i, 0
		}
		total += n
	}
	if start < len(es) {
		out = append(out, es[start:])
	}
	return out
}

// Element messages are the bulk of a large batch (100,000 elements at
// 50,000 accounts), and google/nftables builds each element from a dozen
// allocations (attribute slices, marshalled keys, userdata) that are then
// copied again into the message. appendElemMsg writes the same bytes
// straight into the batch's buffer: TestElemMsgMatchesGoogleNftables holds it
// to google/nftables' encoding (SetAddElements and SetDeleteElements, set.go
// makeElemList), byte for byte.

// nftaSetElemKeyEnd is NFTA_SET_ELEM_KEY_END (not in x/sys/unix).
const nftaSetElemKeyEnd = 10

// elemMsgType is the message type of an element operation.
func elemMsgType(add bool) netlink.HeaderType {
	if add {
		return netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM)
	}
	return netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELSETELEM)
}

// elemMsgFlags are the flags google/nftables gives both element operations.
const elemMsgFlags = netlink.Request | netlink.Acknowledge | netlink.Create

// appendElemMsg appends the payload of an element message for es of set s
// (kernel set ns) to b: the nfgenmsg header, the set, its batch ID, the
// table, and the element list.
func appendElemMsg(b []byte, ns *nftables.Set, s *rules.Set, es []rules.Element) []byte {
	b = append(b, byte(ns.Table.Family), unix.NFNETLINK_V0, 0, 0)
	b = appendStringAttr(b, unix.NFTA_SET_ELEM_LIST_SET, ns.Name)
	b = appendAttr(b, unix.NFTA_SET_ELEM_LIST_SET_ID, binary.BigEndian.AppendUint32(nil, ns.ID))
	b = appendStringAttr(b, unix.NFTA_SET_ELEM_LIST_TABLE, ns.Table.Name)
	list := beginAttr(&b, unix.NFTA_SET_ELEM_LIST_ELEMENTS|unix.NLA_F_NESTED)
	n := 0
	item := func(key, keyEnd []byte, intervalEnd bool, comment string) {
		n++
		it := beginAttr(&b, uint16(n)|unix.NLA_F_NESTED)
		if intervalEnd {
			b = appendAttr(b, unix.NFTA_SET_ELEM_FLAGS|unix.NLA_F_NESTED, binary.BigEndian.AppendUint32(nil, unix.NFT_SET_ELEM_INTERVAL_END))
		}
		k := beginAttr(&b, unix.NFTA_SET_ELEM_KEY|unix.NLA_F_NESTED)
		b = appendAttr(b, unix.NFTA_DATA_VALUE, key)
		endAttr(b, k)
		if keyEnd != nil {
			k := beginAttr(&b, nftaSetElemKeyEnd|unix.NLA_F_NESTED)
			b = appendAttr(b, unix.NFTA_DATA_VALUE, keyEnd)
			endAttr(b, k)
		}
		if comment != "" {
			// userdata: one TLV, NFTNL_UDATA_SET_ELEM_COMMENT (0),
			// the comment with its NUL.
			ud := beginAttr(&b, unix.NFTA_SET_ELEM_USERDATA)
			b = append(b, 0, byte(len(comment)+1))
			b = append(append(b, comment...), 0)
			endAttr(b, ud)
			b = pad4(b)
		}
		endAttr(b, it)
	}
	var k, ke [8]byte
	for _, e := range es {
		c := e.Comment
		if !rules.ValidComment(c) {
			c = rules.SanitizeComment(c)
		}
		switch {
		case s.Key == rules.KeyUID:
			binary.NativeEndian.PutUint32(k[:], e.UID)
			item(k[:4], nil, false, c)
		case s.Key == rules.KeyUIDPort:
			binary.BigEndian.PutUint32(k[:], e.UID)
			binary.BigEndian.PutUint32(k[4:], uint32(e.Lo)<<16)
			binary.BigEndian.PutUint32(ke[:], e.UID)
			binary.BigEndian.PutUint32(ke[4:], uint32(e.Hi)<<16)
			item(k[:], ke[:], false, c)
		case s.Key == rules.KeyPort && s.Interval:
			binary.BigEndian.PutUint16(k[:], e.Lo)
			item(k[:2], nil, false, c)
			if e.Hi < 0xffff {
				binary.BigEndian.PutUint16(k[:], e.Hi+1)
				item(k[:2], nil, true, "")
			}
		default:
			binary.BigEndian.PutUint16(k[:], e.Lo)
			item(k[:2], nil, false, c)
		}
	}
	endAttr(b, list)
	return b
}

// appendAttr appends a netlink attribute: length, type, data, padding.
func appendAttr(b []byte, typ uint16, data []byte) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(data)))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	return pad4(b)
}

func appendStringAttr(b []byte, typ uint16, s string) []byte {
	b = binary.NativeEndian.AppendUint16(b, uint16(4+len(s)+1))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(append(b, s...), 0)
	return pad4(b)
}

// beginAttr starts a nested attribute in *b and returns its offset;
// endAttr fills in its length once its content is appended.
func beginAttr(b *[]byte, typ uint16) int {
	off := len(*b)
	*b = binary.NativeEndian.AppendUint16(*b, 0)
	*b = binary.NativeEndian.AppendUint16(*b, typ)
	return off
}

func endAttr(b []byte, off int) {
	binary.NativeEndian.PutUint16(b[off:], uint16(len(b)-off))
}

func pad4(b []byte) []byte {
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
