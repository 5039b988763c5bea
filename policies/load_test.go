package policies

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// testUsers stands in for NSS.
var testUsers = map[string]uint32{
	"admin12":  1012,
	"admin13":  1013,
	"www-data": 33,
	"backup":   34,
}

func fakeLookup(name string) (uint32, error) {
	uid, ok := testUsers[name]
	if !ok {
		return 0, fmt.Errorf("%w %q", ErrUnknownUser, name)
	}
	return uid, nil
}

// writeFiles writes files (path relative to a fresh directory → content) and
// returns the directory. A path ending in "/" makes an empty directory.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		path := filepath.Join(dir, name)
		if strings.HasSuffix(name, "/") {
			if err := os.MkdirAll(path, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadDefaults(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"policy.yaml": "accounts:\n  - {name: site12, uid: 1012, ports: [40010]}\n",
	})
	file := filepath.Join(dir, "policy.yaml")
	got, err := Load(file, WithLookup(fakeLookup))
	if err != nil {
		t.Fatal(err)
	}
	want := &Policy{
		File:      file,
		Table:     "nftpol",
		Zone:      PortRange{40010, 49999},
		MinUID:    1000,
		Loopback:  LoopbackAllow,
		Action:    Reject,
		Protocols: []Protocol{TCP, UDP},
		Accounts: []*Account{{
			Name: "site12", UID: 1012, Ports: []PortRange{{40010, 40010}},
			Protocols: []Protocol{TCP, UDP}, File: file,
		}},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Load() mismatch (-want +got):\n%s", diff)
	}
}

