package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/audit"
	"github.com/nftpol/nftpol/bindguard"
	"github.com/nftpol/nftpol/sockets"
)

// exitBlocked is audit's exit status when some socket is blocked, so that
// cron jobs and monitoring can act on it without parsing the output.
const exitBlocked = 3

// defaultGrace is how long audit --terminate waits after SIGTERM before
// SIGKILL: long enough for a daemon to close its connections cleanly.
const defaultGrace = 10 * time.Second

func (a *app) auditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "List the sockets that serve clients, and what the policy does to each",
		Long: `audit lists every listening TCP socket and bound UDP socket (IPv4 and IPv6)
of the machine, or of the --netns namespace, with its owner UID, the account
the policy gives that UID, and the processes that hold it. Each gets a
verdict under the policy, as compiled for apply:

    reachable     an account serves on a port of its own
    blocked       clients from outside cannot get through, because it is on
                    another account's port (NAME)
                    outside the account's ranges
                    protocol not assigned (the port is the account's, for
                      the other protocol only)
                    unassigned zone port (refused whoever listens, root too)
    local-only    bound to loopback, and the policy lets local clients in
    not-enforced  a UID below min_uid or exempt, not on a closed zone port

The verdicts describe the policy file. The kernel enforces them once
` + "`nftpol apply`" + ` has installed that policy.

Exit status: 0 when nothing is blocked, 3 when something is, 1 on error.

--terminate is opt-in and does what hosting providers did before nftpol:
it sends SIGTERM to every process holding a blocked socket (the whole
process, with all its other sockets), then SIGKILL to those still running
after --grace, and reports what it did. PID 1 is never signalled.

A blocked UDP socket on a port the kernel also hands to sockets that bind
none (net.ipv4.ip_local_port_range, minus ip_local_reserved_ports) may be a
client's: QUIC sends from unconnected sockets. Audit marks it "may be a
client", and --terminate leaves its process alone. Linux's default range
32768-60999 covers the usual zone; reserve the zone
(sysctl net.ipv4.ip_local_reserved_ports=40010-49999) so that every UDP
socket in it was bound on purpose.`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(cmd)
	terminate := cmd.Flags().Bool("terminate", false, "end the processes behind blocked sockets: SIGTERM, then SIGKILL after --grace (opt-in)")
	grace := cmd.Flags().Duration("grace", defaultGrace, "with --terminate: how long to wait after SIGTERM before SIGKILL")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*out); err != nil {
			return err
		}
		if *grace < 0 {
			return fmt.Errorf("--grace %v is negative; give a duration like 10s, or 0 for SIGKILL at once", *grace)
		}
		p, _, err := a.load()
		if err != nil {
			return err
		}
		judge, err := audit.New(p)
		if err != nil {
			return err
		}
		var opts []sockets.Option
		ns := a.v.GetString("netns")
		if ns != "" {
			opts = append(opts, sockets.WithNetNS(ns))
		}
		list, err := sockets.List(opts...)
		if err != nil {
			return err
		}
		auto, err := sockets.ReadAutoPorts(opts...)
		if err != nil {
			// Assume Linux's default rather than take every UDP
			// socket for a server's.
			auto = sockets.DefaultAutoPorts
			fmt.Fprintf(a.stderr, "nftpol: warning: reading the kernel's automatic port range: %v; assuming %d-%d\n", err, auto.Lo, auto.Hi)
		}
		judge.SetAutoPorts(auto)
		inodes := make([]uint64, len(list))
		for i, s := range list {
			inodes[i] = s.Inode
		}
		holders, unreadable, err := sockets.Holders(procRoot, inodes)
		if err != nil {
			return fmt.Errorf("finding the processes behind sockets in %s: %w", procRoot, err)
		}
		findings, err := judge.JudgeAll(list, holders)
		if err != nil {
			return err
		}
		r := &audit.Report{Policy: a.configFile(), Netns: ns, Findings: findings, Unreadable: unreadable, Terminate: *terminate, Grace: *grace}
		if p.BindGuard.Enabled {
			if r.Guard, err = bindguard.Compile(p); err != nil {
				return err
			}
		}
		if *terminate {
			r.Terminated = audit.Terminate(cmd.Context(), findings, *grace, procRoot)
		}
		if unreadable > 0 {
			fmt.Fprintf(a.stderr, "nftpol: warning: the descriptors of %d %s could not be read (run as root to see every process behind a socket)\n",
				unreadable, noun(unreadable, "process", "processes"))
		}
		if *out == "json" {
			err = r.WriteJSON(a.stdout)
		} else {
			err = r.WriteText(a.stdout)
		}
		if err != nil {
			return err
		}
		if n := r.Unfinished(); n > 0 {
			return fmt.Errorf("--terminate could not end %d %s; see the report above", n, noun(n, "process", "processes"))
		}
		if r.Count(audit.Blocked) > 0 {
			return exitCodeError{exitBlocked}
		}
		return nil
	}
	return cmd
}

// procRoot is where processes are looked up.
const procRoot = "/proc"
