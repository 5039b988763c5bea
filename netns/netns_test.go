//go:build linux

package netns

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpen(t *testing.T) {
	f, err := Open("/proc/self/ns/net")
	if err != nil {
		t.Fatalf("own namespace: %v", err)
	}
	f.Close()
	if _, err := Open("nftpol-no-such-ns"); err == nil || !strings.Contains(err.Error(), "nftpol-no-such-ns") {
		t.Errorf("missing namespace: %v", err)
	}
	plain := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(plain, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(plain); err == nil || !strings.Contains(err.Error(), "is not a network namespace") {
		t.Errorf("a plain file taken for a namespace: %v", err)
	}
}
