package main

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nftpol/nftpol/agent"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/reconcile"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
)

// agentKernel is the agent's one kernel connection: the engine commits
// through it, and it owns or follows the table.
type agentKernel interface {
	reconcile.Kernel
	agent.Ownership
	watch(table string) (agent.Monitor, error)
}

// agentConn is agentKernel on rules/kernel.
type agentConn struct {
	*kernel.Kernel
	owner bool
	// w is the watcher in monitor mode, paused around the agent's own
	// large commits: while anybody listens, the kernel makes one
	// notification per element of every commit, which made a 50,000
	// account apply take seconds instead of a fifth of one.
	w *kernel.Watcher
}

// pauseAbove is the number of operations above which a commit of the
// agent's own is made with the watcher paused.
const pauseAbove = 256

// openAgentKernel opens the agent's kernel connection, owning the table
// where own and the kernel allow.
func (a *app) openAgentKernel(own string, log *slog.Logger) (agentKernel, agent.Mode, error) {
	var opts []kernel.Option
	if ns := a.v.GetString("netns"); ns != "" {
		opts = append(opts, kernel.WithNetNS(ns))
	}
	if own != "no" {
		k, err := kernel.Open(append(opts, kernel.WithOwnership())...)
		if err != nil {
			return nil, "", err
		}
		can, err := k.CanOwn()
		switch {
		case err == nil && can:
			return &agentConn{Kernel: k, owner: true}, agent.ModeOwner, nil
		case own == "yes":
			k.Close()
			if err == nil {
				err = errors.New("this kernel cannot own tables (NFT_TABLE_F_PERSIST needs Linux 6.9 or later)")
			}
			return nil, "", fmt.Errorf("--own-table yes: %w", err)
		}
		k.Close()
		log.Warn("this kernel cannot own the table (NFT_TABLE_F_PERSIST needs Linux 6.9 or later): following the kernel's changes and healing them instead", "err", fmt.Sprint(err))
	}
	k, err := kernel.Open(opts...)
	if err != nil {
		return nil, "", err
	}
	return &agentConn{Kernel: k}, agent.ModeMonitor, nil
}

// Own adopts the table, or says it must be replaced to be owned.
func (c *agentConn) Own(table string) error {
	err := c.Kernel.Own(table)
	switch {
	case errors.Is(err, kernel.ErrNoTable):
		return nil // the first apply creates it, owned
	case errors.Is(err, kernel.ErrCannotAdopt):
		// The table enforces whole: a handover table beside it is
		// the remains of a handover interrupted before it replaced
		// the table, and in the way of the next.
		if _, err := c.DropHandover(table); err != nil {
			return err
		}
		return agent.ErrRebuild
	}
	return err
}

// DropHandover deletes the handover table of table, if there is one and
// nftpol made it (reconcile.DropHandover).
func (c *agentConn) DropHandover(table string) (bool, error) {
	return reconcile.DropHandover(c.Kernel, table)
}

// Apply commits p; in monitor mode a large commit goes with the watcher
// paused, and in owner mode a failed one (which closes the commit socket,
// and with it the ownership) adopts the table again.
func (c *agentConn) Apply(p *rules.Plan, gen uint32) (kernel.Stats, error) {
	if c.w != nil && gen != 0 && p.Operations() > pauseAbove {
		if err := c.w.Pause(); err == nil {
			st, err := c.Kernel.Apply(p, gen)
			next := gen
			if err == nil && !p.Empty() {
				next = kernel.NextGeneration(gen)
			}
			if rerr := c.w.Resume(next); rerr != nil && err == nil {
				err = fmt.Errorf("following the kernel again after a commit: %w", rerr)
			}
			return st, err
		}
	}
	st, err := c.Kernel.Apply(p, gen)
	if err != nil && c.owner {
		if oerr := c.Own(p.Table); oerr != nil && !errors.Is(oerr, agent.ErrRebuild) {
			err = fmt.Errorf("%w; and owning the table again failed: %v", err, oerr)
		}
	}
	return st, err
}

// watch follows the kernel's changes to table made by others.
func (c *agentConn) watch(table string) (agent.Monitor, error) {
	w, err := c.Kernel.Watch(table)
	if err != nil {
		return nil, err
	}
	c.w = w
	m := &monitor{w: w, ch: make(chan agent.Change, 1)}
	go m.run()
	return m, nil
}

// monitor turns the watcher's changes into the agent's: only foreign ones.
type monitor struct {
	w  *kernel.Watcher
	ch chan agent.Change
}

func (m *monitor) run() {
	defer close(m.ch)
	for ch := range m.w.Changes() {
		if !ch.Foreign() {
			continue
		}
		who := ""
		if ch.By.Comm != "" {
			who = fmt.Sprintf("%s[%d]", ch.By.Comm, ch.By.PID)
		}
		if ch.Err != nil {
			who = "the kernel watch ended: " + ch.Err.Error()
		}
		// The agent wants to know that something changed, not each
		// change: one pending value at most.
		select {
		case m.ch <- agent.Change{Who: who, Lost: ch.Lost || ch.Err != nil, At: time.Now()}:
		default:
		}
	}
}

func (m *monitor) Changes() <-chan agent.Change { return m.ch }
func (m *monitor) Close() error                 { return m.w.Close() }

// policySource is the agent's reader of the policy files: it reads again
// only the files inotify named (policies.Cache).
func (a *app) policySource() agent.Policies {
	return policies.NewCache(a.configFile(), a.policyOptions()...)
}
