// Package agent is `nftpol watch`: a long-running process that keeps the
// kernel's nftpol table equal to the policy, continuously.
//
//   - It owns the table where the kernel can (netlink table flags
//     OWNER|PERSIST, kernel 6.9 and later): the kernel then refuses every
//     other process's flush, delete or edit of it, and the table outlives a
//     crash of the agent. Where it cannot, it follows the kernel's nf_tables
//     events and heals any change to its table by converging again, backing
//     off when the same change is fought over.
//   - It follows the policy files (inotify) and applies what changed; events
//     that come while an apply runs make the next one. Bad input changes
//     nothing: the last good policy stays enforced and the error shows in
//     status until it is fixed.
//   - It serves the CLI's plan, apply, restore, remove and status over a
//     root-only unix socket in the state directory, so it is the only
//     writer.
//
// All work on the kernel and the state happens on one goroutine (Run's), in
// the order it arrives; the engine (package reconcile) is kept for the
// agent's life and plans each change from the state it recorded last.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"time"

	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/reconcile"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/state"
	"github.com/nftpol/nftpol/views"
)

// Policies reads the policy files.
type Policies interface {
	// Load reads every file.
	Load() (*policies.Policy, error)
	// Reload reads again the paths that changed (files and directories,
	// as inotify names them) and trusts what it read of the others.
	Reload(changed []string) (*policies.Policy, error)
}

// Ownership is how the agent holds the table, on the kernel connection its
// engine commits through.
type Ownership interface {
	// Own makes the table the agent's, adopting it when it is there. It
	// returns ErrRebuild when the table is there but cannot be adopted
	// (its flags are fixed when it is created): the first apply then
	// creates it anew, owned, through a handover table
	// (rules.Change.Handover), which Own has made sure is not there.
	Own(table string) error
	// DropHandover deletes the handover table of table that a handover
	// interrupted after it had replaced the table left (it enforces the
	// policy of then beside the table), and says whether there was one.
	// The agent calls it once the table is whole again: after its first
	// apply that succeeds.
	DropHandover(table string) (bool, error)
}

// ErrRebuild is returned by Ownership.Own for a table that must be replaced
// to be owned.
var ErrRebuild = errors.New("the table must be replaced to be owned")

// Monitor reports changes to the table committed by other processes.
type Monitor interface {
	// Changes delivers one value per foreign transaction that touched the
	// table (coalesced when the agent is busy).
	Changes() <-chan Change
	Close() error
}

// Change is a foreign change to the table.
type Change struct {
	// Who committed it (process name and pid), "" when unknown.
	Who string
	// Lost is set when events were lost: anything may have changed.
	Lost bool
	// At is when it was seen.
	At time.Time
}

// Mode says how the agent keeps the table.
type Mode string

// Modes.
const (
	// ModeOwner: the agent holds the table (OWNER|PERSIST).
	ModeOwner Mode = "owner"
	// ModeMonitor: the agent follows the kernel's events and heals.
	ModeMonitor Mode = "monitor"
)

