//go:build linux

package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Generation returns the ruleset generation of the Kernel's namespace. It
// changes with every committed transaction, whoever commits it.
func (k *Kernel) Generation() (uint32, error) {
	if k.fake != nil {
		return 0, nil
	}
	conn, err := k.conn()
	if err != nil {
		return 0, err
	}
	g, err := generation(conn)
	if err != nil {
		k.dropConn()
	}
	return g, err
}

func generation(conn *netlink.Conn) (uint32, error) {
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type: netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN),
			// No acknowledgement: the reply is the answer, an error
			// comes back without asking, and an ack would stay
			// unread on the kept socket (Kernel.conn) for the next
			// request to trip over.
			Flags: netlink.Request,
		},
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	})
	if err != nil {
		return 0, fmt.Errorf("reading the ruleset generation: %w", err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, err
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				return ad.Uint32(), nil
			}
		}
	}
	return 0, errors.New("reading the ruleset generation: no generation in the kernel's answer")
}

// soNetnsCookie is SO_NETNS_COOKIE (asm-generic/socket.h, Linux 5.14), not
// yet named by golang.org/x/sys/unix.
const soNetnsCookie = 71

// Identity says which kernel ruleset a generation number belongs to. A
// generation alone is not enough: it restarts at every boot and in every new
// namespace. The boot ID changes with every boot; the namespace cookie is
// never reused within a boot.
type Identity struct {
	BootID      string `json:"boot_id"`
	NetnsCookie uint64 `json:"netns_cookie"`
	Generation  uint32 `json:"generation"`
}

// Identity returns the identity of the Kernel's ruleset as it is now.
func (k *Kernel) Identity() (Identity, error) {
	var id Identity
	if k.fake != nil {
		return id, errors.New("no identity for a test dial")
	}
	var err error
	if id.BootID, err = readBootID(); err != nil {
		return id, err
	}
	conn, err := k.conn()
	if err != nil {
		return id, err
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return id, err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		id.NetnsCookie, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, soNetnsCookie)
	}); err != nil {
		return id, err
	}
	if serr != nil {
		return id, fmt.Errorf("reading the network namespace cookie: %w", serr)
	}
	if id.Generation, err = generation(conn); err != nil {
		k.dropConn()
	}
	return id, err
}

// readBootID reads the boot ID once per process: it cannot change while
// the process runs, and an agent asks for its kernel's identity on every
// apply, where each file read after an idle spell is dear (see
// DESIGN.md's measured facts).
var readBootID = sync.OnceValues(func() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("reading the boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
})

// NextGeneration is the generation a commit made at generation g leaves
// behind: the kernel increments it once per transaction, skipping 0.
func NextGeneration(g uint32) uint32 {
	if g+1 == 0 {
		return 1
	}
	return g + 1
}
