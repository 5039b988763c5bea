// Package offenders is the agent's eye on accounts that serve where the
// policy does not allow it, and, where the policy says so, its hand.
//
// The kernel blocks the packets and records each offender (UID and port) in
// the table's dynamic violation sets with a packet counter. A rate-limited
// NFLOG rule next to each violation rule (compiler.NotifyGroup) rings a
// doorbell: the watcher then reads the violation sets, a cost that grows
// with the number of offenders, never with the number of packets, so a
// flood of blocked packets costs a bounded amount of work. Between blocked
// packets nothing here wakes up, except once every few seconds while an
// episode is open.
//
// An episode is one UID serving on one protocol and port where it may not:
// it starts with the first blocked packet the watcher sees and ends when
// no packet was blocked for Quiet, or when the socket is gone. Each start
// and end is one structured log line (msg and "event"). With a terminate
// section in the policy, a socket still blocked After its episode began has
// its processes ended as `nftpol audit --terminate` ends them (pidfds,
// SIGTERM, SIGKILL after the grace), never PID 1, never a UID the policy
// does not enforce, never a UDP socket that may be a client's.
package offenders

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nftpol/nftpol/audit"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/reconcile"
)

// Key is one offender: a UID serving on a protocol and port.
type Key struct {
	UID   uint32
	Proto string
	Port  uint16
}

func (k Key) String() string { return fmt.Sprintf("uid %d %s/%d", k.UID, k.Proto, k.Port) }

// Hit is what the violation sets hold of one offender.
type Hit struct {
	Key
	// Packets is the element's counter: every packet blocked since the
	// element was created (it expires an hour after its last packet).
	Packets uint64
	// Last is when the element was last refreshed: the last blocked packet.
	Last time.Time
}

// Source reads the violation sets.
type Source interface {
	// Hits reads every violation set of table; a missing table reads as
	// none.
	Hits(table string) ([]Hit, error)
}

// Config is what a Watcher needs.
type Config struct {
	Source Source
	// Bell rings after blocked packets; nil: the sets are read every
	// Poll, whether or not anything happened.
	Bell <-chan struct{}
	// Find returns the sockets of k with their verdict under p and the
	// processes that hold them.
	Find func(p *policies.Policy, k Key) ([]audit.Finding, error)
	// Terminate ends the processes behind blocked findings (audit's).
	Terminate func(ctx context.Context, fs []audit.Finding, grace time.Duration) []audit.Termination
	Log       *slog.Logger
	// Quiet ends an episode with no blocked packet for this long
	// (default one minute).
	Quiet time.Duration
	// Poll is how often the sets and sockets are read again while an
	// episode is open (default 5 s).
	Poll time.Duration
	// MinGap bounds how often the bell makes the watcher read the sets
	// (default 200 ms).
	MinGap time.Duration
	// Events is called with each episode start, end and termination (for
	// metrics); may be nil.
	Events func(Event)
}

// Event is what Config.Events hears.
type Event struct {
	Kind        EventKind
	Key         Key
	Account     string
	Termination *audit.Termination
	DryRun      bool
}

// EventKind is an Event's kind.
type EventKind int

// Event kinds.
const (
	EpisodeStarted EventKind = iota + 1
	EpisodeEnded
	Terminated
)

// keepTerminations is how many terminations status shows.
const keepTerminations = 10

// Watcher follows the offenders of one table.
type Watcher struct {
	cfg    Config
	policy chan *policies.Policy

	// The loop's own.
	p       *policies.Policy
	open    map[Key]*episode
	counter map[Key]uint64 // the last counter read of every element
	first   bool           // no read yet: what is there is old news unless recent
	done    chan termDone
	scanned time.Time

	mu       sync.Mutex
	hits     []Violation
	snapshot []reconcile.Episode
	ended    []reconcile.TerminationRecord
	err      string
}

type episode struct {
	Key
	account     string
	started     time.Time
	last        time.Time
	base, count uint64
	procs       []string
	reason      string
	terminateAt time.Time // zero: never
	terminating bool
}

type termDone struct {
	key Key
	res []audit.Termination
}

