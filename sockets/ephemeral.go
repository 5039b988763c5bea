package sockets

import (
	"fmt"
	"strconv"
	"strings"
)

// AutoPorts are the ports the kernel may give a socket that does not bind
// one itself: net.ipv4.ip_local_port_range (IPv6 uses it too) minus
// net.ipv4.ip_local_reserved_ports.
//
// An unconnected UDP socket on such a port may be a client's (QUIC and some
// resolvers send from one without connecting it), so audit does not take it
// for a server without asking. On a port outside them it was bound on
// purpose. Reserving the zone (ip_local_reserved_ports=40010-49999) makes
// that so for every zone port.
type AutoPorts struct {
	Lo, Hi   uint16
	Reserved []PortRange
}

// PortRange is an inclusive range of ports.
type PortRange struct{ Lo, Hi uint16 }

// DefaultAutoPorts is Linux's default: 32768-60999, nothing reserved.
var DefaultAutoPorts = AutoPorts{Lo: 32768, Hi: 60999}

// Contains reports whether the kernel may pick port for a socket.
func (a AutoPorts) Contains(port uint16) bool {
	if port < a.Lo || port > a.Hi {
		return false
	}
	for _, r := range a.Reserved {
		if r.Lo <= port && port <= r.Hi {
			return false
		}
	}
	return true
}

// parsePortList parses the kernel's list syntax: "40010-49999,50100".
func parsePortList(s string) ([]PortRange, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var out []PortRange
	for _, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		if !isRange {
			hi = lo
		}
		l, err1 := strconv.ParseUint(lo, 10, 16)
		h, err2 := strconv.ParseUint(hi, 10, 16)
		if err1 != nil || err2 != nil || l > h {
			return nil, fmt.Errorf("%q is not a port or port range", part)
		}
		out = append(out, PortRange{uint16(l), uint16(h)})
	}
	return out, nil
}
