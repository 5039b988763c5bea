//go:build linux

package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Why nftpol sends its batches itself: google/nftables encodes the messages
// well, but its Flush joins the kernel's errors without saying which message
// failed, and it cannot add the ruleset generation to the batch. So the
// messages it encodes are captured (through its test dial) and sent here:
// one sendmsg, acknowledgements matched to messages by sequence number, and
// NFNL_BATCH_GENID on the batch header when the caller knows the generation
// its plan was computed against.

// ErrGenerationChanged is returned by a commit whose batch carried a ruleset
// generation that is no longer current: somebody changed the ruleset
// between the read and the write. The kernel applied nothing; read again,
// plan again, try again.
var ErrGenerationChanged = errors.New("the ruleset changed while the plan was computed")

// nfnlBatchGenID is NFNL_BATCH_GENID (linux/netfilter/nfnetlink.h).
const nfnlBatchGenID = 1

// ackTimeout bounds the wait for the kernel's acknowledgements; a commit of
// 50,000 elements takes well under a second.
const ackTimeout = 2 * time.Minute

// op is one call on a nftables.Conn that encodes exactly one message, with
// words for people when the kernel refuses it.
type op struct {
	desc string
	call func(*nftables.Conn) error
	// raw, when set instead of call, encodes the message itself.
	raw *rawMsg
	// modules the operation needs beyond nf_tables itself, named when the
	// kernel refuses it as unknown (ENOENT, EOPNOTSUPP).
	modules []string
}

// rawMsg is a message nftpol encodes itself (element lists, see
// appendElemMsg): its payload is appended straight into the send buffer.
type rawMsg struct {
	typ   netlink.HeaderType
	flags netlink.HeaderFlags
	data  func([]byte) []byte
}

// batchEdge is a batch's begin or end message, as google/nftables makes them.
func batchEdge(typ uint16) netlink.Message {
	return netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(typ), Flags: netlink.Request},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES},
	}
}

// encode runs ops on a Conn whose dial captures what it would send, and
// returns the batch: begin, one message per op, end. A raw op's message has
// no Data: its rawMsg appends it when the batch is sent (fill).
func encode(ops []op) (batch []netlink.Message, fill []*rawMsg, err error) {
	var captured []netlink.Message
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		captured = append(captured, req...)
		acks := make([]netlink.Message, 0, len(req))
		for _, m := range req {
			if m.Header.Flags&netlink.Acknowledge != 0 {
				acks = append(acks, netlink.Message{Header: netlink.Header{Type: netlink.Error, Sequence: m.Header.Sequence}, Data: make([]byte, 4)})
			}
		}
		return acks, nil
	}))
	if err != nil {
		return nil, nil, err
	}
	batch = []netlink.Message{batchEdge(unix.NFNL_MSG_BATCH_BEGIN)}
	fill = []*rawMsg{nil}
	// Runs of ops between raw ones are encoded by google/nftables, each
	// run flushed into a batch of its own whose begin and end are dropped.
	pending := 0
	flush := func() error {
		if pending == 0 {
			return nil
		}
		captured = captured[:0]
		if err := c.Flush(); err != nil {
			return fmt.Errorf("encoding the batch: %w", err)
		}
		if len(captured) != pending+2 {
			return fmt.Errorf("encoding the batch: %d messages for %d operations", len(captured)-2, pending)
		}
		for _, m := range captured[1 : len(captured)-1] {
			batch = append(batch, m)
			fill = append(fill, nil)
		}
		pending = 0
		return nil
	}
	for _, o := range ops {
		if o.raw != nil {
			if err := flush(); err != nil {
				return nil, nil, err
			}
			batch = append(batch, netlink.Message{Header: netlink.Header{Type: o.raw.typ, Flags: o.raw.flags}})
			fill = append(fill, o.raw)
			continue
		}
		if err := o.call(c); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", o.desc, err)
		}
		pending++
	}
	if err := flush(); err != nil {
		return nil, nil, err
	}
	batch = append(batch, batchEdge(unix.NFNL_MSG_BATCH_END))
	fill = append(fill, nil)
	// Fresh headers: the real connection numbers them.
	for i := range batch {
		batch[i].Header.Sequence, batch[i].Header.PID, batch[i].Header.Length = 0, 0, 0
	}
	return batch, fill, nil
}

