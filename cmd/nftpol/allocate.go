package main

import (
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/nftpol/nftpol/allocation"
)

func (a *app) allocateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "allocate --name NAME (--uid UID | --user USER) --size N [--write]",
		Short: "Find a free block of ports for a new account, and write its policy file",
		Long: `allocate picks the lowest free block of --size ports in the zone that no
account has (for any protocol), aligned to its size where possible (blocks of
10 start at the zone's first port + 10k), and prints it.

With --write it also writes NAME.yaml into the policy's include directory:
atomically, never over an existing file, and only if the whole policy still
validates with it. Concurrent allocations wait for each other (a lock file in
the include directory), so they never hand out the same ports. Run
` + "`nftpol apply`" + ` afterwards to enforce the new account.`,
		Example: `  nftpol allocate --name site15 --user admin15 --size 10 --write
  nftpol allocate --name site16 --uid 1016 --size 20 -o json`,
		Args: cobra.NoArgs,
	}
	out := outputFlag(cmd)
	name := cmd.Flags().String("name", "", "name of the new account (its file is NAME.yaml)")
	uid := cmd.Flags().Uint32("uid", 0, "the account's UID")
	user := cmd.Flags().String("user", "", "the account's user name (resolved through NSS)")
	size := cmd.Flags().Int("size", 0, "number of ports")
	write := cmd.Flags().Bool("write", false, "write NAME.yaml into the include directory")
	_ = cmd.MarkFlagRequired("name") // the flags exist: cannot fail
	_ = cmd.MarkFlagRequired("size")
	cmd.MarkFlagsMutuallyExclusive("uid", "user")
	cmd.MarkFlagsOneRequired("uid", "user")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(*out); err != nil {
			return err
		}
		if cmd.Flags().Changed("uid") && *uid == 0 {
			return fmt.Errorf("--uid 0 is root, which nftpol never enforces; give the account's own UID")
		}
		res, err := allocation.Allocate(cmd.Context(), a.configFile(), allocation.Request{
			Name: *name, UID: *uid, User: *user, Size: *size, Write: *write,
		}, a.policyOptions()...)
		if err != nil {
			return err
		}
		ports := strconv.Itoa(int(res.Ports.Lo))
		if res.Ports.Hi != res.Ports.Lo {
			ports = fmt.Sprintf("%d-%d", res.Ports.Lo, res.Ports.Hi)
		}
		if *out == "json" {
			enc := json.NewEncoder(a.stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(struct {
				Name  string `json:"name"`
				UID   uint32 `json:"uid"`
				User  string `json:"user,omitempty"`
				Ports string `json:"ports"`
				Lo    uint16 `json:"lo"`
				Hi    uint16 `json:"hi"`
				File  string `json:"file,omitempty"`
			}{res.Name, res.UID, res.User, ports, res.Ports.Lo, res.Ports.Hi, res.File})
		}
		fmt.Fprintf(a.stdout, "%s (uid %d): %s (%d %s)\n", res.Name, res.UID, ports,
			*size, noun(*size, "port", "ports"))
		if res.File != "" {
			fmt.Fprintf(a.stdout, "Wrote %s; run `nftpol apply` to enforce it.\n", res.File)
		}
		return nil
	}
	return cmd
}
