package integration

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// requireDebianRoot skips the test unless it runs as root on a machine with
// dpkg and make. Under CI (CI=true) it fails instead.
func requireDebianRoot(t *testing.T) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range []string{"dpkg", "dpkg-query", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		skipOrFail(t, "the package test needs "+strings.Join(missing, ", "))
	}
}

func skipOrFail(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: not skipping)")
	}
	t.Skip(msg)
}

// TestDebianPackage builds the package with `make deb`, installs it on this
// machine with dpkg -i, checks what it installed and that the installed
// binary and example policy work, and purges it again. It refuses to run
// where nftpol is installed already, so it never replaces or removes an
// nftpol it did not install.
func TestDebianPackage(t *testing.T) {
	requireDebianRoot(t)
	if out, err := exec.Command("dpkg-query", "-W", "-f", "${Status}", "nftpol").Output(); err == nil && strings.Contains(string(out), "installed") {
		skipOrFail(t, "the nftpol package is installed on this machine already ("+string(out)+"); the test installs and purges its own")
	}
	for _, path := range []string{"/usr/sbin/nftpol", "/etc/nftpol"} {
		if _, err := os.Lstat(path); err == nil {
			skipOrFail(t, path+" exists on this machine; the package test would replace it and then purge it")
		}
	}

	dir := t.TempDir()
	// Building compiles nftpol and runs nfpm: minutes on a cold cache.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "make", "-C", "..", "deb", "DEBDIR="+dir).CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dir, "nftpol_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %v in %s, want one nftpol_*.deb", debs, dir)
	}

	// Purge even if the install fails halfway, so the machine is left as
	// it was.
	purged := false
	purge := func() {
		if purged {
			return
		}
		purged = true
		if _, stderr, err := runCommand("dpkg", "--purge", "nftpol"); err != nil {
			t.Errorf("dpkg --purge nftpol: %v\n%s", err, stderr)
		}
	}
	t.Cleanup(purge)
	run(t, "dpkg", "-i", debs[0])

	out := run(t, "/usr/sbin/nftpol", "--version")
	if !regexp.MustCompile(`^nftpol \S+, commit \S+, built \d{4}-\d\d-\d\dT\S+\n$`).MatchString(out) {
		t.Errorf("nftpol --version printed %q, want version, commit and build date", out)
	}
	if out := run(t, "/usr/sbin/nftpol", "--config", "/etc/nftpol/nftpol.yaml", "validate"); !strings.Contains(out, "valid") {
		t.Errorf("validate of the installed policy printed %q", out)
	}

	conffiles := run(t, "dpkg-query", "-W", "-f", "${Conffiles}", "nftpol")
	if !strings.Contains(conffiles, "/etc/nftpol/nftpol.yaml") {
		t.Errorf("conffiles: %q, want /etc/nftpol/nftpol.yaml", conffiles)
	}
	want := []string{
		"/usr/sbin/nftpol",
		"/etc/nftpol/policies.d",
		"/usr/share/man/man1/nftpol.1.gz",
		"/usr/share/man/man1/nftpol-audit.1.gz",
		"/usr/share/man/man1/nftpol-allocate.1.gz",
		"/usr/share/bash-completion/completions/nftpol",
		"/usr/share/zsh/vendor-completions/_nftpol",
		"/usr/share/doc/nftpol/examples/nftpol.yaml",
	}
	units, _ := filepath.Glob("../packaging/systemd/*.service")
	for _, u := range units {
		want = append(want, "/usr/lib/systemd/system/"+filepath.Base(u))
	}
	listed := strings.Split(run(t, "dpkg", "-L", "nftpol"), "\n")
	for _, f := range want {
		if !slices.Contains(listed, f) {
			t.Errorf("the package does not install %s", f)
		}
	}
	for _, u := range units {
		text, err := os.ReadFile("/usr/lib/systemd/system/" + filepath.Base(u))
		if err != nil {
			t.Error(err)
			continue
		}
		if strings.Contains(string(text), "@") || !strings.Contains(string(text), "ExecStart=/usr/sbin/nftpol ") {
			t.Errorf("%s is not filled in for /usr/sbin/nftpol:\n%s", filepath.Base(u), text)
		}
	}
	// The bash completion loads and registers a completion for nftpol.
	if out := run(t, "bash", "-c", "source /usr/share/bash-completion/completions/nftpol && complete -p nftpol"); !strings.Contains(out, "nftpol") {
		t.Errorf("bash completion: %q", out)
	}

	purge()
	for _, path := range []string{"/usr/sbin/nftpol", "/etc/nftpol"} {
		if _, err := os.Lstat(path); err == nil {
			t.Errorf("%s is still there after dpkg --purge", path)
		}
	}
}
