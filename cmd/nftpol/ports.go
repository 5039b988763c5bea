package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/audit"
	"github.com/nftpol/nftpol/sockets"
)

func (a *app) portsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ports",
		Short: "For account holders, without root: your ports, your sockets, and what the world can reach",
		Long: `ports tells the user who runs it (any user, no root needed) where they may
serve clients from outside: the account their UID is and its port ranges per
protocol (or that the UID has no account, or is not enforced). Then it lists
the user's own listening TCP sockets and bound UDP and UDP-Lite sockets, each
with the verdict nftpol audit would give it:

    reachable     clients from outside get through
    blocked       they do not, and why: outside your ranges, protocol not
                  assigned, or a transport no account is granted; with one
                  line of advice (the nearest free port of your ranges, or a
                  UNIX socket for what only local programs use)
    local-only    bound to loopback: only programs on this machine reach it
    not-enforced  your UID is below min_uid or exempt

It asks the agent (nftpol watch) over --run-dir's ports.sock when one runs
there, which answers for the caller's UID only (the kernel tells it who asks),
and otherwise reads what apply and restore publish for this UID under
--run-dir (one file, readable by this UID alone): nothing about other accounts. Who has
another port is not said, only that it is not yours. Recent violations are
kept by the kernel for root only: nftpol status shows them to root.

Root sees any UID with --uid.

Exit status: 0 when none of the sockets is blocked, 3 when one is, 1 on error.`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(cmd)
	uidFlag := cmd.Flags().Int64("uid", -1, "root only: show UID's ports and sockets instead of your own")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*out); err != nil {
			return err
		}
		uid := uint32(os.Getuid())
		if *uidFlag >= 0 {
			if *uidFlag > 1<<32-1 {
				return fmt.Errorf("--uid %d is not a UID", *uidFlag)
			}
			if uint32(*uidFlag) != uid && os.Geteuid() != 0 {
				return fmt.Errorf("--uid %d: only root may see another UID's ports; run nftpol ports without --uid for your own", *uidFlag)
			}
			uid = uint32(*uidFlag)
		}
		dir := a.runDir()
		if dir == "" {
			dir = defaultRunDir
		}
		var opts []sockets.Option
		if ns := a.v.GetString("netns"); ns != "" {
			opts = append(opts, sockets.WithNetNS(ns))
		}
		r, err := audit.Ports(dir, uid, procRoot, opts...)
		if err != nil {
			return err
		}
		if *out == "json" {
			err = r.WriteJSON(a.stdout)
		} else {
			err = r.WriteText(a.stdout)
		}
		if err != nil {
			return err
		}
		if r.Blocked() > 0 {
			return exitCodeError{exitBlocked}
		}
		return nil
	}
	return cmd
}
