//go:build linux

package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Why not google/nftables' Monitor: it decodes every event into Go objects
// (a 50,000-element change becomes 50,000 SetElement structs), blocks its
// reader on an unbuffered channel (a slow consumer makes the socket
// overflow), and ends on ENOBUFS instead of saying that events were lost.
// The Watcher reads the notification datagrams into one reused buffer and
// looks at each message's header and first attribute only.

// Kind is a bit set of the kinds of objects of the watched table that the
// transactions of a Change touched.
type Kind uint16

const (
	TableAdded Kind = 1 << iota // NEWTABLE: created, or its flags changed
	TableDeleted
	ChainAdded // NEWCHAIN: created or updated (policy, hook)
	ChainDeleted
	RuleAdded // NEWRULE: added or replaced
	RuleDeleted
	SetAdded
	SetDeleted
	ElementsAdded
	ElementsDeleted
	ObjectsChanged    // stateful objects (counters, quotas...) added or deleted
	FlowtablesChanged // flowtables added or deleted
)

var kindNames = []string{"table+", "table-", "chain+", "chain-", "rule+", "rule-", "set+", "set-", "element+", "element-", "object", "flowtable"}

func (k Kind) String() string {
	var parts []string
	for i, n := range kindNames {
		if k&(1<<i) != 0 {
			parts = append(parts, n)
		}
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ",")
}

// kindOf maps a nf_tables notification type to its Kind; 0 for the types
// that are not changes to a table's objects.
func kindOf(msg uint16) Kind {
	switch msg {
	case unix.NFT_MSG_NEWTABLE:
		return TableAdded
	case unix.NFT_MSG_DELTABLE:
		return TableDeleted
	case unix.NFT_MSG_NEWCHAIN:
		return ChainAdded
	case unix.NFT_MSG_DELCHAIN:
		return ChainDeleted
	case unix.NFT_MSG_NEWRULE:
		return RuleAdded
	case unix.NFT_MSG_DELRULE:
		return RuleDeleted
	case unix.NFT_MSG_NEWSET:
		return SetAdded
	case unix.NFT_MSG_DELSET:
		return SetDeleted
	case unix.NFT_MSG_NEWSETELEM:
		return ElementsAdded
	case unix.NFT_MSG_DELSETELEM:
		return ElementsDeleted
	case unix.NFT_MSG_NEWOBJ, unix.NFT_MSG_DELOBJ:
		return ObjectsChanged
	case unix.NFT_MSG_NEWFLOWTABLE, unix.NFT_MSG_DELFLOWTABLE:
		return FlowtablesChanged
	}
	return 0
}

// Committer is who committed a transaction, from its NEWGEN notification.
type Committer struct {
	Port uint32 // netlink port id of the committing socket
	// PID is NFTA_GEN_PROC_PID, the id of the committing thread
	// (task_pid_nr): nft's pid, but for a multi-threaded program such as
	// a Go one the id of whichever thread sent the batch.
	PID  uint32
	Comm string // NFTA_GEN_PROC_NAME: its name (comm, at most 15 bytes)
}

// Change is one or more committed transactions that touched the watched
// table, coalesced: when the consumer is slower than the kernel, the
// transactions it has not yet received are merged into one Change.
type Change struct {
	// Kinds of objects of the table the transactions touched.
	Kinds Kind
	// Events is how many notifications about the table they carried
	// (one per element added or deleted, one per rule, set...).
	Events int
	// Transactions is how many committed transactions are merged here;
	// Own of them were committed on the Kernel's own commit socket
	// (see Kernel.CommitPort).
	Transactions, Own int
	// Generation is the ruleset generation after the last of them.
	Generation uint32
	// By is who committed the last transaction that was not the
	// Kernel's own; the last one's committer if all were.
	By Committer
	// Lost says the socket overflowed (ENOBUFS): notifications were
	// dropped, the table may have changed in any way; read it again.
	// Kinds, Events and Generation then cover only what did arrive. It
	// is reported at once, and again with the transaction that closes
	// the events following the overflow, if they touched the table.
	Lost bool
	// Err, when set, ends the watch: the channel closes after it.
	Err error
}

