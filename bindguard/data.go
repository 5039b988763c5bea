package bindguard

import (
	"fmt"
	"slices"

	"github.com/nftpol/nftpol/policies"
)

// Proto is the index of a protocol in the ports map: every protocol has a
// block of 65,536 entries, one per port.
type Proto uint8

// The protocols the guard knows. UDP-Lite shares UDP's ports: the policy
// gives ports for udp, and a UDP-Lite socket on an account's UDP port is
// that account's (the table treats both as one for the same reason).
const (
	TCP Proto = 0
	UDP Proto = 1

	numProtos = 2
	numPorts  = 1 << 16
	// portsEntries is the size of the ports map.
	portsEntries = numProtos * numPorts
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Flags of a port entry. An entry with no flags is a port outside the zone
// that is not reserved: binds to it pass.
const (
	// FlagZone marks a port inside the zone: only its owner may bind it.
	FlagZone uint32 = 1 << 0
	// FlagOwned says Owner holds the UID of the account the port is for.
	FlagOwned uint32 = 1 << 1
	// FlagReserved marks a port of a system service: no enforced UID may
	// bind it, inside the zone or not.
	FlagReserved uint32 = 1 << 2
)

// Port is one entry of the ports map, as the programs read it: the map's
// value layout, 8 bytes, host byte order.
type Port struct {
	// Owner is the UID of the account the port is for, when Flags has
	// FlagOwned.
	Owner uint32
	// Flags is a combination of FlagZone, FlagOwned and FlagReserved.
	Flags uint32
}

// Data is everything the guard's maps hold for one policy, compiled by
// Compile: pure, and cheap to compare. The ports are a flat table indexed
// by proto<<16|port (see Index), as the ports map is, so that comparing
// with the kernel is one pass over both.
type Data struct {
	// MinUID is the lowest enforced UID.
	MinUID uint32
	// Exempt holds the UIDs never enforced, sorted and unique.
	Exempt []uint32
	// Ports is the ports map's content, portsEntries long.
	Ports []Port
}

// Index is the key of port for protocol p in the ports map.
func Index(p Proto, port uint16) uint32 { return uint32(p)<<16 | uint32(port) }

// Lookup returns the entry for port of protocol p.
func (d *Data) Lookup(p Proto, port uint16) Port { return d.Ports[Index(p, port)] }

// MaxExempt is the size of the exempt map. The map's size is fixed when it
// is created (pinned maps keep it), so a policy with more exempt UIDs is
// refused by Compile rather than cut short.
const MaxExempt = 4096

// Compile builds the guard's data from a loaded policy: the zone, min_uid,
// the exempt UIDs, each account's ports for each of its protocols and the
// reserved ports of p.BindGuard. Its work is bounded by the port space, not
// by the number of accounts: at most 131,072 entries.
//
// Compile fails when the policy has more exempt UIDs than MaxExempt, or
// when two accounts claim the same port or a reserved port is an
// account's; policies.Load refuses both, so only a Policy built by hand
// can.
func Compile(p *policies.Policy) (*Data, error) {
	if len(p.Exempt) > MaxExempt {
		return nil, fmt.Errorf("bind guard: %d exempt UIDs, at most %d fit its exempt map", len(p.Exempt), MaxExempt)
	}
	d := &Data{MinUID: p.MinUID, Exempt: slices.Compact(slices.Sorted(slices.Values(p.Exempt))), Ports: make([]Port, portsEntries)}
	for proto := range Proto(numProtos) {
		base := Index(proto, 0)
		for port := uint32(p.Zone.Lo); port <= uint32(p.Zone.Hi); port++ {
			d.Ports[base+port].Flags = FlagZone
		}
		for _, r := range p.BindGuard.Reserved {
			for port := uint32(r.Lo); port <= uint32(r.Hi); port++ {
				d.Ports[base+port].Flags |= FlagReserved
			}
		}
	}
	for _, a := range p.Accounts {
		for _, pp := range a.Protocols {
			proto, ok := protoOf(pp)
			if !ok {
				continue
			}
			for _, r := range a.Ports {
				for port := uint32(r.Lo); port <= uint32(r.Hi); port++ {
					e := &d.Ports[Index(proto, uint16(port))]
					switch {
					case e.Flags&FlagOwned != 0 && e.Owner != a.UID:
						return nil, fmt.Errorf("bind guard: %s port %d is given to UID %d and to UID %d", proto, port, e.Owner, a.UID)
					case e.Flags&FlagReserved != 0:
						return nil, fmt.Errorf("bind guard: %s port %d of UID %d is reserved", proto, port, a.UID)
					}
					e.Owner, e.Flags = a.UID, e.Flags|FlagOwned
				}
			}
		}
	}
	return d, nil
}

func protoOf(p policies.Protocol) (Proto, bool) {
	switch p {
	case policies.TCP:
		return TCP, true
	case policies.UDP:
		return UDP, true
	}
	return 0, false
}

// PortChange is one entry of the ports map that differs.
type PortChange struct {
	Proto    Proto
	Port     uint16
	Old, New Port
}

// Diff is what an Install would change in the maps.
type Diff struct {
	// MinUID is set when the installed min_uid differs (or none is
	// installed): Old and New.
	MinUID *[2]uint32
	// ExemptAdd and ExemptDel are the exempt UIDs to add and to remove.
	ExemptAdd, ExemptDel []uint32
	// Ports are the port entries that change, by key order.
	Ports []PortChange
}

// Empty reports whether the maps already hold what was compared.
func (d *Diff) Empty() bool {
	return d.MinUID == nil && len(d.ExemptAdd) == 0 && len(d.ExemptDel) == 0 && len(d.Ports) == 0
}

// diffData compares what the maps hold (cur) with what they should (want).
// cur.Ports may be nil: nothing installed, every non-empty entry changes.
func diffData(cur, want *Data, curConfigOK bool) *Diff {
	d := &Diff{}
	if !curConfigOK || cur.MinUID != want.MinUID {
		d.MinUID = &[2]uint32{cur.MinUID, want.MinUID}
	}
	for _, u := range want.Exempt {
		if _, found := slices.BinarySearch(cur.Exempt, u); !found {
			d.ExemptAdd = append(d.ExemptAdd, u)
		}
	}
	for _, u := range cur.Exempt {
		if _, found := slices.BinarySearch(want.Exempt, u); !found {
			d.ExemptDel = append(d.ExemptDel, u)
		}
	}
	for i := range want.Ports {
		var old Port
		if cur.Ports != nil {
			old = cur.Ports[i]
		}
		if old != want.Ports[i] {
			d.Ports = append(d.Ports, PortChange{Proto: Proto(i >> 16), Port: uint16(i), Old: old, New: want.Ports[i]})
		}
	}
	return d
}

// Refuses reports whether the bind programs refuse uid's explicit bind to
// port for protocol p (UDP-Lite binds as UDP): the same decision the
// programs make, for audit. Port 0 and UIDs that are not enforced always
// pass.
func (d *Data) Refuses(uid uint32, p Proto, port uint16) bool {
	if port == 0 || uid < d.MinUID {
		return false
	}
	if _, exempt := slices.BinarySearch(d.Exempt, uid); exempt {
		return false
	}
	e := d.Lookup(p, port)
	if e.Flags&FlagReserved != 0 {
		return true
	}
	return e.Flags&FlagZone != 0 && (e.Flags&FlagOwned == 0 || e.Owner != uid)
}
