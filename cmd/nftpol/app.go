package main

import (
	"context"
	"encoding/json"
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

func (a *app) validateCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Check the policy files; the kernel is not touched",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, rs, err := a.load()
			if err != nil {
				return err
			}
			ranges := 0
			for _, acc := range p.Accounts {
				ranges += len(acc.Ports)
			}
			elems := 0
			for _, s := range rs.Sets {
				elems += len(s.Elements)
			}
			fmt.Fprintf(a.stdout, "%s: valid: %d %s, %d port %s, table inet %s (%d set elements)\n",
				a.configFile(), len(p.Accounts), plural(len(p.Accounts), "account", "accounts"),
				ranges, plural(ranges, "range", "ranges"), p.Table, elems)
			return nil
		},
	}
}

func (a *app) exportCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "export",
		Short: "Print the compiled ruleset in nft syntax (loadable with nft -f)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, rs, err := a.load()
			if err != nil {
				return err
			}
			return rules.Render(a.stdout, rs)
		},
	}
}

// outputFlag registers -o/--output.
func outputFlag(cmd *cobra.Command) *string {
	return cmd.Flags().StringP("output", "o", "text", "output format: text or json")
}

func checkOutput(o string) error {
	if o != "text" && o != "json" {
		return fmt.Errorf("unknown output format %q (want text or json)", o)
	}
	return nil
}

func (a *app) planCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Show what apply would change in the kernel, account by account",
		Args:  cobra.NoArgs,
	}
	out := outputFlag(cmd)
	detailed := cmd.Flags().Bool("detailed-exitcode", false, "exit 0 when nothing would change, 2 when something would, 1 on error")
	adopt := cmd.Flags().Bool("adopt", false, "show what apply --adopt would do with a same-named table nftpol did not create")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*out); err != nil {
			return err
		}
		_, desired, err := a.load()
		if err != nil {
			return err
		}
		k, err := a.openKernel()
		if err != nil {
			return err
		}
		defer k.Close()
		plan, err := a.makePlan(k, desired, *adopt)
		if err != nil {
			return err
		}
		if err := a.printPlan(plan, *out, nil); err != nil {
			return err
		}
		if *detailed && !plan.Empty() {
			return exitCodeError{exitChanges}
		}
		return nil
	}
	return cmd
}

// makePlan reads the kernel's table and diffs it against desired. A table of
// the same name that nftpol did not create is refused unless adopt is set;
// adopting replaces it whole, inside one transaction. When the policy
// renamed the table, the table applied before (named in the state) is
// deleted in the same transaction, if it is still there and nftpol's: a
// rename must not leave the old rules enforcing beside the new ones.
func (a *app) makePlan(k *kernel.Kernel, desired *rules.Ruleset, adopt bool) (*rules.Plan, error) {
	current, err := k.Read(desired.Table)
	if err != nil {
		return nil, err
	}
	var plan *rules.Plan
	switch {
	case current != nil && !current.Owned() && !adopt:
		return nil, fmt.Errorf("table inet %s exists but was not created by nftpol; refusing to take it over "+
			"(rename the table in the policy, or run apply --adopt to replace it)", desired.Table)
	case current != nil && !current.Owned():
		plan = rules.Diff(nil, desired)
		plan.TableAction = rules.TableReplace
		plan.Accounts = rules.Diff(current, desired).Accounts
	default:
		plan = rules.Diff(current, desired)
	}
	if prev := a.previousTable(); prev != "" && prev != desired.Table {
		old, err := k.Read(prev)
		if err != nil {
			return nil, err
		}
		if old != nil && old.Owned() {
			plan.Retire = prev
		}
	}
	return plan, nil
}

// previousTable returns the table name of the last apply recorded in the
// state directory, or "" when there is none or it cannot be read (then
// there is nothing to retire that nftpol knows of; say so on stderr).
func (a *app) previousTable() string {
	st, err := loadState(a.v.GetString("state-dir"))
	if err != nil {
		fmt.Fprintf(a.stderr, "nftpol: warning: %v; a table renamed since the last apply will not be removed\n", err)
		return ""
	}
	if st == nil || st.Policy == nil {
		return ""
	}
	return st.Policy.Table
}

func (a *app) printPlan(plan *rules.Plan, format string, applied *kernel.Stats) error {
	if format == "json" {
		b, err := json.Marshal(plan)
		if err != nil {
			return err
		}
		if applied == nil {
			_, err = fmt.Fprintf(a.stdout, "%s\n", b)
			return err
		}
		// Add the apply statistics next to the plan's own fields.
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		m["applied"] = appliedJSON{Messages: applied.Messages, Elements: applied.Elements}
		b, err = json.Marshal(m)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(a.stdout, "%s\n", b)
		return err
	}
	return plan.WriteText(a.stdout)
}

type appliedJSON struct {
	Messages int `json:"netlink_messages"`
	Elements int `json:"elements"`
}

func (a *app) applyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Bring the kernel in line with the policy, in one atomic transaction",
		Args:  cobra.NoArgs,
	}
	out := outputFlag(cmd)
	adopt := cmd.Flags().Bool("adopt", false, "take over a same-named table that nftpol did not create (it is replaced)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*out); err != nil {
			return err
		}
		p, desired, err := a.load()
		if err != nil {
			return err
		}
		lock, err := lockStateDir(a.v.GetString("state-dir"))
		if err != nil {
			return err
		}
		defer lock.release()
		k, err := a.openKernel()
		if err != nil {
			return err
		}
		defer k.Close()
		plan, err := a.makePlan(k, desired, *adopt)
		if err != nil {
			return err
		}
		st, err := k.Apply(plan)
		if err != nil {
			return err
		}
		if err := a.printPlan(plan, *out, &st); err != nil {
			return err
		}
		if *out == "text" && !plan.Empty() {
			fmt.Fprintf(a.stdout, "Applied: %d kernel operations in %d netlink messages, one transaction.\n", plan.Operations(), st.Messages)
		}
		if err := saveState(a.v.GetString("state-dir"), p, desired); err != nil {
			return fmt.Errorf("the kernel is updated, but recording it failed: %w", err)
		}
		return nil
	}
	return cmd
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