// Foreign says whether the change may have come from anybody but the
// Kernel's own commits: a transaction of another socket, or lost events.
func (c Change) Foreign() bool { return c.Lost || c.Err != nil || c.Transactions > c.Own }

func (c Change) String() string {
	s := fmt.Sprintf("%s events=%d tx=%d own=%d gen=%d by=%s[%d] port=%d", c.Kinds, c.Events, c.Transactions, c.Own, c.Generation, c.By.Comm, c.By.PID, c.By.Port)
	if c.Lost {
		s += " LOST"
	}
	if c.Err != nil {
		s += " err=" + c.Err.Error()
	}
	return s
}

// merge adds n, which came after c, to c.
func (c *Change) merge(n Change) {
	c.Kinds |= n.Kinds
	c.Events += n.Events
	if n.Transactions > 0 && (n.Own < n.Transactions || c.Transactions == c.Own) {
		c.By = n.By
	}
	if n.Generation != 0 {
		c.Generation = n.Generation
	}
	c.Transactions += n.Transactions
	c.Own += n.Own
	c.Lost = c.Lost || n.Lost
	if c.Err == nil {
		c.Err = n.Err
	}
}

// DefaultWatchBuffer is the Watcher's socket receive buffer unless
// WatchBuffer says otherwise. The kernel packs a commit's notifications
// into datagrams of NLMSG_GOODSIZE (3.7 KiB with 4 KiB pages), each
// charged a little over a page: an Apply of 50,000 accounts (115,000
// elements) is 2,875 datagrams, 10.7 MB, ~13 MB of buffer; nft adding
// 50,000 elements to a set, 808 datagrams, 3 MB (monitor_root_test.go).
const DefaultWatchBuffer = 64 << 20

// WatchOption configures Watch.
type WatchOption func(*watchConfig)

type watchConfig struct {
	buffer int
	// stall, when set, holds the first read until it is closed: the
	// tests' way to make the socket overflow whatever the machine's speed.
	stall <-chan struct{}
}

// WatchBuffer sets the socket receive buffer, in bytes. As root it may
// exceed net.core.rmem_max (SO_RCVBUFFORCE).
func WatchBuffer(bytes int) WatchOption { return func(c *watchConfig) { c.buffer = bytes } }

// Watcher reports committed changes to one table inet <name>.
type Watcher struct {
	k     *Kernel
	conn  *netlink.Conn
	recv  func([]byte) (int, error)
	table []byte // NUL-terminated, as the attributes carry it
	own   func(port uint32) bool

	// tx is the transaction being read: the kernel sends a commit's
	// notifications, then its NEWGEN.
	tx Change

	mu      sync.Mutex
	pending Change
	has     bool
	wake    chan struct{}
	out     chan Change
	done    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once
	// what the reader did, for Stats
	datagrams, messages, bytes, busy atomic.Int64
}

// WatchStats is what a Watcher's reader has read so far.
type WatchStats struct {
	Datagrams, Messages, Bytes int64
	// Busy is the time spent parsing datagrams (not waiting for them).
	Busy time.Duration
}

// Stats returns what the Watcher's reader has read so far.
func (w *Watcher) Stats() WatchStats {
	return WatchStats{Datagrams: w.datagrams.Load(), Messages: w.messages.Load(), Bytes: w.bytes.Load(), Busy: time.Duration(w.busy.Load())}
}

// Watch starts reporting committed transactions that touch table inet
// <table> in the Kernel's namespace, from a netfilter socket of its own
// joined to NFNLGRP_NFTABLES. Transactions that touch only other tables are
// not reported; a `nft flush ruleset` is, when the table existed (it
// deletes it). Close the Watcher to stop.
func (k *Kernel) Watch(table string, opts ...WatchOption) (*Watcher, error) {
	if k.fake != nil {
		return nil, errors.New("no notifications from a test dial")
	}
	cfg := watchConfig{buffer: DefaultWatchBuffer}
	for _, o := range opts {
		o(&cfg)
	}
	conn, err := k.dial()
	if err != nil {
		return nil, err
	}
	if err := conn.SetReadBuffer(cfg.buffer); err != nil {
		conn.Close()
		return nil, fmt.Errorf("sizing the watch socket's receive buffer: %w", err)
	}
	if err := conn.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		conn.Close()
		return nil, fmt.Errorf("joining the nf_tables notification group: %w", err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, err
	}
	stall := cfg.stall
	recv := func(b []byte) (int, error) {
		if stall != nil {
			<-stall
			stall = nil
		}
		var n int
		var rerr error
		err := raw.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), b, unix.MSG_TRUNC|unix.MSG_DONTWAIT)
			return !errors.Is(rerr, unix.EAGAIN)
		})
		if err != nil {
			return 0, err
		}
		return n, rerr
	}
	w := newWatcher(table, recv, k.ownPort)
	w.k, w.conn = k, conn
	w.start()
	return w, nil
}

