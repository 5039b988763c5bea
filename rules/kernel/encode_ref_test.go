//go:build linux

package kernel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"

	"github.com/nftpol/nftpol/rules"
)

// The reference encoding: model elements as google/nftables' SetElement,
// which google/nftables marshals (SetAddElements, SetDeleteElements).
// nftpol sent its elements this way before appendElemMsg; the tests hold
// appendElemMsg to it, and the decoder tests use it as the kernel's form.

// encodeElements turns model elements into kernel elements.
//
// Concatenated interval sets (the per-account sets, kept by the pipapo
// backend) take one element with a key and a key end. Single-field interval
// sets (rbtree) take a start element and an end element flagged
// INTERVAL_END at hi+1; a range reaching 65535 has no end element.
func encodeElements(s *rules.Set, es []rules.Element) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, len(es)*2)
	for _, e := range es {
		switch {
		case s.Key == rules.KeyUID:
			out = append(out, nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(e.UID), Comment: comment(e)})
		case s.Key == rules.KeyUIDPort:
			out = append(out, nftables.SetElement{Key: uidPort(e.UID, e.Lo), KeyEnd: uidPort(e.UID, e.Hi), Comment: comment(e)})
		case s.Key == rules.KeyPort && s.Interval:
			out = append(out, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(e.Lo), Comment: comment(e)})
			if e.Hi < 0xffff {
				out = append(out, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(e.Hi + 1), IntervalEnd: true})
			}
		default:
			out = append(out, nftables.SetElement{Key: binaryutil.BigEndian.PutUint16(e.Lo), Comment: comment(e)})
		}
	}
	return out
}

func comment(e rules.Element) string { return rules.SanitizeComment(e.Comment) }

// elementSize is the encoded size of one element inside the list attribute,
// as google/nftables marshals it (set.go, makeElemList): the nested item
// header, the flags, key and key end (each a nested NFTA_DATA_VALUE), and
// the userdata comment. Every attribute is padded to 4 bytes.
func elementSize(e nftables.SetElement) int {
	n := 4 // item
	if e.IntervalEnd {
		n += 8
	}
	n += 8 + align4(len(e.Key))
	if len(e.KeyEnd) > 0 {
		n += 8 + align4(len(e.KeyEnd))
	}
	if e.Comment != "" {
		n += 4 + align4(2+len(e.Comment)+1)
	}
	return n
}

// uidPort is the key of a "uid . inet_service" element: the UID in network
// byte order (nft converts skuid with hton before concatenating), then the
// port in network byte order padded to the 4-byte register word.
func uidPort(uid uint32, port uint16) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint32(b, uid)
	binary.BigEndian.PutUint16(b[4:], port)
	return b
}

// TestElemMsgMatchesGoogleNftables: for every kind of set nftpol writes,
// with and without comments (also ones to sanitize), for additions and
// deletions, and for a set created in the same batch (which is named by its
// batch ID), appendElemMsg's message is byte for byte the one
// google/nftables encodes.
func TestElemMsgMatchesGoogleNftables(t *testing.T) {
	long := strings.Repeat("x", 200)
	cases := []struct {
		set *rules.Set
		es  []rules.Element
	}{
		{&rules.Set{Name: "exempt", Key: rules.KeyUID}, []rules.Element{{UID: 33}, {UID: 1000, Comment: "www-data"}, {UID: 4294967295, Comment: "bad\"quote\\"}}},
		{&rules.Set{Name: "tcp_ports", Key: rules.KeyUIDPort, Interval: true}, []rules.Element{
			{UID: 100000, Lo: 10000, Hi: 10000, Comment: "acct-000000"}, {UID: 1001, Lo: 40010, Hi: 40019, Comment: "a"},
			{UID: 1002, Lo: 0, Hi: 65535}, {UID: 1003, Lo: 1, Hi: 2, Comment: long}, {UID: 1004, Lo: 5, Hi: 6, Comment: "tab\there\n"},
			{UID: 1005, Lo: 7, Hi: 8, Comment: "abc"}, {UID: 1006, Lo: 7, Hi: 8, Comment: "abcd"}, {UID: 1007, Lo: 7, Hi: 8, Comment: "ab"}}},
		{&rules.Set{Name: "tcp_open", Key: rules.KeyPort, Interval: true}, []rules.Element{{Lo: 40010, Hi: 40019}, {Lo: 50000, Hi: 65535}, {Lo: 1, Hi: 1, Comment: "one"}}},
		{&rules.Set{Name: "ports", Key: rules.KeyPort}, []rules.Element{{Lo: 22}, {Lo: 65535, Comment: "top"}}},
	}
	table := &nftables.Table{Name: "nftpol", Family: nftables.TableFamilyINet}
	for _, c := range cases {
		for _, id := range []uint32{0, 7} {
			for _, add := range []bool{true, false} {
				ns := &nftables.Set{Table: table, Name: c.set.Name, ID: id}
				want := googleElemMsg(t, ns, add, encodeElements(c.set, c.es))
				got := appendElemMsg(nil, ns, c.set, c.es)
				name := fmt.Sprintf("set %s, id %d, add %v", c.set.Name, id, add)
				if want.Header.Type != elemMsgType(add) || want.Header.Flags != elemMsgFlags {
					t.Errorf("%s: header type %#x flags %v, google/nftables %#x %v", name, elemMsgType(add), elemMsgFlags, want.Header.Type, want.Header.Flags)
				}
				if !bytes.Equal(got, want.Data) {
					t.Errorf("%s: payload differs from google/nftables' at byte %d:\n got %x\nwant %x", name, firstDiff(got, want.Data), got, want.Data)
				}
			}
		}
	}
}

