//go:build linux

package kernel

import (
	"encoding/binary"
	"errors"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Unit tests of the Watcher's reading, fed datagrams encoded here as the
// kernel writes them (monitor_root_test.go has the real kernel).

// notification encodes one nf_tables notification from port.
func notification(msg uint16, family uint8, port uint32, attrs []byte) []byte {
	b := binary.NativeEndian.AppendUint32(nil, 0)
	b = binary.NativeEndian.AppendUint16(b, unix.NFNL_SUBSYS_NFTABLES<<8|msg)
	b = binary.NativeEndian.AppendUint16(b, 0)
	b = binary.NativeEndian.AppendUint32(b, 1) // sequence
	b = binary.NativeEndian.AppendUint32(b, port)
	b = append(b, family, unix.NFNETLINK_V0, 0, 0)
	b = append(b, attrs...)
	binary.NativeEndian.PutUint32(b, uint32(len(b)))
	return pad4(b)
}

// objectMsg is a notification about an object of table (attribute 1),
// with some more payload after it.
func objectMsg(msg uint16, family uint8, table string, port uint32) []byte {
	a := appendStringAttr(nil, 1, table)
	a = appendStringAttr(a, 2, "s")
	return notification(msg, family, port, a)
}

func genMsg(gen, pid uint32, comm string, port uint32) []byte {
	a := appendAttr(nil, unix.NFTA_GEN_ID, binary.BigEndian.AppendUint32(nil, gen))
	a = appendAttr(a, unix.NFTA_GEN_PROC_PID, binary.BigEndian.AppendUint32(nil, pid))
	a = appendStringAttr(a, unix.NFTA_GEN_PROC_NAME, comm)
	return notification(unix.NFT_MSG_NEWGEN, unix.AF_UNSPEC, port, a)
}

type fed struct {
	data []byte
	err  error
}

// fedWatcher returns a Watcher reading what is sent on the channel, with
// own port 77.
func fedWatcher(t *testing.T) (*Watcher, chan<- fed) {
	ch := make(chan fed, 16)
	var w *Watcher
	recv := func(b []byte) (int, error) {
		select {
		case f := <-ch:
			return copy(b, f.data), f.err
		case <-w.done:
			return 0, errors.New("closed")
		}
	}
	w = newWatcher("nftpol", recv, func(p uint32) bool { return p == 77 })
	w.start()
	t.Cleanup(func() { w.Close() })
	return w, ch
}

func cat(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

func TestWatcherOneChangePerTransaction(t *testing.T) {
	w, ch := fedWatcher(t)
	// A transaction of nft: elements of ours (in two datagrams), things
	// of other tables and families, then NEWGEN.
	ch <- fed{data: cat(
		objectMsg(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_INET, "nftpol", 500),
		objectMsg(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_INET, "other", 500),
		objectMsg(unix.NFT_MSG_DELRULE, unix.NFPROTO_IPV4, "nftpol", 500),
		objectMsg(unix.NFT_MSG_DELSETELEM, unix.NFPROTO_INET, "nftpol", 500),
	)}
	ch <- fed{data: cat(
		objectMsg(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_INET, "nftpolx", 500),
		objectMsg(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_INET, "nftpol", 500),
		genMsg(42, 500, "nft", 500),
	)}
	c, _ := nextChange(t, w, time.Second)
	want := Change{Kinds: ElementsAdded | ElementsDeleted, Events: 3, Transactions: 1, Generation: 42, By: Committer{Port: 500, PID: 500, Comm: "nft"}}
	if c != want {
		t.Errorf("got %v\nwant %v", c, want)
	}
	if !c.Foreign() {
		t.Error("nft's change is not foreign")
	}

	// Only other tables: nothing.
	ch <- fed{data: cat(objectMsg(unix.NFT_MSG_DELTABLE, unix.NFPROTO_INET, "other", 500), genMsg(43, 500, "nft", 500))}
	// Our own commit: reported as own.
	ch <- fed{data: cat(objectMsg(unix.NFT_MSG_NEWTABLE, unix.NFPROTO_INET, "nftpol", 77), genMsg(44, 9, "nftpol", 77))}
	c, _ = nextChange(t, w, time.Second)
	if c.Transactions != 1 || c.Own != 1 || c.Foreign() || c.Kinds != TableAdded || c.Generation != 44 {
		t.Errorf("got %v, want our own table creation at 44", c)
	}
}

func TestWatcherLost(t *testing.T) {
	w, ch := fedWatcher(t)
	ch <- fed{data: objectMsg(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_INET, "nftpol", 500)}
	ch <- fed{err: unix.ENOBUFS}
	c, _ := nextChange(t, w, time.Second)
	if !c.Lost || c.Kinds != ElementsAdded {
		t.Errorf("got %v, want lost events", c)
	}
	// The rest of that transaction is lost too; the next one is not.
	ch <- fed{data: cat(objectMsg(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_INET, "nftpol", 500), genMsg(5, 500, "nft", 500))}
	if c, _ = nextChange(t, w, time.Second); !c.Lost {
		t.Errorf("got %v, want lost events", c)
	}
	ch <- fed{data: cat(objectMsg(unix.NFT_MSG_DELSETELEM, unix.NFPROTO_INET, "nftpol", 500), genMsg(6, 500, "nft", 500))}
	if c, _ = nextChange(t, w, time.Second); c.Lost || c.Kinds != ElementsDeleted {
		t.Errorf("got %v, want one element deleted", c)
	}
	// A truncated datagram (MSG_TRUNC says more than the buffer) or a
	// malformed one is loss too.
	ch <- fed{data: []byte{255, 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}
	if c, _ = nextChange(t, w, time.Second); !c.Lost {
		t.Errorf("got %v, want lost events", c)
	}
	// Another error ends the watch.
	ch <- fed{err: unix.EBADF}
	if c, _ = nextChange(t, w, time.Second); c.Err == nil {
		t.Errorf("got %v, want an error", c)
	}
	if _, ok := <-w.Changes(); ok {
		t.Error("the channel is still open after the error")
	}
}

// A consumer that does not read gets the transactions merged.
func TestWatcherCoalesces(t *testing.T) {
	w, ch := fedWatcher(t)
	ch <- fed{data: cat(objectMsg(unix.NFT_MSG_NEWSETELEM, unix.NFPROTO_INET, "nftpol", 500), genMsg(1, 500, "nft", 500))}
	ch <- fed{data: cat(objectMsg(unix.NFT_MSG_NEWRULE, unix.NFPROTO_INET, "nftpol", 77), genMsg(2, 9, "nftpol", 77))}
	ch <- fed{data: cat(objectMsg(unix.NFT_MSG_DELSET, unix.NFPROTO_INET, "nftpol", 600), genMsg(3, 600, "iptables-nft", 600))}
	ch <- fed{data: cat(objectMsg(unix.NFT_MSG_DELCHAIN, unix.NFPROTO_INET, "nftpol", 77), genMsg(4, 9, "nftpol", 77))}
	deadline := time.Now().Add(time.Second)
	for w.Stats().Datagrams < 4 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	var got Change
	for got.Transactions < 4 {
		c, _ := nextChange(t, w, time.Second)
		got.merge(c)
	}
	if got.Transactions != 4 || got.Own != 2 || got.Generation != 4 || got.Kinds != ElementsAdded|RuleAdded|SetDeleted|ChainDeleted {
		t.Errorf("got %v", got)
	}
	// The committer named is the last foreign one.
	if got.By.Comm != "iptables-nft" || got.By.Port != 600 {
		t.Errorf("got %v, want by iptables-nft", got)
	}
	noChange(t, w, 20*time.Millisecond)
}
