package integration

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The good policy every bad-input case starts from: one account in the main
// file, one in the include directory. It is applied first, so that each bad
// policy meets a real table it must leave alone.
const (
	badGoodMain = `zone: 40010-49999
include: policies.d
accounts:
  - {name: site11, uid: 1011, ports: ["40010-40019"]}
`
	badGoodInclude = `accounts:
  - {name: site12, uid: 1012, ports: ["40020-40029"]}
`
)

// badMainAccount is the good main file with site11's fields replaced.
func badMainAccount(fields string) string {
	return "zone: 40010-49999\ninclude: policies.d\naccounts:\n  - {name: site11, " + fields + "}\n"
}

// absent, as a file's text in badTree, removes the file from the good tree.
const absent = "\x00absent"

// badTree returns the good policy tree (path relative to the policy
// directory → text) with changes applied.
func badTree(changes map[string]string) map[string]string {
	tree := map[string]string{"nftpol.yaml": badGoodMain, "policies.d/site12.yaml": badGoodInclude}
	for path, text := range changes {
		if text == absent {
			delete(tree, path)
			continue
		}
		tree[path] = text
	}
	return tree
}

// badCase is one bad policy: the files that replace the good tree, and where
// nftpol must report the problem.
type badCase struct {
	name  string
	files map[string]string
	// main is the main file, "nftpol.yaml" when empty.
	main string
	// setup runs after the files are written (permissions, owners).
	setup func(t *testing.T, dir string)
	// file (relative to the policy directory), account ("" when the
	// problem is outside any account) and field ("" when it is about the
	// whole file) the problem must be reported under.
	file, account, field string
	// want is a part of the message: what is wrong or what would fix it.
	want string
}

