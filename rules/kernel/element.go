//go:build linux

package kernel

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

// kelem is a set element as the kernel lists it: its key (and key end, for
// a concatenated interval), whether it ends an interval, and its comment.
type kelem struct {
	key, keyEnd []byte
	end         bool
	comment     string
}

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