// Config is what an agent needs.
type Config struct {
	// StateDir is the state directory: the agent lock, the socket, the
	// state.
	StateDir string
	// ConfigFile is the main policy file (its directory is watched).
	ConfigFile string
	Policies   Policies
	// Engine plans and applies; made with reconcile.Config.Keep, on a
	// kernel connection that stays open for the agent's life.
	Engine *reconcile.Engine
	// Mode is how the table is kept; Ownership (ModeOwner) owns it,
	// Watch (ModeMonitor) follows the kernel.
	Mode      Mode
	Ownership Ownership
	Watch     func(table string) (Monitor, error)
	// Serve runs a CLI command for a client of the socket, with what it
	// writes going to stdout and stderr, and returns its exit code. It
	// runs on the agent's goroutine and uses the agent through Host.
	Serve func(ctx context.Context, h *Host, req Request, stdout, stderr io.Writer) int
	// Notify speaks systemd's notify protocol (nil: not under systemd).
	Notify func(state string)
	// WatchdogEvery is how often to tell systemd the agent lives (0:
	// never).
	WatchdogEvery time.Duration
	// Recheck is how often the whole table is read and compared even
	// when nothing said it changed (default one hour).
	Recheck time.Duration
	Log     *slog.Logger
	// Settings are the agent's global settings (config, netns), which
	// a served command's must equal.
	Settings map[string]string
	// FollowFiles false: the policy files are not followed; only a served
	// apply (or SIGHUP) applies them, for config management that plans
	// before it applies. The table is kept all the same.
	FollowFiles bool
	// Reload delivers a value for each SIGHUP: everything is read again.
	Reload <-chan os.Signal
	// RunDir is the run directory: the agent answers `nftpol ports` from
	// memory on its socket there (views.Serve), and keeps the view files
	// for when it does not run up to date in the background, off the
	// path of applies. "" for none. The engine's own RunDir must be "".
	RunDir string
	// Offenders follows the accounts that serve where they may not (nil:
	// nobody does); the agent gives it each policy it enforces.
	Offenders Offenders
	// Started is called once the agent holds the state directory, before
	// its first apply (nil: nothing to start); an error ends Run.
	Started func(ctx context.Context) error
	// Settle runs once the agent has had nothing to do for settleAfter
	// after some work (nil: nothing): the agent gives the memory of the
	// work back then, so that an idle agent holds what it keeps only.
	Settle func()
	// HealTook hears how long each heal took (nil: nobody listens).
	HealTook func(time.Duration)
}

// Offenders is the agent's view of package offenders' Watcher.
type Offenders interface {
	SetPolicy(p *policies.Policy)
	Report() ([]reconcile.Episode, []reconcile.TerminationRecord, string)
}

// Stats is the agent's state for metrics.
type Stats struct {
	Report *reconcile.AgentReport
	// Enforcing: the table holds a policy (none before the first apply,
	// or after nftpol remove).
	Enforcing bool
	// InSync: enforcing the policy the files say, with no foreign change
	// waiting to be healed.
	InSync bool
}

// Agent is a running nftpol watch.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	eng   *reconcile.Engine
	files *files
	since time.Time

	// handover: a handover table may be left beside the table
	// (Ownership.DropHandover); checked after the first apply that
	// succeeds.
	handover bool

	// good is the last policy applied (or confirmed in the kernel), and
	// desired its ruleset; nil before the first.
	good    *policies.Policy
	desired *rules.Ruleset
	// digestOf is the policy digestFn gives the digest of (see digest).
	digestOf *policies.Policy
	digestFn func() string
	// policyErr is why the files cannot be applied now, since errSince.
	policyErr error
	errSince  time.Time
	// suspended is why nothing is enforced (a served remove); "" none.
	suspended string
	burst     removals

	applies, failures, heals uint64
	lastApply, lastHeal      time.Time
	lastHealCause            string
	// contested counts heals in a row less than contestWindow apart;
	// healAt is when the next heal may run.
	contested int
	lastFight time.Time
	healAt    time.Time
	healDue   bool
	healCause string

	requests chan served
	// afterServe is what a served command told the agent (Host), taken in
	// once the client has its answer.
	afterServe []func()
	// policyErrors counts the distinct policy errors seen.
	policyErrors uint64
	stats        atomic.Pointer[Stats]
	// index is what the views socket answers from; pubs feeds the
	// background publisher of the view files (nil: withdraw them).
	index atomic.Pointer[views.Index]
	pubs  chan *views.Publication
}

// served is a request from a client of the socket.
type served struct {
	req  Request
	conn *net.UnixConn
}

// New checks cfg and returns an agent; Run starts it.
func New(cfg Config) *Agent {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	}
	if cfg.Recheck == 0 {
		cfg.Recheck = time.Hour
	}
	if cfg.Notify == nil {
		cfg.Notify = func(string) {}
	}
	if cfg.HealTook == nil {
		cfg.HealTook = func(time.Duration) {}
	}
	a := &Agent{cfg: cfg, log: cfg.Log, eng: cfg.Engine, requests: make(chan served)}
	a.stats.Store(&Stats{Report: &reconcile.AgentReport{Mode: string(cfg.Mode), Episodes: []reconcile.Episode{}, Terminations: []reconcile.TerminationRecord{}}})
	return a
}

