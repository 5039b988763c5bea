package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// genPoller reads a namespace's nf_tables generation by asking for it
// (NFT_MSG_GETGEN), without joining the notification group. The heal
// measurement uses it instead of genMonitor: while anybody listens to that
// group, the kernel builds a notification for every element of every
// commit. The agent leaves the group for its own commits (Watcher.Pause),
// but the bench's NEWGEN monitor made the 100,000-element heal at 50,000
// accounts pay for one anyway: perf of the agent during the bench's heals
// put 72% of its samples in nf_tables_setelem_notify.
type genPoller struct {
	fd  int
	seq uint32

	mu    sync.Mutex
	seen  []time.Time // when each change of generation was first seen
	last  uint32
	stop  chan struct{}
	done  chan struct{}
	every time.Duration
	err   error
}

const (
	nftMsgGetgen = 16 // NFT_MSG_GETGEN
	nftaGenID    = 1  // NFTA_GEN_ID
)

func openGenPoller(netns string) (*genPoller, error) {
	fd, err := netfilterSocket(netns)
	if err != nil {
		return nil, fmt.Errorf("nf_tables generation socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nf_tables generation socket: bind: %w", err)
	}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 1}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("nf_tables generation socket: SO_RCVTIMEO: %w", err)
	}
	return &genPoller{fd: fd}, nil
}

// gen returns the namespace's ruleset generation now.
func (p *genPoller) gen() (uint32, error) {
	p.seq++
	req := make([]byte, unix.NLMSG_HDRLEN+4)
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:6], nfnlSubsysNftabl<<8|nftMsgGetgen)
	binary.NativeEndian.PutUint16(req[6:8], unix.NLM_F_REQUEST)
	binary.NativeEndian.PutUint32(req[8:12], p.seq)
	// nfgenmsg: family AF_UNSPEC, version 0, res_id 0.
	if err := unix.Sendto(p.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("NFT_MSG_GETGEN: %w", err)
	}
	buf := make([]byte, 4096)
	for {
		n, _, err := unix.Recvfrom(p.fd, buf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("NFT_MSG_GETGEN: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return 0, fmt.Errorf("NFT_MSG_GETGEN: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != p.seq {
				continue
			}
			if m.Header.Type == unix.NLMSG_ERROR {
				return 0, fmt.Errorf("NFT_MSG_GETGEN: error reply")
			}
			if m.Header.Type != nfnlSubsysNftabl<<8|nftMsgNewgen {
				continue
			}
			if g, ok := genAttr(m.Data, nftaGenID); ok {
				return g, nil
			}
			return 0, fmt.Errorf("NFT_MSG_GETGEN: no generation in the reply")
		}
	}
}

// start polls the generation every interval, from the generation now,
// recording when each change was first seen, until end.
func (p *genPoller) start(every time.Duration) error {
	g, err := p.gen()
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.seen, p.last, p.err, p.every = nil, g, nil, every
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	p.mu.Unlock()
	go func() {
		defer close(p.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
			}
			g, err := p.gen()
			at := time.Now()
			p.mu.Lock()
			if err != nil {
				p.err = err
				p.mu.Unlock()
				return
			}
			if g != p.last {
				p.seen, p.last = append(p.seen, at), g
			}
			p.mu.Unlock()
		}
	}()
	return nil
}

// changes returns when each change of generation since start was seen.
func (p *genPoller) changes() ([]time.Time, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]time.Time(nil), p.seen...), p.err
}

// end stops polling.
func (p *genPoller) end() {
	close(p.stop)
	<-p.done
}

func (p *genPoller) close() { unix.Close(p.fd) }