func newWatcher(table string, recv func([]byte) (int, error), own func(uint32) bool) *Watcher {
	return &Watcher{
		recv:  recv,
		table: append([]byte(table), 0),
		own:   own,
		wake:  make(chan struct{}, 1),
		out:   make(chan Change),
		done:  make(chan struct{}),
	}
}

func (w *Watcher) start() {
	w.wg.Add(2)
	go w.read()
	go w.deliver()
}

// Changes returns the channel of changes. It is closed after Close, or
// after a Change with Err. The reader never waits for the consumer: what
// arrives meanwhile is merged into the next Change.
func (w *Watcher) Changes() <-chan Change { return w.out }

// Close stops the watch and closes its socket.
func (w *Watcher) Close() error {
	var err error
	w.once.Do(func() {
		close(w.done)
		if w.conn != nil {
			err = w.conn.Close()
		}
		w.wg.Wait()
	})
	return err
}

// Pause leaves the notification group, so that the next commit is made
// without listeners: the kernel builds a notification per element for
// every commit while anybody listens, an 8 KiB buffer each until the end
// of the commit, which makes a 50,000-account Apply 2-20 times slower
// (see monitor_root_test.go). What arrived before Pause is still
// reported. Resume ends the pause. Other listeners (nft monitor) still
// cost the same, in whatever network namespace they listen: the kernel
// asks whether anybody listens per protocol, not per namespace, so while
// a Watcher listens, every commit on the host pays too (DESIGN.md).
func (w *Watcher) Pause() error {
	if err := w.conn.LeaveGroup(unix.NFNLGRP_NFTABLES); err != nil {
		return fmt.Errorf("leaving the nf_tables notification group: %w", err)
	}
	return nil
}

// Resume joins the notification group again after Pause and checks that
// nobody committed meanwhile: gen is the generation the caller's own
// commits during the pause left behind (NextGeneration of the genID an
// Apply was given), or the generation before the pause if it committed
// nothing. If the ruleset generation is another one, Resume reports a
// Change with Lost set: something changed unwatched. It reads the
// generation on the Kernel's commit socket: call it where the Kernel is
// used, not concurrently with Apply.
func (w *Watcher) Resume(gen uint32) error {
	if err := w.conn.JoinGroup(unix.NFNLGRP_NFTABLES); err != nil {
		return fmt.Errorf("joining the nf_tables notification group: %w", err)
	}
	// Joined first: a commit after this read is notified.
	now, err := w.k.Generation()
	if err != nil {
		w.post(Change{Lost: true})
		return err
	}
	if now != gen {
		w.post(Change{Lost: true, Generation: now})
	}
	return nil
}

// recvBuffer holds one datagram. The kernel coalesces a commit's
// notifications into datagrams of at most NLMSG_GOODSIZE (under a page,
// 8 KiB at most); a larger one is cut (MSG_TRUNC tells) and counts as lost.
const recvBuffer = 64 << 10

func (w *Watcher) read() {
	defer w.wg.Done()
	buf := make([]byte, recvBuffer)
	for {
		n, err := w.recv(buf)
		select {
		case <-w.done:
			return
		default:
		}
		switch {
		case errors.Is(err, unix.ENOBUFS):
			w.overflow()
			continue
		case err != nil:
			w.post(Change{Lost: true, Err: fmt.Errorf("reading nf_tables notifications: %w", err)})
			return
		case n > len(buf):
			w.overflow()
			continue
		}
		w.datagram(buf[:n])
	}
}

