package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/reconcile"
)

func (a *app) applyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "apply",
		Short: "Bring the kernel in line with the policy, in one atomic transaction",
		Args:  cobra.NoArgs,
	}
	out := outputFlag(cmd)
	adopt := cmd.Flags().Bool("adopt", false, "take over a same-named table that nftpol did not create (it is replaced)")
	allowRemovals := cmd.Flags().Bool("allow-removals", false, "apply even when more than half of the installed accounts would be removed")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*out); err != nil {
			return err
		}
		eng := a.engine()
		eng.Prefetch()
		var digest func() string
		p, desired, err := a.loadWith(func(p *policies.Policy) {
			if a.host != nil {
				digest = a.host.Digest(p) // the agent's, known when nothing changed
			} else {
				digest = reconcile.DigestInBackground(p)
			}
		})
		if err != nil {
			return err
		}
		applied, err := eng.Apply(cmd.Context(), desired, digest, reconcile.ApplyOptions{Adopt: *adopt, AllowRemovals: *allowRemovals, Policy: p})
		if err != nil {
			return err
		}
		defer applied.Close()
		plan := applied.Plan
		if err := a.printPlan(plan, *out, planExtras{Applied: &applied.Sent, KernelRead: string(applied.Source), Guard: applied.Guard}); err != nil {
			return err
		}
		if *out == "text" && !plan.Empty() {
			fmt.Fprintf(a.stdout, "Applied: %d kernel operations in %d netlink messages, %s.\n", plan.Operations(), applied.Sent.Messages,
				noun(applied.Transactions, "one transaction", fmt.Sprintf("%d transactions", applied.Transactions)))
		}
		if *out == "text" {
			a.printGuard(applied.Guard, "applied")
		}
		if err := applied.Record(); err != nil {
			return err
		}
		if a.host != nil {
			a.host.Applied(p, desired, *allowRemovals)
		}
		return applied.GuardErr
	}
	return cmd
}