// Stats returns the agent's state as of the end of its last piece of work.
// Safe from any goroutine.
func (a *Agent) Stats() Stats { return *a.stats.Load() }

// publish makes the agent's state what Stats returns.
func (a *Agent) publish() {
	on := a.good != nil && a.suspended == ""
	a.stats.Store(&Stats{Report: a.report(), Enforcing: on, InSync: on && a.policyErr == nil && !a.healDue})
}

// Heals of a change that comes back less than contestWindow after the last
// heal count as a fight; after contestLimit in a row the agent waits before
// healing again, doubling the wait up to maxBackoff. A fight is logged and
// counted, never a busy loop.
const (
	contestWindow = 10 * time.Second
	contestLimit  = 5
	maxBackoff    = time.Minute
)

// Run runs the agent until ctx ends, then leaves the kernel as it is and
// returns nil. It returns an error when it cannot start: another agent
// serves the state directory, the socket cannot be made, the kernel cannot
// be read.
func (a *Agent) Run(ctx context.Context) error {
	a.since = time.Now()
	lock, err := acquire(a.cfg.StateDir)
	if err != nil {
		return err
	}
	defer lock.release()
	if a.cfg.RunDir != "" {
		vl, err := views.Listen(a.cfg.RunDir)
		if err != nil {
			return fmt.Errorf("the views socket in %s: %w", a.cfg.RunDir, err)
		}
		defer func() {
			vl.Close()
			_ = os.Remove(filepath.Join(a.cfg.RunDir, views.SocketName))
		}()
		go views.Serve(vl, a.index.Load, a.log)
		a.pubs = make(chan *views.Publication, 1)
		done := make(chan struct{})
		go a.publisher(done)
		defer func() { close(a.pubs); <-done }()
	}
	if a.cfg.Started != nil {
		if err := a.cfg.Started(ctx); err != nil {
			return err
		}
	}

	ln, err := a.listen()
	if err != nil {
		return err
	}
	defer ln.Close()
	go a.accept(ctx, ln)

	if a.files, err = newFiles(a.cfg.ConfigFile, a.log); err != nil {
		return fmt.Errorf("watching %s: %w", a.cfg.ConfigFile, err)
	}
	defer a.files.close()

	start := time.Now()
	p, perr := a.cfg.Policies.Load()
	table := ""
	if perr == nil {
		table = p.Table
		a.files.follow(p.Include)
		a.files.take() // what happened before the first read is in it
	} else if table, err = a.eng.TableName(func() (string, error) { return "", perr }); err != nil {
		return fmt.Errorf("the policy cannot be read and nothing was applied before: %w", err)
	}

	rebuild := false
	if a.cfg.Mode == ModeOwner {
		a.handover = true
		switch err := a.cfg.Ownership.Own(table); {
		case errors.Is(err, ErrRebuild):
			rebuild = true
		case err != nil:
			return fmt.Errorf("owning table inet %s: %w", table, err)
		}
	}
	var mon Monitor
	var changes <-chan Change
	if a.cfg.Mode == ModeMonitor {
		if mon, err = a.cfg.Watch(table); err != nil {
			return fmt.Errorf("following the kernel's changes to table inet %s: %w", table, err)
		}
		defer mon.Close()
		changes = mon.Changes()
	}

	// The first convergence reads the kernel in full: a new agent trusts
	// nothing it has not seen.
	a.eng.SetFullRead(true)
	if perr == nil {
		a.apply(p, "start", reconcile.ApplyOptions{Rebuild: rebuild, Policy: p}, nil)
	} else {
		a.policyFailed(perr)
		a.restore("start, with a broken policy", rebuild)
	}
	a.eng.SetFullRead(false)
	a.log.Info("ready", "table", table, "mode", string(a.cfg.Mode), "state_dir", a.cfg.StateDir,
		"accounts", accountsOf(a.good), "took_ms", ms(time.Since(start)))
	a.cfg.Notify("READY=1\nSTATUS=" + a.statusLine())

	var watchdog <-chan time.Time
	if a.cfg.WatchdogEvery > 0 {
		t := time.NewTicker(a.cfg.WatchdogEvery)
		defer t.Stop()
		watchdog = t.C
	}
	recheck := time.NewTicker(a.cfg.Recheck)
	defer recheck.Stop()
	var healTimer *time.Timer
	var healC <-chan time.Time
	settle := time.NewTimer(settleAfter)
	defer settle.Stop()

	for {
		a.publish()
		if a.healDue && healC == nil {
			wait := time.Until(a.healAt)
			if wait <= 0 {
				a.heal()
			} else {
				healTimer = time.NewTimer(wait)
				healC = healTimer.C
			}
		}
		select {
		case <-ctx.Done():
			a.log.Info("stopping; the kernel keeps what it holds", "table", table)
			a.cfg.Notify("STOPPING=1")
			return nil
		case <-a.files.wake:
			if a.cfg.FollowFiles {
				a.policyChanged()
			}
		case ch, ok := <-changes:
			if !ok {
				// The watch ended (it said why): the hourly re-read
				// is all that is left; say so, and let systemd
				// restart the agent.
				return fmt.Errorf("following the kernel's changes to table inet %s ended; restart the agent", table)
			}
			a.changed(ch)
		case <-healC:
			healC = nil
			a.heal()
		case s := <-a.requests:
			a.serve(ctx, s)
		case <-a.cfg.Reload:
			a.cfg.Notify("RELOADING=1")
			a.log.Info("SIGHUP: reading the policy and the kernel again")
			a.files.take()
			a.eng.Forget()
			a.reread("SIGHUP")
			a.cfg.Notify("READY=1\nSTATUS=" + a.statusLine())
		case <-recheck.C:
			if a.cfg.FollowFiles {
				a.reread("hourly re-read")
			} else {
				// The last applied policy, against the table read in full.
				a.eng.SetFullRead(true)
				a.heal()
				a.eng.SetFullRead(false)
			}
		case <-watchdog:
			a.cfg.Notify("WATCHDOG=1")
			continue
		case <-settle.C:
			if a.cfg.Settle != nil {
				a.cfg.Settle()
			}
			continue
		}
		// Some work was done: settle once the agent is idle again.
		settle.Reset(settleAfter)
	}
}

