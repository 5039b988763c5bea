// Package sockets lists the sockets that can serve clients — listening TCP
// and SCTP sockets, bound UDP and UDP-Lite sockets — of a network namespace, and finds the
// processes that hold them.
//
// Sockets are read through the kernel's sock_diag netlink interface (the one
// ss(8) uses), not by parsing /proc/net/tcp: sock_diag answers for the
// namespace the netlink socket was opened in, which is how WithNetNS looks
// into another namespace without moving the process. Processes are found by
// scanning /proc/PID/fd for the sockets' inodes; that scan covers every
// process visible in the PID namespace, whatever network namespace it is in,
// since socket inodes are unique machine-wide.
package sockets

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
)

// Proto is a transport protocol, spelled as nft spells it.
type Proto string

// The protocols List reads.
const (
	TCP     Proto = "tcp"
	UDP     Proto = "udp"
	UDPLite Proto = "udplite"
	SCTP    Proto = "sctp"
)

// Socket is one listening TCP socket or bound, unconnected UDP socket.
type Socket struct {
	Proto Proto
	// Addr is the local address; the unspecified address (0.0.0.0 or ::)
	// for a socket bound to every address. An IPv6 socket bound to :: also
	// receives IPv4 unless it is IPV6_V6ONLY.
	Addr netip.Addr
	Port uint16
	// Interface is the index of the interface the socket is bound to
	// (SO_BINDTODEVICE), 0 when it is not bound to one.
	Interface uint32
	// UID owns the socket: the effective UID of the process that created
	// it. It is what nftables' `meta skuid` matches, whoever holds the
	// socket now.
	UID uint32
	// Inode identifies the socket machine-wide; /proc/PID/fd links to it
	// as socket:[INODE].
	Inode uint64
}

// AddrPort returns the socket's local address and port.
func (s Socket) AddrPort() netip.AddrPort { return netip.AddrPortFrom(s.Addr, s.Port) }

// LoopbackIndex is the interface index of lo, the same in every network
// namespace: the kernel registers loopback first in each.
const LoopbackIndex = 1

// LocalOnly reports whether the socket can be reached only from this
// machine: it is bound to a loopback address (127.0.0.0/8, ::1, or
// ::ffff:127.x.y.z) or to the loopback interface.
func (s Socket) LocalOnly() bool {
	return s.Addr.Unmap().IsLoopback() || s.Interface == LoopbackIndex
}

// Sort orders sockets by protocol, port, address, UID and inode.
func Sort(ss []Socket) {
	slices.SortFunc(ss, func(a, b Socket) int {
		return cmp.Or(
			strings.Compare(string(a.Proto), string(b.Proto)),
			cmp.Compare(a.Port, b.Port),
			a.Addr.Compare(b.Addr),
			cmp.Compare(a.UID, b.UID),
			cmp.Compare(a.Inode, b.Inode))
	})
}

// Process is a process that holds a socket (has a file descriptor for it).
// Several processes can hold one socket: a daemon's workers after fork, or
// a service manager that passed the socket on.
type Process struct {
	PID int
	// Command is the process's name as /proc/PID/comm gives it (at most 15
	// bytes), "" if it could not be read.
	Command string
}
