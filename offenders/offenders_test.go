package offenders

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nftpol/nftpol/audit"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/sockets"
)

// fakeKernel is the violation sets and the sockets, as the test sets them.
type fakeKernel struct {
	mu         sync.Mutex
	hits       map[Key]Hit
	reads      int
	sockets    map[Key][]audit.Finding
	terminated []int
}

func (f *fakeKernel) Hits(string) ([]Hit, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	var out []Hit
	for _, h := range f.hits {
		out = append(out, h)
	}
	return out, nil
}

func (f *fakeKernel) blockPackets(k Key, n uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	h := f.hits[k]
	h.Key, h.Packets, h.Last = k, h.Packets+n, time.Now()
	f.hits[k] = h
}

func (f *fakeKernel) find(_ *policies.Policy, k Key) ([]audit.Finding, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sockets[k], nil
}

func (f *fakeKernel) terminate(_ context.Context, fs []audit.Finding, _ time.Duration) []audit.Termination {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []audit.Termination
	for _, fd := range fs {
		for _, p := range fd.Processes {
			f.terminated = append(f.terminated, p.PID)
			out = append(out, audit.Termination{PID: p.PID, Command: p.Command, Signals: []string{"SIGTERM"}, Outcome: audit.Exited})
		}
		delete(f.sockets, Key{UID: fd.Socket.UID, Proto: string(fd.Socket.Proto), Port: fd.Socket.Port})
	}
	return out
}

func (f *fakeKernel) listen(k Key, v audit.Verdict, pid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sockets[k] = []audit.Finding{{
		Socket:    sockets.Socket{Proto: sockets.Proto(k.Proto), Port: k.Port, UID: k.UID},
		Processes: []sockets.Process{{PID: pid, Command: "daemon"}},
		Verdict:   v, Reason: audit.OtherAccount, Other: "beta",
	}}
}

// logLines is a JSON log the test reads back.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logLines) events(kind string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, line := range strings.Split(l.buf.String(), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil && m["event"] == kind {
			out = append(out, m)
		}
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type setup struct {
	k    *fakeKernel
	log  *logLines
	bell chan struct{}
	w    *Watcher
}