// settleAfter is how long the agent waits after its last piece of work
// before it gives memory back: long enough for a burst of changes to end,
// short enough that an idle agent is small soon.
const settleAfter = 2 * time.Second

// policyChanged applies what changed in the policy files.
func (a *Agent) policyChanged() {
	changed, all := a.files.take()
	if !all && len(changed) == 0 {
		return
	}
	var p *policies.Policy
	var err error
	if all {
		p, err = a.cfg.Policies.Load()
	} else {
		p, err = a.cfg.Policies.Reload(changed)
	}
	if err != nil {
		a.policyFailed(err)
		return
	}
	a.files.follow(p.Include)
	if a.suspended != "" {
		a.log.Info("the policy changed; not applied while suspended", "why", a.suspended)
		return
	}
	removes, err := a.burst.check(time.Now(), a.good, p)
	if err != nil {
		a.policyFailed(err)
		return
	}
	a.apply(p, "policy changed", reconcile.ApplyOptions{Policy: p}, &removes)
}

// reread reads the whole policy and the whole table, and converges.
func (a *Agent) reread(why string) {
	a.eng.SetFullRead(true)
	defer a.eng.SetFullRead(false)
	p, err := a.cfg.Policies.Load()
	if err != nil {
		a.policyFailed(err)
		if a.good != nil && a.suspended == "" {
			a.apply(a.good, why+", the last good policy", reconcile.ApplyOptions{Policy: a.good, AllowRemovals: true}, nil)
		}
		return
	}
	a.files.follow(p.Include)
	if a.suspended != "" {
		return
	}
	removes, err := a.burst.check(time.Now(), a.good, p)
	if err != nil {
		a.policyFailed(err)
		return
	}
	a.apply(p, why, reconcile.ApplyOptions{Policy: p}, &removes)
}