// TestBatchWithRawElements: a batch mixing google/nftables' messages and raw
// element messages keeps the operations' order, and each raw message has
// its length set and is padded, as the kernel parses them.
func TestBatchWithRawElements(t *testing.T) {
	rs := benchTable(3, false)
	bt, err := buildBatch(rules.SyncExact(nil, rs).Plan, 0)
	if err != nil {
		t.Fatal(err)
	}
	batch, fill, err := encode(bt.ops)
	if err != nil {
		t.Fatal(err)
	}
	if len(batch) != len(bt.ops)+2 || len(fill) != len(batch) {
		t.Fatalf("%d messages, %d fills for %d operations", len(batch), len(fill), len(bt.ops))
	}
	buf, index, pending := marshalBatch(batch, fill, 0, 100)
	msgs, err := parseMessages(buf)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != len(batch) || pending != len(bt.ops) || len(index) != len(batch) {
		t.Fatalf("parsed %d messages of %d, %d acks pending for %d operations", len(msgs), len(batch), pending, len(bt.ops))
	}
	raws := 0
	for i, m := range msgs {
		if m.Header.Sequence != 100+uint32(i) || index[m.Header.Sequence] != i {
			t.Errorf("message %d: sequence %d", i, m.Header.Sequence)
		}
		if m.Header.Type != batch[i].Header.Type {
			t.Errorf("message %d: type %#x, want %#x", i, m.Header.Type, batch[i].Header.Type)
		}
		if fill[i] != nil {
			raws++
			if !bytes.Equal(m.Data, fill[i].data(nil)) {
				t.Errorf("message %d (%s): payload is not the raw encoding", i, bt.ops[i-1].desc)
			}
		} else if !bytes.Equal(m.Data, batch[i].Data) {
			t.Errorf("message %d: payload changed on the way", i)
		}
	}
	if raws == 0 {
		t.Error("no element message was encoded raw")
	}
}

// googleElemMsg is the message google/nftables encodes for an element
// operation.
func googleElemMsg(t *testing.T, ns *nftables.Set, add bool, es []nftables.SetElement) netlink.Message {
	t.Helper()
	var got []netlink.Message
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		got = append(got, req...)
		var acks []netlink.Message
		for _, m := range req {
			if m.Header.Flags&netlink.Acknowledge != 0 {
				acks = append(acks, netlink.Message{Header: netlink.Header{Type: netlink.Error, Sequence: m.Header.Sequence}, Data: make([]byte, 4)})
			}
		}
		return acks, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	call := c.SetDeleteElements
	if add {
		call = c.SetAddElements
	}
	if err := call(ns, es); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("google/nftables sent %d messages, want begin, one, end", len(got))
	}
	return got[1]
}

// parseMessages splits a netlink buffer into messages as the kernel does.
func parseMessages(b []byte) ([]netlink.Message, error) {
	var out []netlink.Message
	for len(b) > 0 {
		if len(b) < 16 {
			return nil, fmt.Errorf("%d bytes left, less than a header", len(b))
		}
		l := int(binary.NativeEndian.Uint32(b))
		if l < 16 || l > len(b) {
			return nil, fmt.Errorf("message length %d with %d bytes left", l, len(b))
		}
		var m netlink.Message
		if err := m.UnmarshalBinary(b[:l]); err != nil {
			return nil, err
		}
		out = append(out, m)
		b = b[min(align4(l), len(b)):]
	}
	return out, nil
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// kelems is es as the kernel lists them.
func kelems(es []nftables.SetElement) []kelem {
	out := make([]kelem, 0, len(es))
	for _, e := range es {
		out = append(out, kelem{key: e.Key, keyEnd: e.KeyEnd, end: e.IntervalEnd, comment: e.Comment})
	}
	return out
}

// TestParseElemList: the element list nftpol sends reads back, through the
// parser of the kernel's dumps (same attributes), as the same elements, for
// every kind of set.
func TestParseElemList(t *testing.T) {
	table := &nftables.Table{Name: "nftpol", Family: nftables.TableFamilyINet}
	for _, s := range []*rules.Set{
		{Name: "exempt", Key: rules.KeyUID, Elements: []rules.Element{{UID: 33}, {UID: 1000, Comment: "www"}}},
		{Name: "tcp_ports", Key: rules.KeyUIDPort, Interval: true, Elements: []rules.Element{
			{UID: 1001, Lo: 40010, Hi: 40019, Comment: "alpha"}, {UID: 1002, Lo: 1, Hi: 65535}}},
		{Name: "tcp_open", Key: rules.KeyPort, Interval: true, Elements: []rules.Element{{Lo: 40010, Hi: 40019}, {Lo: 50000, Hi: 65535}}},
		{Name: "ports", Key: rules.KeyPort, Elements: []rules.Element{{Lo: 22, Hi: 22}, {Lo: 443, Hi: 443, Comment: "https"}}},
	} {
		msg := appendElemMsg(nil, &nftables.Set{Table: table, Name: s.Name}, s, s.Elements)
		kes, err := parseElemList(msg[4:], nil)
		if err != nil {
			t.Fatalf("set %s: %v", s.Name, err)
		}
		got, err := decodeElements(s, kes)
		if err != nil || !slices.Equal(got, s.Elements) {
			t.Errorf("set %s: read back %+v (%v), want %+v", s.Name, got, err, s.Elements)
		}
		if _, err := parseElemList(msg[4:len(msg)-3], nil); err == nil {
			t.Errorf("set %s: a truncated message parsed", s.Name)
		}
	}
}