func start(t *testing.T, term policies.Terminate) *setup {
	s := &setup{k: &fakeKernel{hits: map[Key]Hit{}, sockets: map[Key][]audit.Finding{}}, log: &logLines{}, bell: make(chan struct{}, 1)}
	s.w = New(Config{Source: s.k, Bell: s.bell, Find: s.k.find, Terminate: s.k.terminate,
		Log: slog.New(slog.NewJSONHandler(s.log, nil)), Quiet: 300 * time.Millisecond, Poll: 50 * time.Millisecond, MinGap: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	p := &policies.Policy{Table: "nftpol", Accounts: []*policies.Account{{Name: "alpha", UID: 1001}, {Name: "beta", UID: 1002}}, Terminate: term}
	s.w.SetPolicy(p)
	return s
}

func (s *setup) ring() {
	select {
	case s.bell <- struct{}{}:
	default:
	}
}

// TestEpisode: the first blocked packets of an offender open one episode
// naming UID, account, port and process; more packets do not open another;
// with nothing blocked for the quiet period it ends, with its count.
func TestEpisode(t *testing.T) {
	s := start(t, policies.Terminate{})
	k := Key{UID: 1001, Proto: "tcp", Port: 40025}
	s.k.listen(k, audit.Blocked, 4242)
	s.k.blockPackets(k, 3)
	s.ring()
	waitFor(t, "episode start", func() bool { return len(s.log.events("episode_start")) == 1 })
	ev := s.log.events("episode_start")[0]
	if ev["uid"] != 1001.0 || ev["account"] != "alpha" || ev["proto"] != "tcp" || ev["port"] != 40025.0 || ev["pid"] != 4242.0 ||
		ev["command"] != "daemon" || ev["packets"] != 3.0 || !strings.Contains(ev["reason"].(string), "beta") {
		t.Errorf("episode start: %v", ev)
	}
	if _, ok := ev["terminate_at"]; ok {
		t.Errorf("no terminate section, but the event says when: %v", ev)
	}
	eps, _, _ := s.w.Report()
	if len(eps) != 1 || eps[0].Account != "alpha" || eps[0].Processes[0] != "daemon[4242]" {
		t.Errorf("report: %+v", eps)
	}
	for range 3 {
		s.k.blockPackets(k, 2)
		s.ring()
		time.Sleep(20 * time.Millisecond)
	}
	waitFor(t, "episode end", func() bool { return len(s.log.events("episode_end")) == 1 })
	if n := len(s.log.events("episode_start")); n != 1 {
		t.Errorf("%d episode starts for one offender", n)
	}
	if end := s.log.events("episode_end")[0]; end["packets"] != 9.0 {
		t.Errorf("episode end: %v, want 9 packets", end)
	}
	if eps, _, _ := s.w.Report(); len(eps) != 0 {
		t.Errorf("open after the end: %+v", eps)
	}
	// New packets on the same element: a new episode, counting from
	// where the last one ended.
	s.k.blockPackets(k, 1)
	s.ring()
	waitFor(t, "second episode", func() bool { return len(s.log.events("episode_start")) == 2 })
	if ev := s.log.events("episode_start")[1]; ev["packets"] != 1.0 {
		t.Errorf("second episode: %v, want 1 packet", ev)
	}
}

// TestTerminate: a socket still blocked after terminate.after has its
// process ended, and the episode ends; a finding the policy does not block
// (an exempt UID's) is never ended.
func TestTerminate(t *testing.T) {
	s := start(t, policies.Terminate{Enabled: true, After: 150 * time.Millisecond, Grace: time.Second})
	bad, exempt := Key{UID: 1001, Proto: "tcp", Port: 40025}, Key{UID: 1003, Proto: "tcp", Port: 40026}
	s.k.listen(bad, audit.Blocked, 4242)
	s.k.listen(exempt, audit.NotEnforced, 4343)
	begin := time.Now()
	s.k.blockPackets(bad, 1)
	s.k.blockPackets(exempt, 1)
	s.ring()
	waitFor(t, "termination", func() bool { return len(s.log.events("termination")) == 1 })
	if took := time.Since(begin); took < 150*time.Millisecond {
		t.Errorf("terminated after %s, before terminate.after", took)
	}
	tm := s.log.events("termination")[0]
	if tm["pid"] != 4242.0 || tm["outcome"] != "exited" || tm["dry_run"] != false || tm["account"] != "alpha" {
		t.Errorf("termination: %v", tm)
	}
	waitFor(t, "episode end", func() bool {
		for _, e := range s.log.events("episode_end") {
			if e["port"] == 40025.0 && e["why"] == "terminated" {
				return true
			}
		}
		return false
	})
	time.Sleep(200 * time.Millisecond)
	s.k.mu.Lock()
	defer s.k.mu.Unlock()
	if len(s.k.terminated) != 1 || s.k.terminated[0] != 4242 {
		t.Errorf("terminated %v, want only 4242", s.k.terminated)
	}
	_, ended, _ := s.w.Report()
	if len(ended) != 1 || ended[0].PID != 4242 || ended[0].Outcome != "exited" {
		t.Errorf("report: %+v", ended)
	}
}

// TestDryRun: the event says what would be ended; nothing is.
func TestDryRun(t *testing.T) {
	s := start(t, policies.Terminate{Enabled: true, After: 50 * time.Millisecond, Grace: time.Second, DryRun: true})
	k := Key{UID: 1001, Proto: "tcp", Port: 40025}
	s.k.listen(k, audit.Blocked, 4242)
	s.k.blockPackets(k, 1)
	s.ring()
	waitFor(t, "dry-run event", func() bool { return len(s.log.events("termination")) == 1 })
	tm := s.log.events("termination")[0]
	if tm["pid"] != 4242.0 || tm["outcome"] != "would-end" || tm["dry_run"] != true {
		t.Errorf("dry run: %v", tm)
	}
	time.Sleep(100 * time.Millisecond)
	s.k.mu.Lock()
	defer s.k.mu.Unlock()
	if len(s.k.terminated) != 0 {
		t.Errorf("a dry run terminated %v", s.k.terminated)
	}
}

// TestBellBoundsReads: however often the bell rings, the sets are read at
// most once per MinGap (plus the polls while an episode is open).
func TestBellBoundsReads(t *testing.T) {
	s := start(t, policies.Terminate{})
	k := Key{UID: 1001, Proto: "tcp", Port: 40025}
	s.k.listen(k, audit.Blocked, 4242)
	begin := time.Now()
	for time.Since(begin) < 200*time.Millisecond {
		s.k.blockPackets(k, 1)
		s.ring()
	}
	elapsed := time.Since(begin)
	s.k.mu.Lock()
	reads := s.k.reads
	s.k.mu.Unlock()
	// MinGap 10 ms, Poll 50 ms: about 20 + 4 reads in 200 ms.
	if limit := int(elapsed/(10*time.Millisecond)) + int(elapsed/(50*time.Millisecond)) + 3; reads > limit {
		t.Errorf("%d reads of the sets in %s of ringing, want at most %d", reads, elapsed, limit)
	}
	if reads < 2 {
		t.Errorf("%d reads: the bell was not heard", reads)
	}
}