// policyFailed keeps the last good policy and shows why the files are not
// applied.
func (a *Agent) policyFailed(err error) {
	if a.policyErr == nil || a.policyErr.Error() != err.Error() {
		a.errSince = time.Now()
		a.policyErrors++
		a.log.Error("policy not applied; the last good policy stays enforced", "err", err.Error())
	}
	a.policyErr = err
	a.cfg.Notify("STATUS=" + a.statusLine())
}

// apply compiles p and brings the kernel to it; removes, when not nil, is
// the burst removal guard's judgement of the change (it passed), recorded
// once applied.
func (a *Agent) apply(p *policies.Policy, why string, opt reconcile.ApplyOptions, removes *bool) bool {
	start := time.Now()
	desired, err := a.compile(p)
	if err != nil {
		a.policyFailed(err)
		return false
	}
	res, err := a.commit(desired, p, opt)
	if err != nil {
		a.failures++
		a.log.Error("apply failed; the kernel is as it was", "why", why, "err", err.Error())
		a.cfg.Notify("STATUS=" + a.statusLine())
		return false
	}
	if removes != nil {
		a.burst.applied(time.Now(), a.good, *removes)
	}
	a.accepted(p, desired)
	if !res.Plan.Empty() {
		a.applies++
		a.lastApply = time.Now()
		a.log.Info("applied", "why", why, "accounts", len(p.Accounts), "operations", res.Plan.Operations(),
			"transactions", res.Transactions, "kernel_read", string(res.Source), "took_ms", ms(time.Since(start)))
	}
	a.dropHandover(desired.Table)
	a.cfg.Notify("STATUS=" + a.statusLine())
	return true
}

// digest returns p's digest (computed in the background), the one of the
// policy before when p holds the same: at 50,000 accounts the digest is a
// few milliseconds of CPU that an apply with nothing to change, as config
// management runs many, need not pay again.
func (a *Agent) digest(p *policies.Policy) func() string {
	if a.digestOf == nil || !samePolicy(a.digestOf, p) {
		a.digestOf, a.digestFn = p, reconcile.DigestInBackground(p)
	}
	return a.digestFn
}

// samePolicy reports whether a and b are the same policy in the same
// memory: policies.Cache returns the accounts it returned before when no
// file changed.
func samePolicy(a, b *policies.Policy) bool {
	if a == nil || b == nil || len(a.Accounts) != len(b.Accounts) || len(a.Accounts) > 0 && &a.Accounts[0] != &b.Accounts[0] {
		return false
	}
	x, y := *a, *b
	x.Accounts, y.Accounts = nil, nil
	return reflect.DeepEqual(x, y)
}

// compile compiles p, from the last good policy's ruleset where p differs
// from it in a few accounts only (compiler.Recompile).
func (a *Agent) compile(p *policies.Policy) (*rules.Ruleset, error) {
	return compiler.Recompile(a.desired, a.good, p)
}

// accepted makes p the last good policy.
func (a *Agent) accepted(p *policies.Policy, desired *rules.Ruleset) {
	if a.policyErr != nil {
		a.log.Info("the policy is good again", "was", a.policyErr.Error())
	}
	if st, err := a.eng.Recorded(); err == nil && st != nil {
		// The compiled sets that hold what the kernel holds, in the
		// kernel's recorded memory: one copy, and the next change's
		// overlay finds them unchanged without walking them.
		desired = rules.ShareElements(desired, st.Ruleset())
	}
	a.good, a.desired, a.policyErr, a.suspended = p, desired, nil, ""
	if a.cfg.Offenders != nil {
		a.cfg.Offenders.SetPolicy(p)
	}
	a.viewsChanged()
}

// viewsChanged makes what the state records now what `nftpol ports` is
// told, and has the view files follow in the background.
func (a *Agent) viewsChanged() {
	if a.pubs == nil {
		return
	}
	st, err := a.eng.Recorded()
	if err != nil {
		return
	}
	pub := reconcile.PublicationOf(st)
	a.index.Store(views.NewIndex(pub.Ruleset, time.Now().UTC(), pub.Source))
	a.handOver(&pub)
}

