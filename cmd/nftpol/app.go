package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/nftpol/nftpol/agent"
	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/internal/getent"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/reconcile"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
)

// Exit codes, the convention config-management tools understand.
const (
	exitOK      = 0
	exitError   = 1
	exitChanges = 2 // plan --detailed-exitcode: something would change
)

// Defaults for the global settings.
const (
	defaultConfig   = "/etc/nftpol/nftpol.yaml"
	defaultStateDir = "/var/lib/nftpol"
	defaultRunDir   = "/run/nftpol"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitCodeError carries an exit code other than exitError up to run.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// run executes nftpol with args and returns the process exit code. Results
// go to stdout, errors to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{v: viper.New(), stdout: stdout, stderr: stderr, args: args}
	return a.execute(ctx)
}

// execute runs the command a.args names.
func (a *app) execute(ctx context.Context) int {
	args, stdout, stderr := a.args, a.stdout, a.stderr
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if a.eng != nil && a.host == nil {
		a.eng.Close()
	}
	var ec exitCodeError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ec):
		return ec.code
	default:
		fmt.Fprintf(stderr, "nftpol: %s\n", err)
		return exitError
	}
}

// app holds the global settings and the output writers.
type app struct {
	v              *viper.Viper
	stdout, stderr io.Writer
	// eng is the sync engine, made on first use (the flags are parsed
	// by then).
	eng *reconcile.Engine
	// args are the command line, as given (a command the agent serves
	// is sent to it as it is).
	args []string
	// host is the agent, when it serves this command (see watch.go).
	host *agent.Host
}

// engine returns the sync engine for the global settings.
func (a *app) engine() *reconcile.Engine {
	if a.eng == nil && a.host != nil {
		a.eng = a.host.Engine(a.stderr, a.v.GetBool("full-read"))
	}
	if a.eng == nil {
		a.eng = reconcile.New(reconcile.Config{
			StateDir:    a.stateDir(),
			RunDir:      a.runDir(),
			Version:     version,
			FullRead:    a.v.GetBool("full-read"),
			LockTimeout: a.v.GetDuration("lock-timeout"),
			Open:        a.openKernel,
			Warn:        a.stderr,
			Phase:       phase,
			BPFDir:      a.v.GetString("bpf-dir"),
		})
	}
	return a.eng
}

// policyOptions are how every command reads the policy: permissions
// checked unless --insecure-permissions, and user names that /etc/passwd
// does not hold asked of getent (nftpol has no cgo, so no NSS of its own).
func (a *app) policyOptions() []policies.Option {
	return []policies.Option{
		policies.WithPermissionCheck(!a.v.GetBool("insecure-permissions")),
		policies.WithGetent(getent.Passwd),
	}
}

// longLived is set in the agent: it collects garbage as Go does by
// default, not as the short-lived commands do (see watch).
var longLived bool

// baseMemoryLimit is the soft memory limit (see main) for policies of up to
// memoryLimitAccounts accounts.
const (
	baseMemoryLimit     = 36 << 20
	memoryLimitAccounts = 50000
)