// New returns a watcher; Run runs it.
func New(cfg Config) *Watcher {
	if cfg.Quiet == 0 {
		cfg.Quiet = time.Minute
	}
	if cfg.Poll == 0 {
		cfg.Poll = 5 * time.Second
	}
	if cfg.MinGap == 0 {
		cfg.MinGap = 200 * time.Millisecond
	}
	if cfg.Events == nil {
		cfg.Events = func(Event) {}
	}
	return &Watcher{cfg: cfg, policy: make(chan *policies.Policy, 1), open: map[Key]*episode{},
		counter: map[Key]uint64{}, first: true, done: make(chan termDone)}
}

// SetPolicy gives the watcher the policy the kernel enforces now (the
// agent's last good one). Safe from any goroutine.
func (w *Watcher) SetPolicy(p *policies.Policy) {
	for {
		select {
		case w.policy <- p:
			return
		default:
		}
		select {
		case <-w.policy:
		default:
		}
	}
}

// Report returns the open episodes and the last terminations, for status.
// Safe from any goroutine.
func (w *Watcher) Report() ([]reconcile.Episode, []reconcile.TerminationRecord, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.snapshot), slices.Clone(w.ended), w.err
}

// Violation is one element of the violation sets, as last read.
type Violation struct {
	Key
	Account string
	Packets uint64
}

// Violations returns the violation sets' elements as last read, for
// metrics. Safe from any goroutine.
func (w *Watcher) Violations() []Violation {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.hits)
}

// Hear makes the watcher listen to bell; call it before Run.
func (w *Watcher) Hear(bell <-chan struct{}) { w.cfg.Bell = bell }

// Run follows the offenders until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	bellDue := false
	for {
		timer.Stop()
		var wake <-chan time.Time
		if at, ok := w.next(bellDue); ok {
			timer.Reset(time.Until(at))
			wake = timer.C
		}
		select {
		case <-ctx.Done():
			return
		case p := <-w.policy:
			w.p = p
			w.scan(ctx, false)
		case <-w.cfg.Bell:
			if time.Since(w.scanned) >= w.cfg.MinGap {
				w.scan(ctx, false)
			} else {
				bellDue = true
			}
		case <-wake:
			bellDue = false
			w.scan(ctx, true)
		case d := <-w.done:
			w.terminated(d)
		}
	}
}

// next is when the loop must wake next: a throttled bell, the next read
// while episodes are open, the next termination.
func (w *Watcher) next(bellDue bool) (time.Time, bool) {
	var at time.Time
	take := func(t time.Time) {
		if at.IsZero() || t.Before(at) {
			at = t
		}
	}
	if bellDue {
		take(w.scanned.Add(w.cfg.MinGap))
	}
	if len(w.open) > 0 || w.cfg.Bell == nil {
		take(w.scanned.Add(w.cfg.Poll))
	}
	for _, e := range w.open {
		if !e.terminateAt.IsZero() && !e.terminating {
			take(e.terminateAt)
		}
	}
	return at, !at.IsZero()
}

// scan reads the violation sets, opens and ends episodes, and ends the
// processes whose time has come; poll also checks that the sockets of open
// episodes are still there.
func (w *Watcher) scan(ctx context.Context, poll bool) {
	if w.p == nil {
		return
	}
	now := time.Now()
	w.scanned = now
	hits, err := w.cfg.Source.Hits(w.p.Table)
	if err != nil {
		w.setErr(fmt.Sprintf("reading the violation sets: %v", err))
		w.cfg.Log.Error("reading the violation sets", "err", err.Error())
		return
	}
	w.setErr("")
	vs := make([]Violation, len(hits))
	for i, h := range hits {
		vs[i] = Violation{Key: h.Key, Account: accountOf(w.p, h.UID), Packets: h.Packets}
	}
	w.mu.Lock()
	w.hits = vs
	w.mu.Unlock()
	seen := make(map[Key]bool, len(hits))
	for _, h := range hits {
		seen[h.Key] = true
		prev, known := w.counter[h.Key]
		w.counter[h.Key] = h.Packets
		if e := w.open[h.Key]; e != nil {
			if h.Packets > e.count {
				e.count, e.last = h.Packets, h.Last
			}
			continue
		}
		switch {
		case known && h.Packets > prev:
			w.start(h, prev, now)
		case !known && (!w.first || now.Sub(h.Last) < w.cfg.Quiet):
			w.start(h, 0, now)
		}
	}
	w.first = false
	for k := range w.counter {
		if !seen[k] {
			delete(w.counter, k)
		}
	}
	for k, e := range w.open {
		switch {
		case now.Sub(e.last) >= w.cfg.Quiet || !seen[k]:
			w.end(e, fmt.Sprintf("no packet blocked for %s", w.cfg.Quiet))
		case poll && !e.terminating:
			if fs, err := w.cfg.Find(w.p, k); err == nil && len(blocked(fs)) == 0 {
				w.end(e, "the socket is closed or no longer blocked")
			}
		}
	}
	for _, e := range w.open {
		if !e.terminateAt.IsZero() && !e.terminating && !now.Before(e.terminateAt) {
			w.terminate(ctx, e)
		}
	}
	w.publish()
}

