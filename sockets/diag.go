//go:build linux

package sockets

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/netns"
)

// Option changes how List works.
type Option func(*lister) error

type lister struct {
	ns *os.File
}

// WithNetNS makes List read the sockets of the network namespace called
// name, as `ip netns add` creates it (/run/netns/NAME). A name containing a
// slash is taken as a path (/proc/PID/ns/net works too). Entering another
// namespace needs CAP_SYS_ADMIN.
func WithNetNS(name string) Option {
	return func(l *lister) error {
		f, err := netns.Open(name)
		if err != nil {
			return err
		}
		l.ns = f
		return nil
	}
}

// List returns the listening TCP and SCTP sockets and the bound,
// unconnected UDP and UDP-Lite sockets of the current network namespace (or the one WithNetNS names),
// IPv4 and IPv6, sorted by protocol, port, address and UID.
//
// Connected UDP sockets are left out: they talk to one peer, as clients do,
// and a UDP server has an unconnected socket on its port anyway. So are UDP
// sockets without a port.
func List(opts ...Option) ([]Socket, error) {
	l := &lister{}
	defer func() {
		if l.ns != nil {
			l.ns.Close()
		}
	}()
	for _, o := range opts {
		if err := o(l); err != nil {
			return nil, err
		}
	}
	cfg := &netlink.Config{}
	if l.ns != nil {
		cfg.NetNS = int(l.ns.Fd())
	}
	conn, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, cfg)
	if err != nil {
		hint := ""
		if l.ns != nil && errors.Is(err, unix.EPERM) {
			hint = " (entering another network namespace needs root)"
		}
		return nil, fmt.Errorf("opening a sock_diag netlink socket: %w%s", err, hint)
	}
	defer conn.Close()

	var out []Socket
	for _, q := range queries {
		if q.present != nil && !q.present() {
			continue // the kernel has no such protocol: no such sockets either
		}
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			msgs, err := conn.Execute(netlink.Message{
				Header: netlink.Header{Type: unix.SOCK_DIAG_BY_FAMILY, Flags: netlink.Request | netlink.Dump},
				Data:   encodeRequest(family, q.protocol, q.states),
			})
			if err != nil {
				return nil, fmt.Errorf("reading %s sockets through sock_diag: %w%s", q.proto, err, q.hint(err))
			}
			for _, m := range msgs {
				s, err := decodeMessage(m.Data, q.proto)
				if err != nil {
					return nil, fmt.Errorf("reading %s sockets through sock_diag: %w", q.proto, err)
				}
				if s.Port == 0 {
					continue
				}
				out = append(out, s)
			}
		}
	}
	Sort(out)
	return out, nil
}

// Kernel socket states (include/net/tcp_states.h); sock_diag filters on a
// bit mask of them.
const (
	stateListen = 10 // TCP_LISTEN
	stateClose  = 7  // TCP_CLOSE: what an unconnected UDP socket reports
)

type query struct {
	proto    Proto
	protocol uint8
	states   uint32
	// present, when set, reports whether the kernel has the protocol at
	// all; without it there are no such sockets to ask for.
	present func() bool
}

// queries: UDP-Lite sockets are answered by udp_diag, as UDP's; SCTP's by
// sctp_diag. SCTP is a module that distribution kernels load when a first
// socket needs it; it is asked only when loaded (or built in), since asking
// sock_diag would load sctp_diag, and SCTP with it, on a host that had
// none. A listening SCTP socket (either style) reports TCP_LISTEN, as TCP's
// does.
var queries = []query{
	{TCP, unix.IPPROTO_TCP, 1 << stateListen, nil},
	{UDP, unix.IPPROTO_UDP, 1 << stateClose, nil},
	{UDPLite, unix.IPPROTO_UDPLITE, 1 << stateClose, nil},
	{SCTP, unix.IPPROTO_SCTP, 1 << stateListen, sctpLoaded},
}

// sctpLoaded reports whether the kernel has SCTP: it makes /proc/net/sctp
// in every network namespace once loaded.
func sctpLoaded() bool {
	_, err := os.Stat("/proc/net/sctp")
	return err == nil
}

// hint says what to do about errors with a known cause.
func (q query) hint(err error) string {
	if (q.proto == UDP || q.proto == UDPLite) && errors.Is(err, unix.ENOENT) {
		// inet_diag answers ENOENT for a protocol with no diag handler.
		return " (the kernel has no udp_diag; load it with `modprobe udp_diag`)"
	}
	if q.proto == SCTP && errors.Is(err, unix.ENOENT) {
		return " (the kernel has SCTP but no sctp_diag; load it with `modprobe sctp_diag`)"
	}
	return ""
}

// Sizes of the kernel's structures (include/uapi/linux/inet_diag.h).
const (
	sockIDLen  = 48 // struct inet_diag_sockid
	requestLen = 8 + sockIDLen
	messageLen = 4 + sockIDLen + 20
)

// encodeRequest builds a struct inet_diag_req_v2 that dumps every socket of
// family and protocol in one of states. No extensions are asked for: the
// fixed part of the answer has all List needs.
func encodeRequest(family, protocol uint8, states uint32) []byte {
	b := make([]byte, requestLen)
	b[0] = family   // sdiag_family
	b[1] = protocol // sdiag_protocol
	// b[2] idiag_ext = 0, b[3] pad
	binary.NativeEndian.PutUint32(b[4:8], states) // idiag_states
	// id (struct inet_diag_sockid) stays zero: a dump ignores it.
	return b
}

// decodeMessage reads the fixed part of a struct inet_diag_msg:
//
//	u8 family, state, timer, retrans
//	inet_diag_sockid id: be16 sport, dport; be32 src[4], dst[4]; u32 if; u32 cookie[2]
//	u32 expires, rqueue, wqueue, uid, inode
func decodeMessage(b []byte, proto Proto) (Socket, error) {
	if len(b) < messageLen {
		return Socket{}, fmt.Errorf("inet_diag_msg of %d bytes, want at least %d", len(b), messageLen)
	}
	id := b[4 : 4+sockIDLen]
	s := Socket{
		Proto:     proto,
		Port:      binary.BigEndian.Uint16(id[0:2]),
		Interface: binary.NativeEndian.Uint32(id[36:40]),
		UID:       binary.NativeEndian.Uint32(b[64:68]),
		Inode:     uint64(binary.NativeEndian.Uint32(b[68:72])),
	}
	switch b[0] {
	case unix.AF_INET:
		s.Addr = netip.AddrFrom4([4]byte(id[4:8]))
	case unix.AF_INET6:
		s.Addr = netip.AddrFrom16([16]byte(id[4:20]))
	default:
		return Socket{}, fmt.Errorf("inet_diag_msg of address family %d, want %d or %d", b[0], unix.AF_INET, unix.AF_INET6)
	}
	return s, nil
}
