// Package reconcile keeps the kernel's nftpol table equal to what the
// policy (or, at boot, the recorded state) says: it reads what the kernel
// holds, or takes the state's word for it when the state proves the kernel
// unchanged, plans the difference, commits it (in two transactions when
// accounts move, taking the first back when the second is refused, and
// planning again when somebody else committed in between), records what it
// applied, and reports how the kernel differs.
//
// Where it sits:
//
//	policies.Load -> compiler.Compile -> compiled rules.Ruleset ─┐
//	Kernel.Read (or state.Load, when the state vouches) ────────┴─> rules.Sync -> rules.Change
//	Change.Transactions -> Kernel.Apply (one batch each) -> state.Prepare/Commit of Change.Target
//
// It talks to the kernel through Kernel, a small interface that
// rules/kernel implements on netlink and that its tests fake, so commit,
// undo, retry and the removal guard are tested without root. The CLI
// (cmd/nftpol) drives it, and so will the agent.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
	"github.com/nftpol/nftpol/state"
)

// Kernel is what the engine needs of the kernel's nf_tables. *kernel.Kernel
// implements it on netlink.
type Kernel interface {
	// Identity identifies the kernel's ruleset as it is now: boot,
	// network namespace and ruleset generation. While it is unchanged,
	// nobody has committed anything.
	Identity() (kernel.Identity, error)
	// Read returns table inet <table> as the kernel holds it, nil when
	// there is none.
	Read(table string) (*rules.Ruleset, error)
	// Apply commits p as one transaction, only while the ruleset
	// generation is still generation (0: whatever it is); otherwise it
	// returns kernel.ErrGenerationChanged. On any error nothing of p is in
	// effect.
	Apply(p *rules.Plan, generation uint32) (kernel.Stats, error)
	// Delete deletes table inet <table> in one transaction.
	Delete(table string) error
	// Hits returns the elements of the dynamic set <set> of the table.
	Hits(table, set string) ([]kernel.Hit, error)
	// Close releases the connection.
	Close() error
}

// Config is how an Engine reaches the kernel and the state directory.
type Config struct {
	// StateDir is the state directory (state.Acquire, state.Load).
	StateDir string
	// RunDir is where apply and restore publish the per-UID views that
	// `nftpol ports` reads (views.Publish); "" publishes none.
	RunDir string
	// Version is nftpol's version, recorded in the state.
	Version string
	// FullRead makes plan and apply read the kernel's table even when the
	// state proves it unchanged.
	FullRead bool
	// LockTimeout bounds the wait for another nftpol's lock.
	LockTimeout time.Duration
	// Open connects to the kernel.
	Open func() (Kernel, error)
	// Warn receives warnings and retries, one line each.
	Warn io.Writer
	// Phase, when set, is told when each phase of the work ends (timings).
	Phase func(name string)
	// BPFDir is the bpffs the bind guard pins its programs and maps in
	// (under nftpol/TABLE); "" means /sys/fs/bpf.
	BPFDir string
	// Keep makes the engine outlive one command (the agent): after an
	// apply it keeps the state it recorded, as Load would read it back,
	// to plan the next change from; after a restore or a remove it reads
	// the state again when next asked.
	Keep bool
	// Owner says the Kernel creates the tables it creates owned (the
	// agent in owner mode): a same-named table it adopts was created by
	// another without those flags, which the kernel sets only when it
	// creates a table, so adopting creates it anew, through a handover
	// table (rules.Change.Handover), instead of replacing its content.
	Owner bool
}

// Engine plans and applies for one command. It reads the state once and
// keeps it; it is not for concurrent use.
type Engine struct {
	cfg Config

	// The state as it was when the command started, read once: at 50,000
	// accounts reading it costs tens of milliseconds.
	recorded    *state.State
	recordedErr error
	stateRead   bool
	prefetch    *state.Prefetch
}

// New returns an engine for cfg.
func New(cfg Config) *Engine {
	if cfg.Warn == nil {
		cfg.Warn = io.Discard
	}
	if cfg.Phase == nil {
		cfg.Phase = func(string) {}
	}
	return &Engine{cfg: cfg}
}

// SetWarn sends the warnings to w from now on (an agent serving a command
// sends them to that command's caller).
func (e *Engine) SetWarn(w io.Writer) {
	if w == nil {
		w = io.Discard
	}
	e.cfg.Warn = w
}

// SetFullRead sets Config.FullRead from now on.
func (e *Engine) SetFullRead(full bool) { e.cfg.FullRead = full }

// Forget drops the state read, so the next command reads it again.
func (e *Engine) Forget() {
	e.Close()
	e.recorded, e.recordedErr, e.stateRead = nil, nil, false
}

// maxAttempts bounds how often apply and restore plan again when somebody
// else commits between their read and their write.
const maxAttempts = 5

// Prefetch starts reading the state in the background, for a command that
// loads the policy before it takes the lock; Recorded uses what was read
// only if the file is still the same under the lock.
func (e *Engine) Prefetch() {
	if e.prefetch == nil && !e.stateRead {
		e.prefetch = state.StartPrefetch(e.cfg.StateDir)
	}
}

