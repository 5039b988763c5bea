package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/reconcile"
	"github.com/nftpol/nftpol/rules"
)

// listen makes the agent's socket, root only: the state directory is 0700
// and the socket 0600, and every client's peer credentials are checked too.
func (a *Agent) listen() (*net.UnixListener, error) {
	path := a.socketPath()
	// One an agent that died left behind: the agent lock says nobody
	// serves it.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("the agent's socket: %w", err)
	}
	ln.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// accept takes the socket's clients and hands them to Run's goroutine.
func (a *Agent) accept(ctx context.Context, ln *net.UnixListener) {
	for {
		conn, err := ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			a.log.Warn("accepting a client", "err", err.Error())
			continue
		}
		go func() {
			uid, err := peerUID(conn)
			if err == nil && uid != 0 {
				err = fmt.Errorf("uid %d is not root", uid)
			}
			var req Request
			if err == nil {
				req, err = readRequest(conn)
			}
			if err != nil {
				a.log.Warn("refused a client of the socket", "err", err.Error())
				f := &frames{conn: conn}
				fmt.Fprintf(stream{f, frameStderr}, "nftpol: the agent refused the request: %v\n", err)
				_ = f.frame(frameExit, 1, nil)
				conn.Close()
				return
			}
			select {
			case a.requests <- served{req: req, conn: conn}:
			case <-ctx.Done():
				conn.Close()
			}
		}()
	}
}

// serve runs a client's command on Run's goroutine.
func (a *Agent) serve(ctx context.Context, s served) {
	defer s.conn.Close()
	f := &frames{conn: s.conn}
	stdout, stderr := stream{f, frameStdout}, stream{f, frameStderr}
	code := 1
	if err := a.checkSettings(s.req); err != nil {
		fmt.Fprintf(stderr, "nftpol: %v\n", err)
	} else {
		h := &Host{a: a}
		start := time.Now()
		code = a.cfg.Serve(ctx, h, s.req, stdout, stderr)
		if a.eng != nil {
			a.eng.SetWarn(io.Discard)
			a.eng.SetFullRead(false)
		}
		a.log.Info("served", "command", strings.Join(s.req.Args, " "), "exit", code, "took_ms", ms(time.Since(start)))
	}
	if err := f.frame(frameExit, uint32(code), nil); err != nil && !errors.Is(err, syscall.EPIPE) {
		a.log.Warn("answering a client", "err", err.Error())
	}
	for _, news := range a.afterServe {
		news()
	}
	a.afterServe = nil
}

// checkSettings refuses a command whose global settings are not the
// agent's: it would be run on another policy or kernel than the caller
// thinks.
func (a *Agent) checkSettings(req Request) error {
	for _, name := range []string{"config", "netns"} {
		want, ok := a.cfg.Settings[name]
		if got := req.Settings[name]; ok && got != want {
			return fmt.Errorf("the agent serving this state directory (pid %d) works with --%s %q, not %q: run the command with its settings, or without the agent (systemctl stop nftpol-watch)",
				os.Getpid(), name, want, got)
		}
	}
	return nil
}

// Host is what a command the agent serves uses of it: the agent's engine,
// the policy as the files say now, and the news of what the command did.
type Host struct{ a *Agent }

// Engine is the agent's engine, with warnings going to w and FullRead as
// the command asks (for this command only).
func (h *Host) Engine(w io.Writer, fullRead bool) *reconcile.Engine {
	h.a.eng.SetWarn(w)
	h.a.eng.SetFullRead(fullRead)
	return h.a.eng
}

// Load reads the policy as the files say now: once inotify has reported
// every change made before the command (files.sync), the files that
// changed are read again and the rest comes from the cache; when in doubt
// (events lost, the sync failed) every file is. The changes stay for the
// agent's own next apply.
func (h *Host) Load() (*policies.Policy, error) {
	var p *policies.Policy
	var err error
	if serr := h.a.files.sync(time.Second); serr != nil {
		h.a.log.Warn("reading every policy file for the command", "why", serr.Error())
		p, err = h.a.cfg.Policies.Load()
	} else if changed, all := h.a.files.peek(); all {
		p, err = h.a.cfg.Policies.Load()
	} else {
		p, err = h.a.cfg.Policies.Reload(changed)
	}
	if err == nil {
		h.a.files.follow(p.Include)
	}
	return p, err
}

// Digest returns p's digest as the agent's applies do: computed in the
// background, or the one before when p is the same policy.
func (h *Host) Digest(p *policies.Policy) func() string { return h.a.digest(p) }

// Compile compiles p as the agent does: from the last good policy's
// ruleset when p differs from it in a few accounts only.
func (h *Host) Compile(p *policies.Policy) (*rules.Ruleset, error) { return h.a.compile(p) }

// Applied tells the agent that the command applied p (compiled to
// desired): it is the last good policy now, and removals it confirmed end
// the burst.
// The agent takes the news in once the client has its answer (serve), before
// it does anything else: what it updates (the removal guard's burst, the
// offenders' policy, the account views) is nothing the client waits for.
func (h *Host) Applied(p *policies.Policy, desired *rules.Ruleset, allowRemovals bool) {
	now := time.Now()
	h.a.afterServe = append(h.a.afterServe, func() {
		if allowRemovals {
			h.a.burst.reset()
		} else {
			removes := !samePolicy(h.a.good, p) && h.a.burst.removes(h.a.good, p)
			h.a.burst.applied(now, h.a.good, removes)
		}
		h.a.applies++
		h.a.lastApply = now
		h.a.accepted(p, desired)
		h.a.log.Info("applied", "why", "nftpol apply", "accounts", len(p.Accounts))
	})
}

// Removed tells the agent that the command removed the table: it enforces
// nothing until an apply or a restore.
func (h *Host) Removed() {
	h.a.suspended = "the table was removed with nftpol remove; nftpol apply or restore enforces again"
	if h.a.cfg.Offenders != nil {
		h.a.cfg.Offenders.SetPolicy(nil)
	}
	h.a.viewsWithdrawn()
	h.a.log.Warn("the table was removed (nftpol remove); enforcing nothing until nftpol apply or restore")
}

// Restored tells the agent that the command restored the recorded ruleset.
func (h *Host) Restored() {
	h.a.viewsChanged()
	if h.a.suspended != "" {
		h.a.suspended = ""
		if h.a.cfg.Offenders != nil && h.a.good != nil {
			h.a.cfg.Offenders.SetPolicy(h.a.good)
		}
		h.a.log.Info("restored: enforcing again")
	}
}

// Report is the agent's part of status.
func (h *Host) Report() *reconcile.AgentReport { return h.a.report() }
