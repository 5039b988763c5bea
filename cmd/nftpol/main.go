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
	// nftpol is a short-lived process whose garbage at 50,000 accounts
	// (policy text decoded, elements encoded) comes in bursts on top of a
	// live policy and ruleset of 15-30 MiB. Collecting by heap growth
	// (GOGC) ran five or six cycles in a one-account change, each slowing
	// the work around it; a soft memory limit alone collects only when
	// the heap nears it, and keeps every command of 50,000 accounts under
	// 45 MiB of RSS (measured; issue 6 asks for 50). fitMemoryLimit raises
	// it for larger policies, so the collector never runs without end.
	// GOMEMLIMIT, when set, decides, and GOGC then keeps Go's default;
	// GOGC, when set, decides too.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(baseMemoryLimit)
		if os.Getenv("GOGC") == "" {
			debug.SetGCPercent(-1)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