// marshalBatch writes the batch into one buffer, raw messages encoded in
// place: the netlink package would marshal each message and then the whole
// batch again, megabytes of copies at 50,000 accounts. rawBytes is the
// expected size of the raw messages' payloads (for the buffer's capacity).
// It numbers the messages from base and returns their index by sequence
// number, and how many of them asked for an acknowledgement.
func marshalBatch(batch []netlink.Message, fill []*rawMsg, rawBytes int, base uint32) ([]byte, map[uint32]int, int) {
	size := rawBytes
	for _, m := range batch {
		size += align4(unix.NLMSG_HDRLEN + len(m.Data))
	}
	buf := make([]byte, 0, size)
	index := make(map[uint32]int, len(batch))
	pending := 0
	for i, m := range batch {
		seq := base + uint32(i)
		index[seq] = i
		if m.Header.Flags&netlink.Acknowledge != 0 {
			pending++
		}
		start := len(buf)
		buf = binary.NativeEndian.AppendUint32(buf, 0) // length, below
		buf = binary.NativeEndian.AppendUint16(buf, uint16(m.Header.Type))
		buf = binary.NativeEndian.AppendUint16(buf, uint16(m.Header.Flags))
		buf = binary.NativeEndian.AppendUint32(buf, seq)
		buf = binary.NativeEndian.AppendUint32(buf, 0) // port id: the kernel fills in ours
		if fill[i] != nil {
			buf = fill[i].data(buf)
		} else {
			buf = append(buf, m.Data...)
		}
		binary.NativeEndian.PutUint32(buf[start:], uint32(len(buf)-start))
		buf = pad4(buf)
	}
	return buf, index, pending
}

// send writes the batch in one sendmsg(2) (see marshalBatch).
func send(conn *netlink.Conn, batch []netlink.Message, fill []*rawMsg, rawBytes int) (map[uint32]int, int, error) {
	buf, index, pending := marshalBatch(batch, fill, rawBytes, uint32(time.Now().UnixNano()))
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, 0, err
	}
	var serr error
	err = raw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return !errors.Is(serr, unix.EAGAIN)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return nil, 0, fmt.Errorf("sending the batch (%d bytes): %w", len(buf), err)
	}
	return index, pending, nil
}

// commit sends ops as one batch and waits for the kernel's verdict. With a
// non-zero genID the kernel refuses the whole batch (ErrGenerationChanged)
// unless the ruleset generation is still genID. bytes is the size of the
// batch, for the socket buffers.
func (k *Kernel) commit(ops []op, genID uint32, bytes int) error {
	batch, fill, err := encode(ops)
	if err != nil {
		return err
	}
	if k.fake != nil {
		for i, f := range fill {
			if f != nil {
				batch[i].Data = f.data(nil)
			}
		}
		_, err := k.fake(batch)
		return err
	}
	if genID != 0 {
		attr, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: nfnlBatchGenID, Data: binary.BigEndian.AppendUint32(nil, genID)}})
		if err != nil {
			return err
		}
		batch[0].Data = append(batch[0].Data[:4:4], attr...)
	}

	conn, err := k.conn()
	if err != nil {
		return err
	}
	if err := k.exchange(conn, batch, fill, ops, bytes); err != nil {
		// Whatever a failed exchange left unread must not be taken
		// for the answer to the next request.
		k.dropConn()
		return err
	}
	// The deadline must not outlive the batch: the socket serves the
	// next request too. The kernel holds the commit either way: a socket
	// that refuses is dropped, not reported.
	if err := conn.SetReadDeadline(time.Time{}); err != nil {
		k.dropConn()
	}
	return nil
}

