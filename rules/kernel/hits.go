//go:build linux

package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
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
	return k.hits(c, table, set)
}

// hits reads the hits of set <set> of table inet <table> on c.
func (k *Kernel) hits(c *nftables.Conn, table, set string) ([]Hit, error) {
	s := &nftables.Set{Table: &nftables.Table{Name: table, Family: nftables.TableFamilyINet}, Name: set}
	es, err := c.GetSetElements(s)
	if err != nil {
		// google/nftables v0.3.0 formats the kernel's error with %v, so
		// ENOENT is not errors.Is-able here: ask the kernel again.
		if gone, gerr := k.setGone(table, set); gerr == nil && gone {
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

// setGone reports whether table inet <table> has no set <set> (or no such
// table), from a dump of its sets.
func (k *Kernel) setGone(table, set string) (bool, error) {
	conn, err := k.dial()
	if err != nil {
		return false, err
	}
	defer conn.Close()
	sets, err := getSets(conn, table)
	if errors.Is(err, unix.ENOENT) {
		return true, nil
	}
	if err != nil {
		return false, err
	}
	return !slices.ContainsFunc(sets, func(s kset) bool { return s.name == set }), nil
}

// SetHits are the hits of one violation set.
type SetHits struct {
	Role rules.Role // SetViolations (with its Proto) or SetTransportViolations
	Hits []Hit
}

// ViolationHits reads every violation set of table inet <table> under the
// name it has now. A set that was rebuilt while rules read it alternates
// between two names (tcp_violations, tcp_violations_b): the agent's taking
// ownership of a table that restore installed is such a rebuild, so a reader
// of the fixed names found nothing on every host that boots as designed. A
// missing table reads as no hits.
func (k *Kernel) ViolationHits(table string) ([]SetHits, error) {
	conn, err := k.dial()
	if err != nil {
		return nil, err
	}
	sets, err := getSets(conn, table)
	conn.Close()
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	// One connection for all of them: opening one costs a thread's trip
	// into the namespace.
	c, err := nftables.New(append(k.opts, nftables.AsLasting())...)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer c.CloseLasting()
	var out []SetHits
	for _, s := range sets {
		role := rules.RoleOf(decodeSet(s))
		if role.Kind != rules.SetViolations && role.Kind != rules.SetTransportViolations {
			continue
		}
		hits, err := k.hits(c, table, s.name)
		if err != nil {
			return nil, err
		}
		out = append(out, SetHits{Role: role, Hits: hits})
	}
	return out, nil
}
