package sockets

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
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

// ReadAutoPorts reads the AutoPorts of the current network namespace or of
// the one WithNetNS names.
func ReadAutoPorts(opts ...Option) (AutoPorts, error) {
	l := &lister{}
	for _, o := range opts {
		if err := o(l); err != nil {
			return AutoPorts{}, err
		}
	}
	if l.ns == nil {
		return readAutoPorts()
	}
	defer l.ns.Close()
	type result struct {
		a   AutoPorts
		err error
	}
	done := make(chan result, 1)
	go func() {
		// /proc/sys/net answers for the network namespace of the thread
		// that reads it. This goroutine's thread enters the namespace and
		// stays locked until the goroutine ends, when Go destroys the
		// thread rather than let another goroutine run in the namespace.
		runtime.LockOSThread()
		if err := unix.Setns(int(l.ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{err: fmt.Errorf("entering the network namespace: %w", err)}
			return
		}
		a, err := readAutoPorts()
		done <- result{a, err}
	}()
	r := <-done
	return r.a, r.err
}

const (
	portRangeFile     = "/proc/sys/net/ipv4/ip_local_port_range"
	reservedPortsFile = "/proc/sys/net/ipv4/ip_local_reserved_ports"
)

func readAutoPorts() (AutoPorts, error) {
	b, err := os.ReadFile(portRangeFile)
	if err != nil {
		return AutoPorts{}, err
	}
	var a AutoPorts
	if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &a.Lo, &a.Hi); err != nil || a.Lo == 0 || a.Lo > a.Hi {
		return AutoPorts{}, fmt.Errorf("%s holds %q, not a port range", portRangeFile, b)
	}
	b, err = os.ReadFile(reservedPortsFile)
	if err != nil {
		return AutoPorts{}, err
	}
	if a.Reserved, err = parsePortList(string(b)); err != nil {
		return AutoPorts{}, fmt.Errorf("%s: %w", reservedPortsFile, err)
	}
	return a, nil
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