// TestLoadBindGuard loads the bind_guard section in each format.
func TestLoadBindGuard(t *testing.T) {
	want := BindGuard{Enabled: true, Cgroup: "/sys/fs/cgroup/hosting.slice", Reserved: []PortRange{{3306, 3306}, {6379, 6380}, {11211, 11211}}}
	for name, text := range map[string]string{
		"policy.yaml": "bind_guard:\n  enabled: true\n  cgroup: /sys/fs/cgroup/hosting.slice\n  reserved: [11211, \"6379-6380\", 3306, 6380]\naccounts:\n  - {name: site12, uid: 1012, ports: [40010]}\n",
		"policy.toml": "[bind_guard]\nenabled = true\ncgroup = \"/sys/fs/cgroup/hosting.slice\"\nreserved = [11211, \"6379-6380\", 3306, 6380]\n[[accounts]]\nname = \"site12\"\nuid = 1012\nports = [40010]\n",
		"policy.json": `{"bind_guard": {"enabled": true, "cgroup": "/sys/fs/cgroup/hosting.slice", "reserved": [11211, "6379-6380", 3306, 6380]}, "accounts": [{"name": "site12", "uid": 1012, "ports": [40010]}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{name: text})
			got, err := Load(filepath.Join(dir, name), WithLookup(fakeLookup))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(want, got.BindGuard); diff != "" {
				t.Errorf("BindGuard mismatch (-want +got):\n%s", diff)
			}
		})
	}
	// Off by default.
	dir := writeFiles(t, map[string]string{"policy.yaml": "accounts: []\n"})
	got, err := Load(filepath.Join(dir, "policy.yaml"), WithLookup(fakeLookup))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(BindGuard{}, got.BindGuard); diff != "" {
		t.Errorf("default BindGuard (-want +got):\n%s", diff)
	}
}

// TestLoadTerminate loads the terminate section; absent means never.
func TestLoadTerminate(t *testing.T) {
	for text, want := range map[string]Terminate{
		"terminate: {after: 30s, grace: 5s, dry_run: true}\naccounts: []\n": {Enabled: true, After: 30 * time.Second, Grace: 5 * time.Second, DryRun: true},
		"terminate:\n  after: 2m\naccounts: []\n":                           {Enabled: true, After: 2 * time.Minute, Grace: DefaultGrace},
		"accounts: []\n": {},
	} {
		dir := writeFiles(t, map[string]string{"policy.yaml": text})
		got, err := Load(filepath.Join(dir, "policy.yaml"), WithLookup(fakeLookup))
		if err != nil {
			t.Fatalf("%q: %v", text, err)
		}
		if got.Terminate != want {
			t.Errorf("%q: Terminate %+v, want %+v", text, got.Terminate, want)
		}
	}
}

// TestLoadFormats loads the same policy written in each format.
func TestLoadFormats(t *testing.T) {
	const yamlPolicy = `
table: web_fw
zone: "20000-29999"
min_uid: 500
exempt: [www-data, 34]
loopback: enforce
action: drop
protocols: [udp, tcp]
accounts:
  - name: site13
    user: admin13
    ports: ["20010-20019", 20500]
    protocols: [tcp]
  - name: site12
    uid: 1012
    ports: [20020]
`
	files := map[string]string{
		"policy.yaml": yamlPolicy,
		"policy.yml":  yamlPolicy,
		"policy.toml": `
table = "web_fw"
zone = "20000-29999"
min_uid = 500
exempt = ["www-data", 34]
loopback = "enforce"
action = "drop"
protocols = ["udp", "tcp"]

[[accounts]]
name = "site13"
user = "admin13"
ports = ["20010-20019", 20500]
protocols = ["tcp"]

[[accounts]]
name = "site12"
uid = 1012
ports = [20020]
`,
		"policy.json": `{
  "table": "web_fw", "zone": "20000-29999", "min_uid": 500,
  "exempt": ["www-data", 34], "loopback": "enforce", "action": "drop",
  "protocols": ["udp", "tcp"],
  "accounts": [
    {"name": "site13", "user": "admin13", "ports": ["20010-20019", 20500], "protocols": ["tcp"]},
    {"name": "site12", "uid": 1012, "ports": [20020]}
  ]
}`,
	}
	dir := writeFiles(t, files)
	for name := range files {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(dir, name)
			got, err := Load(file, WithLookup(fakeLookup))
			if err != nil {
				t.Fatal(err)
			}
			want := &Policy{
				File:      file,
				Table:     "web_fw",
				Zone:      PortRange{20000, 29999},
				MinUID:    500,
				Exempt:    []uint32{33, 34},
				Loopback:  LoopbackEnforce,
				Action:    Drop,
				Protocols: []Protocol{TCP, UDP},
				Accounts: []*Account{
					{Name: "site12", UID: 1012, Ports: []PortRange{{20020, 20020}}, Protocols: []Protocol{TCP, UDP}, File: file},
					{Name: "site13", UID: 1013, User: "admin13", Ports: []PortRange{{20010, 20019}, {20500, 20500}}, Protocols: []Protocol{TCP}, File: file},
				},
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Load() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadInclude(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"etc/policy.yaml":            "include: policies.d\naccounts:\n  - {name: site13, uid: 1013, ports: [40030]}\n",
		"etc/policies.d/site12.yaml": "accounts:\n  - {name: site12, user: admin12, ports: [40010]}\n",
		"etc/policies.d/site14.toml": "[[accounts]]\nname = \"site14\"\nuid = 1014\nports = [40040]\n",
		"etc/policies.d/site15.json": `{"accounts": [{"name": "site15", "uid": 1015, "ports": [40050]}]}`,
		"etc/policies.d/none.yaml":   "accounts: []\n",
		// Not read: hidden, other types, directories.
		"etc/policies.d/.site12.yaml.swp": "garbage",
		"etc/policies.d/.hidden.yaml":     "garbage: [",
		"etc/policies.d/README.txt":       "garbage",
		"etc/policies.d/site12.yaml~":     "garbage",
		"etc/policies.d/sub.yaml/":        "",
	})
	file := filepath.Join(dir, "etc", "policy.yaml")
	inc := filepath.Join(dir, "etc", "policies.d")
	got, err := Load(file, WithLookup(fakeLookup))
	if err != nil {
		t.Fatal(err)
	}
	if got.Include != inc {
		t.Errorf("Include = %q, want %q", got.Include, inc)
	}
	var accounts []string
	for _, a := range got.Accounts {
		accounts = append(accounts, fmt.Sprintf("%s %d %s", a.Name, a.UID, a.File))
	}
	want := []string{
		"site12 1012 " + filepath.Join(inc, "site12.yaml"),
		"site13 1013 " + file,
		"site14 1014 " + filepath.Join(inc, "site14.toml"),
		"site15 1015 " + filepath.Join(inc, "site15.json"),
	}
	if diff := cmp.Diff(want, accounts); diff != "" {
		t.Errorf("accounts mismatch (-want +got):\n%s", diff)
	}
}

// TestLoadIncludeSelf checks that "include: ." does not read the main file
// as an include file.
func TestLoadIncludeSelf(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"policy.yaml": "include: .\naccounts:\n  - {name: site13, uid: 1013, ports: [40030]}\n",
		"site12.yaml": "accounts:\n  - {name: site12, uid: 1012, ports: [40010]}\n",
	})
	got, err := Load(filepath.Join(dir, "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Accounts) != 2 {
		t.Errorf("got %d accounts, want 2: %+v", len(got.Accounts), got.Accounts)
	}
}

// TestLoadRelative loads a relative main file: problems name files as the
// user would type them, and the include directory is found from the main
// file's directory, not from the working directory.
func TestLoadRelative(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"examples/policy.yaml":              "include: policies.d\n",
		"examples/policies.d/site12.yaml":   "accounts:\n  - {name: site12, uid: 1012, ports: [50000]}\n",
		"policies.d/decoy-in-workdir.yaml/": "",
	})
	t.Chdir(dir)
	_, err := Load("examples/policy.yaml", WithLookup(fakeLookup))
	want := `examples/policies.d/site12.yaml: account "site12": ports: port 50000 is outside the zone 40010-49999`
	if err == nil || err.Error() != want {
		t.Errorf("Load() error = %v, want %s", err, want)
	}
}

func TestLoadPorts(t *testing.T) {
	for _, tc := range []struct {
		ports string
		want  []PortRange
	}{
		{`[40010]`, []PortRange{{40010, 40010}}},
		{`["40010"]`, []PortRange{{40010, 40010}}},
		{`[" 40010 - 40019 "]`, []PortRange{{40010, 40019}}},
		{`[40011, 40010, 40012]`, []PortRange{{40010, 40012}}},
		{`["40010-40019", "40020-40029"]`, []PortRange{{40010, 40029}}},
		{`["40010-40020", "40015-40025", 40018]`, []PortRange{{40010, 40025}}},
		{`["40030-40039", "40010-40019"]`, []PortRange{{40010, 40019}, {40030, 40039}}},
		{`[40010, 40010]`, []PortRange{{40010, 40010}}},
		{`[40010, 40012]`, []PortRange{{40010, 40010}, {40012, 40012}}},
		{`[40010.0]`, []PortRange{{40010, 40010}}},
	} {
		t.Run(tc.ports, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{
				"policy.yaml": "accounts:\n  - {name: site12, uid: 1012, ports: " + tc.ports + "}\n",
			})
			p, err := Load(filepath.Join(dir, "policy.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, p.Accounts[0].Ports); diff != "" {
				t.Errorf("Ports mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadUsers(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"policy.yaml": `
exempt: [www-data, 33, "34", backup, 33]
accounts:
  - {name: site12, user: admin12, uid: 1012, ports: [40010]}
  - {name: site13, user: admin13, ports: [40020]}
`,
	})
	looked := map[string]int{}
	lookup := func(name string) (uint32, error) {
		looked[name]++
		return fakeLookup(name)
	}
	p, err := Load(filepath.Join(dir, "policy.yaml"), WithLookup(lookup))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]uint32{33, 34}, p.Exempt); diff != "" {
		t.Errorf("Exempt mismatch (-want +got):\n%s", diff)
	}
	for i, want := range []struct {
		user string
		uid  uint32
	}{{"admin12", 1012}, {"admin13", 1013}} {
		if a := p.Accounts[i]; a.User != want.user || a.UID != want.uid {
			t.Errorf("account %d: user %q uid %d, want user %q uid %d", i, a.User, a.UID, want.user, want.uid)
		}
	}
	if diff := cmp.Diff(map[string]int{"www-data": 1, "backup": 1, "admin12": 1, "admin13": 1}, looked); diff != "" {
		t.Errorf("lookups mismatch (-want +got):\n%s", diff)
	}
}

// TestLoadSharedPorts checks that two accounts may share ports when they
// have no protocol in common.
func TestLoadSharedPorts(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"policy.yaml": `
accounts:
  - {name: site12, uid: 1012, ports: ["40010-40019"], protocols: [tcp]}
  - {name: site13, uid: 1013, ports: ["40010-40019"], protocols: [udp]}
`,
	})
	if _, err := Load(filepath.Join(dir, "policy.yaml")); err != nil {
		t.Fatal(err)
	}
}

func TestLoadMissingFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policy.yaml")
	_, err := Load(file)
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load() error = %v, want one wrapping fs.ErrNotExist", err)
	}
	if err != nil && !strings.Contains(err.Error(), file) {
		t.Errorf("Load() error = %v, want it to name %s", err, file)
	}
	var ve *ValidationError
	if errors.As(err, &ve) {
		t.Errorf("Load() error is a ValidationError; a missing file is not a problem in the policy")
	}
}

// TestLoadProblems feeds one bad input per case and checks every problem
// reported: its file, account and field exactly, its message by a part that
// says what is wrong and what would be valid. $DIR in a message stands for
// the test's directory.
func TestLoadProblems(t *testing.T) {
	const main = "policy.yaml"
	// account wraps one account's YAML flow mapping into a main file.
	account := func(fields string) map[string]string {
		return map[string]string{main: "accounts:\n  - {name: site12, " + fields + "}\n"}
	}
	p := func(file, account, field, msg string) Problem {
		return Problem{File: file, Account: account, Field: field, Message: msg}
	}
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []Problem
	}{
		// terminate.
		{"terminate not a mapping", map[string]string{main: "terminate: yes\naccounts: []\n"},
			[]Problem{p(main, "", "terminate", "must be a mapping with after, grace and dry_run")}},
		{"terminate without after", map[string]string{main: "terminate: {grace: 5s}\naccounts: []\n"},
			[]Problem{p(main, "", "terminate.after", "missing: say how long")}},
		{"terminate bad durations", map[string]string{main: "terminate: {after: soon, grace: -1s}\naccounts: []\n"},
			[]Problem{
				p(main, "", "terminate.after", `invalid duration "soon"`),
				p(main, "", "terminate.grace", `invalid duration "-1s"`),
			}},
		{"terminate after too short", map[string]string{main: "terminate: {after: 100ms}\naccounts: []\n"},
			[]Problem{p(main, "", "terminate.after", "100ms is too short")}},
		{"terminate unknown key", map[string]string{main: "terminate: {after: 30s, dryrun: true}\naccounts: []\n"},
			[]Problem{p(main, "", "terminate.dryrun", "unknown key; valid keys are after, grace, dry_run")}},
		{"terminate dry_run not a bool", map[string]string{main: "terminate: {after: 30s, dry_run: maybe}\naccounts: []\n"},
			[]Problem{p(main, "", "terminate.dry_run", `must be true or false, not the string "maybe"`)}},
		// bind_guard.
		{"bind_guard not a mapping", map[string]string{main: "bind_guard: true\naccounts: []\n"},
			[]Problem{p(main, "", "bind_guard", "must be a mapping with enabled, cgroup and reserved, not true")}},
		{"bind_guard enabled not a bool", map[string]string{main: "bind_guard: {enabled: yes please}\naccounts: []\n"},
			[]Problem{p(main, "", "bind_guard.enabled", `must be true or false, not the string "yes please"`)}},
		{"bind_guard unknown key", map[string]string{main: "bind_guard: {enable: true}\naccounts: []\n"},
			[]Problem{p(main, "", "bind_guard.enable", "unknown key; valid keys are enabled, cgroup, reserved")}},
		{"bind_guard relative cgroup", map[string]string{main: "bind_guard: {cgroup: hosting.slice}\naccounts: []\n"},
			[]Problem{p(main, "", "bind_guard.cgroup", `invalid cgroup "hosting.slice"; give the absolute, clean path`)}},
		{"bind_guard unclean cgroup", map[string]string{main: "bind_guard: {cgroup: /sys/fs/cgroup/../etc}\naccounts: []\n"},
			[]Problem{p(main, "", "bind_guard.cgroup", `invalid cgroup "/sys/fs/cgroup/../etc"`)}},
		{"bind_guard cgroup not a string", map[string]string{main: "bind_guard: {cgroup: [a]}\naccounts: []\n"},
			[]Problem{p(main, "", "bind_guard.cgroup", "must be a string")}},
		{"bind_guard reserved not a list", map[string]string{main: "bind_guard: {reserved: 3306}\naccounts: []\n"},
			[]Problem{p(main, "", "bind_guard.reserved", "must be a list of ports and ranges")}},
		{"bind_guard reserved bad port", map[string]string{main: "bind_guard: {reserved: [0, \"6380-6379\", 70000]}\naccounts: []\n"},
			[]Problem{
				p(main, "", "bind_guard.reserved", "port 0 is outside 1-65535"),
				p(main, "", "bind_guard.reserved", `range "6380-6379" is reversed`),
				p(main, "", "bind_guard.reserved", "port 70000 is outside 1-65535"),
			}},
		{"bind_guard reserved port of an account", map[string]string{main: "bind_guard: {reserved: [\"40015-40025\"]}\naccounts:\n  - {name: site12, uid: 1012, ports: [\"40010-40019\"]}\n"},
			[]Problem{p(main, "", "bind_guard.reserved", `40015-40019 is reserved but given to account "site12" in`)}},
		{"bind_guard in an include file", map[string]string{main: "include: inc\naccounts: []\n", "inc/a.yaml": "bind_guard: {enabled: true}\naccounts: []\n"},
			[]Problem{p("inc/a.yaml", "", "bind_guard", "an include file holds only accounts:; set bind_guard in the main file")}},
		// Ports.
		{"port outside zone", account("uid: 1012, ports: [50000]"),
			[]Problem{p(main, "site12", "ports", "port 50000 is outside the zone 40010-49999")}},
		{"range leaves zone", account(`uid: 1012, ports: ["49990-50010"]`),
			[]Problem{p(main, "site12", "ports", "range 49990-50010 is not inside the zone 40010-49999")}},
		{"port above 65535", account("uid: 1012, ports: [70000]"),
			[]Problem{p(main, "site12", "ports", "port 70000 is outside 1-65535")}},
		{"port 0", account("uid: 1012, ports: [0]"),
			[]Problem{p(main, "site12", "ports", "port 0 is outside 1-65535")}},
		{"negative port", account("uid: 1012, ports: [-1]"),
			[]Problem{p(main, "site12", "ports", "port -1 is outside 1-65535")}},
		{"huge port in range", account(`uid: 1012, ports: ["40010-99999999999999999999999"]`),
			[]Problem{p(main, "site12", "ports", "port 99999999999999999999999 is outside 1-65535")}},
		{"reversed range", account(`uid: 1012, ports: ["40020-40010"]`),
			[]Problem{p(main, "site12", "ports", `range "40020-40010" is reversed; write "40010-40020"`)}},
		{"half range", account(`uid: 1012, ports: ["40010-"]`),
			[]Problem{p(main, "site12", "ports", `malformed range "40010-"; write both ends as numbers, like "40010-40019"`)}},
		{"three ends", account(`uid: 1012, ports: ["40010-40020-40030"]`),
			[]Problem{p(main, "site12", "ports", `malformed range "40010-40020-40030"`)}},
		{"non-numeric port", account(`uid: 1012, ports: [abc]`),
			[]Problem{p(main, "site12", "ports", `"abc" is not a port or range; use a number like 40500 or a range like "40010-40019"`)}},
		{"dots for dash", account(`uid: 1012, ports: ["40010..40020"]`),
			[]Problem{p(main, "site12", "ports", `"40010..40020" is not a port or range`)}},
		{"signed port", account(`uid: 1012, ports: ["+40010"]`),
			[]Problem{p(main, "site12", "ports", `"+40010" is not a port or range`)}},
		{"fractional port", account(`uid: 1012, ports: [40010.5]`),
			[]Problem{p(main, "site12", "ports", "the number 40010.5 is not a port")}},
		{"ports not a list", account(`uid: 1012, ports: "40010"`),
			[]Problem{p(main, "site12", "ports", `must be a list of ports and ranges, like [40010, "40020-40029"], not the string "40010"`)}},
		{"empty ports", account(`uid: 1012, ports: []`),
			[]Problem{p(main, "site12", "ports", "empty; list at least one port or range in the zone 40010-49999")}},
		{"missing ports", account(`uid: 1012`),
			[]Problem{p(main, "site12", "ports", "missing; list the account's ports in the zone 40010-49999")}},
		{"every bad port", account(`uid: 1012, ports: [50000, abc, 40010]`),
			[]Problem{
				p(main, "site12", "ports", "port 50000 is outside the zone"),
				p(main, "site12", "ports", `"abc" is not a port or range`),
			}},

		// Conflicts between accounts.
		{"overlap across files", map[string]string{
			main:                     "include: policies.d\naccounts:\n  - {name: site11, uid: 1011, ports: [\"40010-40019\"]}\n",
			"policies.d/site12.yaml": "accounts:\n  - {name: site12, uid: 1012, ports: [\"40015-40025\", 40030]}\n",
		}, []Problem{p("policies.d/site12.yaml", "site12", "ports",
			`ports 40015-40019 overlap account "site11" in $DIR/policy.yaml on tcp, udp; a port belongs to one account`)}},
		{"overlap on one protocol", map[string]string{main: `
accounts:
  - {name: site11, uid: 1011, ports: [40010, 40012, 40020], protocols: [udp]}
  - {name: site12, uid: 1012, ports: ["40010-40015", 40020]}
`}, []Problem{p(main, "site12", "ports", `ports 40010, 40012, 40020 overlap account "site11" in $DIR/policy.yaml on udp`)}},
		{"overlap of one port", map[string]string{main: `
accounts:
  - {name: site11, uid: 1011, ports: [40010]}
  - {name: site12, uid: 1012, ports: ["40000-40010"]}
  - {name: site13, uid: 1013, ports: ["40010-40011"]}
`}, []Problem{
			p(main, "site12", "ports", "range 40000-40010 is not inside the zone"),
			p(main, "site13", "ports", `port 40010 overlaps account "site11" in $DIR/policy.yaml on tcp, udp`),
		}},
		{"duplicate name", map[string]string{
			main:                     "include: policies.d\naccounts:\n  - {name: site12, uid: 1011, ports: [40010]}\n",
			"policies.d/site12.yaml": "accounts:\n  - {name: site12, uid: 1012, ports: [40020]}\n",
		}, []Problem{p("policies.d/site12.yaml", "site12", "name", "already defined in $DIR/policy.yaml; account names must be unique")}},
		{"duplicate uid", map[string]string{main: `
accounts:
  - {name: site11, uid: 1012, ports: [40010]}
  - {name: site12, user: admin12, ports: [40020]}
`}, []Problem{p(main, "site12", "user", `uid 1012 (user "admin12") already belongs to account "site11" in $DIR/policy.yaml; one UID is one account`)}},

		// UIDs and users.
		{"unknown user", account(`user: nobody99, ports: [40010]`),
			[]Problem{p(main, "site12", "user", `unknown user "nobody99"; name an existing user, or give uid: instead`)}},
		{"no uid or user", account(`ports: [40010]`),
			[]Problem{p(main, "site12", "uid", "missing; give uid: (a number) or user: (a user name)")}},
		{"uid and user disagree", account(`uid: 1013, user: admin12, ports: [40010]`),
			[]Problem{p(main, "site12", "uid", `uid 1013 does not match user "admin12", whose uid is 1012`)}},
		{"uid exempt", map[string]string{main: "exempt: [1012]\naccounts:\n  - {name: site12, uid: 1012, ports: [40010]}\n"},
			[]Problem{p(main, "site12", "uid", "uid 1012 is exempt; remove it from exempt or remove the account")}},
		{"user exempt by name", map[string]string{main: "exempt: [admin12]\naccounts:\n  - {name: site12, user: admin12, ports: [40010]}\n"},
			[]Problem{p(main, "site12", "user", `uid 1012 (user "admin12") is exempt`)}},
		{"uid below min_uid", account(`uid: 500, ports: [40010]`),
			[]Problem{p(main, "site12", "uid", "uid 500 is below min_uid 1000, so nftpol would not enforce it; use a uid of at least 1000")}},
		{"negative uid", account(`uid: -1, ports: [40010]`),
			[]Problem{p(main, "site12", "uid", "-1 is out of range; use 0-4294967294")}},
		{"uid too big", account(`uid: 4294967296, ports: [40010]`),
			[]Problem{p(main, "site12", "uid", "4294967296 is out of range; use 0-4294967294")}},
		{"uid -1 as uint32", account(`uid: 4294967295, ports: [40010]`),
			[]Problem{p(main, "site12", "uid", "4294967295 is out of range")}},
		{"uid a string", account(`uid: x, ports: [40010]`),
			[]Problem{p(main, "site12", "uid", `must be a number, not the string "x"`)}},
		{"user a number", account(`user: 1012, ports: [40010]`),
			[]Problem{p(main, "site12", "user", "must be a string, not the number 1012")}},
		{"unknown exempt user", map[string]string{main: "exempt: [www-data, nobody99]\n"},
			[]Problem{p(main, "", "exempt", `unknown user "nobody99"`)}},
		{"exempt not a list", map[string]string{main: "exempt: www-data\n"},
			[]Problem{p(main, "", "exempt", `must be a list of user names or UIDs, like [www-data, 33], not the string "www-data"`)}},
		{"bad min_uid", map[string]string{main: "min_uid: many\n"},
			[]Problem{p(main, "", "min_uid", `must be a number, not the string "many"`)}},

		// Words.
		{"unknown action", map[string]string{main: "action: deny\n"},
			[]Problem{p(main, "", "action", `unknown action "deny"; use reject or drop`)}},
		{"unknown loopback", map[string]string{main: "loopback: maybe\n"},
			[]Problem{p(main, "", "loopback", `unknown loopback mode "maybe"; use allow or enforce`)}},
		{"loopback a bool", map[string]string{main: "loopback: yes\n"},
			[]Problem{p(main, "", "loopback", `unknown loopback mode "yes"; use allow or enforce`)}},
		{"unknown protocol", map[string]string{main: "protocols: [tcp, icmp]\n"},
			[]Problem{p(main, "", "protocols", `unknown protocol "icmp"; use tcp or udp`)}},
		{"upper-case protocol", map[string]string{main: "protocols: [TCP]\n"},
			[]Problem{p(main, "", "protocols", `unknown protocol "TCP"; use tcp or udp`)}},
		{"empty protocols", map[string]string{main: "protocols: []\n"},
			[]Problem{p(main, "", "protocols", "empty; name at least one of tcp, udp")}},
		{"unknown account protocol", account(`uid: 1012, ports: [40010], protocols: [gre]`),
			[]Problem{p(main, "site12", "protocols", `unknown protocol "gre"; use tcp or udp`)}},
		{"account protocol never granted", account(`uid: 1012, ports: [40010], protocols: [tcp, sctp]`),
			[]Problem{p(main, "site12", "protocols", `protocol "sctp" cannot be granted: accounts serve over tcp and udp only`)}},
		{"default protocol never granted", map[string]string{main: "zone: 40010-49999\nprotocols: [udplite]\naccounts: [{name: site12, uid: 1012, ports: [40010]}]\n"}, []Problem{p(main, "", "protocols", `protocol "udplite" cannot be granted`)}},

		// Zone.
		{"reversed zone", map[string]string{main: "zone: 49999-40010\n"},
			[]Problem{p(main, "", "zone", `range "49999-40010" is reversed; write "40010-49999"`)}},
		{"malformed zone", map[string]string{main: "zone: 40010-\n"},
			[]Problem{p(main, "", "zone", `malformed range "40010-"`)}},
		{"zone beyond 65535", map[string]string{main: "zone: 40010-70000\n"},
			[]Problem{p(main, "", "zone", "port 70000 is outside 1-65535")}},
		{"zone from 0", map[string]string{main: "zone: 0-100\n"},
			[]Problem{p(main, "", "zone", "port 0 is outside 1-65535")}},
		{"bad zone spares ports", map[string]string{main: "zone: x\naccounts:\n  - {name: site12, uid: 1012, ports: [50000]}\n"},
			[]Problem{p(main, "", "zone", `"x" is not a port or range`)}},

		{"loopback a list", map[string]string{main: "loopback: [allow]\n"},
			[]Problem{p(main, "", "loopback", "must be allow or enforce, not a list")}},
		{"action a bool", map[string]string{main: "action: true\n"},
			[]Problem{p(main, "", "action", "unknown action true; use reject or drop")}},
		{"protocol a list", map[string]string{main: "protocols: [[tcp], {udp: 1}]\n"},
			[]Problem{
				p(main, "", "protocols", "a list is not a protocol; use tcp or udp"),
				p(main, "", "protocols", "a mapping is not a protocol; use tcp or udp"),
			}},

		// Names.
		{"table an nft keyword", map[string]string{main: "table: counter\n"},
			[]Problem{p(main, "", "table", `invalid table name "counter": nft reads it as a keyword`)}},
		{"table inet", map[string]string{main: "table: inet\n"},
			[]Problem{p(main, "", "table", `invalid table name "inet": nft reads it as a keyword`)}},
		{"table with dash", map[string]string{main: "table: nft-pol\n"},
			[]Problem{p(main, "", "table", `invalid table name "nft-pol"; use 1-32 letters, digits or '_', starting with a letter`)}},
		{"table with digit first", map[string]string{main: "table: 1nftpol\n"},
			[]Problem{p(main, "", "table", `invalid table name "1nftpol"`)}},
		{"table too long", map[string]string{main: "table: " + strings.Repeat("t", 33) + "\n"},
			[]Problem{p(main, "", "table", "invalid table name")}},
		{"account name with space", map[string]string{main: "accounts:\n  - {name: site 12, uid: 1012, ports: [40010]}\n"},
			[]Problem{p(main, "site 12", "name", `invalid name "site 12"; use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit`)}},
		{"account name with quote", map[string]string{main: "accounts:\n  - {name: 'site\"12', uid: 1012, ports: [40010]}\n"},
			[]Problem{p(main, `site"12`, "name", `invalid name "site\"12"`)}},
		{"account without name", map[string]string{main: "accounts:\n  - {uid: 1012, ports: [50000]}\n"},
			[]Problem{
				p(main, "", "accounts[0].ports", "port 50000 is outside the zone"),
				p(main, "", "accounts[0].name", "missing; every account needs a name"),
			}},
		{"account not a mapping", map[string]string{main: "accounts: [site12]\n"},
			[]Problem{p(main, "", "accounts[0]", `must be a mapping with name, uid or user, and ports; not the string "site12"`)}},
		{"accounts not a list", map[string]string{main: "accounts: {name: site12}\n"},
			[]Problem{p(main, "", "accounts", "must be a list of accounts, not a mapping")}},

		// Unknown keys.
		{"unknown key", map[string]string{main: "tabel: nftpol\n"},
			[]Problem{p(main, "", "tabel", "unknown key; valid keys are table, zone, min_uid, exempt, loopback, action, protocols, include, accounts")}},
		{"key in upper case", map[string]string{main: "Table: nftpol\n"},
			[]Problem{p(main, "", "Table", "unknown key; valid keys are table,")}},
		{"key with a dot", map[string]string{main: "min.uid: 1000\n"},
			[]Problem{p(main, "", "min.uid", "unknown key")}},
		{"unknown key with empty mapping", map[string]string{main: "bogus: {}\n"},
			[]Problem{p(main, "", "bogus", "unknown key")}},
		{"unknown account key", account(`uid: 1012, ports: [40010], prots: [tcp]`),
			[]Problem{p(main, "site12", "prots", "unknown key; valid keys are name, uid, user, ports, protocols")}},
		{"setting in include file", map[string]string{
			main:                     "include: policies.d\n",
			"policies.d/site12.yaml": "table: other\naccounts: []\n",
		}, []Problem{p("policies.d/site12.yaml", "", "table", "an include file holds only accounts:; set table in the main file $DIR/policy.yaml")}},
		{"unknown key in include file", map[string]string{
			main:                     "include: policies.d\n",
			"policies.d/site12.toml": "acounts = []\n",
		}, []Problem{p("policies.d/site12.toml", "", "acounts", "unknown key; an include file holds only accounts:")}},

		{"unknown key with a newline", map[string]string{main: "\"a\\nb\": 1\n"},
			[]Problem{p(main, "", "a\nb", "unknown key")}},

		// Files.
		{"empty main file", map[string]string{main: ""},
			[]Problem{p(main, "", "", "empty: no settings and no accounts; if a policy without accounts is meant, write accounts: []")}},
		{"main file of comments", map[string]string{main: "# accounts: to come\n"},
			[]Problem{p(main, "", "", "empty: no settings and no accounts")}},
		{"null json", map[string]string{"policy.json": "null"},
			[]Problem{p("policy.json", "", "", "empty: no settings and no accounts")}},
		{"empty include file", map[string]string{
			main:                     "include: policies.d\naccounts:\n  - {name: site11, uid: 1011, ports: [40010]}\n",
			"policies.d/site12.yaml": "",
		}, []Problem{p("policies.d/site12.yaml", "", "", "empty: no accounts; if none are meant, write accounts: [] or remove the file")}},
		{"include path with a newline", map[string]string{main: "include: \"a\\nb\"\n"},
			[]Problem{p(main, "", "include", `directory "$DIR/a\nb" does not exist`)}},
		{"missing include dir", map[string]string{main: "include: policies.d\n"},
			[]Problem{p(main, "", "include", "directory $DIR/policies.d does not exist; create it or remove include:")}},
		{"include is a file", map[string]string{main: "include: policies.d\n", "policies.d": ""},
			[]Problem{p(main, "", "include", "$DIR/policies.d is not a directory")}},
		{"broken include file", map[string]string{
			main:                     "include: policies.d\naccounts:\n  - {name: site11, uid: 1011, ports: [40010]}\n",
			"policies.d/a.yaml":      "accounts: [\n",
			"policies.d/b.toml":      "[[accounts]\n",
			"policies.d/c.json":      `{"accounts": }`,
			"policies.d/site12.yaml": "accounts:\n  - {name: site12, uid: 1012, ports: [50000]}\n",
		}, []Problem{
			p("policies.d/a.yaml", "", "", "cannot parse: yaml:"),
			p("policies.d/b.toml", "", "", "cannot parse: toml:"),
			p("policies.d/c.json", "", "", "cannot parse: line 1: invalid character"),
			p("policies.d/site12.yaml", "site12", "ports", "port 50000 is outside the zone"),
		}},
		{"broken main file", map[string]string{main: "accounts: [\n"},
			[]Problem{p(main, "", "", "cannot parse: yaml:")}},
		{"main file not a mapping", map[string]string{main: "- site12\n"},
			[]Problem{p(main, "", "", "cannot parse: yaml: unmarshal errors: line 1: cannot unmarshal !!seq")}},
		{"duplicate yaml key", map[string]string{main: "table: a\ntable: b\n"},
			[]Problem{p(main, "", "", `cannot parse: yaml: unmarshal errors: line 2: mapping key "table" already defined at line 1`)}},
		{"duplicate json key", map[string]string{"policy.json": `{"accounts": [{"name": "site12", "uid": 1012, "uid": 1013, "ports": [40010]}]}`},
			[]Problem{p("policy.json", "", "", `cannot parse: key "uid" appears twice in one object`)}},
		{"unsupported type", map[string]string{"policy.ini": "table = nftpol\n"},
			[]Problem{p("policy.ini", "", "", `unsupported file type ".ini"; use .yaml, .yml, .toml or .json`)}},
		{"json syntax error line", map[string]string{"policy.json": "{\n  \"table\": \"nftpol\",\n  \"zone\": 40010-49999\n}\n"},
			[]Problem{p("policy.json", "", "", "cannot parse: line 3: invalid character '-' after object key:value pair")}},
		{"non-string account key", map[string]string{main: "accounts:\n  - {name: site12, uid: 1012, ports: [40010], 7: x}\n"},
			[]Problem{p(main, "site12", "7", "unknown key")}},

		// Everything at once: no problem hides another.
		{"many problems", map[string]string{main: `
action: deny
accounts:
  - {name: site11, uid: 1011, ports: [50000]}
  - {name: site12, user: nobody99, ports: ["40020-40010"]}
`}, []Problem{
			p(main, "", "action", "unknown action"),
			p(main, "site11", "ports", "port 50000 is outside the zone"),
			p(main, "site12", "ports", "is reversed"),
			p(main, "site12", "user", "unknown user"),
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeFiles(t, tc.files)
			file := filepath.Join(dir, main)
			if _, ok := tc.files[main]; !ok {
				for name := range tc.files {
					file = filepath.Join(dir, name)
				}
			}
			p, err := Load(file, WithLookup(fakeLookup))
			var ve *ValidationError
			if !errors.As(err, &ve) {
				t.Fatalf("Load() = %+v, %v; want a *ValidationError", p, err)
			}
			if p != nil {
				t.Errorf("Load() returned a policy along with problems")
			}
			if len(ve.Problems) != len(tc.want) {
				t.Fatalf("got %d problems, want %d:\n%v", len(ve.Problems), len(tc.want), err)
			}
			for i, want := range tc.want {
				got := ve.Problems[i]
				want.File = filepath.Join(dir, want.File)
				want.Message = strings.ReplaceAll(want.Message, "$DIR", dir)
				if got.File != want.File || got.Account != want.Account || got.Field != want.Field || !strings.Contains(got.Message, want.Message) {
					t.Errorf("problem %d:\n got %#v\nwant %#v (message as a substring)", i, got, want)
				}
			}
		})
	}
}

func TestValidationErrorString(t *testing.T) {
	err := &ValidationError{Problems: []Problem{
		{File: "examples/policies.d/site12.yaml", Account: "site12", Field: "ports", Message: "port 50000 is outside the zone 40010-49999"},
		{File: "policy.yaml", Field: "action", Message: `unknown action "deny"; use reject or drop`},
		{File: "policy.yaml", Message: "cannot parse: yaml: line 3: did not find expected key"},
	}}
	want := `examples/policies.d/site12.yaml: account "site12": ports: port 50000 is outside the zone 40010-49999
policy.yaml: action: unknown action "deny"; use reject or drop
policy.yaml: cannot parse: yaml: line 3: did not find expected key`
	if got := err.Error(); got != want {
		t.Errorf("Error() =\n%s\nwant\n%s", got, want)
	}
}
