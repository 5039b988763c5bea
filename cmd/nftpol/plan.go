package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
)

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
