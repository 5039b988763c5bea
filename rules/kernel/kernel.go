//go:build linux

package kernel

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/netns"
)

// Kernel reads and writes one network namespace's nf_tables.
type Kernel struct {
	opts []nftables.ConnOption
	ns   *os.File
	// fake receives the batches Apply would send (WithTestDial).
	fake nltest.Func
	// commitConn is the socket commits are sent on, open until Close.
	commitConn *netlink.Conn
	// commitBuf is the send and receive buffer size set on commitConn
	// (0: none yet).
	commitBuf int
	// own: the tables this Kernel writes are owned by commitConn
	// (WithOwnership).
	own bool
	// ports are the netlink port ids every commit socket of this Kernel
	// had, so that a Watcher can tell its commits from others' (the
	// kernel stamps each notification with the committer's port id).
	portsMu sync.Mutex
	ports   []uint32
}

// Option configures a Kernel.
type Option func(*Kernel) error

// WithNetNS makes the Kernel work on the network namespace called name, as
// `ip netns add` creates it (/run/netns/NAME), while the process stays in
// its own namespace. A name containing a slash is taken as a path.
func WithNetNS(name string) Option {
	return func(k *Kernel) error {
		f, err := netns.Open(name)
		if err != nil {
			return err
		}
		k.ns = f
		k.opts = append(k.opts, nftables.WithNetNSFd(int(f.Fd())))
		return nil
	}
}

// WithTestDial sends every netlink message to f instead of the kernel; unit
// tests use it to see the messages without root.
func WithTestDial(f nltest.Func) Option {
	return func(k *Kernel) error {
		k.opts = append(k.opts, nftables.WithTestDial(f))
		k.fake = f
		return nil
	}
}

// Open returns a Kernel. Close it to release the namespace handle.
func Open(opts ...Option) (*Kernel, error) {
	k := &Kernel{}
	for _, o := range opts {
		if err := o(k); err != nil {
			k.Close()
			return nil, err
		}
	}
	return k, nil
}

// Close releases the Kernel's resources.
func (k *Kernel) Close() error {
	var errs []error
	if k.commitConn != nil {
		errs = append(errs, k.commitConn.Close())
		k.commitConn, k.commitBuf = nil, 0
	}
	if k.ns != nil {
		errs = append(errs, k.ns.Close())
		k.ns = nil
	}
	return errors.Join(errs...)
}

// dial opens a netfilter netlink socket in the Kernel's namespace.
func (k *Kernel) dial() (*netlink.Conn, error) {
	var cfg netlink.Config
	if k.ns != nil {
		cfg.NetNS = int(k.ns.Fd())
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &cfg)
	if err != nil {
		return nil, noNetfilter(err)
	}
	return conn, nil
}

// noNetfilter explains the error of a kernel without netfilter netlink.
func noNetfilter(err error) error {
	if errors.Is(err, unix.EPROTONOSUPPORT) {
		return fmt.Errorf("this kernel has no nf_tables netlink interface (modules nfnetlink, nf_tables): %w", err)
	}
	return fmt.Errorf("netlink: %w", err)
}

// conn returns the socket that the Kernel's commits and generation
// requests go over, opened on first use and kept until Close. Opening one
// in another namespace costs a thread's trip into it; and closing a
// netfilter socket right after a commit that freed something makes the
// kernel wait for that commit's cleanup, an RCU grace period
// (nft_rcv_nl_event flushes the transaction destroy work): 5-20 ms here.
// Closed at the end of the command, after the state is saved, the wait has
// partly passed, and it is paid once.
func (k *Kernel) conn() (*netlink.Conn, error) {
	if k.commitConn == nil {
		c, err := k.dial()
		if err != nil {
			return nil, err
		}
		k.commitConn = c
		k.portsMu.Lock()
		k.ports = append(k.ports, c.PID())
		k.portsMu.Unlock()
	}
	return k.commitConn, nil
}

// CommitPort returns the netlink port id of the socket the Kernel commits
// on, opening it if need be. The kernel puts it into the header of every
// notification of a transaction committed on that socket; a Watcher made
// by this Kernel counts those transactions as Own.
func (k *Kernel) CommitPort() (uint32, error) {
	if k.fake != nil {
		return 0, errors.New("no commit socket for a test dial")
	}
	c, err := k.conn()
	if err != nil {
		return 0, err
	}
	return c.PID(), nil
}

// ownPort says whether port is, or was, one of the Kernel's commit sockets.
func (k *Kernel) ownPort(port uint32) bool {
	k.portsMu.Lock()
	defer k.portsMu.Unlock()
	for _, p := range k.ports {
		if p == port {
			return true
		}
	}
	return false
}

// dropConn closes the kept socket, after a failed exchange on it.
func (k *Kernel) dropConn() {
	if k.commitConn != nil {
		k.commitConn.Close()
		k.commitConn, k.commitBuf = nil, 0
	}
}
