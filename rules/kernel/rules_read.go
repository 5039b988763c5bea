package kernel

import (
	"encoding/binary"
	"fmt"

	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
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

// dump sends a dump request for table inet <table> (attribute tableAttr
// holds the table name) on conn and returns the payloads after the nfgenmsg
// header.
func dump(conn *netlink.Conn, msgType uint16, tableAttr uint16, table string) ([][]byte, error) {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: tableAttr, Data: append([]byte(table), 0)}})
	if err != nil {
		return nil, err
	}
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msgType),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...),
	})
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for _, m := range msgs {
		if len(m.Data) >= 4 {
			out = append(out, m.Data[4:])
		}
	}
	return out, nil
}

// findTable looks for table inet <table> and returns its flags. It reads
// the table dump itself: google/nftables v0.3.0 decodes NFTA_TABLE_FLAGS in
// host byte order instead of network byte order, so a dormant table would
// read as not dormant.
func findTable(conn *netlink.Conn, table string) (flags uint32, found bool, err error) {
	msgs, err := dump(conn, unix.NFT_MSG_GETTABLE, unix.NFTA_TABLE_NAME, table)
	if err != nil {
		return 0, false, fmt.Errorf("listing inet tables: %w", noNetfilter(err))
	}
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m)
		if err != nil {
			return 0, false, err
		}
		ad.ByteOrder = binary.BigEndian
		var name string
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_TABLE_NAME:
				name = ad.String()
			case unix.NFTA_TABLE_FLAGS:
				flags = ad.Uint32()
			}
		}
		if err := ad.Err(); err != nil {
			return 0, false, err
		}
		if name == table {
			return flags, true, nil
		}
	}
	return 0, false, nil
}

// getRules dumps the rules of every chain of table inet <table>.
func getRules(conn *netlink.Conn, table string) ([]kernelRule, error) {
	msgs, err := dump(conn, unix.NFT_MSG_GETRULE, unix.NFTA_RULE_TABLE, table)
	if err != nil {
		return nil, fmt.Errorf("dumping rules of table inet %s: %w", table, err)
	}
	var out []kernelRule
	for _, m := range msgs {
		r, err := parseRule(m)
		if err != nil {
			return nil, fmt.Errorf("reading a rule of table inet %s: %w", table, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// Set attributes golang.org/x/sys/unix does not name (linux/netfilter/
// nf_tables.h, enum nft_set_attributes).
const (
	nftaSetExpr        = 17
	nftaSetExpressions = 18
)

// setExtras is what google/nftables v0.3.0 writes for a set but does not
// read back.
type setExtras struct {
	Comment string
	Counter bool // the set gives each element a counter
}

// getSetExtras returns the comment and counter flag of every set of table
// inet <table>.
func getSetExtras(conn *netlink.Conn, table string) (map[string]setExtras, error) {
	msgs, err := dump(conn, unix.NFT_MSG_GETSET, unix.NFTA_SET_TABLE, table)
	if err != nil {
		return nil, fmt.Errorf("dumping sets of table inet %s: %w", table, err)
	}
	out := map[string]setExtras{}
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m)
		if err != nil {
			return nil, err
		}
		var name string
		var x setExtras
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_SET_NAME:
				name = ad.String()
			case unix.NFTA_SET_USERDATA:
				x.Comment, _ = userdata.GetString(ad.Bytes(), userdata.NFTNL_UDATA_SET_COMMENT)
			case nftaSetExpr:
				x.Counter = exprName(ad.Bytes()) == "counter"
			case nftaSetExpressions:
				// A list: the set counts only if its one expression
				// is a counter.
				var names []string
				ad.Nested(func(l *netlink.AttributeDecoder) error {
					for l.Next() {
						names = append(names, exprName(l.Bytes()))
					}
					return nil
				})
				x.Counter = len(names) == 1 && names[0] == "counter"
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		out[name] = x
	}
	return out, nil
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
