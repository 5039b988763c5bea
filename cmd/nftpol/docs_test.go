//go:build mangen

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestManPages(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1790000000")
	dir := filepath.Join(t.TempDir(), "man")
	if code, _, errOut := nftpol(t, "man", dir); code != 0 {
		t.Fatalf("man: exit %d: %s", code, errOut)
	}
	for _, page := range []string{"nftpol.1", "nftpol-audit.1", "nftpol-allocate.1", "nftpol-apply.1", "nftpol-ports.1"} {
		text, err := os.ReadFile(filepath.Join(dir, page))
		if err != nil {
			t.Error(err)
			continue
		}
		if !strings.Contains(string(text), `.TH "NFTPOL" "1"`) {
			t.Errorf("%s has no man header:\n%s", page, text)
		}
	}
	// The hidden man command documents nothing of its own.
	if _, err := os.Stat(filepath.Join(dir, "nftpol-man.1")); err == nil {
		t.Error("the hidden man command got a man page")
	}
	audit, _ := os.ReadFile(filepath.Join(dir, "nftpol-audit.1"))
	if !strings.Contains(string(audit), "--terminate") || strings.Contains(string(audit), "Auto generated") {
		t.Errorf("nftpol-audit.1 lacks --terminate or carries a generation date:\n%s", audit)
	}
}

func TestCompletion(t *testing.T) {
	for _, shell := range []string{"bash", "zsh"} {
		code, out, errOut := nftpol(t, "completion", shell)
		if code != 0 || !strings.Contains(out, "nftpol") {
			t.Errorf("completion %s: exit %d: %s", shell, code, errOut)
		}
	}
	// The scripts ask the binary (cobra's __complete) for the commands.
	if code, out, _ := nftpol(t, "__complete", ""); code != 0 || !strings.Contains(out, "ports\t") {
		t.Errorf("__complete does not offer ports:\n%s", out)
	}
}
