package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/nftpol/nftpol/agent"
	"github.com/nftpol/nftpol/reconcile"
)

// servedCommands are the commands a running agent serves: they read or
// write the kernel's table and the state, of which the agent is then the
// only writer.
var servedCommands = map[string]bool{"plan": true, "apply": true, "restore": true, "remove": true, "status": true}

// forward sends a served command to the agent of the state directory when
// one runs, and does nothing when none does (the command then runs here).
func (a *app) forward(cmd *cobra.Command, _ []string) error {
	if a.host != nil || !servedCommands[cmd.Name()] || cmd.Parent() == nil || cmd.Parent().Parent() != nil {
		return nil
	}
	req := agent.Request{Args: a.args, Settings: a.settings()}
	code, err := agent.Forward(a.stateDir(), req, a.stdout, a.stderr)
	if errors.Is(err, agent.ErrNoAgent) {
		return nil
	}
	if err != nil {
		return err
	}
	return exitCodeError{code}
}

// settings are the global settings a served command must share with the
// agent (it checks them), or takes over from the caller.
func (a *app) settings() map[string]string {
	return map[string]string{
		"config":    a.configFile(),
		"netns":     a.v.GetString("netns"),
		"full-read": fmt.Sprint(a.v.GetBool("full-read")),
	}
}

func (a *app) watchCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "watch",
		Short: "Run the agent: keep the kernel equal to the policy, continuously",
		Long: `watch runs in the foreground until SIGTERM and keeps nftpol's table equal to the
policy. Where the kernel allows (6.9 and later) it owns the table, so no other
process can flush, delete or change it, and the table outlives the agent; where
it cannot, it follows the kernel's nf_tables events and heals every change.
It applies changes of the policy files as they happen (a broken file changes
nothing and shows in status), and serves plan, apply, restore, remove and status
over a root-only socket in the state directory while it runs. SIGHUP reads
everything again. It logs JSON lines to stderr and speaks systemd's notify
protocol (Type=notify, WatchdogSec).

It also watches for accounts that serve where the policy does not allow it:
the table's violation rules ring it (a rate-limited NFLOG group, so a flood
of blocked packets costs it a few reads a second) and it logs one event when
an account starts serving on a blocked port (UID, account, protocol, port,
process) and one when it stops. With a terminate section in the policy,

    terminate:
      after: 30s     # a socket still blocked this long is ended
      grace: 10s     # SIGTERM, then SIGKILL after this
      dry_run: false # log what would be ended, end nothing

the processes holding a socket still blocked after "after" are ended as audit
--terminate ends them: through pidfds, after checking they still hold the
socket; never PID 1, never a UID the policy does not enforce, never a UDP
socket that may be a client's. status shows the open episodes and the last
terminations; --metrics-listen serves Prometheus metrics.`,
		Args: cobra.NoArgs,
	}
	own := cmd.Flags().String("own-table", "auto", "own the table (yes), follow and heal it (no), or own it where the kernel can (auto)")
	follow := cmd.Flags().Bool("follow-policy", true, "apply changes of the policy files as they happen; false: only nftpol apply (and SIGHUP) applies them")
	metrics := cmd.Flags().String("metrics-listen", "", "serve Prometheus metrics at /metrics on this address: HOST:PORT (like 127.0.0.1:9781) or unix:PATH; \"\": none")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		mode, err := ownMode(*own)
		if err != nil {
			return err
		}
		return a.watch(cmd.Context(), mode, *follow, *metrics)
	}
	return cmd
}

func ownMode(s string) (string, error) {
	switch s {
	case "auto", "yes", "no":
		return s, nil
	}
	return "", fmt.Errorf("--own-table %q: want auto, yes or no", s)
}

// watch runs the agent until ctx ends.
func (a *app) watch(ctx context.Context, own string, follow bool, metricsAddr string) error {
	// The agent lives long, on a live heap of its own (the policy, its
	// ruleset, the state, the caches: more than the commands' soft
	// limit at 50,000 accounts). With the commands' settings (main) the
	// collector would run without end once the heap passed the limit:
	// half the agent's CPU in a one-account change, measured. It
	// collects by heap growth, at twice Go's default (GOGC=200: a
	// one-account apply of 50,000 accounts in one file took 86-173 ms
	// through the agent, against 176-273 ms at 100; the idle RSS was
	// the same), and gives the memory of a burst of work back when the
	// work is done (agent.Config.Settle).
	longLived = true
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(math.MaxInt64)
		if os.Getenv("GOGC") == "" {
			debug.SetGCPercent(200)
		}
	}
	log := slog.New(slog.NewJSONHandler(a.stderr, nil))
	k, mode, err := a.openAgentKernel(own, log)
	if err != nil {
		return err
	}
	defer k.Close()
	eng := reconcile.New(reconcile.Config{
		StateDir: a.stateDir(),
		// The agent publishes the views itself, off the path of
		// applies (agent.Config.RunDir).
		Version:     version,
		LockTimeout: a.v.GetDuration("lock-timeout"),
		Open:        func() (reconcile.Kernel, error) { return kept{k}, nil },
		BPFDir:      a.v.GetString("bpf-dir"),
		Keep:        true,
		Owner:       mode == agent.ModeOwner,
	})
	defer eng.Close()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	var every time.Duration
	if d, err := daemon.SdWatchdogEnabled(false); err == nil && d > 0 {
		every = d / 2
	}
	cfg := agent.Config{
		StateDir:   a.stateDir(),
		RunDir:     a.runDir(),
		ConfigFile: a.configFile(),
		Policies:   a.policySource(),
		Engine:     eng,
		Mode:       mode,
		Serve:      a.serveForAgent,
		Notify: func(state string) {
			_, _ = daemon.SdNotify(false, state)
		},
		WatchdogEvery: every,
		FollowFiles:   follow,
		Log:           log,
		Settings:      a.settings(),
		Reload:        hup,
	}
	if mode == agent.ModeOwner {
		cfg.Ownership = k
	} else {
		cfg.Watch = k.watch
	}
	m := newAgentMetrics()
	off, startOff, stopOff, err := a.newOffenders(log, m.event)
	if err != nil {
		return err
	}
	defer stopOff()
	stopMetrics := func() {}
	defer func() { stopMetrics() }()
	cfg.Offenders = off
	cfg.Started = func(ctx context.Context) error {
		if metricsAddr != "" {
			stop, err := serveMetrics(metricsAddr, m, log)
			if err != nil {
				return err
			}
			stopMetrics = stop
		}
		startOff(ctx)
		return nil
	}
	cfg.HealTook = m.healTook
	cfg.Settle = debug.FreeOSMemory
	ag := agent.New(cfg)
	m.agent, m.off = ag, off
	return ag.Run(ctx)
}

// kept is the agent's kernel connection as the engine sees it: closing it
// after a command would give up the table's ownership.
type kept struct{ agentKernel }

func (kept) Close() error { return nil }

// serveForAgent runs a command a client of the agent's socket sent, in
// the agent, as the CLI would run it.
func (a *app) serveForAgent(ctx context.Context, h *agent.Host, req agent.Request, stdout, stderr io.Writer) int {
	s := &app{v: viper.New(), stdout: stdout, stderr: stderr, args: req.Args, host: h}
	// The caller's settings the agent takes over; config and netns
	// were checked to be the agent's own.
	if req.Settings["full-read"] == "true" {
		s.v.Set("full-read", true)
	}
	return s.execute(ctx)
}