// badCases holds one case for every class of bad input (issue 4).
var badCases = []badCase{
	// Ports.
	{name: "port outside zone", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 1011, ports: [50000]`)}),
		file: "nftpol.yaml", account: "site11", field: "ports", want: "port 50000 is outside the zone 40010-49999"},
	{name: "range leaves zone", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 1011, ports: ["49990-50010"]`)}),
		file: "nftpol.yaml", account: "site11", field: "ports", want: "range 49990-50010 is not inside the zone 40010-49999"},
	{name: "port above 65535", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 1011, ports: [70000]`)}),
		file: "nftpol.yaml", account: "site11", field: "ports", want: "port 70000 is outside 1-65535"},
	{name: "port 0", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 1011, ports: ["0-40010"]`)}),
		file: "nftpol.yaml", account: "site11", field: "ports", want: "port 0 is outside 1-65535"},
	{name: "reversed range", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 1011, ports: ["40019-40010"]`)}),
		file: "nftpol.yaml", account: "site11", field: "ports", want: `range "40019-40010" is reversed; write "40010-40019"`},
	{name: "half range", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 1011, ports: ["40010-"]`)}),
		file: "nftpol.yaml", account: "site11", field: "ports", want: `malformed range "40010-"`},
	{name: "non-numeric port", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 1011, ports: [http]`)}),
		file: "nftpol.yaml", account: "site11", field: "ports", want: `"http" is not a port or range`},
	{name: "fractional port", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 1011, ports: [40010.5]`)}),
		file: "nftpol.yaml", account: "site11", field: "ports", want: "the number 40010.5 is not a port"},
	{name: "ports not a list", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 1011, ports: "40010-40019"`)}),
		file: "nftpol.yaml", account: "site11", field: "ports", want: "must be a list of ports and ranges"},

	// Conflicts between accounts.
	{name: "overlap in the main file", files: badTree(map[string]string{
		"nftpol.yaml": badGoodMain + "  - {name: site13, uid: 1013, ports: [40019]}\n"}),
		file: "nftpol.yaml", account: "site13", field: "ports", want: `port 40019 overlaps account "site11"`},
	{name: "overlap main and include", files: badTree(map[string]string{
		"policies.d/site12.yaml": "accounts:\n  - {name: site12, uid: 1012, ports: [\"40015-40025\"]}\n"}),
		file: "policies.d/site12.yaml", account: "site12", field: "ports", want: `ports 40015-40019 overlap account "site11" in `},
	{name: "overlap between include files", files: badTree(map[string]string{
		"policies.d/site13.json": `{"accounts": [{"name": "site13", "uid": 1013, "ports": [40029], "protocols": ["udp"]}]}`}),
		file: "policies.d/site13.json", account: "site13", field: "ports", want: `port 40029 overlaps account "site12"`},
	{name: "duplicate name", files: badTree(map[string]string{
		"policies.d/site12.yaml": "accounts:\n  - {name: site11, uid: 1012, ports: [\"40020-40029\"]}\n"}),
		file: "policies.d/site12.yaml", account: "site11", field: "name", want: "already defined in "},
	{name: "duplicate uid", files: badTree(map[string]string{
		"policies.d/site12.yaml": "accounts:\n  - {name: site12, uid: 1011, ports: [\"40020-40029\"]}\n"}),
		file: "policies.d/site12.yaml", account: "site12", field: "uid", want: `uid 1011 already belongs to account "site11"`},

	// UIDs and users.
	{name: "unknown user", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`user: nftpol-no-such-user, ports: ["40010-40019"]`)}),
		file: "nftpol.yaml", account: "site11", field: "user", want: `unknown user "nftpol-no-such-user"`},
	{name: "exempt uid", files: badTree(map[string]string{"nftpol.yaml": "exempt: [1011]\n" + badGoodMain}),
		file: "nftpol.yaml", account: "site11", field: "uid", want: "uid 1011 is exempt"},
	{name: "uid below min_uid", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 999, ports: ["40010-40019"]`)}),
		file: "nftpol.yaml", account: "site11", field: "uid", want: "uid 999 is below min_uid 1000"},
	{name: "negative uid", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: -1011, ports: ["40010-40019"]`)}),
		file: "nftpol.yaml", account: "site11", field: "uid", want: "-1011 is out of range; use 0-4294967294"},
	{name: "uid over 32 bits", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 4294968307, ports: ["40010-40019"]`)}),
		file: "nftpol.yaml", account: "site11", field: "uid", want: "4294968307 is out of range"},
	{name: "uid 2^32-1", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 4294967295, ports: ["40010-40019"]`)}),
		file: "nftpol.yaml", account: "site11", field: "uid", want: "4294967295 is out of range"},
	{name: "uid and user disagree", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 1011, user: root, ports: ["40010-40019"]`)}),
		file: "nftpol.yaml", account: "site11", field: "uid", want: `uid 1011 does not match user "root", whose uid is 0`},
	{name: "uid not a number", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: "10x11", ports: ["40010-40019"]`)}),
		file: "nftpol.yaml", account: "site11", field: "uid", want: `must be a number, not the string "10x11"`},

	// Unknown keys, at every level.
	{name: "unknown top-level key", files: badTree(map[string]string{"nftpol.yaml": "tabel: nftpol\n" + badGoodMain}),
		file: "nftpol.yaml", field: "tabel", want: "unknown key; valid keys are table,"},
	{name: "key in the wrong case", files: badTree(map[string]string{"nftpol.yaml": "Action: drop\n" + badGoodMain}),
		file: "nftpol.yaml", field: "Action", want: "unknown key"},
	{name: "unknown account key", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 1011, ports: ["40010-40019"], prots: [tcp]`)}),
		file: "nftpol.yaml", account: "site11", field: "prots", want: "unknown key; valid keys are name, uid, user, ports, protocols"},
	{name: "unknown key in include file", files: badTree(map[string]string{"policies.d/site12.yaml": "acounts: []\n"}),
		file: "policies.d/site12.yaml", field: "acounts", want: "unknown key; an include file holds only accounts:"},
	{name: "unknown account key in include file", files: badTree(map[string]string{
		"policies.d/site12.yaml": "accounts:\n  - {name: site12, uid: 1012, port: [\"40020-40029\"]}\n"}),
		file: "policies.d/site12.yaml", account: "site12", field: "port", want: "unknown key"},
	{name: "setting in include file", files: badTree(map[string]string{"policies.d/site12.yaml": "zone: 1-65535\n" + badGoodInclude}),
		file: "policies.d/site12.yaml", field: "zone", want: "an include file holds only accounts:; set zone in the main file"},

	// Files that do not parse.
	{name: "malformed YAML", files: badTree(map[string]string{"nftpol.yaml": "zone: 40010-49999\naccounts: [\n"}),
		file: "nftpol.yaml", want: "cannot parse: yaml:"},
	{name: "malformed TOML", main: "nftpol.toml", files: badTree(map[string]string{
		"nftpol.yaml": absent, "nftpol.toml": "zone = \"40010-49999\"\n[[accounts]\nname = \"site11\"\n"}),
		file: "nftpol.toml", want: "cannot parse: toml:"},
	{name: "malformed JSON", main: "nftpol.json", files: badTree(map[string]string{
		"nftpol.yaml": absent, "nftpol.json": "{\n  \"zone\": \"40010-49999\",\n  \"accounts\": [\n}\n"}),
		file: "nftpol.json", want: "cannot parse: line 4: invalid character"},
	{name: "JSON key twice", main: "nftpol.json", files: badTree(map[string]string{
		"nftpol.yaml": absent, "nftpol.json": `{"accounts": [{"name": "site11", "uid": 1011, "ports": [40010], "ports": [40011]}]}`}),
		file: "nftpol.json", want: `cannot parse: key "ports" appears twice in one object`},
	{name: "bad value in TOML", main: "nftpol.toml", files: badTree(map[string]string{
		"nftpol.yaml": absent, "nftpol.toml": "zone = \"40010-49999\"\n[[accounts]]\nname = \"site11\"\nuid = 1011\nports = [50000]\n"}),
		file: "nftpol.toml", account: "site11", field: "ports", want: "port 50000 is outside the zone"},
	{name: "empty main file", files: badTree(map[string]string{"nftpol.yaml": "# truncated\n"}),
		file: "nftpol.yaml", want: "empty: no settings and no accounts"},

	// Words.
	{name: "unknown action", files: badTree(map[string]string{"nftpol.yaml": "action: deny\n" + badGoodMain}),
		file: "nftpol.yaml", field: "action", want: `unknown action "deny"; use reject or drop`},
	{name: "unknown protocol", files: badTree(map[string]string{"nftpol.yaml": "protocols: [tcp, icmp]\n" + badGoodMain}),
		file: "nftpol.yaml", field: "protocols", want: `unknown protocol "icmp"; use tcp or udp`},
	{name: "unknown account protocol", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 1011, ports: ["40010-40019"], protocols: [gre]`)}),
		file: "nftpol.yaml", account: "site11", field: "protocols", want: `unknown protocol "gre"`},
	{name: "account protocol never granted", files: badTree(map[string]string{"nftpol.yaml": badMainAccount(`uid: 1011, ports: ["40010-40019"], protocols: [sctp]`)}),
		file: "nftpol.yaml", account: "site11", field: "protocols", want: `protocol "sctp" cannot be granted: accounts serve over tcp and udp only`},
	{name: "default protocol never granted", files: badTree(map[string]string{"nftpol.yaml": "protocols: [tcp, udplite]\n" + badGoodMain}),
		file: "nftpol.yaml", field: "protocols", want: `protocol "udplite" cannot be granted`},
	{name: "unknown loopback word", files: badTree(map[string]string{"nftpol.yaml": "loopback: deny\n" + badGoodMain}),
		file: "nftpol.yaml", field: "loopback", want: `unknown loopback mode "deny"; use allow or enforce`},

	// Zone and table.
	{name: "reversed zone", files: badTree(map[string]string{"nftpol.yaml": strings.Replace(badGoodMain, "zone: 40010-49999", "zone: 49999-40010", 1)}),
		file: "nftpol.yaml", field: "zone", want: `range "49999-40010" is reversed`},
	{name: "invalid table name", files: badTree(map[string]string{"nftpol.yaml": "table: nft-pol\n" + badGoodMain}),
		file: "nftpol.yaml", field: "table", want: `invalid table name "nft-pol"`},
	{name: "table name an nft keyword", files: badTree(map[string]string{"nftpol.yaml": "table: counter\n" + badGoodMain}),
		file: "nftpol.yaml", field: "table", want: `invalid table name "counter": nft reads it as a keyword`},

	// The include directory.
	{name: "missing include directory", files: badTree(map[string]string{"policies.d/site12.yaml": absent}),
		file: "nftpol.yaml", field: "include", want: "policies.d does not exist; create it or remove include:"},
	{name: "broken YAML in include directory", files: badTree(map[string]string{"policies.d/site13.yaml": "accounts:\n  - {name: site13\n"}),
		file: "policies.d/site13.yaml", want: "cannot parse: yaml:"},
	{name: "broken TOML in include directory", files: badTree(map[string]string{"policies.d/site13.toml": "[[accounts]]\nname = site13\n"}),
		file: "policies.d/site13.toml", want: "cannot parse: toml:"},
	{name: "empty file in include directory", files: badTree(map[string]string{"policies.d/site12.yaml": ""}),
		file: "policies.d/site12.yaml", want: "empty: no accounts"},

	// Names that would reach the kernel as comments.
	{name: "account name with a quote", files: badTree(map[string]string{"nftpol.yaml": strings.Replace(badGoodMain, "name: site11", `name: 'site"11'`, 1)}),
		file: "nftpol.yaml", account: `site"11`, field: "name", want: `invalid name "site\"11"`},
	{name: "account name with a newline", files: badTree(map[string]string{"nftpol.yaml": strings.Replace(badGoodMain, "name: site11", `name: "site\n11"`, 1)}),
		file: "nftpol.yaml", account: "site\n11", field: "name", want: `invalid name "site\n11"`},
	{name: "account name too long", files: badTree(map[string]string{"nftpol.yaml": strings.Replace(badGoodMain, "name: site11", "name: "+strings.Repeat("s", 65), 1)}),
		file: "nftpol.yaml", account: strings.Repeat("s", 65), field: "name", want: "use 1-64 letters"},

	// Permissions: the policy decides the firewall.
	{name: "world-writable main file", files: badTree(nil),
		setup: func(t *testing.T, dir string) { badChmod(t, filepath.Join(dir, "nftpol.yaml"), 0o666) },
		file:  "nftpol.yaml", want: "is writable by group and others (mode 0666), so they could change the firewall; run chmod go-w "},
	{name: "group-writable include directory", files: badTree(nil),
		setup: func(t *testing.T, dir string) { badChmod(t, filepath.Join(dir, "policies.d"), 0o775) },
		file:  "nftpol.yaml", field: "include", want: "policies.d is writable by its group (mode 0775), so they could change the firewall; run chmod g-w "},
	{name: "include file of another user", files: badTree(nil),
		setup: func(t *testing.T, dir string) {
			if err := os.Chown(filepath.Join(dir, "policies.d", "site12.yaml"), 65534, 65534); err != nil {
				t.Fatal(err)
			}
		},
		file: "policies.d/site12.yaml", want: "is owned by uid 65534, not root, so that user could change the firewall; run chown root "},
	{name: "world-writable directory above", files: badTree(nil),
		setup: func(t *testing.T, dir string) { badChmod(t, dir, 0o777) },
		file:  "nftpol.yaml", want: "is writable by group and others (mode 0777), so they could change the firewall; run chmod go-w "},
}

func badChmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// writeBadTree replaces the policy tree in dir with files.
func writeBadTree(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	for path, text := range files {
		full := filepath.Join(dir, path)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// stateFiles returns the content of every file in the state directory but
// the lock, which may be taken and released by a refused command.
func stateFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.Contains(d.Name(), "lock") {
			return err
		}
		b, err := os.ReadFile(path)
		files[path] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// TestBadInput feeds nftpol every class of bad policy over a live table:
// validate, export, plan and apply all exit 1, each problem is reported
// under its file, account and field, and neither the namespace's ruleset
// nor the recorded state changes by a byte.
func TestBadInput(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	for _, tc := range badCases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			writeBadTree(t, dir, badTree(nil))
			n := nftpolRun{bin: bin, config: filepath.Join(dir, "nftpol.yaml"), netns: newNetns(t, "bad"), stateDir: t.TempDir()}
			n.apply(t)
			before, state := nftList(t, n.netns), stateFiles(t, n.stateDir)
			if !strings.Contains(before, "table inet nftpol") {
				t.Fatalf("the good policy installed no table:\n%s", before)
			}

			writeBadTree(t, dir, tc.files)
			if tc.setup != nil {
				tc.setup(t, dir)
			}
			main := tc.main
			if main == "" {
				main = "nftpol.yaml"
			}
			n.config = filepath.Join(dir, main)
			checkRefused(t, n, tc, dir)

			if after := nftList(t, n.netns); after != before {
				t.Errorf("the ruleset changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if diff := diffStrings(state, stateFiles(t, n.stateDir)); diff != "" {
				t.Errorf("the state changed: %s", diff)
			}
		})
	}
}

// TestBadInputEmptyNamespace: a bad policy on a namespace without any
// table creates none.
func TestBadInputEmptyNamespace(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	tc := badCases[0]
	dir := t.TempDir()
	writeBadTree(t, dir, tc.files)
	n := nftpolRun{bin: bin, config: filepath.Join(dir, "nftpol.yaml"), netns: newNetns(t, "bad"), stateDir: t.TempDir()}
	before := nftList(t, n.netns)
	checkRefused(t, n, tc, dir)
	if after := nftList(t, n.netns); after != before || strings.TrimSpace(after) != "" {
		t.Errorf("the ruleset changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if files := stateFiles(t, n.stateDir); len(files) != 0 {
		t.Errorf("state recorded for a refused policy: %v", files)
	}
}

// checkRefused runs every command that reads the policy and checks that it
// exits 1 naming tc's file, account and field on one line of stderr.
func checkRefused(t *testing.T, n nftpolRun, tc badCase, dir string) {
	t.Helper()
	prefix := filepath.Join(dir, tc.file) + ": "
	if tc.account != "" {
		prefix += fmt.Sprintf("account %q: ", tc.account)
	}
	if tc.field != "" {
		prefix += tc.field + ": "
	}
	for _, cmd := range []string{"validate", "export", "plan", "apply"} {
		stdout, stderr, code := n.run(t, cmd)
		if code != 1 {
			t.Errorf("nftpol %s exited %d, want 1\nstdout:\n%s\nstderr:\n%s", cmd, code, stdout, stderr)
			continue
		}
		found := false
		for _, line := range strings.Split(stderr, "\n") {
			if i := strings.Index(line, prefix); i >= 0 && strings.Contains(line[i+len(prefix):], tc.want) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("nftpol %s: stderr has no line with %q followed by %q:\n%s", cmd, prefix, tc.want, stderr)
		}
	}
}

// diffStrings describes how two maps of file contents differ, "" when they
// do not.
func diffStrings(a, b map[string]string) string {
	var out []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			out = append(out, k+" removed")
		} else if w != v {
			out = append(out, k+" rewritten")
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out = append(out, k+" created")
		}
	}
	return strings.Join(out, ", ")
}

// TestInsecurePermissions: a policy file others can write is refused with
// the fix and the way out, and --insecure-permissions (or
// NFTPOL_INSECURE_PERMISSIONS) reads it anyway.
func TestInsecurePermissions(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	dir := t.TempDir()
	writeBadTree(t, dir, badTree(nil))
	badChmod(t, filepath.Join(dir, "policies.d", "site12.yaml"), 0o666)
	n := nftpolRun{bin: bin, config: filepath.Join(dir, "nftpol.yaml"), netns: newNetns(t, "perm"), stateDir: t.TempDir()}

	_, stderr, code := n.run(t, "apply")
	if code != 1 || !strings.Contains(stderr, "chmod go-w "+filepath.Join(dir, "policies.d", "site12.yaml")) ||
		!strings.Contains(stderr, "--insecure-permissions") {
		t.Errorf("apply of a world-writable include file: exit %d, stderr:\n%s", code, stderr)
	}
	if got := nftList(t, n.netns); strings.TrimSpace(got) != "" {
		t.Errorf("refused apply left a ruleset:\n%s", got)
	}

	if stdout, stderr, code := n.run(t, "--insecure-permissions", "apply"); code != 0 {
		t.Fatalf("apply --insecure-permissions: exit %d\n%s%s", code, stdout, stderr)
	}
	if got := nftList(t, n.netns); !strings.Contains(got, `comment "site12"`) {
		t.Errorf("apply --insecure-permissions did not install site12:\n%s", got)
	}

	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--config", n.config, "validate")
	cmd.Env = append(os.Environ(), "NFTPOL_INSECURE_PERMISSIONS=true")
	if out, err := cmd.CombinedOutput(); err != nil {
		var exit *exec.ExitError
		if !errors.As(err, &exit) {
			t.Fatal(err)
		}
		t.Errorf("validate with NFTPOL_INSECURE_PERMISSIONS=true: %v\n%s", err, out)
	}
}