// exchange sends batch on conn and waits for the kernel's verdict on it.
func (k *Kernel) exchange(conn *netlink.Conn, batch []netlink.Message, fill []*rawMsg, ops []op, bytes int) error {
	// The whole batch goes out in one sendmsg(2), so the send buffer must
	// hold it; the receive buffer must hold the kernel's error replies,
	// which echo the failing message. As root the netlink package uses
	// SO_SNDBUFFORCE/SO_RCVBUFFORCE, which lift the sysctl caps.
	// The commit socket keeps its sizes: they are set again only for a
	// batch larger than any before on it (three system calls less for
	// every small change the agent commits).
	size := max(2*bytes+64*len(ops), 1<<20)
	if conn != k.commitConn || size > k.commitBuf {
		if err := conn.SetWriteBuffer(size); err != nil {
			return fmt.Errorf("sizing the netlink send buffer: %w", err)
		}
		if err := conn.SetReadBuffer(size); err != nil {
			return fmt.Errorf("sizing the netlink receive buffer: %w", err)
		}
		// Ask for the kernel's own words on errors.
		_ = conn.SetOption(netlink.ExtendedAcknowledge, true)
		if conn == k.commitConn {
			k.commitBuf = size
		}
	}
	if err := conn.SetReadDeadline(time.Now().Add(ackTimeout)); err != nil {
		return err
	}

	index, pending, err := send(conn, batch, fill, bytes+64*len(ops))
	if err != nil {
		return err
	}

	// The kernel processes the whole batch, then answers every message
	// that asked for an acknowledgement, in order: 0 for success, an error
	// for each message it refused. If any was refused it aborted the
	// transaction: nothing of the batch is in effect.
	var first error
	for pending > 0 {
		msgs, err := conn.Receive()
		if err != nil {
			var oe *netlink.OpError
			if !errors.As(err, &oe) || oe.Sequence == 0 {
				return fmt.Errorf("waiting for the kernel's answer: %w", err)
			}
			i, ok := index[oe.Sequence]
			if !ok {
				continue // not ours
			}
			if i == 0 {
				// The batch header: refused for its generation, and
				// nothing else is answered.
				if errors.Is(oe.Err, unix.ERESTART) {
					return ErrGenerationChanged
				}
				return fmt.Errorf("the kernel refused the batch: %w", oe)
			}
			if first == nil {
				first = describeFailure(ops[i-1], i, len(ops), oe)
			}
			pending--
			continue
		}
		for _, m := range msgs {
			if _, ok := index[m.Header.Sequence]; ok && m.Header.Type == netlink.Error {
				pending--
			}
		}
	}
	if first != nil {
		return first
	}
	return nil
}

// RefusedError is the kernel refusing one operation of a batch; the whole
// transaction was aborted.
type RefusedError struct {
	Index, Count int    // which operation (1-based) of how many
	Op           string // what it was
	Err          error  // what the kernel said (an errno)
	Detail       string // the kernel's extended message, if any
	// Modules the operation needs, named when the kernel did not know
	// something in it: the likely cause is one of them missing.
	Modules []string
}

func (e *RefusedError) Error() string {
	why := e.Err.Error()
	if e.Detail != "" {
		why += " (" + e.Detail + ")"
	}
	msg := fmt.Sprintf("the kernel refused operation %d of %d, %s: %s; the transaction was aborted, nothing was changed",
		e.Index, e.Count, e.Op, why)
	if len(e.Modules) > 0 {
		msg += fmt.Sprintf("; this kernel may lack a feature the operation needs: check that the modules %s are available (modprobe)",
			strings.Join(e.Modules, ", "))
	}
	return msg
}

func (e *RefusedError) Unwrap() error { return e.Err }

func describeFailure(o op, i, n int, oe *netlink.OpError) error {
	e := &RefusedError{Index: i, Count: n, Op: o.desc, Err: oe.Err, Detail: oe.Message}
	if errors.Is(oe.Err, unix.ENOENT) || errors.Is(oe.Err, unix.EOPNOTSUPP) {
		e.Modules = o.modules
	}
	return e
}
