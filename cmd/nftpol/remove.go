package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
)

func (a *app) removeCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "remove",
		Short: "Delete nftpol's own table (and nothing else); the state is kept unless --purge",
		Args:  cobra.NoArgs,
	}
	purge := cmd.Flags().Bool("purge", false, "also delete the recorded state, so restore has nothing to install")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		k, end, err := a.session(cmd.Context(), "remove")
		if err != nil {
			return err
		}
		defer end()
		table, err := a.tableName()
		if err != nil {
			return err
		}
		current, err := k.Read(table)
		if err != nil {
			return err
		}
		switch {
		case current == nil:
			fmt.Fprintf(a.stdout, "Table inet %s is not installed; nothing to remove.\n", table)
		case !current.Owned():
			return fmt.Errorf("table inet %s was not created by nftpol; refusing to delete it", table)
		default:
			if err := k.Delete(table); err != nil {
				return err
			}
			fmt.Fprintf(a.stdout, "Deleted table inet %s (%d accounts were installed).\n", table, len(installedAccounts(current)))
		}
		if *purge {
			for _, name := range []string{stateName, stateNameV1, oldRulesetName} {
				if err := os.Remove(filepath.Join(a.stateDir(), name)); err != nil && !errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("purging state: %w", err)
				}
			}
			if err := removeStaleSections(a.stateDir(), nil); err != nil {
				return fmt.Errorf("purging state: %w", err)
			}
			fmt.Fprintf(a.stdout, "Purged the state in %s.\n", a.stateDir())
		}
		return nil
	}
	return cmd
}

// tableName is the table nftpol manages: the one recorded by the last apply,
// else the one the policy names. Commands that only look at or remove the
// table must work without a readable policy when there is state.
func (a *app) tableName() (string, error) {
	st, err := a.recordedState()
	if err == nil {
		return st.Table, nil
	}
	p, _, lerr := a.load()
	if lerr != nil {
		if errors.Is(err, errNoState) {
			return "", fmt.Errorf("no state in %s and the policy cannot be read: %w", a.stateDir(), lerr)
		}
		return "", fmt.Errorf("%v; and the policy cannot be read: %w", err, lerr)
	}
	return p.Table, nil
}
