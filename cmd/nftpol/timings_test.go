package main

import (
	"bytes"
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
