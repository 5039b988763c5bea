//go:build linux

package offenders

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// NFLOG, the netfilter log over netlink (linux/netfilter/nfnetlink_log.h).
// No client library is served to this project, and the agent needs only
// this much: bind one group, ask for metadata only, one message per packet
// at once, and be told when a message comes.
const (
	nfnlSubsysULOG  = 4
	nfulnlMsgPacket = 0
	nfulnlMsgConfig = 1

	nfulaCfgCmd     = 1
	nfulaCfgMode    = 2
	nfulaCfgQthresh = 5

	nfulnlCfgCmdBind = 1

	nfulnlCopyMeta = 1
)

// Bell rings when the kernel logs a packet to an NFLOG group: the doorbell
// rules of nftpol's table (compiler.NotifyGroup) say a serving packet was
// blocked. The rules are rate-limited, so a flood rings it a few times a
// second, never once per packet.
type Bell struct {
	conn *netlink.Conn
	c    chan struct{}
	done chan struct{}
	err  error
}

// ListenBell binds group in the network namespace ns ("" for this
// process's). Only one socket can bind a group: a second agent, or another
// NFLOG reader of the same group, makes it fail with EBUSY.
func ListenBell(ns *os.File, group uint16) (*Bell, error) {
	cfg := &netlink.Config{}
	if ns != nil {
		cfg.NetNS = int(ns.Fd())
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, fmt.Errorf("nflog: %w", err)
	}
	b := &Bell{conn: conn, c: make(chan struct{}, 1), done: make(chan struct{})}
	// Metadata only (no payload: the agent reads what it needs from the
	// violation sets), and each message sent at once rather than batched
	// for up to a second (the kernel's defaults are 100 messages or 1 s).
	mode := binary.BigEndian.AppendUint32(nil, 0)
	mode = append(mode, nfulnlCopyMeta, 0)
	steps := []struct {
		what  string
		attrs []netlink.Attribute
	}{
		{"bind", []netlink.Attribute{{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdBind}}}},
		{"copy mode", []netlink.Attribute{{Type: nfulaCfgMode, Data: mode}}},
		{"queue threshold", []netlink.Attribute{{Type: nfulaCfgQthresh, Data: binary.BigEndian.AppendUint32(nil, 1)}}},
	}
	for _, s := range steps {
		if err := b.config(group, s.attrs); err != nil {
			conn.Close()
			if errors.Is(err, unix.EBUSY) {
				return nil, fmt.Errorf("nflog group %d: another process reads it (%w)", group, err)
			}
			return nil, fmt.Errorf("nflog group %d: %s: %w", group, s.what, err)
		}
	}
	go b.receive()
	return b, nil
}

func (b *Bell) config(group uint16, attrs []netlink.Attribute) error {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return err
	}
	msg := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(nfnlSubsysULOG<<8 | nfulnlMsgConfig),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: append(nfgenmsg(unix.AF_UNSPEC, group), data...),
	}
	_, err = b.conn.Execute(msg)
	return err
}

// nfgenmsg is netfilter's header: family, version 0, resource id (the
// group) in network byte order.
func nfgenmsg(family uint8, res uint16) []byte {
	return binary.BigEndian.AppendUint16([]byte{family, 0}, res)
}

// C delivers a value after the kernel logged packets; values coalesce.
func (b *Bell) C() <-chan struct{} { return b.c }

// Done is closed when the bell stops (Close, or an error: Err says).
func (b *Bell) Done() <-chan struct{} { return b.done }

// Err is why the bell stopped, nil after Close.
func (b *Bell) Err() error { return b.err }

func (b *Bell) receive() {
	defer close(b.done)
	for {
		msgs, err := b.conn.Receive()
		if err != nil {
			// The socket's buffer overflowed: messages were lost,
			// which still means packets were logged.
			if errors.Is(err, unix.ENOBUFS) {
				b.ring()
				continue
			}
			if !errors.Is(err, os.ErrClosed) && !isClosed(err) {
				b.err = err
			}
			return
		}
		for _, m := range msgs {
			if m.Header.Type == netlink.HeaderType(nfnlSubsysULOG<<8|nfulnlMsgPacket) {
				b.ring()
				break
			}
		}
	}
}

func isClosed(err error) bool {
	var op *netlink.OpError
	return errors.As(err, &op) && errors.Is(op.Err, os.ErrClosed)
}

func (b *Bell) ring() {
	select {
	case b.c <- struct{}{}:
	default:
	}
}

// Close unbinds the group and stops the bell.
func (b *Bell) Close() error {
	return b.conn.Close()
}
