package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// portsPolicy: two accounts side by side; the test runs nftpol ports as the
// first and looks for the second everywhere in its output.
const portsPolicy = `zone: 40010-49999
min_uid: 1000
accounts:
  - {name: site12, uid: 1012, ports: ["40010-40019"]}
  - {name: site13, uid: 1013, ports: ["40020-40029"]}
`

// portsPolicyMoved gives site12 what was site13's, and site13 a new range.
const portsPolicyMoved = `zone: 40010-49999
min_uid: 1000
accounts:
  - {name: site12, uid: 1012, ports: ["40010-40029"]}
  - {name: site13, uid: 1013, ports: ["40030-40039"]}
`

// portsRunDir makes a run directory every UID may traverse (as /run/nftpol
// is), removed when the test ends.
func portsRunDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nftpol-it-run-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// asUser runs name args in the server namespace as uid (gid uid, no
// supplementary groups), bounded by commandTimeout, and returns its output
// and exit code.
func asUser(t *testing.T, ns string, uid int, name string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	id := strconv.Itoa(uid)
	all := append([]string{"netns", "exec", ns, "setpriv", "--reuid", id, "--regid", id, "--clear-groups", name}, args...)
	stdout, stderr, err := runCommand("ip", all...)
	if err != nil {
		code = -1
		if ee, ok := err.(interface{ ExitCode() int }); ok {
			code = ee.ExitCode()
		}
		if code < 0 {
			t.Fatalf("ip %s: %v\n%s%s", strings.Join(all, " "), err, stdout, stderr)
		}
	}
	return stdout, stderr, code
}

// portsAs runs `nftpol ports ARGS` as uid and checks its exit code.
func portsAs(t *testing.T, bin, ns, runDir string, uid, want int, args ...string) string {
	t.Helper()
	stdout, stderr, code := asUser(t, ns, uid, bin, append([]string{"--run-dir", runDir, "ports"}, args...)...)
	if code != want {
		t.Fatalf("nftpol ports %v as uid %d exited %d, want %d\nstdout:\n%s\nstderr:\n%s", args, uid, code, want, stdout, stderr)
	}
	t.Logf("nftpol ports %v as uid %d:\n%s%s", args, uid, stdout, stderr)
	return stdout + stderr
}

// requireAbsent fails when out mentions anything of site13.
func requireAbsent(t *testing.T, out string, what ...string) {
	t.Helper()
	for _, w := range what {
		if strings.Contains(out, w) {
			t.Errorf("output of another UID mentions %q:\n%s", w, out)
		}
	}
}

