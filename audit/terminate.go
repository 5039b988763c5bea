//go:build linux

package audit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/sockets"
)

// Termination is what Terminate did to one process.
type Termination struct {
	PID     int
	Command string
	// Sockets are the blocked sockets the process held, like
	// "tcp 0.0.0.0:41000".
	Sockets []string
	// Signals sent, in order: "SIGTERM", then "SIGKILL" if the process
	// outlived the grace period.
	Signals []string
	// Outcome: Exited, Skipped, Gone, Running or Failed.
	Outcome Outcome
	// Detail says why a process was skipped or what failed.
	Detail string
}

// Outcome is how a Termination ended.
type Outcome string

// Outcomes.
const (
	// Exited: the process ended after the signals sent.
	Exited Outcome = "exited"
	// Skipped: the process was not signalled (Detail says why).
	Skipped Outcome = "skipped"
	// Gone: the process had already ended, or no longer held the socket,
	// before it was signalled.
	Gone Outcome = "gone"
	// Running: the process was still there when Terminate stopped waiting
	// (even SIGKILL takes a moment; or the wait was interrupted).
	Running Outcome = "running"
	// Failed: a signal could not be sent (Detail has the error).
	Failed Outcome = "failed"
	// WouldEnd: Preview's word for a process Terminate would signal.
	WouldEnd Outcome = "would-end"
)

// target is a process Terminate deals with.
type target struct {
	t      *Termination
	inodes []uint64 // the blocked sockets it holds
	pidfd  int      // -1 until opened
	// server: it holds a blocked socket that is not MaybeClient.
	server bool
}

// killWait bounds the wait for a process to disappear after SIGKILL, which
// it cannot refuse; a process stuck in the kernel (D state) can still take
// a while.
const killWait = 5 * time.Second

// Terminate ends the processes that hold blocked sockets among findings:
// SIGTERM to each, then SIGKILL to those still running after grace. It
// returns what it did, one entry per process, by PID.
//
// Each process is signalled through a pidfd, opened before it is checked to
// still hold the socket, so a PID reused by an unrelated process in the
// meantime is never signalled. PID 1 and this process are never signalled:
// killing init takes the machine down; stopping its socket unit is the way.
// Nor is a process whose blocked sockets are all MaybeClient: it may be a
// client that happens to have an automatic UDP port in the zone.
//
// procRoot is where processes are looked up, normally "/proc".
func Terminate(ctx context.Context, findings []Finding, grace time.Duration, procRoot string) []Termination {
	pids, byPID := targets(findings)

	// SIGTERM to all first, so they stop in parallel and the grace period
	// is waited once.
	var waiting []*target
	for _, pid := range pids {
		tg := byPID[pid]
		t := tg.t
		if tg.skip() {
			continue
		}
		fd, err := unix.PidfdOpen(pid, 0)
		if errors.Is(err, unix.ESRCH) {
			t.Outcome, t.Detail = Gone, "exited before it was signalled"
			continue
		}
		if err != nil {
			t.Outcome, t.Detail = Failed, fmt.Sprintf("pidfd_open: %v", err)
			continue
		}
		tg.pidfd = fd
		if !holdsAny(procRoot, pid, tg.inodes) {
			t.Outcome, t.Detail = Gone, "no longer holds the socket; not signalled"
			continue
		}
		if err := unix.PidfdSendSignal(fd, unix.SIGTERM, nil, 0); err != nil {
			if errors.Is(err, unix.ESRCH) {
				t.Outcome, t.Detail = Gone, "exited before it was signalled"
			} else {
				t.Outcome, t.Detail = Failed, fmt.Sprintf("sending SIGTERM: %v", err)
			}
			continue
		}
		t.Signals = append(t.Signals, "SIGTERM")
		waiting = append(waiting, tg)
	}
	defer func() {
		for _, tg := range byPID {
			if tg.pidfd >= 0 {
				unix.Close(tg.pidfd)
			}
		}
	}()

	report := func() []Termination {
		out := make([]Termination, 0, len(pids))
		for _, pid := range pids {
			out = append(out, *byPID[pid].t)
		}
		return out
	}

	waiting = waitExit(ctx, waiting, time.Now().Add(grace))
	if ctx.Err() != nil {
		for _, tg := range waiting {
			tg.t.Outcome, tg.t.Detail = Running, "interrupted before the grace period ended; SIGKILL not sent"
		}
		return report()
	}
	var killed []*target
	for _, tg := range waiting {
		if err := unix.PidfdSendSignal(tg.pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			tg.t.Outcome, tg.t.Detail = Failed, fmt.Sprintf("sending SIGKILL: %v", err)
			continue
		}
		tg.t.Signals = append(tg.t.Signals, "SIGKILL")
		killed = append(killed, tg)
	}
	// Not ctx: SIGKILL is sent, only its effect is awaited.
	for _, tg := range waitExit(context.Background(), killed, time.Now().Add(killWait)) {
		tg.t.Outcome, tg.t.Detail = Running, fmt.Sprintf("still there %v after SIGKILL", killWait)
	}
	return report()
}

