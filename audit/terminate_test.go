//go:build linux

package audit

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/sockets"
)

// child starts `sh -c script` holding a copy of the listener's socket as
// descriptor 3, waits until it has exec'd into sleep (so that the script's
// signal dispositions are in place) and stops it when the test ends.
func child(t *testing.T, ln *net.TCPListener, script string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	if ln != nil {
		f, err := ln.File()
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.ExtraFiles = []*os.File{f}
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		comm, _ := os.ReadFile(filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid), "comm"))
		if strings.TrimSpace(string(comm)) == "sleep" {
			return cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("%q did not reach sleep within 10s", script)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func alive(pid int) bool { return unix.Kill(pid, 0) == nil }

func TestTerminate(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ln := l.(*net.TCPListener)
	inode := inodeOf(t, ln)

	polite := child(t, ln, "exec sleep 60")
	// Ignored signals stay ignored across exec: this sleep outlives SIGTERM.
	stubborn := child(t, ln, `trap "" TERM; exec sleep 60`)
	// Holds no socket: listed as a holder by a stale scan, as if its PID
	// had been reused. It must not be signalled.
	stranger := child(t, nil, "exec sleep 60")
	// Holds only a socket that may be a client's: never signalled.
	client := child(t, ln, "exec sleep 60")

	s := sockets.Socket{Proto: "tcp", Addr: ln.Addr().(*net.TCPAddr).AddrPort().Addr(), Port: uint16(ln.Addr().(*net.TCPAddr).Port), UID: 5000, Inode: inode}
	findings := []Finding{
		{Socket: s, Verdict: Blocked, Reason: OutsideRanges, Processes: []sockets.Process{
			{PID: 1, Command: "init"},
			{PID: polite.Process.Pid, Command: "sleep"},
			{PID: stubborn.Process.Pid, Command: "sleep"},
			{PID: stranger.Process.Pid, Command: "sleep"},
		}},
		{Socket: sockets.Socket{Proto: "udp", Port: 45000, Inode: inode + 2}, Verdict: Blocked, Reason: UnassignedZonePort, MaybeClient: true,
			Processes: []sockets.Process{{PID: client.Process.Pid, Command: "sleep"}}},
		// Not blocked: its holders are left alone even if listed.
		{Socket: sockets.Socket{Proto: "tcp", Port: 40010, Inode: inode + 1}, Verdict: Reachable, Processes: []sockets.Process{{PID: stranger.Process.Pid}}},
	}
	got := Terminate(context.Background(), findings, 300*time.Millisecond, "/proc")

	want := map[int]struct {
		outcome Outcome
		signals string
	}{
		1:                    {Skipped, ""},
		polite.Process.Pid:   {Exited, "SIGTERM"},
		stubborn.Process.Pid: {Exited, "SIGTERM SIGKILL"},
		stranger.Process.Pid: {Gone, ""},
		client.Process.Pid:   {Skipped, ""},
	}
	if len(got) != len(want) {
		t.Fatalf("Terminate returned %d entries, want %d: %+v", len(got), len(want), got)
	}
	for _, term := range got {
		w, ok := want[term.PID]
		if !ok {
			t.Errorf("unexpected entry %+v", term)
			continue
		}
		if term.Outcome != w.outcome || strings.Join(term.Signals, " ") != w.signals {
			t.Errorf("pid %d: %s after [%s] (%s), want %s after [%s]", term.PID, term.Outcome, strings.Join(term.Signals, " "), term.Detail, w.outcome, w.signals)
		}
		if term.Outcome != Skipped && len(term.Sockets) != 1 {
			t.Errorf("pid %d: sockets %v, want the one blocked socket", term.PID, term.Sockets)
		}
	}
	if !alive(stranger.Process.Pid) {
		t.Error("the process that did not hold the socket was killed")
	}
	if !alive(client.Process.Pid) {
		t.Error("the process with only a may-be-client socket was killed")
	}
}

func inodeOf(t *testing.T, ln *net.TCPListener) uint64 {
	t.Helper()
	rc, err := ln.SyscallConn()
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

// TestPreview says what Terminate would do and signals nothing: the same
// skips (pid 1, a UDP socket that may be a client's), the rest would end.
func TestPreview(t *testing.T) {
	cmd := child(t, nil, "exec sleep 60")
	pid := cmd.Process.Pid
	blocked := func(proto sockets.Proto, port uint16, maybeClient bool, pids ...int) Finding {
		f := Finding{Socket: sockets.Socket{Proto: proto, Port: port, Inode: uint64(port)}, Verdict: Blocked, MaybeClient: maybeClient}
		for _, p := range pids {
			f.Processes = append(f.Processes, sockets.Process{PID: p, Command: "sleep"})
		}
		return f
	}
	got := Preview([]Finding{
		blocked(sockets.TCP, 40025, false, pid),
		blocked(sockets.TCP, 40026, false, 1),
		blocked(sockets.UDP, 40027, true, 4242),
		{Socket: sockets.Socket{Proto: sockets.TCP, Port: 40010}, Verdict: Reachable, Processes: []sockets.Process{{PID: 4343}}},
	})
	outcomes := map[int]Outcome{}
	for _, tm := range got {
		outcomes[tm.PID] = tm.Outcome
	}
	want := map[int]Outcome{1: Skipped, 4242: Skipped, pid: WouldEnd}
	if len(outcomes) != len(want) {
		t.Errorf("Preview: %+v, want outcomes %v", got, want)
	}
	for p, o := range want {
		if outcomes[p] != o {
			t.Errorf("pid %d: %q, want %q (%+v)", p, outcomes[p], o, got)
		}
	}
	if !alive(pid) {
		t.Error("Preview ended the process")
	}
}
