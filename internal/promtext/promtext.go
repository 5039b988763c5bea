// Package promtext spells values for Prometheus's text exposition format
// (version 0.0.4), which nftpol writes by hand in two places: status
// --format prometheus (node_exporter's textfile collector) and the agent's
// /metrics.
package promtext

import "strings"

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

// Label quotes a label value: backslash, double quote and line feed
// escaped.
func Label(s string) string { return `"` + labelEscaper.Replace(s) + `"` }

// Help escapes a HELP text: backslash and line feed.
func Help(s string) string { return helpEscaper.Replace(s) }
