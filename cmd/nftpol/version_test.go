package main

import (
	"regexp"
	"runtime/debug"
	"testing"
)

func TestVersionFlag(t *testing.T) {
	code, out, errOut := nftpol(t, "--version")
	if code != 0 || errOut != "" {
		t.Fatalf("--version: exit %d, stderr %q", code, errOut)
	}
	if !regexp.MustCompile(`^nftpol \S+, commit \S+, built \S+\n$`).MatchString(out) {
		t.Errorf("--version printed %q, want version, commit and build date on one line", out)
	}
}

func TestFillFromBuildInfo(t *testing.T) {
	info := &debug.BuildInfo{
		Main: debug.Module{Version: "v1.2.0"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "abc123"},
			{Key: "vcs.time", Value: "2026-11-26T00:00:00Z"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	tests := []struct {
		name       string
		v, c, d    string
		wv, wc, wd string
	}{
		{"nothing set at build time", "dev", "", "", "v1.2.0", "abc123-dirty", "2026-11-26T00:00:00Z"},
		{"ldflags win", "v9", "fff", "2027-01-01T00:00:00Z", "v9", "fff", "2027-01-01T00:00:00Z"},
	}
	for _, tt := range tests {
		v, c, d := fillFromBuildInfo(tt.v, tt.c, tt.d, info)
		if v != tt.wv || c != tt.wc || d != tt.wd {
			t.Errorf("%s: got %q %q %q, want %q %q %q", tt.name, v, c, d, tt.wv, tt.wc, tt.wd)
		}
	}
	// A build inside a checkout without a module version keeps "dev".
	if v, _, _ := fillFromBuildInfo("dev", "", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}); v != "dev" {
		t.Errorf("(devel) build: version %q, want dev", v)
	}
}
