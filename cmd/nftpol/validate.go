package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/rules"
)

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
				a.configFile(), len(p.Accounts), noun(len(p.Accounts), "account", "accounts"),
				ranges, noun(ranges, "range", "ranges"), p.Table, elems)
			return nil
		},
	}
}

func (a *app) exportCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Print the compiled ruleset in nft syntax (loadable with nft -f)",
		Long: `Print the ruleset the policy compiles to, in nft syntax: what a first apply
installs. With --applied, print the ruleset the last apply recorded in the state
directory instead (no policy read): what the kernel holds since, accounts moved by
later applies included.`,
		Args: cobra.NoArgs,
	}
	applied := cmd.Flags().Bool("applied", false, "print the ruleset the last apply recorded instead of the policy's")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if *applied {
			st, err := a.engine().Recorded()
			if err != nil {
				return err
			}
			return rules.Render(a.stdout, st.Ruleset())
		}
		_, rs, err := a.load()
		if err != nil {
			return err
		}
		return rules.Render(a.stdout, rs)
	}
	return cmd
}
