//go:build linux

package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"golang.org/x/sys/unix"
)

// Hit is one element of a dynamic violation set: a UID seen serving from a
// port it does not own.
type Hit struct {
	UID uint32
	// Proto names the IP protocol for sets whose key holds it (the
	// record of transports no account is granted); "" for the others,
	// which are one protocol's each.
	Proto   string
	Port    uint16
	Packets uint64
	Bytes   uint64
	// Expires is how long the element has left; the element was last
	// refreshed Timeout-Expires ago.
	Expires time.Duration
}

// Hits reads the elements of the dynamic set <set> of table inet <table>.
// A missing table or set reads as no hits.
func (k *Kernel) Hits(table, set string) ([]Hit, error) {
	c, err := nftables.New(k.opts...)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	s := &nftables.Set{Table: &nftables.Table{Name: table, Family: nftables.TableFamilyINet}, Name: set}
	es, err := c.GetSetElements(s)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading set %s: %w", set, err)
	}
	var out []Hit
	for _, e := range es {
		if len(e.Key) == int(uidProtoPortType.Bytes) {
			out = append(out, transportHit(e))
			continue
		}
		if len(e.Key) != 8 {
			continue
		}
		h := Hit{
			// Keys of dynamic sets hold the UID in host byte order
			// (no hton before a hash lookup), the port in network order.
			UID:     binaryutil.NativeEndian.Uint32(e.Key[:4]),
			Port:    binary.BigEndian.Uint16(e.Key[4:6]),
			Expires: e.Expires,
		}
		if e.Counter != nil {
			h.Packets, h.Bytes = e.Counter.Packets, e.Counter.Bytes
		}
		out = append(out, h)
	}
	return out, nil
}