// viewsWithdrawn: nothing is enforced, so no account is told of ports.
func (a *Agent) viewsWithdrawn() {
	if a.pubs == nil {
		return
	}
	a.index.Store(nil)
	a.handOver(nil)
}

// publish_ hands pub to the publisher, replacing one it has not taken.
func (a *Agent) handOver(pub *views.Publication) {
	for {
		select {
		case a.pubs <- pub:
			return
		default:
		}
		select {
		case <-a.pubs:
		default:
		}
	}
}

// publisher writes the view files, one publication at a time, the newest
// one: only what changed since the one before, after the first.
func (a *Agent) publisher(done chan struct{}) {
	defer close(done)
	var prev *views.Publication
	for pub := range a.pubs {
		start := time.Now()
		if pub == nil {
			if err := views.Withdraw(a.cfg.RunDir); err != nil {
				a.log.Error("withdrawing the account views", "dir", a.cfg.RunDir, "err", err.Error())
			}
			prev = nil
			continue
		}
		st, err := views.Publish(a.cfg.RunDir, *pub, prev, time.Now().UTC())
		if err != nil {
			a.log.Error("publishing the account view files (nftpol ports asks the agent while it runs)", "dir", a.cfg.RunDir, "err", err.Error())
			prev = nil
			continue
		}
		prev = pub
		if st.Full {
			a.log.Info("published the account view files", "dir", a.cfg.RunDir, "written", st.Written, "took_ms", ms(time.Since(start)))
		}
	}
}

// commit applies desired and records it.
func (a *Agent) commit(desired *rules.Ruleset, p *policies.Policy, opt reconcile.ApplyOptions) (*reconcile.Result, error) {
	applied, err := a.eng.Apply(context.Background(), desired, a.digest(p), opt)
	if err != nil {
		return nil, err
	}
	defer applied.Close()
	if err := applied.Record(); err != nil {
		return nil, err
	}
	if applied.GuardErr != nil {
		a.log.Error("bind guard not applied", "err", applied.GuardErr.Error())
	}
	return &applied.Result, nil
}

// restore installs what the state records, for an agent that starts with a
// broken policy.
func (a *Agent) restore(why string, rebuild bool) {
	// The engine keeps what it reads: Restore does not read it again.
	if _, err := a.eng.Recorded(); errors.Is(err, state.ErrNoState) {
		a.log.Warn("nothing applied before and the policy is broken: enforcing nothing until it is fixed")
		return
	}
	res, _, err := a.eng.Restore(context.Background(), reconcile.RestoreOptions{Rebuild: rebuild})
	if err != nil {
		a.failures++
		a.log.Error("restore failed", "why", why, "err", err.Error())
		return
	}
	a.viewsChanged()
	if !res.Plan.Empty() {
		a.applies++
		a.lastApply = time.Now()
		a.log.Info("restored the recorded ruleset", "why", why, "operations", res.Plan.Operations())
	}
	a.dropHandover(res.Plan.Table)
}

// dropHandover deletes the handover table an interrupted handover left,
// once, after the first apply that succeeded: the table is whole then.
func (a *Agent) dropHandover(table string) {
	if !a.handover {
		return
	}
	dropped, err := a.cfg.Ownership.DropHandover(table)
	if err != nil {
		a.log.Error("deleting the handover table an interrupted rebuild left", "table", rules.HandoverTable(table), "err", err.Error())
		return
	}
	a.handover = false
	if dropped {
		a.log.Warn("deleted the handover table an interrupted rebuild left", "table", rules.HandoverTable(table))
	}
}

// changed takes a foreign change to the table: heal it now, or after the
// back-off when the change is being fought over.
func (a *Agent) changed(ch Change) {
	cause := ch.Who
	if ch.Lost {
		cause = "lost kernel events"
	}
	if cause == "" {
		cause = "another process"
	}
	if a.suspended != "" {
		return
	}
	now := ch.At
	if now.IsZero() {
		now = time.Now()
	}
	if !a.healDue {
		if !a.lastHeal.IsZero() && now.Sub(a.lastHeal) < contestWindow {
			a.contested++
		} else {
			a.contested = 0
		}
		a.healAt = now
		if a.contested >= contestLimit {
			wait := min(maxBackoff, time.Second<<min(a.contested-contestLimit, 6))
			a.healAt = now.Add(wait)
			a.lastFight = now
			a.log.Warn("the table keeps being changed by somebody else; healing after a pause", "cause", cause,
				"heals_in_a_row", a.contested, "pause_ms", ms(wait))
		}
	}
	a.healDue, a.healCause = true, cause
}

