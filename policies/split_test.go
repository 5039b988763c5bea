package policies

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/nftpol/nftpol/policies/internal/document"
)

// TestLoadSplit loads files that the decoder splits, or must refuse to split,
// both ways: split into one-account chunks and decoded whole. Load must say
// the same either way, problems and their order included.
func TestLoadSplit(t *testing.T) {
	const head = "zone: 40010-49999\n"
	for _, tc := range []struct {
		// ext is the file's extension, .yaml when empty.
		name, ext, text string
		// split says whether the file must split; when false, splitting
		// must be refused up front or fall back to decoding it whole.
		split bool
	}{
		{"block items", "", head + "accounts:\n  - name: a\n    uid: 1012\n    ports: [40010]\n  - name: b\n    uid: 1013\n    ports: [\"40011-40019\"]\n", true},
		{"flow items", "", head + "accounts:\n  - {name: a, uid: 1012, ports: [40010]}\n  - {name: b, uid: 1013, ports: [40011]}\n", true},
		{"indentless items", "", head + "accounts:\n- {name: a, uid: 1012, ports: [40010]}\n- {name: b, uid: 1013, ports: [40011]}\nmin_uid: 500\n", true},
		{"settings after the list", "", "accounts:\n  - {name: a, uid: 1012, ports: [40010]}\n# comment\n  - {name: b, uid: 1013, ports: [40011]}\ntable: other\nzone: 40010-40020\n", true},
		{"items yaml.v3 decodes", "", head + "accounts:\n  - {name: a, uid: 0x3f4, ports: [40010]}\n  - name: 'b''s'\n    uid: 1013\n    ports: [40011]\n", true},
		{"problems in chunks", "", head + "accounts:\n  - {name: a, uid: 1012, ports: [50000]}\n  - {name: a, uid: 1012, ports: [40010]}\n  - {uid: 99, ports: [40010], bogus: 1}\n  - just a string\n", true},
		{"duplicate key in an item", "", head + "accounts:\n  - {name: a, uid: 1012, ports: [40010]}\n  - {name: b, uid: 1013, uid: 1014, ports: [40011]}\n", false},
		{"syntax error in an item", "", head + "accounts:\n  - {name: a, uid: 1012, ports: [40010]}\n  - {name: b, uid: 1013, ports: [40011]\n", false},
		{"string across items", "", head + "accounts:\n  - {name: \"a\n  - b\", uid: 1012, ports: [40010]}\n  - {name: c, uid: 1013, ports: [40011]}\n", false},
		{"flow list across items", "", head + "accounts:\n  - {name: a, uid: 1012, ports: [40010,\n  - 40011]}\n  - {name: c, uid: 1013, ports: [40012]}\n", false},
		{"block scalar", "", head + "accounts:\n  - name: |\n      a\n    uid: 1012\n    ports: [40010]\n  - {name: c, uid: 1013, ports: [40012]}\n", true},
		{"accounts key inside a string", "", "table: \"x\naccounts:\n  - {name: a, uid: 1012, ports: [40010]}\n  - {name: c, uid: 1013, ports: [40012]}\n\"\n", false},
		{"accounts twice", "", head + "accounts:\n  - {name: a, uid: 1012, ports: [40010]}\naccounts:\n  - {name: c, uid: 1013, ports: [40012]}\n", false},
		{"alias", "", head + "p: &p [40010]\naccounts:\n  - {name: a, uid: 1012, ports: *p}\n  - {name: c, uid: 1013, ports: [40012]}\n", false},
		{"document marker", "", head + "accounts:\n  - {name: a, uid: 1012, ports: [40010]}\n---\n  - {name: c, uid: 1013, ports: [40012]}\n", false},
		{"less indented line", "", head + "accounts:\n  - {name: a, uid: 1012, ports: [40010]}\n - {name: c, uid: 1013, ports: [40012]}\n", false},
		{"list at the first column after items", "", head + "accounts:\n  - {name: a, uid: 1012, ports: [40010]}\n- {name: c, uid: 1013, ports: [40012]}\n", false},
		{"not a list", "", head + "accounts:\n  name: a\n", false},
		{"tab", "", head + "accounts:\n  - {name: a, uid: 1012, ports: [40010]}\n\t- {name: c, uid: 1013, ports: [40012]}\n", false},

		{"json", ".json", `{"zone": "40010-49999", "accounts": [{"name": "a", "uid": 1012, "ports": [40010]}, {"name": "b", "uid": 1013, "ports": ["40011-40019"], "x": {}}], "table": "t"}`, true},
		{"json problems", ".json", `{"accounts": [{"name": "a", "uid": 1012, "ports": [50000]}, 7, {"name": "a", "uid": 1012.5, "ports": []}] , "action": "deny"}`, true},
		{"json escapes", ".json", `{"accounts": [{"name": "\u0061", "uid": 1012, "ports": [40010]}, {"na\u006de": "b", "uid": 1013, "ports": [40011]}]}`, true},
		{"json duplicate key in an item", ".json", `{"accounts": [{"name": "a", "uid": 1012, "ports": [40010]}, {"name": "b", "uid": 1013, "uid": 1014, "ports": [40011]}]}`, false},
		{"json duplicate key in a setting", ".json", `{"exempt": {"a": 1, "a": 2}, "accounts": [{"name": "a", "uid": 1012, "ports": [40010]}, {"name": "b", "uid": 1013, "ports": [40011]}]}`, false},
		{"json accounts twice", ".json", `{"accounts": [{"name": "a", "uid": 1012, "ports": [40010]}], "accounts": [{"name": "b", "uid": 1013, "ports": [40011]}]}`, false},
		{"json number out of range", ".json", `{"accounts": [{"name": "a", "uid": 1012, "ports": [40010]}, {"name": "b", "uid": 1e999, "ports": [40011]}]}`, false},
		{"json syntax error", ".json", `{"accounts": [{"name": "a", "uid": 1012, "ports": [40010]}, {"name": "b", "uid": 1013, "ports": [40011]}]`, false},
		{"json not an object", ".json", `[{"name": "a", "uid": 1012, "ports": [40010]}]`, false},
		{"json accounts not a list", ".json", `{"accounts": {"name": "a"}}`, false},
		{"toml", ".toml", "zone = \"40010-49999\"\n[[accounts]]\nname = \"a\"\nuid = 1012\nports = [40010]\n\n  [[accounts]] # b\nname = \"b\"\nuid = 1013\nports = [\"40011-40019\"]\n[accounts.x]\ny = 1\n[other]\nz = 2\n", true},
		{"toml problems", ".toml", "action = \"deny\"\n[[accounts]]\nname = \"a\"\nuid = 1012\nports = [50000]\n[[accounts]]\nname = \"a\"\nuid = 1012.0\nports = []\n", true},
		{"toml accounts after another table", ".toml", "[[accounts]]\nname = \"a\"\nuid = 1012\nports = [40010]\n[other]\nz = 2\n[[accounts]]\nname = \"b\"\nuid = 1013\nports = [40011]\n", false},
		{"toml string across tables", ".toml", "[[accounts]]\nname = \"\"\"a\n[[accounts]]\n\"\"\"\nuid = 1012\nports = [40010]\n[[accounts]]\nname = \"b\"\nuid = 1013\nports = [40011]\n", false},
		{"toml duplicate key", ".toml", "[[accounts]]\nname = \"a\"\nuid = 1012\nports = [40010]\n[[accounts]]\nname = \"b\"\nname = \"c\"\nuid = 1013\nports = [40011]\n", false},
		{"toml accounts defined before", ".toml", "accounts = []\n[[accounts]]\nname = \"a\"\nuid = 1012\nports = [40010]\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ext := tc.ext
			if ext == "" {
				ext = ".yaml"
			}
			// The text as a main file, and as an include file.
			dir := writeFiles(t, map[string]string{
				"policy" + ext:     tc.text,
				"main.yaml":        "include: inc\n",
				"inc/policy" + ext: tc.text,
			})
			for _, name := range []string{"policy" + ext, "main.yaml"} {
				file := filepath.Join(dir, name)
				p, err := Load(file, WithLookup(fakeLookup))
				sp, spErr := loadSplit(file, WithLookup(fakeLookup))
				if diff := cmp.Diff(p, sp); diff != "" {
					t.Errorf("%s: policies differ (-whole +split):\n%s", file, diff)
				}
				if fmt.Sprint(err) != fmt.Sprint(spErr) {
					t.Errorf("%s: errors differ:\nwhole: %v\nsplit: %v", file, err, spErr)
				}
			}
			d, err := document.NewDecoder(document.WithProtocols(protocolNames...), document.WithSplit(0, 0)).Decode(format("x"+ext), []byte(tc.text))
			got := err == nil && d.Split != nil
			for i := 0; got && i < d.Split.Chunks(); i++ {
				got = d.Split.Decode(i).OK
			}
			if got != tc.split {
				t.Errorf("split and decoded = %v, want %v", got, tc.split)
			}
		})
	}
}
