package main

import (
	"os"
	"strings"
	"testing"
)

// TestInsecurePermissionsFlag: a policy file others can write is refused
// with the fix and the way out; the flag or its environment variable reads
// it anyway.
func TestInsecurePermissionsFlag(t *testing.T) {
	f := writePolicy(t, goodPolicy)
	if err := os.Chmod(f, 0o666); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := nftpol(t, "--config", f, "validate")
	if code != 1 || !strings.Contains(errOut, "chmod go-w "+f) || !strings.Contains(errOut, "--insecure-permissions") {
		t.Errorf("world-writable policy: exit %d, stderr:\n%s", code, errOut)
	}
	if code, _, errOut := nftpol(t, "--config", f, "validate", "--insecure-permissions"); code != 0 {
		t.Errorf("--insecure-permissions: exit %d: %s", code, errOut)
	}
	t.Setenv("NFTPOL_INSECURE_PERMISSIONS", "true")
	if code, _, errOut := nftpol(t, "--config", f, "validate"); code != 0 {
		t.Errorf("NFTPOL_INSECURE_PERMISSIONS=true: exit %d: %s", code, errOut)
	}
}
