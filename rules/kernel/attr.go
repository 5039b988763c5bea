//go:build linux

package kernel

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/sys/unix"
)

// Netlink attributes straight in byte slices, as the element messages write
// them (appendAttr and the others) and the dump parsers read them
// (walkAttrs): a 2-byte length and a 2-byte type in host byte order, the
// payload, padding to 4 bytes.

// align4 rounds n up to netlink's 4-byte alignment.
func align4(n int) int { return (n + 3) &^ 3 }

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

// walkAttrs calls fn with the type (nested and byte order flags cleared)
// and payload of each netlink attribute in b, without allocating.
func walkAttrs(b []byte, fn func(typ uint16, data []byte) error) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return fmt.Errorf("%d bytes left, short of an attribute header", len(b))
		}
		l := int(binary.NativeEndian.Uint16(b))
		if l < 4 || l > len(b) {
			return fmt.Errorf("attribute of length %d with %d bytes left", l, len(b))
		}
		if err := fn(binary.NativeEndian.Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[4:l]); err != nil {
			return err
		}
		b = b[min(align4(l), len(b)):]
	}
	return nil
}
