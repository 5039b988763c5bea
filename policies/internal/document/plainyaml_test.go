package document

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// plainSeeds are documents in and around the plain subset of YAML that
// plainMapping and plainList decode: each must decode as yaml.v3 does, or be
// refused. With the corpus in testdata/fuzz/FuzzPlainYAML and the items of
// testdata/account-items.txt, they seed FuzzPlainYAML.
var plainSeeds = []string{
	"",
	"# only a comment\n",
	"accounts:\n  - name: site12\n    uid: 1012\n    ports: [\"40010-40019\", 40500]\n",
	"accounts:\n- name: site12\n  uid: 1012\n  ports: [40010]\n  protocols: [tcp]\n",
	"accounts:\n  - {name: acct-000001, uid: 100001, ports: [10001], protocols: [tcp, udp]}\n",
	"table: nftpol   # comment\nzone: 40010-49999\nmin_uid: 1000\nexempt: [www-data]\nloopback: allow\naction: reject\nprotocols: [tcp, udp]\ninclude: policies.d\n\naccounts:\n  - name: site12\n    uid: 1012\n    ports: [\"40010-40019\", 40500]\n",
	"accounts: []\n",
	"accounts:\n",
	"accounts:\ntable: x\n",
	"a: {}\nb: []\nc: {d: [], e: 'x y', f: \"#z\"}\n",
	"a:\n  b:\n    c: 1\n  d: 2\n",
	"a:\n  - 1\n  -\n  - # null\n  -\n    b: 2\n",
	"- a\n- b\n",
	"  - {name: x, uid: 1}\n  - name: y\n    ports:\n      - 1\n      - \"2-3\"\n",
	"a: 1\na: 2\n",
	"a: 1\n  b: 2\n",
	"a: b\n  c\n",
	"a: 'it''s'\n",
	"a: \"x\\ty\"\n",
	"a: true\nb: null\nc: ~\nd: yes\ne: on\nf: 0x1F\ng: 0777\nh: 1_000\ni: 1e3\nj: .inf\nk: -1\nl: +1\nm: 2001-12-14\nn: 1024-2048\no: 40010-40019\np: 012\n",
	"a: 9223372036854775807\nb: 123456789012345678\nc: 1234567890123456789\n",
	"a: &x 1\nb: *x\n",
	"a: |\n  text\n",
	"a: >\n  text\n",
	"? a\n: b\n",
	"a: [b, [c]]\n",
	"a: [b: c]\n",
	"a: {b: {c: d}}\n",
	"a: {b: [c, d], e: f}\n",
	"a:b\n",
	"a:#b\n",
	"a: b#c\n",
	"a: b #c\n",
	"a: \"b\"c\n",
	"a: b: c\n",
	"- - a\n",
	"-a\n",
	"---\na: 1\n",
	"a: 1\n...\n",
	"%YAML 1.2\n---\na: 1\n",
	"a: \t1\n",
	"\ta: 1\n",
	"a: 1\r\n",
	"\xef\xbb\xbfa: 1\n",
	"a: é\n",
	"True: 1\n",
	"Table: 1\nmin.uid: 2\n_x: 3\n",
	"7: x\n",
	"a:\n- 1\n- 2\nb: 3\n",
	"a:\n  - 1\n - 2\n",
	"a:\n    b: 1\n  c: 2\n",
	"a: [ b , c ]\n",
	"a: [b,c]\n",
	"a: [b,]\n",
	"a: {b: 1, b: 2}\n",
	"a: {b:1}\n",
	"a: {\"b\": 1}\n",
	"a: [\"b\": 1]\n",
	"a: x y\n",
	"a: user@example.org\nb: a/b\nc: site-12.example.org\n",
	"a: @x\n",
	"a: 0\nb: 00\nc: 01\n",
	"a:\n\n  b: 1\n",
	"a:   \n  - x\n",
	"- a: 1\n  b: 2\n- c: 3\n",
	"- a: 1\n  - b\n",
	"-   a: 1\n    b: 2\n",
	"- a:\n  - b\n",
	"- a:\n    b: 1\n",
	"a: 1\n- b\n",
	"a\n",
	"a: 1\nb\n",
	"a: [b\n",
	"a: 'b\n",
	"a: \"b\n",
	"a: x # c\n  # indented comment\nb: y\n",
	"a: " + strings.Repeat("k", 2000) + "\n",
	strings.Repeat("k", 1100) + ": 1\n",
	"a: {" + strings.Repeat("k", 1100) + ": 1}\n",
}

