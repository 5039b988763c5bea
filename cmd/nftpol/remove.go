package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/views"
)

func (a *app) removeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "remove",
		Short: "Delete nftpol's own table (and nothing else); the state is kept unless --purge",
		Long: `remove deletes nftpol's own table, and nothing else: a same-named table nftpol
did not create is refused. A handover table (TABLE_handover) that an agent
left when it died while creating the table anew to own it is deleted too. The
bind guard is detached and removed; the recorded state is kept, so that restore
can install the table again, unless --purge.`,
		Args: cobra.NoArgs,
	}
	purge := cmd.Flags().Bool("purge", false, "also delete the recorded state, so restore has nothing to install")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		r, err := a.engine().Remove(cmd.Context(), *purge, a.policyTable)
		if a.host != nil && (r.Deleted || r.Absent) {
			a.host.Removed()
		}
		if err == nil && (r.Deleted || r.Absent) && a.runDir() != "" {
			// With the table gone the account views would promise
			// ports nothing enforces.
			err = views.Withdraw(a.runDir())
		}
		switch {
		case r.Absent:
			fmt.Fprintf(a.stdout, "Table inet %s is not installed; nothing to remove.\n", r.Table)
		case r.Deleted:
			fmt.Fprintf(a.stdout, "Deleted table inet %s (%d accounts were installed).\n", r.Table, r.Accounts)
		}
		if r.Handover {
			fmt.Fprintf(a.stdout, "Deleted table inet %s, which an agent that died handing the table over left.\n", rules.HandoverTable(r.Table))
		}
		if r.GuardRemoved {
			fmt.Fprintf(a.stdout, "Removed the bind guard of table inet %s.\n", r.Table)
		}
		if r.Purged {
			fmt.Fprintf(a.stdout, "Purged the state in %s.\n", a.stateDir())
		}
		return err
	}
	return cmd
}
