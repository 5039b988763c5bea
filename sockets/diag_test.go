//go:build linux

package sockets

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"
)

func TestEncodeRequest(t *testing.T) {
	b := encodeRequest(unix.AF_INET6, unix.IPPROTO_TCP, 1<<stateListen)
	want := make([]byte, 56)
	want[0], want[1] = unix.AF_INET6, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(want[4:], 1<<10)
	if diff := cmp.Diff(want, b); diff != "" {
		t.Errorf("request (-want +got):\n%s", diff)
	}
}

// message builds an inet_diag_msg as the kernel lays it out.
func message(family uint8, addr netip.Addr, port uint16, ifindex, uid, inode uint32) []byte {
	b := make([]byte, messageLen+8) // attributes may follow; they are ignored
	b[0], b[1] = family, stateListen
	binary.BigEndian.PutUint16(b[4:], port)
	binary.BigEndian.PutUint16(b[6:], 0)
	a := addr.AsSlice()
	copy(b[8:], a)
	binary.NativeEndian.PutUint32(b[40:], ifindex)
	binary.NativeEndian.PutUint32(b[64:], uid)
	binary.NativeEndian.PutUint32(b[68:], inode)
	return b
}

func TestDecodeMessage(t *testing.T) {
	tests := []struct {
		name   string
		family uint8
		addr   string
		want   Socket
	}{
		{"ipv4", unix.AF_INET, "198.18.0.1",
			Socket{Proto: TCP, Addr: netip.MustParseAddr("198.18.0.1"), Port: 40010, Interface: 0, UID: 1012, Inode: 4242}},
		{"ipv6", unix.AF_INET6, "2001:db8::1",
			Socket{Proto: TCP, Addr: netip.MustParseAddr("2001:db8::1"), Port: 40010, Interface: 3, UID: 1012, Inode: 4242}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := message(tt.family, netip.MustParseAddr(tt.addr), 40010, tt.want.Interface, 1012, 4242)
			got, err := decodeMessage(b, TCP)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
	if _, err := decodeMessage(make([]byte, messageLen-1), TCP); err == nil {
		t.Error("short message decoded without error")
	}
	bad := message(unix.AF_INET, netip.MustParseAddr("198.18.0.1"), 1, 0, 0, 0)
	bad[0] = unix.AF_UNIX
	if _, err := decodeMessage(bad, TCP); err == nil {
		t.Error("AF_UNIX message decoded without error")
	}
}

// TestListOwnSockets reads this process's own sockets through sock_diag,
// which needs no privileges for the caller's own namespace.
func TestListOwnSockets(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pc, err := net.ListenPacket("udp6", "[::1]:0")
	if err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	defer pc.Close()

	tcpInode := inodeOf(t, ln.(*net.TCPListener))
	udpInode := inodeOf(t, pc.(*net.UDPConn))
	list, err := List()
	if err != nil {
		t.Fatal(err)
	}
	uid := uint32(os.Geteuid())
	want := map[uint64]Socket{
		tcpInode: {Proto: TCP, Addr: netip.MustParseAddr("127.0.0.1"), Port: uint16(ln.Addr().(*net.TCPAddr).Port), UID: uid, Inode: tcpInode},
		udpInode: {Proto: UDP, Addr: netip.MustParseAddr("::1"), Port: uint16(pc.LocalAddr().(*net.UDPAddr).Port), UID: uid, Inode: udpInode},
	}
	for _, s := range list {
		if w, ok := want[s.Inode]; ok {
			if s != w {
				t.Errorf("socket %d: got %+v, want %+v", s.Inode, s, w)
			}
			delete(want, s.Inode)
		}
	}
	for _, w := range want {
		t.Errorf("List did not return %+v", w)
	}

	holders, _, err := Holders("/proc", []uint64{tcpInode, udpInode})
	if err != nil {
		t.Fatal(err)
	}
	for _, ino := range []uint64{tcpInode, udpInode} {
		if ps := holders[ino]; len(ps) != 1 || ps[0].PID != os.Getpid() {
			t.Errorf("holders of socket %d: %+v, want this process (%d)", ino, ps, os.Getpid())
		}
	}
}

func inodeOf(t *testing.T, c syscall.Conn) uint64 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.Fstat(int(fd), &st) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
	return st.Ino
}

// TestListUDPLite: a bound UDP-Lite socket (any user can open one) is
// listed, as a UDP one is, through udp_diag.
func TestListUDPLite(t *testing.T) {
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDPLITE)
	if err != nil {
		t.Skip("no UDP-Lite in this kernel:", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: [16]byte{15: 1}}); err != nil {
		t.Skip("no IPv6 loopback:", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	list, err := List()
	if err != nil {
		t.Fatal(err)
	}
	want := Socket{Proto: UDPLite, Addr: netip.MustParseAddr("::1"), Port: uint16(sa.(*unix.SockaddrInet6).Port), UID: uint32(os.Geteuid()), Inode: st.Ino}
	for _, s := range list {
		if s.Inode == st.Ino {
			if s != want {
				t.Errorf("got %+v, want %+v", s, want)
			}
			return
		}
	}
	t.Errorf("List did not return %+v", want)
}