// examples are the policy files nftpol ships as examples, which must take
// the fast paths.
var examples = []string{"../../../examples/nftpol.yaml", "../../../examples/policies.d/site13.yaml"}

// FuzzPlainYAML checks the plain-YAML fast path against yaml.v3, the
// generic path: whatever plainMapping or plainList decodes must be exactly
// what yaml.Unmarshal decodes into a map or a list (same types, same
// values). With accounts decoded as Accounts, they must take the same
// documents, to the same values (checkTyped). And a Decoder, splitting or
// not, must give what yaml.v3 gives, or its error (checkDecode).
func FuzzPlainYAML(f *testing.F) {
	for _, s := range plainSeeds {
		f.Add([]byte(s))
	}
	for _, s := range accountItems(f) {
		f.Add([]byte("accounts:\n  - " + s + "\n"))
	}
	for _, name := range examples {
		if b, err := os.ReadFile(name); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkTyped(t, b)
		checkDecode(t, b)
		if got, ok := plainMapping(b); ok {
			want := map[string]any{}
			if err := yaml.Unmarshal(b, &want); err != nil {
				t.Fatalf("plainMapping decoded what yaml.v3 refuses (%v):\n%q", err, b)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("plainMapping decoded\n%q\nas %#v, yaml.v3 as %#v", b, got, want)
			}
		}
		if got, ok := plainList(b, 0); ok {
			var want []any
			if err := yaml.Unmarshal(b, &want); err != nil {
				t.Fatalf("plainList decoded what yaml.v3 refuses (%v):\n%q", err, b)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("plainList decoded\n%q\nas %#v, yaml.v3 as %#v", b, got, want)
			}
		}
	})
}

// checkDecode fails t unless Decode, with every fast path on, whole and
// split into chunks of one item, gives what yaml.v3 does: the same values
// once the accounts are put back (generic), or the same error. A split
// file's error shows once a chunk does not decode: then the file decoded
// whole gives it, as it does for the loader.
func checkDecode(t *testing.T, b []byte) {
	t.Helper()
	want := map[string]any{}
	wantErr := decodeYAML(b, want)
	for _, dec := range []*Decoder{
		NewDecoder(WithProtocols(testProtocols...)),
		NewDecoder(WithProtocols(testProtocols...), WithSplit(0, 0)),
	} {
		var got map[string]any
		d, err := dec.Decode("yaml", b)
		if err == nil {
			var ok bool
			if got, ok = generic(t, d); !ok {
				if d, err = d.Split.Whole(); err == nil {
					got, _ = generic(t, d)
				}
			}
		}
		if fmt.Sprint(err) != fmt.Sprint(wantErr) {
			t.Fatalf("Decode(%q) split=%v: error %v, yaml.v3's %v", b, dec.splitThreshold == 0, err, wantErr)
		}
		if err == nil && !reflect.DeepEqual(got, want) {
			t.Fatalf("Decode(%q) split=%v: %#v, yaml.v3 %#v", b, dec.splitThreshold == 0, got, want)
		}
	}
}

// TestPlainYAMLTakesTheUsualShapes makes sure the fast path is taken for the
// way policy files are usually written, so that it does not silently stop
// being fast.
func TestPlainYAMLTakesTheUsualShapes(t *testing.T) {
	for _, name := range examples {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := plainMapping(b); !ok {
			t.Errorf("%s does not take the plain-YAML path", filepath.Base(name))
		}
	}
	for _, s := range plainSeeds[2:6] {
		if _, ok := plainMapping([]byte(s)); !ok {
			t.Errorf("%q does not take the plain-YAML path", s)
		}
	}
	if _, ok := plainList([]byte("  - {name: x, uid: 1}\n  - name: y\n    ports:\n      - 1\n      - \"2-3\"\n"), 0); !ok {
		t.Error("a list of accounts does not take the plain-YAML path")
	}
}
