//go:build linux

package sockets

import (
	"fmt"
	"os"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

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