// heal converges the kernel to the last good policy after a foreign change.
func (a *Agent) heal() {
	a.healDue = false
	if a.good == nil || a.suspended != "" {
		return
	}
	start := time.Now()
	// Brief: the log line below shows a few accounts, and a heal after a
	// flush adds them all.
	res, err := a.commit(a.desired, a.good, reconcile.ApplyOptions{Policy: a.good, AllowRemovals: true, Adopt: true, Brief: true})
	if err != nil {
		a.failures++
		a.log.Error("heal failed", "cause", a.healCause, "err", err.Error())
		// Try again after the back-off: the change is still there.
		a.healDue, a.healAt = true, time.Now().Add(time.Second)
		return
	}
	a.lastHeal = time.Now()
	if res.Plan.Empty() {
		return
	}
	a.heals++
	a.cfg.HealTook(time.Since(start))
	a.viewsChanged()
	a.lastHealCause = a.healCause
	a.log.Warn("healed a change to the table by somebody else", "cause", a.healCause, "operations", res.Plan.Operations(),
		"drift", summary(res.Plan.DriftHead(reconcile.BriefAccounts)), "took_ms", ms(time.Since(start)))
	a.cfg.Notify("STATUS=" + a.statusLine())
}

// statusLine is the one-line STATUS systemd shows.
func (a *Agent) statusLine() string {
	switch {
	case a.suspended != "":
		return "enforcing nothing: " + a.suspended
	case a.policyErr != nil:
		return fmt.Sprintf("policy NOT applied (last good one enforced): %s", firstLine(a.policyErr.Error()))
	case a.good == nil:
		return "enforcing nothing"
	}
	return fmt.Sprintf("enforcing %d accounts (%s); %d applies, %d heals", len(a.good.Accounts), a.cfg.Mode, a.applies, a.heals)
}

// report is the agent's part of status.
func (a *Agent) report() *reconcile.AgentReport {
	r := &reconcile.AgentReport{PID: os.Getpid(), Since: a.since.UTC().Truncate(time.Second), Mode: string(a.cfg.Mode),
		Suspended: a.suspended, Applies: a.applies, Failures: a.failures, Heals: a.heals, LastHealCause: a.lastHealCause,
		PolicyErrors: a.policyErrors, Episodes: []reconcile.Episode{}, Terminations: []reconcile.TerminationRecord{}}
	if a.cfg.Offenders != nil {
		r.Episodes, r.Terminations, r.OffendersError = a.cfg.Offenders.Report()
		if r.Episodes == nil {
			r.Episodes = []reconcile.Episode{}
		}
		if r.Terminations == nil {
			r.Terminations = []reconcile.TerminationRecord{}
		}
	}
	if a.policyErr != nil {
		r.PolicyError = a.policyErr.Error()
		t := a.errSince.UTC().Truncate(time.Second)
		r.PolicyErrorSince = &t
	}
	if !a.lastApply.IsZero() {
		t := a.lastApply.UTC().Truncate(time.Second)
		r.LastApply = &t
	}
	if a.heals > 0 {
		t := a.lastHeal.UTC().Truncate(time.Second)
		r.LastHeal = &t
	}
	return r
}

// summary joins the first n items of a list and counts the rest: a deleted
// table drifts in every set, which one log line need not list.
func summary(items []string, total int) string {
	if len(items) >= total {
		return strings.Join(items, "; ")
	}
	return fmt.Sprintf("%s; and %d more", strings.Join(items, "; "), total-len(items))
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func accountsOf(p *policies.Policy) int {
	if p == nil {
		return 0
	}
	return len(p.Accounts)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// socketPath is the agent's socket.
func (a *Agent) socketPath() string { return filepath.Join(a.cfg.StateDir, SocketName) }
