package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/reconcile"
)

func (a *app) restoreCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "restore",
		Short: "Install the last applied ruleset from the state directory (at boot)",
		Long: `restore installs the ruleset the last successful apply recorded in the state
directory. It reads neither the policy nor NSS (numeric UIDs only), so it works
early at boot, before the network, LDAP or the config management are up. Like
apply it sends only what differs from the kernel, in one transaction; it does
nothing when the kernel already holds the ruleset. Missing or corrupt state is
an error and leaves the kernel untouched.`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(cmd)
	adopt := cmd.Flags().Bool("adopt", false, "take over a same-named table that nftpol did not create (it is replaced)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*out); err != nil {
			return err
		}
		res, st, err := a.engine().Restore(cmd.Context(), reconcile.RestoreOptions{Adopt: *adopt})
		if err != nil && res == nil {
			return err
		}
		if a.host != nil {
			a.host.Restored()
		}

		guardErr := err
		plan, stats, desired := res.Plan, res.Sent, st.Ruleset()
		if err := a.printPlan(plan, *out, planExtras{Applied: &stats, KernelRead: "full"}); err != nil {
			return err
		}
		if *out == "text" {
			if plan.Empty() {
				fmt.Fprintf(a.stdout, "Table inet %s already holds the ruleset applied at %s.\n", desired.Table, st.AppliedAt.Format("2006-01-02 15:04:05 MST"))
			} else {
				fmt.Fprintf(a.stdout, "Restored the ruleset applied at %s: %d netlink messages, one transaction.\n",
					st.AppliedAt.Format("2006-01-02 15:04:05 MST"), stats.Messages)
			}
			a.printGuard(res.Guard, "restored")
		}
		return guardErr
	}
	return cmd
}
