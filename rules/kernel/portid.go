//go:build linux

package kernel

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// portPID returns the process that holds the netfilter netlink socket with
// port ID port in the Kernel's namespace, or 0 if it is not found or held
// by more than one process. A port ID is not a PID (only a process's first
// netlink socket gets its PID; the others get numbers the kernel makes up),
// so it goes by the socket: netlink sock_diag (NETLINK_SOCK_DIAG, module
// netlink_diag) gives the socket's inode, and /proc/PID/fd the processes
// that hold that inode.
func (k *Kernel) portPID(port uint32) int {
	if k.fake != nil || port == 0 {
		return 0
	}
	ino := k.portInode(port)
	if ino == 0 {
		return 0
	}
	return inodePID(ino)
}

// portInode asks netlink sock_diag for the inode of the netfilter socket
// with port ID port; 0 when it cannot tell.
func (k *Kernel) portInode(port uint32) uint64 {
	var cfg netlink.Config
	if k.ns != nil {
		cfg.NetNS = int(k.ns.Fd())
	}
	conn, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, &cfg)
	if err != nil {
		return 0
	}
	defer conn.Close()
	// struct netlink_diag_req: family, protocol, pad, ino, show, cookie.
	req := make([]byte, 20)
	req[0] = unix.AF_NETLINK
	req[1] = unix.NETLINK_NETFILTER
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.SOCK_DIAG_BY_FAMILY, Flags: netlink.Request | netlink.Dump},
		Data:   req,
	})
	if err != nil {
		return 0
	}
	for _, m := range msgs {
		// struct netlink_diag_msg: family, type, protocol, state, portid,
		// dst_portid, dst_group, ino, cookie.
		if len(m.Data) < 20 || m.Data[2] != unix.NETLINK_NETFILTER {
			continue
		}
		if binary.NativeEndian.Uint32(m.Data[4:]) == port {
			return uint64(binary.NativeEndian.Uint32(m.Data[16:]))
		}
	}
	return 0
}

// inodePID returns the one process that has socket inode ino open, or 0.
func inodePID(ino uint64) int {
	want := "socket:[" + strconv.FormatUint(ino, 10) + "]"
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	found := 0
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		fds, err := os.ReadDir(filepath.Join("/proc", p.Name(), "fd"))
		if err != nil {
			continue
		}
		for _, fd := range fds {
			if l, err := os.Readlink(filepath.Join("/proc", p.Name(), "fd", fd.Name())); err == nil && l == want {
				if found != 0 {
					return 0 // shared, by fork or SCM_RIGHTS: no one owner
				}
				found = pid
				break
			}
		}
	}
	return found
}