// Close drops a prefetched state nobody asked for.
func (e *Engine) Close() {
	if e.prefetch != nil {
		e.prefetch.Close()
		e.prefetch = nil
	}
}

// Recorded returns the state the last apply recorded, reading it on first
// use (state.ErrNoState when nothing was applied yet). Commands that write
// the state do so only at their end.
func (e *Engine) Recorded() (*state.State, error) {
	if !e.stateRead {
		if e.prefetch != nil {
			st, err, ok := e.prefetch.Take()
			e.prefetch = nil
			if ok {
				e.recorded, e.recordedErr, e.stateRead = st, err, true
			}
		}
		if !e.stateRead {
			e.recorded, e.recordedErr = state.Load(e.cfg.StateDir)
			e.stateRead = true
		}
		e.cfg.Phase("state read")
	}
	return e.recorded, e.recordedErr
}

// session is the state directory's lock and an open kernel.
type session struct {
	k     Kernel
	lock  *state.Lock
	phase func(string)
}

// open takes the state directory's lock for command and opens the kernel.
func (e *Engine) open(ctx context.Context, command string) (*session, error) {
	lock, err := state.Acquire(ctx, e.cfg.StateDir, command, e.cfg.LockTimeout)
	if err != nil {
		return nil, err
	}
	k, err := e.cfg.Open()
	if err != nil {
		lock.Release()
		return nil, err
	}
	return &session{k: k, lock: lock, phase: e.cfg.Phase}, nil
}

// end closes the kernel and releases the lock.
func (s *session) end() {
	s.k.Close()
	s.phase("kernel closed")
	s.lock.Release()
}

// Source says where the kernel's content a plan started from came from.
type Source string

// Sources of a plan's kernel content.
const (
	// FromKernel: read from the kernel.
	FromKernel Source = "full"
	// FromState: the kernel was provably unchanged since the last apply,
	// so the recorded ruleset is what it holds.
	FromState Source = "state"
)

// snapshot is what the kernel holds, as the start of a plan: the table's
// content, the identity (with the generation) it was read at, and where it
// came from.
type snapshot struct {
	current *rules.Ruleset
	id      kernel.Identity
	source  Source
}

// read reads table from the kernel. When the state proves the kernel
// unchanged since the last apply (same boot, same namespace, same ruleset
// generation: no transaction by anybody since), the recorded ruleset is the
// kernel's and the full read is skipped; a read of 50,000 elements is the
// most expensive part of an apply. allowState false forces the full read.
func (e *Engine) read(k Kernel, table string, allowState bool) (snapshot, error) {
	snap := snapshot{source: FromKernel}
	id, err := k.Identity()
	if err != nil {
		return snap, err
	}
	snap.id = id
	if allowState && !e.cfg.FullRead {
		if st, err := e.Recorded(); err == nil && st.Kernel != nil && *st.Kernel == id && st.Table == table {
			snap.current, snap.source = st.Ruleset(), FromState
			return snap, nil
		}
	}
	snap.current, err = k.Read(table)
	return snap, err
}

// Result is what a plan or a commit did.
type Result struct {
	// Plan is the change, account by account and object by object.
	Plan *rules.Plan
	// Sent is what the commit sent (zero for a plan).
	Sent kernel.Stats
	// Source is where the kernel's content the plan started from came
	// from.
	Source Source
	// Transactions is how many transactions the commit sent.
	Transactions int
	// Guard is what the bind guard did (or, for a plan, would do); nil
	// when the policy has none and none is installed.
	Guard *GuardResult
}

// Plan says what Apply would change to make the kernel hold desired.
func (e *Engine) Plan(ctx context.Context, desired *rules.Ruleset, adopt bool) (*Result, error) {
	s, err := e.open(ctx, "plan")
	if err != nil {
		return nil, err
	}
	defer s.end()
	snap, err := e.read(s.k, desired.Table, true)
	if err != nil {
		return nil, err
	}
	ch, err := e.planTo(s.k, rules.Sync(snap.current, desired), adopt)
	if err != nil {
		return nil, err
	}
	return &Result{Plan: ch.Plan, Source: snap.source}, nil
}

// planTo checks and completes ch, a change to the policy's ruleset. A
// table of the same name that nftpol did not create is refused unless adopt
// is set; adopting replaces it whole (owned). When the
// policy renamed the table, the table applied before (named in the state)
// is deleted in the same transaction, if it is still there and nftpol's: a
// rename must not leave the old rules enforcing beside the new ones.
func (e *Engine) planTo(k Kernel, ch *rules.Change, adopt bool) (*rules.Change, error) {
	ch, err := owned(ch, adopt, e.cfg.Owner, "rename the table in the policy, or run apply --adopt to replace it")
	if err != nil {
		return nil, err
	}
	if prev := e.previousTable(); prev != "" && prev != ch.Target.Table {
		old, err := k.Read(prev)
		if err != nil {
			return nil, err
		}
		if old != nil && old.Owned() {
			ch.Plan.Retire = prev
		}
	}
	return ch, nil
}

