package main

import (
	"bytes"
	"os"
	"runtime/debug"
	"strings"
	"testing"
)

// TestTimings: with timings on, validate reports its phases in order, each
// with the time since the start; with them off, nothing.
func TestTimings(t *testing.T) {
	f := writePolicy(t, goodPolicy)
	var buf bytes.Buffer
	timingsOut = &buf
	t.Cleanup(func() { timingsOut, showTimings = nil, false })

	if code, _, errOut := nftpol(t, "--config", f, "validate"); code != 0 || buf.Len() != 0 {
		t.Fatalf("timings off: exit %d (%s), timings %q", code, errOut, buf.String())
	}
	showTimings = true
	if code, _, errOut := nftpol(t, "--config", f, "validate"); code != 0 {
		t.Fatalf("validate: exit %d: %s", code, errOut)
	}
	out := buf.String()
	read, compiled := strings.Index(out, " ms  policy read\n"), strings.Index(out, " ms  compiled\n")
	if read < 0 || compiled < read || !strings.HasPrefix(out, "nftpol: ") {
		t.Errorf("timings: %q, want \"policy read\" then \"compiled\"", out)
	}
}

// TestMemoryLimitFollowsThePolicy: the soft memory limit grows with a
// policy past memoryLimitAccounts, and is left alone below it.
func TestMemoryLimitFollowsThePolicy(t *testing.T) {
	if os.Getenv("GOMEMLIMIT") != "" {
		t.Skip("GOMEMLIMIT is set: nftpol leaves the limit to it")
	}
	old := debug.SetMemoryLimit(baseMemoryLimit)
	t.Cleanup(func() { debug.SetMemoryLimit(old) })
	fitMemoryLimit(memoryLimitAccounts)
	if got := debug.SetMemoryLimit(-1); got != baseMemoryLimit {
		t.Errorf("%d accounts: limit %d, want %d", memoryLimitAccounts, got, baseMemoryLimit)
	}
	fitMemoryLimit(4 * memoryLimitAccounts)
	if got := debug.SetMemoryLimit(-1); got != 4*baseMemoryLimit {
		t.Errorf("%d accounts: limit %d, want %d", 4*memoryLimitAccounts, got, 4*baseMemoryLimit)
	}
}
