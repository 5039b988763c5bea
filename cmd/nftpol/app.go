package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/viper"

	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/policies"
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
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// exitCodeError carries an exit code other than exitError up to run.
type exitCodeError struct{ code int }

func (e exitCodeError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// run executes nftpol with args and returns the process exit code. Results
// go to stdout, errors to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	a := &app{v: viper.New(), stdout: stdout, stderr: stderr}
	root := a.rootCommand()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
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
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "nftpol",
		Short: "Per-UID port policy for shared hosting, enforced with nftables",
		Long: `nftpol compiles a per-account (Unix UID) port policy into one nftables table
and keeps the kernel in sync with it, atomically and sending only what changed.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version,
	}
	pf := root.PersistentFlags()
	pf.String("config", defaultConfig, "policy file (env NFTPOL_CONFIG)")
	pf.String("netns", "", "work on the network namespace /run/netns/NAME (env NFTPOL_NETNS)")
	pf.String("state-dir", defaultStateDir, "where apply records what it applied (env NFTPOL_STATE_DIR)")
	for _, name := range []string{"config", "netns", "state-dir"} {
		_ = a.v.BindPFlag(name, pf.Lookup(name)) // the flags exist: cannot fail
	}
	a.v.SetEnvPrefix("NFTPOL")
	a.v.SetEnvKeyReplacer(strings.NewReplacer("-", "_"))
	a.v.AutomaticEnv()

	root.AddCommand(a.validateCommand(), a.exportCommand(), a.planCommand(), a.applyCommand())
	return root
}

func (a *app) configFile() string { return a.v.GetString("config") }

// load reads, validates and compiles the policy.
func (a *app) load() (*policies.Policy, *rules.Ruleset, error) {
	p, err := policies.Load(a.configFile())
	if err != nil {
		return nil, nil, err
	}
	rs, err := compiler.Compile(p)
	if err != nil {
		return nil, nil, err
	}
	return p, rs, nil
}

func (a *app) openKernel() (*kernel.Kernel, error) {
	var opts []kernel.Option
	if ns := a.v.GetString("netns"); ns != "" {
		opts = append(opts, kernel.WithNetNS(ns))
	}
	return kernel.Open(opts...)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