// owned returns ch when the kernel's table is nftpol's (or absent). A
// same-named table nftpol did not create is refused, saying what to do
// (hint), unless adopt is set: then it is replaced whole (staged, see
// rules.Change.Replace), or created anew through a handover table when the
// kernel connection is the table's owner (Config.Owner).
func owned(ch *rules.Change, adopt, owner bool, hint string) (*rules.Change, error) {
	switch {
	case ch.Current == nil || ch.Current.Owned():
		return ch, nil
	case !adopt:
		return nil, fmt.Errorf("table inet %s exists but was not created by nftpol; refusing to take it over (%s)", ch.Target.Table, hint)
	case owner:
		return ch.Handover(), nil
	}
	return ch.Replace(), nil
}

// previousTable returns the table name of the last apply recorded in the
// state directory, or "" when there is none or it cannot be read (then
// there is nothing to retire that nftpol knows of; say so).
func (e *Engine) previousTable() string {
	st, err := e.Recorded()
	if errors.Is(err, state.ErrNoState) {
		return ""
	}
	if err != nil {
		fmt.Fprintf(e.cfg.Warn, "nftpol: warning: %v; a table renamed since the last apply will not be removed\n", err)
		return ""
	}
	return st.Table
}

// converge reads table from the kernel, makes the change with sync and
// commits it at the ruleset generation it read. The lock keeps other nftpol
// processes out; the generation catches everybody else (nft, other tools)
// who commits between our read and our write: the kernel then refuses the
// batch whole, and converge reads (fully) and plans again. It returns what
// was planned and sent, and the kernel's identity right after the commit
// (one generation later per transaction sent). sealed, when not nil, is
// told that identity just before the commit, so that the state can be
// finished while the kernel works.
func (e *Engine) converge(k Kernel, table string, allowState bool,
	sync func(current *rules.Ruleset) (*rules.Change, error), sealed func(after kernel.Identity)) (*Result, kernel.Identity, error) {
	for attempt := 1; ; attempt++ {
		snap, err := e.read(k, table, allowState && attempt == 1)
		if err != nil {
			return nil, kernel.Identity{}, err
		}
		e.cfg.Phase("kernel read (" + string(snap.source) + ")")
		ch, err := sync(snap.current)
		if err != nil {
			return nil, kernel.Identity{}, err
		}
		e.cfg.Phase("planned")
		txs := ch.Transactions()
		if sealed != nil {
			sealed(afterCommit(snap.id, txs))
		}
		sent, n, after, err := commit(k, snap.id, ch, txs)
		if errors.Is(err, kernel.ErrGenerationChanged) && attempt < maxAttempts {
			fmt.Fprintf(e.cfg.Warn, "nftpol: the ruleset changed while planning (attempt %d); planning again\n", attempt)
			continue
		}
		if err != nil {
			return nil, kernel.Identity{}, err
		}
		return &Result{Plan: ch.Plan, Sent: sent, Source: snap.source, Transactions: n}, after, nil
	}
}

// afterCommit is the kernel's identity after txs, committed in turn from
// id, all accepted: one generation later per transaction that is not
// empty (the kernel is not asked for an empty one), as commit counts.
func afterCommit(id kernel.Identity, txs []*rules.Plan) kernel.Identity {
	for _, tx := range txs {
		if !tx.Empty() {
			id.Generation = kernel.NextGeneration(id.Generation)
		}
	}
	return id
}

// commit sends ch's transactions (txs, ch.Transactions()) to the kernel whose identity was id, each
// at the generation the one before made. A change that moves accounts goes
// in two: first the moved accounts' new elements, which change no verdict
// yet (rules.Change.Transactions says why), then the rest. If a later one
// is refused, the ones before are taken back, so the kernel is as it was. It
// returns what was sent and the kernel's identity after it.
func commit(k Kernel, id kernel.Identity, ch *rules.Change, txs []*rules.Plan) (kernel.Stats, int, kernel.Identity, error) {
	after := id
	var sent kernel.Stats
	n := 0
	for i, tx := range txs {
		st, err := k.Apply(tx, after.Generation)
		if err != nil && i > 0 && !errors.Is(err, kernel.ErrGenerationChanged) {
			// Refused: take the transactions before back too, so the
			// kernel is as it was (the elements were inert anyway).
			for _, u := range ch.TakeBack(i) {
				if _, uerr := k.Apply(u, after.Generation); uerr != nil {
					err = fmt.Errorf("%w; and taking back the moved ports sent before it failed too (they change no verdict; the next apply removes them): %v", err, uerr)
					break
				}
				after.Generation = kernel.NextGeneration(after.Generation)
			}
		}
		if err != nil {
			return kernel.Stats{}, 0, kernel.Identity{}, err
		}
		if !tx.Empty() {
			after.Generation = kernel.NextGeneration(after.Generation)
			n++
		}
		sent.Messages += st.Messages
		sent.Elements += st.Elements
	}
	return sent, n, after, nil
}