// overflow reports lost notifications now, not at the next NEWGEN, which
// may itself be lost; what the transaction being read had is kept with it.
// The kernel goes on delivering what fits of the same transaction: events
// up to the next NEWGEN (which may also have been dropped, and then the
// next transaction's closes them) are reported as Lost too.
func (w *Watcher) overflow() {
	c := w.tx
	w.tx = Change{Lost: true}
	c.Lost = true
	w.post(c)
}

// datagram reads the messages of one datagram.
func (w *Watcher) datagram(b []byte) {
	start := time.Now()
	w.datagrams.Add(1)
	w.bytes.Add(int64(len(b)))
	n := 0
	defer func() {
		w.messages.Add(int64(n))
		w.busy.Add(int64(time.Since(start)))
	}()
	for len(b) >= unix.NLMSG_HDRLEN {
		n++
		l := int(binary.NativeEndian.Uint32(b))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			w.overflow() // malformed: we cannot know what we missed
			return
		}
		w.message(b[:l])
		b = b[min(align4(l), len(b)):]
	}
}

// message takes one notification: its type, family and table name only.
func (w *Watcher) message(m []byte) {
	typ := binary.NativeEndian.Uint16(m[4:])
	if typ>>8 != unix.NFNL_SUBSYS_NFTABLES {
		return
	}
	body := m[unix.NLMSG_HDRLEN:]
	if len(body) < 4 {
		return
	}
	attrs := body[4:] // after nfgenmsg
	msg := typ & 0xff
	if msg == unix.NFT_MSG_NEWGEN {
		w.commit(binary.NativeEndian.Uint32(m[12:]), attrs)
		return
	}
	kind := kindOf(msg)
	if kind == 0 || body[0] != unix.NFPROTO_INET || !w.ours(attrs) {
		return
	}
	w.tx.Kinds |= kind
	w.tx.Events++
}

// ours says whether the message's table attribute names the watched
// table: attribute 1 in every object message (NFTA_TABLE_NAME,
// NFTA_CHAIN_TABLE, NFTA_RULE_TABLE, NFTA_SET_TABLE,
// NFTA_SET_ELEM_LIST_TABLE, NFTA_OBJ_TABLE, NFTA_FLOWTABLE_TABLE), first.
func (w *Watcher) ours(attrs []byte) bool {
	for len(attrs) >= 4 {
		l := int(binary.NativeEndian.Uint16(attrs))
		if l < 4 || l > len(attrs) {
			return false
		}
		if binary.NativeEndian.Uint16(attrs[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER) == 1 {
			return string(attrs[4:l]) == string(w.table)
		}
		attrs = attrs[min(align4(l), len(attrs)):]
	}
	return false
}

// commit ends a transaction at its NEWGEN; it is reported if it touched
// the table.
func (w *Watcher) commit(port uint32, attrs []byte) {
	c := w.tx
	w.tx = Change{}
	if c.Events == 0 {
		return
	}
	c.Transactions = 1
	c.By.Port = port
	if w.own != nil && w.own(port) {
		c.Own = 1
	}
	_ = walkAttrs(attrs, func(typ uint16, data []byte) error {
		switch {
		case typ == unix.NFTA_GEN_ID && len(data) == 4:
			c.Generation = binary.BigEndian.Uint32(data)
		case typ == unix.NFTA_GEN_PROC_PID && len(data) == 4:
			c.By.PID = binary.BigEndian.Uint32(data)
		case typ == unix.NFTA_GEN_PROC_NAME:
			c.By.Comm = strings.TrimRight(string(data), "\x00")
		}
		return nil
	})
	w.post(c)
}

// post merges c into the undelivered change and wakes the deliverer.
func (w *Watcher) post(c Change) {
	w.mu.Lock()
	w.pending.merge(c)
	w.has = true
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *Watcher) deliver() {
	defer w.wg.Done()
	defer close(w.out)
	for {
		select {
		case <-w.wake:
		case <-w.done:
			return
		}
		w.mu.Lock()
		c, has := w.pending, w.has
		w.pending, w.has = Change{}, false
		w.mu.Unlock()
		if !has {
			continue
		}
		select {
		case w.out <- c:
		case <-w.done:
			return
		}
		if c.Err != nil {
			return
		}
	}
}
