package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/reconcile"
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
		eng := a.engine()
		eng.Prefetch()
		p, desired, err := a.load()
		if err != nil {
			return err
		}
		res, err := eng.Plan(cmd.Context(), desired, *adopt)
		if err != nil {
			return err
		}
		guard, err := eng.PlanGuard(p)
		if err != nil {
			return err
		}
		if !guard.Enabled && !guard.Removed {
			guard = nil
		}
		if err := a.printPlan(res.Plan, *out, planExtras{KernelRead: string(res.Source), Guard: guard}); err != nil {
			return err
		}
		if *out == "text" {
			a.printGuard(guard, "")
		}
		guardChanges := guard != nil && (guard.Removed || guard.Entries+guard.Exempt > 0)
		if *detailed && (!res.Plan.Empty() || guardChanges) {
			return exitCodeError{exitChanges}
		}
		return nil
	}
	return cmd
}

// planExtras are fields added to a plan's JSON next to its own.
type planExtras struct {
	// Applied: what the commit sent (apply, restore).
	Applied *kernel.Stats
	// KernelRead says where the kernel's content came from: "full" (read
	// from the kernel) or "state" (the kernel provably unchanged since the
	// last apply). Empty: not reported.
	KernelRead string
	// Guard is what the bind guard did or would do; nil: not reported.
	Guard *reconcile.GuardResult
}

// printGuard says in a line what the bind guard did (done: "applied") or
// would do, when there is anything to say.
func (a *app) printGuard(g *reconcile.GuardResult, done string) {
	switch {
	case g == nil:
	case g.Removed && done == "":
		fmt.Fprintln(a.stdout, "Bind guard: off in the policy; the one installed will be removed.")
	case g.Removed:
		fmt.Fprintln(a.stdout, "Bind guard: off in the policy; removed.")
	case !g.Enabled:
	case g.Entries+g.Exempt == 0:
		fmt.Fprintf(a.stdout, "Bind guard: in sync (attached to %s).\n", g.Cgroup)
	case done == "":
		fmt.Fprintf(a.stdout, "Bind guard: %d port entries and %d exempt UIDs to write (attached to %s).\n", g.Entries, g.Exempt, g.Cgroup)
	default:
		fmt.Fprintf(a.stdout, "Bind guard: %s, %d port entries and %d exempt UIDs written (attached to %s).\n", done, g.Entries, g.Exempt, g.Cgroup)
	}
}

func (a *app) printPlan(plan *rules.Plan, format string, x planExtras) error {
	if format != "json" {
		return plan.WriteText(a.stdout)
	}
	b, err := json.Marshal(plan)
	if err != nil {
		return err
	}
	// Splice the extras into the object: a plan of 50,000 accounts is not
	// worth decoding and encoding again.
	var extra []byte
	if x.Applied != nil {
		ab, err := json.Marshal(appliedJSON{Messages: x.Applied.Messages, Elements: x.Applied.Elements})
		if err != nil {
			return err
		}
		extra = append(append(extra, `,"applied":`...), ab...)
	}
	if x.KernelRead != "" {
		extra = append(extra, fmt.Sprintf(`,"kernel_read":%q`, x.KernelRead)...)
	}
	if x.Guard != nil {
		gb, err := json.Marshal(x.Guard)
		if err != nil {
			return err
		}
		extra = append(append(extra, `,"bind_guard":`...), gb...)
	}
	b = append(append(b[:len(b)-1], extra...), '}', '\n')
	_, err = a.stdout.Write(b)
	return err
}

type appliedJSON struct {
	Messages int `json:"netlink_messages"`
	Elements int `json:"elements"`
}
