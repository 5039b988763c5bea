package getent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPasswdOfThisSystem asks this system's name service for the one user
// every Linux system has, and one no system should have.
func TestPasswdOfThisSystem(t *testing.T) {
	got, err := Passwd([]string{"root", "nftpol-test-no-such-user"})
	if err != nil {
		t.Fatal(err)
	}
	if uid, ok := got["root"]; !ok || uid != 0 || len(got) != 1 {
		t.Errorf("Passwd(root, unknown) = %v, want only root: 0", got)
	}
}

// TestPasswdArguments: names go after "--", so one that looks like an
// option is a key, and a failing getent is an error that says what it
// printed.
func TestPasswdArguments(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "getent")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho \"$*\" >"+dir+"/args\n[ \"$3\" = --help ] && { echo 'x:*:7:7::/:/bin/sh'; exit 0; }\necho 'directory down' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	old := Command
	Command = script
	t.Cleanup(func() { Command = old })
	got, err := Passwd([]string{"--help"})
	if err != nil || got["x"] != 7 {
		t.Fatalf("Passwd(--help) = %v, %v", got, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "args")); strings.TrimSpace(string(b)) != "passwd -- --help" {
		t.Errorf("getent's arguments = %q, want passwd -- --help", b)
	}
	if _, err := Passwd([]string{"someone"}); err == nil || !strings.Contains(err.Error(), "directory down") {
		t.Errorf("failing getent: err = %v, want its message", err)
	}
}
