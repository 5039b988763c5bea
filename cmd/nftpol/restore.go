package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
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
		lock, err := a.lock(cmd.Context(), "restore")
		if err != nil {
			return err
		}
		defer lock.release()
		st, err := loadState(a.stateDir())
		if err == nil {
			err = st.verifyRendered()
		}
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		k, err := a.openKernel()
		if err != nil {
			return err
		}
		defer k.Close()
		desired := st.ruleset
		var plan *rules.Plan
		var stats kernel.Stats
		for attempt := 1; ; attempt++ {
			gen, err := k.Generation()
			if err != nil {
				return err
			}
			current, err := k.Read(desired.Table)
			if err != nil {
				return err
			}
			switch {
			case current != nil && !current.Owned() && !*adopt:
				return fmt.Errorf("table inet %s exists but was not created by nftpol; refusing to take it over (restore --adopt replaces it)", desired.Table)
			case current != nil && !current.Owned():
				plan = rules.Diff(nil, desired)
				plan.TableAction = rules.TableReplace
			default:
				plan = rules.Diff(current, desired)
			}
			stats, err = k.Apply(plan, gen)
			if errors.Is(err, kernel.ErrGenerationChanged) && attempt < maxAttempts {
				continue
			}
			if err != nil {
				return err
			}
			break
		}
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
		}
		return nil
	}
	return cmd
}
