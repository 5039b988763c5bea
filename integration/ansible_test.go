package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ansibleTimeout bounds one ansible-playbook run (a few seconds normally).
const ansibleTimeout = 5 * time.Minute

// ansibleRun drives contrib/ansible/tests/localhost.yml (the role nftpol on
// this machine, connection: local) with an inventory the test writes.
// Everything ansible and the role write lands under dir; the role works on
// a network namespace of the test's own.
type ansibleRun struct {
	playbook string
	dir      string
	env      []string
	// base holds the role variables every run gets; a run adds its own.
	base map[string]any
}

// ansibleResult is one ansible-playbook run.
type ansibleResult struct {
	out   string         // standard output and error
	code  int            // exit code
	recap map[string]int // PLAY RECAP counters for localhost: ok, changed, failed, ...
}

// requireAnsible skips the test unless ansible-playbook is at hand; under
// CI (CI=true) it fails instead.
func requireAnsible(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("ansible-playbook"); err != nil {
		msg := "the Ansible test needs ansible-playbook (apt-get install ansible)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + " (CI=true: not skipping)")
		}
		t.Skip(msg)
	}
}

// newAnsibleRun prepares the temporary directories and the environment for
// ansible-playbook and returns the runner.
func newAnsibleRun(t *testing.T, nftpolBin, netns string) *ansibleRun {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, d := range []string{"ansible/home", "ansible/local", "ansible/remote", "ansible/pc", "ansible/tmp", "check"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := filepath.Join(dir, "ansible", "ansible.cfg")
	if err := os.WriteFile(cfg, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// Whatever the caller's environment says about Ansible, only this
	// applies: its home, temporary files and configuration stay in dir.
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch {
		case strings.HasPrefix(name, "ANSIBLE_"), name == "NFTPOL_RUN_DIR", name == "HOME", name == "TMPDIR", name == "LC_ALL":
		default:
			env = append(env, kv)
		}
	}
	env = append(env,
		"HOME="+filepath.Join(dir, "ansible/home"),
		"TMPDIR="+filepath.Join(dir, "ansible/tmp"), // modules unpack themselves there
		"LC_ALL=C.UTF-8", // Ansible refuses a locale that is not UTF-8
		"PYTHONDONTWRITEBYTECODE=1",
		"NFTPOL_RUN_DIR="+filepath.Join(dir, "run"), // the account views, not the host's /run/nftpol
		"ANSIBLE_CONFIG="+cfg,
		"ANSIBLE_HOME="+filepath.Join(dir, "ansible/home/.ansible"),
		"ANSIBLE_LOCAL_TEMP="+filepath.Join(dir, "ansible/local"),
		"ANSIBLE_REMOTE_TEMP="+filepath.Join(dir, "ansible/remote"),
		"ANSIBLE_PERSISTENT_CONTROL_PATH_DIR="+filepath.Join(dir, "ansible/pc"),
		"ANSIBLE_ROLES_PATH="+filepath.Join(root, "contrib/ansible/roles"),
		"ANSIBLE_RETRY_FILES_ENABLED=false",
		"ANSIBLE_HOST_KEY_CHECKING=false",
		"ANSIBLE_PYTHON_INTERPRETER=auto_silent",
		"ANSIBLE_GATHERING=explicit",
		"ANSIBLE_NOCOLOR=true",
		"ANSIBLE_FORCE_COLOR=false",
		"ANSIBLE_STDOUT_CALLBACK=default",
		"ANSIBLE_DISPLAY_SKIPPED_HOSTS=false",
		"ANSIBLE_DEPRECATION_WARNINGS=false",
		"ANSIBLE_LOCALHOST_WARNING=false",
		"ANSIBLE_INVENTORY_UNPARSED_WARNING=false",
	)
	etc := filepath.Join(dir, "etc", "nftpol")
	return &ansibleRun{
		playbook: filepath.Join(root, "contrib/ansible/tests/localhost.yml"),
		dir:      dir,
		env:      env,
		base: map[string]any{
			// The bare binary, not the .deb: nothing is installed on
			// the host, and no systemd (not PID 1 here).
			"nftpol_binary":          nftpolBin,
			"nftpol_bin":             filepath.Join(dir, "sbin", "nftpol"),
			"nftpol_config":          filepath.Join(etc, "nftpol.yaml"),
			"nftpol_state_dir":       filepath.Join(dir, "state"),
			"nftpol_netns":           netns,
			"nftpol_check_tmpdir":    filepath.Join(dir, "check"),
			"nftpol_restore_service": false,
		},
	}
}

// path returns a path under the run's directory.
func (a *ansibleRun) path(elem ...string) string {
	return filepath.Join(append([]string{a.dir}, elem...)...)
}

// run writes the inventory (base variables plus vars) and runs the playbook,
// with --check when check is set. It fails the test only if ansible-playbook
// could not be run or ran out of time.
func (a *ansibleRun) run(t *testing.T, check bool, vars map[string]any) ansibleResult {
	t.Helper()
	host := map[string]any{}
	for k, v := range a.base {
		host[k] = v
	}
	for k, v := range vars {
		host[k] = v
	}
	inv, err := json.MarshalIndent(map[string]any{
		"all": map[string]any{"hosts": map[string]any{"localhost": host}},
	}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	// JSON is YAML: the yaml inventory plugin reads it.
	invFile := a.path("ansible", "inventory.yml")
	if err := os.WriteFile(invFile, inv, 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-i", invFile, a.playbook}
	if check {
		args = append(args, "--check")
	}
	ctx, cancel := context.WithTimeout(context.Background(), ansibleTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ansible-playbook", args...)
	cmd.Dir = a.path("ansible")
	cmd.Env = a.env
	// ansible-playbook forks workers: on timeout, kill the whole group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	res := ansibleResult{out: out.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && ctx.Err() == nil:
		res.code = exit.ExitCode()
	default:
		t.Fatalf("ansible-playbook %s: %v\n%s", strings.Join(args, " "), err, res.out)
	}
	label := filepath.Base(a.playbook)
	if check {
		label += " --check"
	}
	t.Logf("ansible-playbook %s: exit %d in %v", label, res.code, time.Since(start).Round(time.Millisecond))
	res.recap = playRecap(res.out)
	if res.recap == nil {
		t.Fatalf("ansible-playbook %s: no PLAY RECAP for localhost (exit %d)\n%s", strings.Join(args, " "), res.code, res.out)
	}
	return res
}

var (
	recapLine  = regexp.MustCompile(`(?m)^localhost\s+:\s+(.+)$`)
	recapField = regexp.MustCompile(`(\w+)=(\d+)`)
)

// playRecap returns the counters of localhost's line in the PLAY RECAP, or
// nil when there is none.
func playRecap(out string) map[string]int {
	i := strings.LastIndex(out, "PLAY RECAP")
	if i < 0 {
		return nil
	}
	m := recapLine.FindStringSubmatch(out[i:])
	if m == nil {
		return nil
	}
	recap := map[string]int{}
	for _, f := range recapField.FindAllStringSubmatch(m[1], -1) {
		n, _ := strconv.Atoi(f[2])
		recap[f[1]] = n
	}
	return recap
}

// taskStatus returns how the role's task named name ended for localhost in
// out ("ok", "changed", "fatal", "skipping"), or "" if it was not shown
// (skipped tasks are not: ANSIBLE_DISPLAY_SKIPPED_HOSTS=false).
func taskStatus(out, name string) string {
	header := "TASK [nftpol : " + name + "]"
	i := strings.Index(out, header)
	if i < 0 {
		return ""
	}
	for _, line := range strings.Split(out[i+len(header):], "\n") {
		if strings.HasPrefix(line, "TASK [") || strings.HasPrefix(line, "PLAY RECAP") {
			return ""
		}
		for _, word := range []string{"ok", "changed", "fatal", "skipping"} {
			if strings.HasPrefix(line, word+": [localhost]") {
				return word
			}
		}
	}
	return ""
}

const (
	applyTask = "Apply | nftpol apply -o json"
	planTask  = "Plan | nftpol plan --detailed-exitcode"
)

// expect checks a run's exit code, PLAY RECAP and the status of one task;
// changed < 0 means "more than zero".
func (r ansibleResult) expect(t *testing.T, what string, failed, changed int, task, status string) {
	t.Helper()
	ok := true
	if failed == 0 && r.code != 0 || failed > 0 && r.code == 0 || r.recap["failed"] != failed {
		ok = false
		t.Errorf("%s: exit %d, failed=%d; want failed=%d", what, r.code, r.recap["failed"], failed)
	}
	if changed < 0 && r.recap["changed"] == 0 || changed >= 0 && r.recap["changed"] != changed {
		ok = false
		want := strconv.Itoa(changed)
		if changed < 0 {
			want = "more than 0"
		}
		t.Errorf("%s: changed=%d, want %s", what, r.recap["changed"], want)
	}
	if got := taskStatus(r.out, task); got != status {
		ok = false
		t.Errorf("%s: task %q ended %q, want %q", what, task, got, status)
	}
	if !ok {
		t.Logf("%s: output:\n%s", what, r.out)
	}
}

// ansibleAccount is one entry of nftpol_accounts.
func ansibleAccount(name string, uid int, ports []any, protocols ...string) map[string]any {
	a := map[string]any{"name": name, "uid": uid, "ports": ports}
	if len(protocols) > 0 {
		a["protocols"] = protocols
	}
	return a
}

// TestAnsibleRole runs the role contrib/ansible/roles/nftpol with a real
// ansible-playbook against this machine (connection: local), targeting a
// throwaway namespace and temporary directories: a first run applies, a
// second changes nothing, check mode reports a change without touching the
// kernel or the policy files, a real run applies it (and packets agree),
// and a policy nftpol refuses fails the play with nftpol's message.
func TestAnsibleRole(t *testing.T) {
	requireRoot(t)
	requireAnsible(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	a := newAnsibleRun(t, bin, tp.Server)
	include := a.path("etc", "nftpol", "policies.d")

	// A file of an account the inventory does not list: the role removes
	// it.
	if err := os.MkdirAll(include, 0o755); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(include, "stale.yaml")
	if err := os.WriteFile(stale, []byte("accounts:\n  - {name: stale, uid: 1009, ports: [40090]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	alpha := ansibleAccount("alpha", uidAlpha, []any{"40010-40019"})
	beta := ansibleAccount("beta", uidBeta, []any{"40020-40029"}, "tcp")
	gamma := ansibleAccount("gamma", uidGamma, []any{"40030-40039"}, "tcp")
	varsA := map[string]any{"nftpol_accounts": []any{alpha, beta}}
	varsB := map[string]any{"nftpol_accounts": []any{alpha, gamma}}

	// 1. First run: installs the binary, writes the policy, applies.
	r := a.run(t, false, varsA)
	r.expect(t, "first run", 0, -1, applyTask, "changed")
	if t.Failed() {
		t.FailNow()
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale.yaml of an unlisted account: %v, want it removed", err)
	}
	for _, f := range []string{"etc/nftpol/nftpol.yaml", "etc/nftpol/policies.d/alpha.yaml", "etc/nftpol/policies.d/beta.yaml"} {
		checkRootFile(t, a.path(f), 0o644)
	}
	checkRootFile(t, a.path("etc/nftpol/policies.d"), os.ModeDir|0o755)
	checkRootFile(t, a.path("sbin/nftpol"), 0o755)
	nftListTable(t, tp.Server, "inet", "nftpol")

	// 2. Same variables: nothing changes.
	r = a.run(t, false, varsA)
	r.expect(t, "second run", 0, 0, applyTask, "ok")

	// 3. Check mode after a change (beta goes, gamma comes): reported,
	// planned against the new variables, and nothing written.
	before := nftList(t, tp.Server)
	state := readFile(t, a.path("state", "state"))
	r = a.run(t, true, varsB)
	r.expect(t, "check mode after a change", 0, -1, planTask, "changed")
	for _, want := range []string{"- beta (uid 1002)", "+ gamma (uid 1003)"} {
		if !strings.Contains(r.out, want) {
			t.Errorf("check mode: the plan shown does not say %q\n%s", want, r.out)
		}
	}
	if after := nftList(t, tp.Server); after != before {
		t.Errorf("check mode changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if got := readFile(t, a.path("state", "state")); got != state {
		t.Errorf("check mode changed the state")
	}
	if _, err := os.Stat(filepath.Join(include, "beta.yaml")); err != nil {
		t.Errorf("check mode removed beta.yaml: %v", err)
	}
	if _, err := os.Stat(filepath.Join(include, "gamma.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("check mode wrote gamma.yaml: %v", err)
	}
	if left, _ := os.ReadDir(a.path("check")); len(left) != 0 {
		t.Errorf("check mode left its rendered policy behind: %v", left)
	}

	// The boot unit tasks, in check mode (no systemd here): the unit from
	// the source tree would be installed, and enabling waits for it.
	systemdDir := a.path("systemd")
	r = a.run(t, true, map[string]any{
		"nftpol_accounts": []any{alpha, beta}, "nftpol_restore_service": true, "nftpol_systemd_dir": systemdDir,
	})
	r.expect(t, "check mode with nftpol-restore.service", 0, -1, "Install nftpol-restore.service", "changed")
	if taskStatus(r.out, planTask) != "ok" {
		t.Errorf("check mode with the applied accounts: plan task ended %q, want ok\n%s", taskStatus(r.out, planTask), r.out)
	}
	if _, err := os.Stat(systemdDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("check mode wrote %s: %v", systemdDir, err)
	}

	// 4. The real run applies the change; check mode then has nothing to
	// say.
	r = a.run(t, false, varsB)
	r.expect(t, "run after the change", 0, -1, applyTask, "changed")
	if _, err := os.Stat(filepath.Join(include, "beta.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("beta.yaml after beta left the inventory: %v, want it removed", err)
	}
	checkRootFile(t, filepath.Join(include, "gamma.yaml"), 0o644)
	r = a.run(t, true, varsB)
	r.expect(t, "check mode in sync", 0, 0, planTask, "ok")

	// Packets: gamma serves on its own port; alpha cannot serve on gamma's;
	// beta's former port is closed.
	tp.Listen(t, uidGamma, "tcp", ServerIPv4, 40030)
	if word := tp.Connect(t, "tcp", ServerIPv4, 40030); word != "ok" {
		t.Errorf("gamma on its own port 40030: %q, want ok (contract 1)", word)
	}
	tp.Listen(t, uidAlpha, "tcp", ServerIPv4, 40035)
	if word := tp.Connect(t, "tcp", ServerIPv4, 40035); !blocked(word) {
		t.Errorf("alpha on gamma's port 40035: %q, want blocked (contract 1)", word)
	}
	tp.Listen(t, uidBeta, "tcp", ServerIPv6, 40020)
	if word := tp.Connect(t, "tcp", ServerIPv6, 40020); !blocked(word) {
		t.Errorf("beta, removed, on its former port 40020: %q, want blocked (contract 1, 2)", word)
	}

	// 5. A policy nftpol refuses: the play fails with nftpol's message and
	// the kernel keeps what it had (counters and timeouts of the traffic
	// above aside).
	before = nftRulesetStateless(t, tp.Server)
	r = a.run(t, false, map[string]any{"nftpol_accounts": []any{alpha, ansibleAccount("gamma", uidGamma, []any{50000}, "tcp")}})
	r.expect(t, "refused policy", 1, -1, "Apply | nftpol refused", "fatal")
	for _, want := range []string{"nftpol apply exited 1", "policies.d/gamma.yaml: account", "ports: port 50000 is outside the zone 40010-49999"} {
		if !strings.Contains(r.out, want) {
			t.Errorf("refused policy: output does not say %q\n%s", want, r.out)
		}
	}
	if after := nftRulesetStateless(t, tp.Server); after != before {
		t.Errorf("a refused policy changed the kernel:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// nftRulesetStateless returns `nft -s list ruleset` inside ns: the whole
// ruleset without counter values and element timeouts.
func nftRulesetStateless(t *testing.T, ns string) string {
	t.Helper()
	return run(t, "ip", "netns", "exec", ns, "nft", "-s", "list", "ruleset")
}

// checkRootFile checks that path is owned by root:root with exactly mode.
func checkRootFile(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Error(err)
		return
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		t.Fatalf("%s: no owner in %T", path, fi.Sys())
	}
	if st.Uid != 0 || st.Gid != 0 || fi.Mode() != mode {
		t.Errorf("%s: mode %v, owner %d:%d; want %v root:root", path, fi.Mode(), st.Uid, st.Gid, mode)
	}
}

// readFile returns a file's contents, failing the test if it cannot.
func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
