//go:build mangen

package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// manCommands are the command that writes the man pages, generated from the
// commands themselves so that they never disagree with --help. Hidden:
// packaging runs it (`make man`), people read the result. Shell completion
// needs no such command: cobra's `completion bash|zsh|fish` is built in.
//
// It is only in a binary built with the tag mangen (`make man` builds one):
// cobra/doc brings a markdown renderer whose start-up (package init, a
// table of HTML entities, 0.3 ms and half a megabyte) every nftpol process
// paid, the agent's idle memory and each forwarded command included.
func (a *app) manCommands() []*cobra.Command {
	return []*cobra.Command{{
		Use:    "man DIR",
		Short:  "Write man pages for every command into DIR (for packaging)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dir := args[0]
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			root := cmd.Root()
			// No "Auto generated ... on DATE" footer: the date comes from
			// the header (SOURCE_DATE_EPOCH when set), so that the same
			// source gives the same pages.
			root.DisableAutoGenTag = true
			header := &doc.GenManHeader{
				Title:   "NFTPOL",
				Section: "1",
				Source:  "nftpol " + version,
				Manual:  "nftpol manual",
			}
			if err := doc.GenManTree(root, header, dir); err != nil {
				return fmt.Errorf("writing man pages into %s: %w", dir, err)
			}
			return nil
		},
	}}
}
