package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

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
