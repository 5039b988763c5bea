package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// nftpol runs the CLI in-process and returns its exit code and output.
func nftpol(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func writePolicy(t *testing.T, text string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "nftpol.yaml")
	if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

const goodPolicy = `
zone: 40010-49999
accounts:
  - {name: alpha, uid: 1001, ports: ["40010-40019", 40500]}
  - {name: beta, uid: 1002, ports: [40020], protocols: [tcp]}
`

func TestValidate(t *testing.T) {
	f := writePolicy(t, goodPolicy)
	code, out, errOut := nftpol(t, "--config", f, "validate")
	if code != 0 || errOut != "" {
		t.Fatalf("validate: exit %d, stderr %q", code, errOut)
	}
	if !strings.Contains(out, "2 accounts, 3 port ranges") {
		t.Errorf("validate output: %q", out)
	}
	// Global flags are accepted after the command too.
	if code, _, errOut := nftpol(t, "validate", "--config", f); code != 0 {
		t.Errorf("flag after command: exit %d: %s", code, errOut)
	}
}

func TestConfigFromEnvironment(t *testing.T) {
	f := writePolicy(t, goodPolicy)
	t.Setenv("NFTPOL_CONFIG", f)
	if code, _, errOut := nftpol(t, "validate"); code != 0 {
		t.Fatalf("NFTPOL_CONFIG not used: exit %d: %s", code, errOut)
	}
	// The flag wins over the environment.
	if code, _, errOut := nftpol(t, "--config", "/nonexistent/nftpol.yaml", "validate"); code != 1 || !strings.Contains(errOut, "/nonexistent/nftpol.yaml") {
		t.Errorf("flag did not override env: exit %d: %s", code, errOut)
	}
}

func TestDefaultConfigPath(t *testing.T) {
	t.Setenv("NFTPOL_CONFIG", "")
	code, _, errOut := nftpol(t, "validate")
	if _, err := os.Stat(defaultConfig); err == nil {
		t.Skip(defaultConfig + " exists on this machine")
	}
	if code != 1 || !strings.Contains(errOut, defaultConfig) {
		t.Errorf("without --config: exit %d, stderr %q; want an error naming %s", code, errOut, defaultConfig)
	}
}

// TestBadPolicyExitsOne: every command that reads the policy fails with exit
// 1 and a message naming file, account and field, before touching the
// kernel (plan and apply would need root to get that far).
func TestBadPolicyExitsOne(t *testing.T) {
	f := writePolicy(t, `
zone: 40010-49999
accounts:
  - {name: alpha, uid: 1001, ports: ["50000"]}
`)
	for _, args := range [][]string{
		{"validate"}, {"export"}, {"plan"}, {"plan", "--detailed-exitcode"}, {"apply"},
	} {
		code, out, errOut := nftpol(t, append([]string{"--config", f, "--state-dir", t.TempDir()}, args...)...)
		if code != 1 {
			t.Errorf("%v: exit %d, want 1", args, code)
		}
		if out != "" {
			t.Errorf("%v: printed results on stdout: %q", args, out)
		}
		for _, want := range []string{f, `account "alpha"`, "ports", "50000", "40010-49999"} {
			if !strings.Contains(errOut, want) {
				t.Errorf("%v: stderr %q does not contain %q", args, errOut, want)
			}
		}
	}
}

func TestExportIsDeterministicAndLoadable(t *testing.T) {
	f := writePolicy(t, goodPolicy)
	_, a, _ := nftpol(t, "--config", f, "export")
	_, b, _ := nftpol(t, "--config", f, "export")
	if a != b || !strings.HasPrefix(a, "table inet nftpol {") {
		t.Fatalf("export not deterministic or malformed:\n%s\n---\n%s", a, b)
	}
	for _, want := range []string{"1001 . 40010-40019 comment \"alpha\"", "1002 . 40020 comment \"beta\"", "tcp dport 40010-49999 tcp dport != @tcp_open"} {
		if !strings.Contains(a, want) {
			t.Errorf("export lacks %q:\n%s", want, a)
		}
	}
	nft, err := exec.LookPath("nft")
	if err != nil {
		return
	}
	path := filepath.Join(t.TempDir(), "export.nft")
	if err := os.WriteFile(path, []byte(a), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(nft, "-c", "-f", path).CombinedOutput(); err != nil && !strings.Contains(string(out), "Operation not permitted") {
		t.Errorf("nft -c rejects the export: %v\n%s", err, out)
	}
}

func TestUnknownOutputFormat(t *testing.T) {
	f := writePolicy(t, goodPolicy)
	code, _, errOut := nftpol(t, "--config", f, "plan", "-o", "yaml")
	if code != 1 || !strings.Contains(errOut, "unknown output format") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}

func TestNetnsMissing(t *testing.T) {
	f := writePolicy(t, goodPolicy)
	code, _, errOut := nftpol(t, "--config", f, "--state-dir", t.TempDir(), "--netns", "nftpol-no-such-ns", "plan")
	if code != 1 || !strings.Contains(errOut, "nftpol-no-such-ns") {
		t.Errorf("exit %d, stderr %q", code, errOut)
	}
}
