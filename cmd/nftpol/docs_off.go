//go:build !mangen

package main

import "github.com/spf13/cobra"

// manCommands: none without the tag mangen (docs.go says why).
func (a *app) manCommands() []*cobra.Command { return nil }