// Preview is what Terminate would do to findings, signalling nothing: the
// processes it would skip have Outcome Skipped and Detail, the others
// Outcome WouldEnd.
func Preview(findings []Finding) []Termination {
	pids, byPID := targets(findings)
	out := make([]Termination, 0, len(pids))
	for _, pid := range pids {
		tg := byPID[pid]
		if !tg.skip() {
			tg.t.Outcome = WouldEnd
		}
		out = append(out, *tg.t)
	}
	return out
}

// targets are the processes behind the blocked sockets of findings.
func targets(findings []Finding) ([]int, map[int]*target) {
	byPID := map[int]*target{}
	for _, f := range findings {
		if f.Verdict != Blocked {
			continue
		}
		for _, p := range f.Processes {
			tg := byPID[p.PID]
			if tg == nil {
				tg = &target{t: &Termination{PID: p.PID, Command: p.Command}, pidfd: -1}
				byPID[p.PID] = tg
			}
			tg.t.Sockets = append(tg.t.Sockets, fmt.Sprintf("%s %s", f.Socket.Proto, f.Socket.AddrPort()))
			tg.inodes = append(tg.inodes, f.Socket.Inode)
			tg.server = tg.server || !f.MaybeClient
		}
	}
	pids := make([]int, 0, len(byPID))
	for pid := range byPID {
		pids = append(pids, pid)
	}
	slices.Sort(pids)
	return pids, byPID
}

// skip marks a process that is never signalled, and says so.
func (tg *target) skip() bool {
	t := tg.t
	switch {
	case t.PID == 1:
		t.Outcome, t.Detail = Skipped, "pid 1 (init) is never signalled; stop the service or socket unit that listens instead"
	case t.PID == os.Getpid():
		t.Outcome, t.Detail = Skipped, "nftpol itself"
	case !tg.server:
		t.Outcome, t.Detail = Skipped, "holds only UDP sockets on ports the kernel also gives clients (ip_local_port_range); end it by hand if it is a server, or reserve the zone in ip_local_reserved_ports"
	default:
		return false
	}
	return true
}

// waitExit waits until every target has exited, the deadline passes or ctx
// ends, marking those that exited; it returns those still running. It
// polls: the processes are not this process's children, so there is no
// wait(2) to block in.
func waitExit(ctx context.Context, ts []*target, deadline time.Time) []*target {
	for {
		ts = slices.DeleteFunc(ts, func(tg *target) bool {
			if pidfdExited(tg.pidfd) {
				tg.t.Outcome = Exited
				return true
			}
			return false
		})
		if len(ts) == 0 || ctx.Err() != nil || !time.Now().Before(deadline) {
			return ts
		}
		select {
		case <-ctx.Done():
		case <-time.After(min(50*time.Millisecond, time.Until(deadline))):
		}
	}
}

// pidfdExited reports whether the process behind a pidfd has exited: the
// pidfd becomes readable then.
func pidfdExited(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP) != 0
}

func holdsAny(procRoot string, pid int, inodes []uint64) bool {
	for _, ino := range inodes {
		if ok, err := sockets.Holds(procRoot, pid, ino); err == nil && ok {
			return true
		}
	}
	return false
}
