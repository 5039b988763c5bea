package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
)

// The removal guard: an apply that would remove more than half of the
// installed accounts, when more than guardMinAccounts are installed, is
// refused unless --allow-removals. A broken config-management run that
// renders an empty include directory must not close every account's ports.
const guardMinAccounts = 10

// maxAttempts bounds how often apply and restore plan again when somebody
// else commits between their read and their write.
const maxAttempts = 5

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
		a.prefetchState()
		var digest func() string
		_, desired, err := a.loadWith(func(p *policies.Policy) { digest = backgroundDigest(p) })
		if err != nil {
			return err
		}
		k, end, err := a.session(cmd.Context(), "apply")
		if err != nil {
			return err
		}
		defer end()
		// What the commit installs is desired laid over the kernel's
		// table (rules.Overlay), and its state is written while the
		// kernel works. When the state proves the kernel unchanged
		// since the last apply (the usual case), the kernel's table is
		// the recorded one, so the writing starts before the kernel is
		// even asked.
		var pending *pendingState
		var laidOver *rules.Ruleset // the table pending's ruleset was laid over
		defer func() {
			if pending != nil {
				pending.discard()
			}
		}()
		if st, err := a.recordedState(); err == nil && !a.v.GetBool("full-read") {
			laidOver = st.ruleset
			pending = prepareState(a.stateDir(), digest, rules.Overlay(laidOver, desired), st)
		}
		plan, st, source, after, err := a.converge(k, desired.Table, true, func(current *rules.Ruleset) (*rules.Plan, error) {
			if pending == nil || current != laidOver {
				if pending != nil {
					pending.discard()
				}
				laidOver = current
				pending = prepareState(a.stateDir(), digest, rules.Overlay(current, desired), nil)
			}
			plan, err := a.makePlan(k, current, pending.rs, *adopt)
			if err == nil && !*allowRemovals {
				err = removalGuard(plan, current)
			}
			return plan, err
		})
		if err != nil {
			return err
		}
		if err := a.printPlan(plan, *out, planExtras{Applied: &st, KernelRead: source}); err != nil {
			return err
		}
		if *out == "text" && !plan.Empty() {
			fmt.Fprintf(a.stdout, "Applied: %d kernel operations in %d netlink messages, one transaction.\n", plan.Operations(), st.Messages)
		}
		phase("committed")
		defer phase("state saved")
		if err := pending.commit(&after); err != nil {
			return fmt.Errorf("the kernel is updated, but recording it in %s failed: %w; "+
				"restore would install the previous ruleset until an apply succeeds", a.stateDir(), err)
		}
		return nil
	}
	return cmd
}

// installedAccounts returns the UIDs that are enforced with ports in rs.
func installedAccounts(rs *rules.Ruleset) map[uint32]bool {
	uids := map[uint32]bool{}
	for _, es := range rules.Accounts(rs) {
		for _, e := range es {
			uids[e.UID] = true
		}
	}
	return uids
}

func removalGuard(plan *rules.Plan, current *rules.Ruleset) error {
	var removed []string
	for _, ac := range plan.Accounts {
		if ac.Action == rules.ActionRemove {
			removed = append(removed, fmt.Sprintf("%s (uid %d)", displayName(ac.Name), ac.UID))
		}
	}
	if len(removed) <= guardMinAccounts/2 {
		return nil // cannot be more than half of more than guardMinAccounts
	}
	// Counting the installed accounts costs a map of every UID: only
	// when it can matter.
	installed := len(installedAccounts(current))
	if installed <= guardMinAccounts || 2*len(removed) <= installed {
		return nil
	}
	const show = 20
	list := removed
	more := ""
	if len(list) > show {
		list, more = list[:show], fmt.Sprintf(" and %d more", len(removed)-show)
	}
	return fmt.Errorf("refusing to remove %d of the %d installed accounts (more than half): %s%s\n"+
		"nftpol: if the policy really lost them (not a failed render of the include directory), run apply --allow-removals",
		len(removed), installed, strings.Join(list, ", "), more)
}

func displayName(name string) string {
	if name == "" {
		return "(unnamed)"
	}
	return name
}