func (w *Watcher) start(h Hit, base uint64, now time.Time) {
	started := h.Last
	if started.After(now) {
		started = now
	}
	e := &episode{Key: h.Key, account: accountOf(w.p, h.UID), started: started, last: h.Last, base: base, count: h.Packets}
	attrs := []any{"event", "episode_start", "uid", h.UID, "account", e.account, "proto", h.Proto, "port", h.Port,
		"packets", h.Packets - base, "first_seen", e.started.UTC()}
	fs, err := w.cfg.Find(w.p, h.Key)
	if err != nil {
		attrs = append(attrs, "sockets_err", err.Error())
	}
	var pids []int
	var comms []string
	for _, f := range fs {
		for _, p := range f.Processes {
			e.procs = append(e.procs, fmt.Sprintf("%s[%d]", p.Command, p.PID))
			pids, comms = append(pids, p.PID), append(comms, p.Command)
		}
		if f.Verdict == audit.Blocked && e.reason == "" {
			e.reason = f.Explain()
		}
	}
	e.procs = slices.Compact(e.procs)
	if len(pids) > 0 {
		attrs = append(attrs, "pid", pids[0], "command", comms[0])
	}
	if len(pids) > 1 {
		attrs = append(attrs, "processes", e.procs)
	}
	if e.reason != "" {
		attrs = append(attrs, "reason", e.reason)
	}
	if t := w.p.Terminate; t.Enabled {
		e.terminateAt = e.started.Add(t.After)
		attrs = append(attrs, "terminate_at", e.terminateAt.UTC(), "dry_run", t.DryRun)
	}
	w.open[h.Key] = e
	w.cfg.Log.Warn("serving where the policy does not allow it", attrs...)
	w.cfg.Events(Event{Kind: EpisodeStarted, Key: h.Key, Account: e.account})
}

func (w *Watcher) end(e *episode, why string) {
	delete(w.open, e.Key)
	w.cfg.Log.Info("stopped serving where the policy does not allow it", "event", "episode_end", "uid", e.UID,
		"account", e.account, "proto", e.Proto, "port", e.Port, "packets", e.count-e.base,
		"seconds", time.Since(e.started).Round(time.Second).Seconds(), "why", why)
	w.cfg.Events(Event{Kind: EpisodeEnded, Key: e.Key, Account: e.account})
}

// terminate ends the processes behind e's blocked socket (or, in a dry
// run, says which it would end); Terminate runs on a goroutine of its own,
// since it waits out the grace period.
func (w *Watcher) terminate(ctx context.Context, e *episode) {
	e.terminating = true
	t := w.p.Terminate
	fs, err := w.cfg.Find(w.p, e.Key)
	if err != nil {
		w.cfg.Log.Error("not terminated: the sockets cannot be read", "uid", e.UID, "proto", e.Proto, "port", e.Port, "err", err.Error())
		e.terminating = false
		e.terminateAt = time.Now().Add(w.cfg.Poll)
		return
	}
	fs = blocked(fs)
	if len(fs) == 0 {
		w.end(e, "the socket is closed or no longer blocked")
		return
	}
	if t.DryRun {
		w.record(e, audit.Preview(fs), true)
		return
	}
	k := e.Key
	go func() {
		res := w.cfg.Terminate(ctx, fs, t.Grace)
		select {
		case w.done <- termDone{key: k, res: res}:
		case <-ctx.Done():
		}
	}()
}

