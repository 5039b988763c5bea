// Command nftpol keeps a per-UID port policy enforced in the kernel's
// nftables. See README.md for usage.
package main

import (
	"context"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

func main() {
	// nftpol's work at 50,000 accounts is a burst of short-lived
	// allocations (elements encoded, marshalled, sent) on top of a live
	// policy and ruleset of tens of MiB. Collecting at 50% growth instead
	// of 100% keeps the peak near the live size (about a third less RSS,
	// measured) for a few percent more CPU. GOGC, when set, decides.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(50)
	}
	// A soft limit on top: near it the collector works harder rather than
	// let the heap grow, which keeps even a full apply or a full read of
	// 50,000 accounts under 50 MiB of RSS at no measurable cost to a
	// one-account change (the live heap is well below it). fitMemoryLimit
	// raises it for larger policies. GOMEMLIMIT, when set, decides.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(baseMemoryLimit)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
