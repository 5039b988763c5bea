//go:build linux

package kernel

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Why nftpol reads rules itself: google/nftables v0.3.0 skips, without a
// word, every expression it cannot unmarshal (byteorder among them, which
// nftpol writes) and every expression type it does not know. A rule read
// through it can therefore look like one of ours while the kernel runs
// something else. Here every expression of the dump is accounted for:
// known ones are unmarshalled with google/nftables' expression types,
// byteorder is decoded below, and anything else becomes an opaque
// expression that no statement matches.

// kernelRule is a rule as dumped by the kernel.
type kernelRule struct {
	Chain    string
	Handle   uint64
	Exprs    []expr.Any
	UserData []byte
}

// opaque stands for an expression nftpol does not decode.
type opaque struct {
	expr.Any // nil: never marshalled, only compared
	Name     string
}

func parseRule(b []byte) (kernelRule, error) {
	var r kernelRule
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return r, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_CHAIN:
			r.Chain = ad.String()
		case unix.NFTA_RULE_HANDLE:
			r.Handle = ad.Uint64()
		case unix.NFTA_RULE_USERDATA:
			r.UserData = ad.Bytes()
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					e, err := parseExpr(list.Bytes())
					if err != nil {
						return err
					}
					r.Exprs = append(r.Exprs, e)
				}
				return nil
			})
		}
	}
	return r, ad.Err()
}

// parseExpr decodes one NFTA_LIST_ELEM of a rule's expressions.
func parseExpr(b []byte) (expr.Any, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	var name string
	var data []byte
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_EXPR_NAME:
			name = ad.String()
		case unix.NFTA_EXPR_DATA:
			data = ad.Bytes()
		}
	}
	if err := ad.Err(); err != nil {
		return nil, err
	}
	var e expr.Any
	switch name {
	case "meta":
		e = &expr.Meta{}
	case "cmp":
		e = &expr.Cmp{}
	case "ct":
		e = &expr.Ct{}
	case "payload":
		e = &expr.Payload{}
	case "lookup":
		e = &expr.Lookup{}
	case "counter":
		e = &expr.Counter{}
	case "reject":
		e = &expr.Reject{}
	case "immediate":
		e = &expr.Immediate{}
	case "dynset":
		e = &expr.Dynset{}
	case "limit":
		e = &expr.Limit{}
	case "log":
		e = &expr.Log{}
	case "byteorder":
		return parseByteorder(data)
	case "bitwise":
		return parseBitwise(data)
	default:
		return opaque{Name: name}, nil
	}
	if err := expr.Unmarshal(unix.NFPROTO_INET, data, e); err != nil {
		return nil, fmt.Errorf("expression %s: %w", name, err)
	}
	// A verdict is an immediate into the verdict register.
	if imm, ok := e.(*expr.Immediate); ok && imm.Register == unix.NFT_REG_VERDICT && len(imm.Data) == 0 {
		v := &expr.Verdict{}
		if err := expr.Unmarshal(unix.NFPROTO_INET, data, v); err != nil {
			return nil, fmt.Errorf("verdict: %w", err)
		}
		return v, nil
	}
	return e, nil
}

// exprName returns NFTA_EXPR_NAME of an encoded expression.
func exprName(b []byte) string {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_EXPR_NAME {
			return ad.String()
		}
	}
	return ""
}

// parseBitwise reads a bitwise expression. google/nftables v0.3.0 ignores
// its operation: a shift or a boolean operation of two registers (kernels
// since 6.13) would read as a mask of nothing. Only the mask-and-xor form
// nftpol writes is decoded; the others stay opaque.
func parseBitwise(b []byte) (expr.Any, error) {
	// From linux/netfilter/nf_tables.h; x/sys/unix does not have them.
	const (
		nftaBitwiseOp     = 6 // NFTA_BITWISE_OP
		nftBitwiseMaskXor = 0 // NFT_BITWISE_MASK_XOR, once NFT_BITWISE_BOOL
	)
	op := uint32(nftBitwiseMaskXor)
	err := walkAttrs(b, func(typ uint16, v []byte) error {
		if typ == nftaBitwiseOp && len(v) == 4 {
			op = binary.BigEndian.Uint32(v)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if op != nftBitwiseMaskXor {
		return opaque{Name: "bitwise"}, nil
	}
	e := &expr.Bitwise{}
	if err := expr.Unmarshal(unix.NFPROTO_INET, b, e); err != nil {
		return nil, fmt.Errorf("expression bitwise: %w", err)
	}
	return e, nil
}

func parseByteorder(b []byte) (expr.Any, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	ad.ByteOrder = binary.BigEndian
	e := &expr.Byteorder{}
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_BYTEORDER_SREG:
			e.SourceRegister = ad.Uint32()
		case unix.NFTA_BYTEORDER_DREG:
			e.DestRegister = ad.Uint32()
		case unix.NFTA_BYTEORDER_OP:
			e.Op = expr.ByteorderOp(ad.Uint32())
		case unix.NFTA_BYTEORDER_LEN:
			e.Len = ad.Uint32()
		case unix.NFTA_BYTEORDER_SIZE:
			e.Size = ad.Uint32()
		}
	}
	return e, ad.Err()
}
