// Package allocation hands out port ranges to new accounts: it finds a free
// block in the zone and writes the account's policy file into the include
// directory, under a lock, so that a control panel creating accounts in
// parallel never gives two of them the same ports.
package allocation

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/nftpol/nftpol/policies"
)

// Free returns the parts of zone that no range of used covers, in port
// order. used may be unsorted and overlapping, and may reach outside zone.
func Free(zone policies.PortRange, used []policies.PortRange) []policies.PortRange {
	used = slices.Clone(used)
	slices.SortFunc(used, func(a, b policies.PortRange) int { return cmp.Compare(a.Lo, b.Lo) })
	var free []policies.PortRange
	next := int(zone.Lo) // first port not yet covered or handed out; int: Hi+1 may be 65536
	for _, r := range used {
		if int(r.Hi) < next {
			continue
		}
		if int(r.Lo) > next && next <= int(zone.Hi) {
			free = append(free, policies.PortRange{Lo: uint16(next), Hi: uint16(min(int(r.Lo)-1, int(zone.Hi)))})
		}
		next = max(next, int(r.Hi)+1)
	}
	if next <= int(zone.Hi) {
		free = append(free, policies.PortRange{Lo: uint16(next), Hi: zone.Hi})
	}
	return free
}

// FullError is returned by Find when no block of the size asked for is free.
type FullError struct {
	Zone policies.PortRange
	Size int
	// Free is the number of free ports, Largest the largest free block
	// (zero when the zone is full).
	Free    int
	Largest policies.PortRange
}

func (e *FullError) Error() string {
	if e.Free == 0 {
		return fmt.Sprintf("no free block of %d ports: every port of the zone %s belongs to an account; free some or widen the zone", e.Size, e.Zone.String())
	}
	return fmt.Sprintf("no free block of %d ports in the zone %s: %d ports are free, the largest free block is %s (%d ports); ask for at most %d, free some ports or widen the zone",
		e.Size, e.Zone.String(), e.Free, e.Largest.String(), size(e.Largest), size(e.Largest))
}

// Find returns the lowest block of size ports in zone that overlaps no range
// of used. Blocks aligned to size — starting at zone.Lo + k*size, so that
// accounts of one size tile the zone without gaps — come first; an unaligned
// block is returned only when no aligned one is free. When there is none at
// all, the error is a *FullError.
func Find(zone policies.PortRange, used []policies.PortRange, n int) (policies.PortRange, error) {
	if n < 1 || n > size(zone) {
		return policies.PortRange{}, fmt.Errorf("size %d is not between 1 and the zone's %d ports (%s)", n, size(zone), zone.String())
	}
	free := Free(zone, used)
	for _, f := range free {
		// The first aligned start at or after f.Lo.
		off := (int(f.Lo) - int(zone.Lo) + n - 1) / n * n
		lo := int(zone.Lo) + off
		if lo+n-1 <= int(f.Hi) {
			return policies.PortRange{Lo: uint16(lo), Hi: uint16(lo + n - 1)}, nil
		}
	}
	for _, f := range free {
		if size(f) >= n {
			return policies.PortRange{Lo: f.Lo, Hi: uint16(int(f.Lo) + n - 1)}, nil
		}
	}
	e := &FullError{Zone: zone, Size: n}
	for _, f := range free {
		e.Free += size(f)
		if size(f) > size(e.Largest) {
			e.Largest = f
		}
	}
	return policies.PortRange{}, e
}

// size is the number of ports in r; 0 for the zero range.
func size(r policies.PortRange) int {
	if r.Lo == 0 {
		return 0
	}
	return int(r.Hi) - int(r.Lo) + 1
}