func TestPortsAsAccounts(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	runDir := portsRunDir(t)
	n := nftpolRun{bin: bin, config: writePolicy(t, portsPolicy), netns: tp.Server, stateDir: t.TempDir(), runDir: runDir}
	n.apply(t)

	tp.Listen(t, 1012, "tcp", ServerIPv4, 40010)
	tp.Listen(t, 1012, "tcp", "", 40025) // site13's port
	tp.Listen(t, 1012, "tcp", "", 8080)  // outside the zone
	tp.Listen(t, 1012, "udp", "", 40011)
	tp.Listen(t, 1012, "tcp", "127.0.0.1", 6379)
	tp.Listen(t, 1013, "tcp", ServerIPv4, 40020)
	tp.Listen(t, 1020, "tcp", "", 8081) // enforced, no account
	tp.Listen(t, 999, "tcp", "", 8082)  // below min_uid

	// What ports says is what a client from outside sees.
	if w := tp.Connect(t, "tcp", ServerIPv4, 40010); w != "ok" {
		t.Errorf("tcp 40010 (site12's own port): %s", w)
	}
	if w := tp.Connect(t, "tcp", ServerIPv4, 40025); !blocked(w) {
		t.Errorf("tcp 40025 (site13's port, site12 listening): %s", w)
	}

	// Inodes and PIDs are numbers too: look for what only site13's data
	// would write.
	other := []string{"site13", "40020-40029", "UID 1013", "uid 1013"}
	out := portsAs(t, bin, tp.Server, runDir, 1012, 3)
	for _, want := range []string{
		"UID 1012 is account site12",
		"tcp  40010-40019",
		"udp  40010-40019",
		"Zone 40010-49999",
		"198.18.0.1:40010", "reachable",
		"[::]:40025", "blocked: outside your ranges",
		"[::]:40025: move it to port 40019",
		"[::]:8080: move it to port 40011",
		"127.0.0.1:6379", "local-only",
		"udp    [::]:40011",
		"Recent violations: not available without root",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ports as site12 does not say %q", want)
		}
	}
	requireAbsent(t, out, other...)

	raw := portsAs(t, bin, tp.Server, runDir, 1012, 3, "-o", "json")
	requireAbsent(t, raw, other...)
	var j struct {
		Standing string              `json:"standing"`
		Account  string              `json:"account"`
		Ports    map[string][]string `json:"ports"`
		Sockets  []struct {
			Proto   string `json:"proto"`
			Port    int    `json:"port"`
			Verdict string `json:"verdict"`
			Reason  string `json:"reason"`
			Advice  string `json:"advice"`
		} `json:"sockets"`
		Summary map[string]int `json:"summary"`
	}
	if err := json.Unmarshal([]byte(raw), &j); err != nil {
		t.Fatalf("ports -o json: %v\n%s", err, raw)
	}
	verdicts := map[string]string{}
	for _, s := range j.Sockets {
		verdicts[s.Proto+"/"+strconv.Itoa(s.Port)] = s.Verdict + " " + s.Reason
	}
	for sock, want := range map[string]string{
		"tcp/40010": "reachable ", "tcp/40025": "blocked outside-ranges", "tcp/8080": "blocked outside-ranges",
		"udp/40011": "reachable ", "tcp/6379": "local-only ",
	} {
		if verdicts[sock] != want {
			t.Errorf("json: %s is %q, want %q", sock, verdicts[sock], want)
		}
	}
	if len(j.Sockets) != 5 || j.Standing != "account" || j.Account != "site12" || strings.Join(j.Ports["tcp"], ",") != "40010-40019" || j.Summary["blocked"] != 2 {
		t.Errorf("json: %s", raw)
	}

	out = portsAs(t, bin, tp.Server, runDir, 1020, 3)
	if !strings.Contains(out, "UID 1020 has no account") || !strings.Contains(out, "[::]:8081") {
		t.Errorf("ports as uid 1020 (no account):\n%s", out)
	}
	requireAbsent(t, out, append(other, "site12", "40010-40019")...)
	out = portsAs(t, bin, tp.Server, runDir, 999, 0)
	if !strings.Contains(out, "UID 999 is not enforced (below min_uid 1000)") || !strings.Contains(out, "not-enforced") {
		t.Errorf("ports as uid 999 (below min_uid):\n%s", out)
	}
	requireAbsent(t, out, append(other, "site12")...)

	// Another UID's view cannot be opened, nor the directory listed.
	for _, args := range [][]string{{"cat", filepath.Join(runDir, "uid", "1013")}, {"ls", filepath.Join(runDir, "uid")}} {
		stdout, stderr, code := asUser(t, tp.Server, 1012, args[0], args[1:]...)
		if code == 0 || !strings.Contains(stderr, "Permission denied") {
			t.Errorf("%v as uid 1012: exit %d\n%s%s", args, code, stdout, stderr)
		}
	}
	if _, stderr, code := asUser(t, tp.Server, 1012, bin, "--run-dir", runDir, "ports", "--uid", "1013"); code != 1 || !strings.Contains(stderr, "only root") {
		t.Errorf("ports --uid 1013 as uid 1012: exit %d: %s", code, stderr)
	}
	// Root sees any UID.
	stdout, stderr, code := asUser(t, tp.Server, 0, bin, "--run-dir", runDir, "ports", "--uid", "1013")
	if code != 0 || !strings.Contains(stdout, "UID 1013 is account site13") || !strings.Contains(stdout, "198.18.0.1:40020") {
		t.Errorf("ports --uid 1013 as root: exit %d\n%s%s", code, stdout, stderr)
	}

	// The next apply: site12 gets 40010-40029, so its socket on 40025 is
	// its own now.
	n.setPolicy(t, portsPolicyMoved)
	n.apply(t)
	if w := tp.Connect(t, "tcp", ServerIPv4, 40025); w != "ok" {
		t.Errorf("tcp 40025 after the move: %s", w)
	}
	out = portsAs(t, bin, tp.Server, runDir, 1012, 3)
	for _, want := range []string{"tcp  40010-40029", "[::]:8080: move it to port 40011"} {
		if !strings.Contains(out, want) {
			t.Errorf("ports after the next apply does not say %q", want)
		}
	}
	if strings.Contains(out, "[::]:40025: move") || strings.Contains(out, "40010-40019") {
		t.Errorf("ports after the next apply still shows the old range:\n%s", out)
	}
	requireAbsent(t, out, "site13", "40030-40039")
}