func (w *Watcher) terminated(d termDone) {
	e := w.open[d.key]
	if e == nil {
		e = &episode{Key: d.key, account: accountOf(w.p, d.key.UID)}
	}
	w.record(e, d.res, false)
	gone := true
	for _, tm := range d.res {
		gone = gone && (tm.Outcome == audit.Exited || tm.Outcome == audit.Gone)
	}
	if gone && w.open[d.key] != nil {
		w.end(e, "terminated")
	}
	w.publish()
}

// record logs and keeps what was done to e's processes.
func (w *Watcher) record(e *episode, res []audit.Termination, dry bool) {
	now := time.Now().UTC()
	msg := "terminated a service serving where the policy does not allow it"
	if dry {
		msg = "would terminate a service serving where the policy does not allow it (dry run)"
	}
	w.mu.Lock()
	for _, tm := range res {
		attrs := []any{"event", "termination", "uid", e.UID, "account", e.account, "proto", e.Proto, "port", e.Port,
			"pid", tm.PID, "command", tm.Command, "sockets", tm.Sockets, "signals", cmp.Or(strings.Join(tm.Signals, ","), "none"),
			"outcome", string(tm.Outcome), "dry_run", dry}
		if tm.Detail != "" {
			attrs = append(attrs, "detail", tm.Detail)
		}
		w.cfg.Log.Warn(msg, attrs...)
		w.ended = append(w.ended, reconcile.TerminationRecord{At: now.Truncate(time.Second), UID: e.UID, Account: e.account,
			Proto: e.Proto, Port: e.Port, PID: tm.PID, Command: tm.Command, Signals: slices.Clone(tm.Signals),
			Outcome: string(tm.Outcome), Detail: tm.Detail, DryRun: dry})
	}
	if len(w.ended) > keepTerminations {
		w.ended = slices.Delete(w.ended, 0, len(w.ended)-keepTerminations)
	}
	w.mu.Unlock()
	for i := range res {
		w.cfg.Events(Event{Kind: Terminated, Key: e.Key, Account: e.account, Termination: &res[i], DryRun: dry})
	}
}

func (w *Watcher) publish() {
	eps := make([]reconcile.Episode, 0, len(w.open))
	for _, e := range w.open {
		r := reconcile.Episode{UID: e.UID, Account: e.account, Proto: e.Proto, Port: e.Port,
			Started: e.started.UTC().Truncate(time.Second), LastSeen: e.last.UTC().Truncate(time.Second),
			Packets: e.count - e.base, Processes: slices.Clone(e.procs), Reason: e.reason}
		if r.Processes == nil {
			r.Processes = []string{}
		}
		if !e.terminateAt.IsZero() {
			t := e.terminateAt.UTC().Truncate(time.Second)
			r.TerminateAt = &t
		}
		eps = append(eps, r)
	}
	slices.SortFunc(eps, func(x, y reconcile.Episode) int {
		return cmp.Or(cmp.Compare(x.UID, y.UID), cmp.Compare(x.Proto, y.Proto), cmp.Compare(x.Port, y.Port))
	})
	w.mu.Lock()
	w.snapshot = eps
	w.mu.Unlock()
}

func (w *Watcher) setErr(s string) {
	w.mu.Lock()
	w.err = s
	w.mu.Unlock()
}

// blocked are the findings the policy blocks.
func blocked(fs []audit.Finding) []audit.Finding {
	return slices.DeleteFunc(slices.Clone(fs), func(f audit.Finding) bool { return f.Verdict != audit.Blocked })
}

// accountOf names the account of uid in p ("" for none).
func accountOf(p *policies.Policy, uid uint32) string {
	if p == nil {
		return ""
	}
	i, ok := slices.BinarySearchFunc(p.Accounts, uid, func(a *policies.Account, uid uint32) int { return cmp.Compare(a.UID, uid) })
	if !ok {
		return ""
	}
	return p.Accounts[i].Name
}
