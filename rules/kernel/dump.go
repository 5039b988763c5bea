//go:build linux

package kernel

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// dump sends a dump request for table inet <table> (attribute tableAttr
// holds the table name, more follow) on conn and returns the payloads after the nfgenmsg
// header.
func dump(conn *netlink.Conn, msgType uint16, tableAttr uint16, table string, more ...netlink.Attribute) ([][]byte, error) {
	attrs, err := netlink.MarshalAttributes(append([]netlink.Attribute{{Type: tableAttr, Data: append([]byte(table), 0)}}, more...))
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
	info, err := findTableInfo(conn, table)
	return info.flags, info.found, err
}

// tableInfo is a table as the GETTABLE dump gives it.
type tableInfo struct {
	found bool
	flags uint32
	owner uint32 // NFTA_TABLE_OWNER, for a table with NFT_TABLE_F_OWNER
}

func findTableInfo(conn *netlink.Conn, table string) (tableInfo, error) {
	msgs, err := dump(conn, unix.NFT_MSG_GETTABLE, unix.NFTA_TABLE_NAME, table)
	if err != nil {
		return tableInfo{}, fmt.Errorf("listing inet tables: %w", noNetfilter(err))
	}
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m)
		if err != nil {
			return tableInfo{}, err
		}
		ad.ByteOrder = binary.BigEndian
		var name string
		info := tableInfo{found: true}
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_TABLE_NAME:
				name = ad.String()
			case unix.NFTA_TABLE_FLAGS:
				info.flags = ad.Uint32()
			case nftaTableOwner:
				info.owner = ad.Uint32()
			}
		}
		if err := ad.Err(); err != nil {
			return tableInfo{}, err
		}
		if name == table {
			return info, nil
		}
	}
	return tableInfo{}, nil
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

// kset is a set's definition as the kernel lists it.
type kset struct {
	name       string
	flags      uint32
	keyType    uint32 // nft's datatype magic; concatenations 6 bits a field
	hasTimeout bool
	timeout    time.Duration
	size       uint32
	comment    string
	counter    bool // the set gives each element a counter
}

// getSets returns the definitions of the sets of table inet <table>, read
// from one dump: google/nftables v0.3.0 decodes neither a set's comment nor
// its expressions, and dumping the sets through it as well meant two dumps
// of the same sets on every full read.
func getSets(conn *netlink.Conn, table string) ([]kset, error) {
	msgs, err := dump(conn, unix.NFT_MSG_GETSET, unix.NFTA_SET_TABLE, table)
	if err != nil {
		return nil, fmt.Errorf("dumping sets of table inet %s: %w", table, err)
	}
	var out []kset
	for _, m := range msgs {
		ad, err := netlink.NewAttributeDecoder(m)
		if err != nil {
			return nil, err
		}
		ad.ByteOrder = binary.BigEndian
		var s kset
		for ad.Next() {
			switch ad.Type() {
			case unix.NFTA_SET_NAME:
				s.name = ad.String()
			case unix.NFTA_SET_FLAGS:
				s.flags = ad.Uint32()
			case unix.NFTA_SET_KEY_TYPE:
				s.keyType = ad.Uint32()
			case unix.NFTA_SET_TIMEOUT:
				s.timeout, s.hasTimeout = time.Duration(ad.Uint64())*time.Millisecond, true
			case unix.NFTA_SET_DESC:
				ad.Nested(func(d *netlink.AttributeDecoder) error {
					for d.Next() {
						if d.Type() == unix.NFTA_SET_DESC_SIZE {
							s.size = d.Uint32()
						}
					}
					return nil
				})
			case unix.NFTA_SET_USERDATA:
				s.comment, _ = userdata.GetString(ad.Bytes(), userdata.NFTNL_UDATA_SET_COMMENT)
			case nftaSetExpr:
				s.counter = exprName(ad.Bytes()) == "counter"
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
				s.counter = len(names) == 1 && names[0] == "counter"
			}
		}
		if err := ad.Err(); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// getElements dumps the elements of set <set> of table inet <table>. It
// reads the dump itself rather than through google/nftables, which builds a
// SetElement of a dozen fields and copies per element: at 50,000 accounts
// that was most of a full read's time and peak memory. Keys and comments
// are what decodeElements needs; anything else an element carries (timeouts,
// counters) is state and not read.
func getElements(conn *netlink.Conn, table, set string) ([]kelem, error) {
	msgs, err := dump(conn, unix.NFT_MSG_GETSETELEM, unix.NFTA_SET_ELEM_LIST_TABLE, table,
		netlink.Attribute{Type: unix.NFTA_SET_ELEM_LIST_SET, Data: append([]byte(set), 0)})
	if err != nil {
		return nil, fmt.Errorf("reading elements of set %s: %w", set, err)
	}
	var out []kelem
	for _, m := range msgs {
		if out, err = parseElemList(m, out); err != nil {
			return nil, fmt.Errorf("reading elements of set %s: %w", set, err)
		}
	}
	return out, nil
}

// parseElemList appends the elements of one element message (after its
// nfgenmsg header) to out.
func parseElemList(m []byte, out []kelem) ([]kelem, error) {
	err := walkAttrs(m, func(typ uint16, b []byte) error {
		if typ != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			return nil
		}
		return walkAttrs(b, func(_ uint16, b []byte) error {
			e, err := parseElement(b)
			out = append(out, e)
			return err
		})
	})
	return out, err
}

// parseElement reads one NFTA_LIST_ELEM.
func parseElement(b []byte) (kelem, error) {
	var e kelem
	value := func(b []byte) ([]byte, error) {
		var v []byte
		err := walkAttrs(b, func(typ uint16, b []byte) error {
			if typ == unix.NFTA_DATA_VALUE {
				v = b
			}
			return nil
		})
		return v, err
	}
	err := walkAttrs(b, func(typ uint16, b []byte) error {
		var err error
		switch typ {
		case unix.NFTA_SET_ELEM_KEY:
			e.key, err = value(b)
		case nftaSetElemKeyEnd:
			e.keyEnd, err = value(b)
		case unix.NFTA_SET_ELEM_FLAGS:
			if len(b) != 4 {
				return fmt.Errorf("element flags of %d bytes", len(b))
			}
			e.end = binary.BigEndian.Uint32(b)&unix.NFT_SET_ELEM_INTERVAL_END != 0
		case unix.NFTA_SET_ELEM_USERDATA:
			e.comment, _ = userdata.GetString(b, userdata.NFTNL_UDATA_SET_ELEM_COMMENT)
		}
		return err
	})
	return e, err
}
