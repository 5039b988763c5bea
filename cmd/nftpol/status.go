package main

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
)

func (a *app) statusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show whether the table is installed and in sync, and who violates the policy",
		Args:  cobra.NoArgs,
	}
	out := cmd.Flags().StringP("output", "o", "text", "output format: text, json or prometheus")
	format := cmd.Flags().String("format", "", "same as --output (prometheus: node_exporter textfile metrics)")
	top := cmd.Flags().Int("top", 10, "how many violators to list")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		f := *out
		if *format != "" {
			f = *format
		}
		if f != "text" && f != "json" && f != "prometheus" {
			return fmt.Errorf("unknown output format %q (want text, json or prometheus)", f)
		}
		r, err := a.engine().Status(*top, a.policyTable)
		if err != nil {
			return err
		}
		if a.host != nil {
			r.Agent = a.host.Report()
		}
		switch f {
		case "json":
			b, err := json.Marshal(r)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(a.stdout, "%s\n", b)
			return err
		case "prometheus":
			return r.WritePrometheus(a.stdout)
		}
		return r.WriteText(a.stdout)
	}
	return cmd
}