// fitMemoryLimit raises the soft memory limit in proportion for a policy of
// more than memoryLimitAccounts accounts: the live heap grows with the
// policy, and a limit below it would only make the collector run without
// end. It leaves a limit set through GOMEMLIMIT alone.
func fitMemoryLimit(accounts int) {
	if os.Getenv("GOMEMLIMIT") != "" || accounts <= memoryLimitAccounts || longLived {
		return
	}
	debug.SetMemoryLimit(int64(baseMemoryLimit) * int64(accounts) / memoryLimitAccounts)
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "nftpol",
		Short: "Per-UID port policy for shared hosting, enforced with nftables",
		Long: `nftpol compiles a per-account (Unix UID) port policy into one nftables table
and keeps the kernel in sync with it, atomically and sending only what changed.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       versionString(),
	}
	pf := root.PersistentFlags()
	pf.String("config", defaultConfig, "policy file (env NFTPOL_CONFIG)")
	pf.String("netns", "", "work on the network namespace /run/netns/NAME (env NFTPOL_NETNS)")
	pf.String("state-dir", defaultStateDir, "where apply records what it applied (env NFTPOL_STATE_DIR)")
	pf.String("run-dir", "", "where apply and restore publish what each account may read, for nftpol ports, on tmpfs, and where the agent answers ports (ports.sock); unset: nothing is published, and ports reads "+defaultRunDir+" (env NFTPOL_RUN_DIR)")
	pf.Bool("full-read", false, "read nftpol's whole table from the kernel even when the state proves it unchanged (env NFTPOL_FULL_READ)")
	pf.Duration("lock-timeout", 30*time.Second, "how long plan, apply, restore and remove wait for another nftpol to finish (env NFTPOL_LOCK_TIMEOUT)")
	pf.Bool("insecure-permissions", false, "read policy files even if users other than root could change them (env NFTPOL_INSECURE_PERMISSIONS)")
	pf.String("bpf-dir", "/sys/fs/bpf", "the bpffs where the bind guard pins its programs and maps, under nftpol/TABLE (env NFTPOL_BPF_DIR)")
	for _, name := range []string{"config", "netns", "state-dir", "run-dir", "lock-timeout", "full-read", "insecure-permissions", "bpf-dir"} {
		_ = a.v.BindPFlag(name, pf.Lookup(name)) // the flags exist: cannot fail
	}
	a.v.SetEnvPrefix("NFTPOL")
	a.v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	a.v.AutomaticEnv()

	root.PersistentPreRunE = a.forward
	root.AddCommand(a.validateCommand(), a.exportCommand(), a.planCommand(), a.applyCommand(),
		a.restoreCommand(), a.statusCommand(), a.removeCommand(), a.watchCommand(),
		a.auditCommand(), a.portsCommand(), a.allocateCommand())
	root.AddCommand(a.manCommands()...)
	root.SetVersionTemplate(versionTemplate)
	return root
}

func (a *app) configFile() string { return a.v.GetString("config") }

// load reads, validates and compiles the policy.
func (a *app) load() (*policies.Policy, *rules.Ruleset, error) {
	return a.loadWith(nil)
}

// loadWith is load, calling loaded with the policy as soon as it is read,
// before it is compiled (to start work in the background).
func (a *app) loadWith(loaded func(*policies.Policy)) (*policies.Policy, *rules.Ruleset, error) {
	var p *policies.Policy
	var err error
	if a.host != nil {
		p, err = a.host.Load()
	} else {
		p, err = policies.Load(a.configFile(), a.policyOptions()...)
	}
	if errors.Is(err, policies.ErrInsecurePermissions) {
		err = fmt.Errorf("%w\nnftpol: the policy decides the firewall; fix the permissions as shown, or pass --insecure-permissions to read it anyway", err)
	}
	if err != nil {
		return nil, nil, err
	}
	phase("policy read")
	if loaded != nil {
		loaded(p)
	}
	fitMemoryLimit(len(p.Accounts))
	var rs *rules.Ruleset
	if a.host != nil {
		rs, err = a.host.Compile(p) // from what it holds compiled
	} else {
		rs, err = compiler.Compile(p)
	}
	if err != nil {
		return nil, nil, err
	}
	phase("compiled")
	return p, rs, nil
}

func (a *app) stateDir() string { return a.v.GetString("state-dir") }

func (a *app) runDir() string { return a.v.GetString("run-dir") }

// openKernel connects to the kernel of the namespace --netns names, or of
// our own.
func (a *app) openKernel() (reconcile.Kernel, error) {
	var opts []kernel.Option
	if ns := a.v.GetString("netns"); ns != "" {
		opts = append(opts, kernel.WithNetNS(ns))
	}
	return kernel.Open(opts...)
}

// policyTable is the table the policy names, for commands that prefer the
// one the state records.
func (a *app) policyTable() (string, error) {
	p, _, err := a.load()
	if err != nil {
		return "", err
	}
	return p.Table, nil
}

// noun is one or many, as n says.
func noun(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