// TestAgentServesPorts: with an agent running, nftpol ports is answered
// from the agent's memory over its socket in the run directory (no view
// file is written on the path of an apply), follows each change at once,
// and the files the agent keeps up to date in the background answer once
// it has stopped.
func TestAgentServesPorts(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tp := newTopology(t)
	runDir := portsRunDir(t)
	config, include := agentPolicyDir(t, "zone: 40010-49999\nmin_uid: 1000\naccounts:\n  - {name: site12, uid: 1012, ports: [\"40010-40019\"]}\n")
	n := nftpolRun{bin: bin, config: config, netns: tp.Server, stateDir: t.TempDir(), runDir: runDir}
	ag := startAgent(t, n)
	sock := filepath.Join(runDir, "ports.sock")
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o666 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("the agent's views socket %s: %v %v", sock, fi, err)
	}
	out := portsAs(t, bin, tp.Server, runDir, 1012, 0)
	if !strings.Contains(out, "UID 1012 is account site12") || !strings.Contains(out, "tcp  40010-40019") {
		t.Errorf("ports as site12 through the agent:\n%s", out)
	}
	// A new account: its holder sees it as soon as the agent applied it;
	// site12 sees nothing of it.
	writeAtomically(t, filepath.Join(include, "site13.yaml"), "accounts:\n  - {name: site13, uid: 1013, ports: [\"40020-40029\"]}\n")
	eventually(t, 3*time.Second, "site13 sees its account through the agent", func() bool {
		stdout, _, code := asUser(t, tp.Server, 1013, bin, "--run-dir", runDir, "ports")
		return code == 0 && strings.Contains(stdout, "UID 1013 is account site13")
	})
	requireAbsent(t, portsAs(t, bin, tp.Server, runDir, 1012, 0), "site13", "40020-40029")
	// Another UID's view is refused by the agent too, whatever the CLI
	// says: ask the socket directly.
	stdout, stderr, _ := runCommand(probePath(t), "ask", "-uid", "1012", "-path", sock, "-line", `{"uid": 1013}`)
	if !strings.Contains(stdout, "UID 1012 may see its own view only") || strings.Contains(stdout, "site13") {
		t.Errorf("asking the agent for another UID's view: %s%s", stdout, stderr)
	}
	// The files follow in the background; once the agent stopped they
	// answer, with the last change.
	ag.waitLog(t, 5*time.Second, msgIs("published the account view files"))
	eventually(t, 5*time.Second, "the view file of site13", func() bool {
		_, err := os.Stat(filepath.Join(runDir, "uid", "1013"))
		return err == nil
	})
	ag.stop(t)
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("the views socket is still there after the agent stopped: %v", err)
	}
	out = portsAs(t, bin, tp.Server, runDir, 1013, 0)
	if !strings.Contains(out, "UID 1013 is account site13") {
		t.Errorf("ports as site13 from the files after the agent stopped:\n%s", out)
	}
}
