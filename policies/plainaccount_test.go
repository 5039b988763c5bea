package policies

import (
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// untyped returns v, decoded by plainPolicy or plainAccountList, with each
// *plainAccount replaced by the generic value it stands for, after checking
// that the plainAccount says what that value does.
func untyped(t *testing.T, v any) any {
	t.Helper()
	switch v := v.(type) {
	case *plainAccount:
		g := v.generic()
		checkPlainAccount(t, v, g)
		return g
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[k] = untyped(t, e)
		}
		return m
	case []any:
		list := make([]any, len(v))
		for i, e := range v {
			list[i] = untyped(t, e)
		}
		return list
	}
	return v
}

// checkPlainAccount fails t unless a holds what its generic value g says,
// as the loader reads it.
func checkPlainAccount(t *testing.T, a *plainAccount, g any) {
	t.Helper()
	m, ok := g.(map[string]any)
	if !ok {
		t.Fatalf("plainAccount stands for %#v, not a mapping", g)
	}
	for i, key := range accountKeys {
		v, found := m[key]
		if has := a.keys&(1<<i) != 0; has != found {
			t.Fatalf("plainAccount has %s: %v; its value %#v", key, has, m)
		}
		if !found {
			continue
		}
		switch key {
		case "name", "user":
			s := a.text(a.name)
			if key == "user" {
				s = a.text(a.user)
			}
			if v != string(s) {
				t.Fatalf("plainAccount %s %q; its value %#v", key, s, v)
			}
		case "uid":
			if n, ok := integer(v); !ok || n != int64(a.uid) || n > maxUID {
				t.Fatalf("plainAccount uid %d; its value %#v", a.uid, v)
			}
		case "ports":
			var rs []PortRange
			for _, e := range v.([]any) {
				r, msg := portRange(e)
				if msg != "" {
					t.Fatalf("plainAccount took port %#v: %s", e, msg)
				}
				rs = append(rs, r)
			}
			if !slices.Equal(rs, a.portList()) {
				t.Fatalf("plainAccount ports %v; its value %#v", a.portList(), v)
			}
		case "protocols":
			var ps []Protocol
			for _, e := range v.([]any) {
				s, ok := e.(string)
				if !ok || !slices.Contains(Protocols, Protocol(s)) {
					t.Fatalf("plainAccount took protocol %#v", e)
				}
				ps = append(ps, Protocol(s))
			}
			if protocolMask(ps) != int(a.protocols) {
				t.Fatalf("plainAccount protocols %b; its value %#v", a.protocols, v)
			}
		}
	}
}

// checkTyped fails t unless the typed decoders take b exactly when the
// generic ones do, and to the same values.
func checkTyped(t *testing.T, b []byte) {
	t.Helper()
	want, wantOK := plainMapping(b)
	got, gotOK := plainMappingOf(b, true)
	if gotOK != wantOK {
		t.Fatalf("plainMapping ok = %v, typed %v:\n%q", wantOK, gotOK, b)
	}
	if gotOK && !reflect.DeepEqual(untyped(t, got), any(want)) {
		t.Fatalf("plainMapping typed decoded\n%q\nas %#v, generic as %#v", b, untyped(t, got), want)
	}
	wantList, wantOK := plainList(b)
	gotList, gotOK := plainListOf(b, true, 1)
	if gotOK != wantOK {
		t.Fatalf("plainList ok = %v, typed %v:\n%q", wantOK, gotOK, b)
	}
	if gotOK && !reflect.DeepEqual(untyped(t, gotList), any(wantList)) {
		t.Fatalf("plainList typed decoded\n%q\nas %#v, generic as %#v", b, untyped(t, gotList), wantList)
	}
}

// plainAccountSeeds are accounts lists around the shape plainAccount holds,
// each as the items of an accounts list (block or flow items, after
// "  - "): all must load the same with and without typed accounts.
var plainAccountSeeds = []string{
	"{name: a, uid: 1012, ports: [40010]}",
	"{name: a, uid: 1012, ports: [\"40010-40019\", 40500], protocols: [tcp, udp]}",
	"{name: 'a', user: admin12, ports: ['40010'], protocols: [udp, udp]}",
	"{name: a, user: admin12, uid: 1012, ports: [40010]}",
	"{name: a, user: admin12, uid: 1013, ports: [40010]}",
	"{name: a, user: nobody, ports: [40010]}",
	"{name: a, user: \"\", ports: [40010]}",
	"{name: a, user: 7, ports: [40010]}",
	"{name: a, uid: \"1012\", ports: [40010]}",
	"{name: a, uid: 4294967295, ports: [40010]}",
	"{name: a, uid: 4294967294, ports: [40010]}",
	"{name: a, uid: 999999999999999999, ports: [40010]}",
	"{name: a, uid: 10, ports: [40010]}",
	"{name: a, uid: 33, ports: [40010]}",
	"{name: a, uid: 2001, ports: [40010]}",
	"{name: a, ports: [40010]}",
	"{uid: 1012, ports: [40010]}",
	"{name: a, uid: 1012}",
	"{name: a, uid: 1012, ports: []}",
	"{name: a, uid: 1012, ports: [40010], protocols: []}",
	"{name: a, uid: 1012, ports: [40010], protocols: [icmp]}",
	"{name: a, uid: 1012, ports: [40010], protocols: [tcp, 6]}",
	"{name: a, uid: 1012, ports: [50000]}",
	"{name: a, uid: 1012, ports: [\"40019-40010\"]}",
	"{name: a, uid: 1012, ports: [\"40010-50000\"]}",
	"{name: a, uid: 1012, ports: [\"040010\"]}",
	"{name: a, uid: 1012, ports: [0]}",
	"{name: a, uid: 1012, ports: [70000]}",
	"{name: a, uid: 1012, ports: [\"070000\"]}",
	"{name: a, uid: 1012, ports: [\"40010-\"]}",
	"{name: a, uid: 1012, ports: [\" 40010\"]}",
	"{name: a, uid: 1012, ports: [x]}",
	"{name: a, uid: 1012, ports: 40010}",
	"{name: a, uid: 1012, ports: [40010, 40010, 40011]}",
	"{name: \"a b\", uid: 1012, ports: [40010]}",
	"{name: \"\", uid: 1012, ports: [40010]}",
	"{name: 12, uid: 1012, ports: [40010]}",
	"{name: -a, uid: 1012, ports: [40010]}",
	"{name: [a], uid: 1012, ports: [40010]}",
	"{name: a, uid: 1012, ports: [40010], bogus: 1}",
	"{name: a, uid: 1012, ports: [40010], Name: b}",
	"{name: a, uid: 1012, uid: 1013, ports: [40010]}",
	"{}",
	"{name: a, uid: 1012, ports: [40010]} # comment",
	"{name: a, uid: 1012, ports: [40010]}x",
	"{name: a, uid: 1012, ports: [40010]",
	"{name: a,uid: 1012,ports: [40010]}",
	"{ name: a , uid: 1012 , ports: [ 40010 ] }",
	"name: a\n    uid: 1012\n    ports: [40010]",
	"name: a\n    uid: 1012\n    ports:\n      - 40010",
	"name: a\n    uid: 1012\n    ports: [40010]\n    protocols: [tcp] # comment",
	"name: a\n    uid: 1012\n    ports: [40010]\n     bogus: 1",
	"name: a\n    uid: 1012\n    ports: [40010]\n  bogus: 1",
	"name: a\n    uid:\n    ports: [40010]",
	"name: a\n    uid: 1012\n    ports: [40010]\n    - x",
	"name: a\n    uid: 1012\n    ports: {a: 1}",
	"name: a\n    uid: 1012\n    ports:[40010]",
	"name: a #\n    uid: 1012\n    ports: [40010]",
	"name: a\n\n    # comment\n    uid: 1012\n    ports: [40010]",
	"",
	"just a string",
	"7",
	"[a]",
}

// TestPlainAccounts loads each of plainAccountSeeds, in main files and
// include files, whole and split, with and without typed accounts: Load
// must say exactly the same.
func TestPlainAccounts(t *testing.T) {
	for i, item := range plainAccountSeeds {
		text := "zone: 40010-49999\nexempt: [33, 2001]\naccounts:\n  - " + item + "\n  - {name: z, uid: 2000, ports: [40500]}\n"
		checkTyped(t, []byte(text))
		dir := writeFiles(t, map[string]string{
			"policy.yaml":     text,
			"main.yaml":       "zone: 40010-49999\nexempt: [33, 2001]\ninclude: inc\n",
			"inc/policy.yaml": text,
		})
		for _, name := range []string{"policy.yaml", "main.yaml"} {
			file := filepath.Join(dir, name)
			for _, load := range []func(string, ...Option) (*Policy, error){Load, loadSplit} {
				p, err := load(file, WithLookup(fakeLookup))
				gp, gerr := loadGeneric(load, file, WithLookup(fakeLookup))
				if diff := cmp.Diff(gp, p); diff != "" {
					t.Errorf("seed %d %q, %s: policies differ (-generic +typed):\n%s", i, item, name, diff)
				}
				if fmt.Sprint(err) != fmt.Sprint(gerr) {
					t.Errorf("seed %d %q, %s: errors differ:\ngeneric: %v\ntyped:   %v", i, item, name, gerr, err)
				}
			}
		}
	}
}

// loadGeneric is load with typedAccounts off.
func loadGeneric(load func(string, ...Option) (*Policy, error), file string, opts ...Option) (*Policy, error) {
	defer func(typed bool) { typedAccounts = typed }(typedAccounts)
	typedAccounts = false
	return load(file, opts...)
}

// TestPlainAccountsTaken makes sure the usual ways of writing an account
// take the typed path, so that it does not silently stop being fast.
func TestPlainAccountsTaken(t *testing.T) {
	for _, text := range []string{
		"accounts:\n  - {name: acct-000123, uid: 100123, ports: [\"10123\"]}\n",
		"accounts:\n  - {name: acct-000123, uid: 100123, ports: [10123], protocols: [tcp, udp]}\n",
		"accounts:\n  - name: acct-000123\n    uid: 100123\n    ports: [\"10123\"]\n",
		"accounts:\n- name: site12 # comment\n  user: admin12\n  ports: [\"40010-40019\", 40500]\n  protocols: [tcp]\n",
	} {
		m, ok := plainPolicy([]byte(text))
		if !ok {
			t.Errorf("%q does not take the plain-YAML path", text)
			continue
		}
		for _, item := range m["accounts"].([]any) {
			if _, ok := item.(*plainAccount); !ok {
				t.Errorf("%q: item %#v is not a plainAccount", text, item)
			}
		}
		items, ok := plainAccountList([]byte(strings.TrimPrefix(text, "accounts:\n")), 1)
		if !ok || len(items) != 1 {
			t.Errorf("%q: the list does not take the plain-YAML path", text)
		} else if _, ok := items[0].(*plainAccount); !ok {
			t.Errorf("%q: the list's item %#v is not a plainAccount", text, items[0])
		}
	}
}

// FuzzPrintableLines checks printableLines, 8 bytes at a time, against the
// plain loop it stands for.
func FuzzPrintableLines(f *testing.F) {
	for _, s := range plainSeeds {
		f.Add([]byte(s))
	}
	f.Add([]byte("abcdefgh\x7fabcdefgh"))
	f.Add([]byte("abcdefgh\nabcdefg\x0b"))
	f.Fuzz(func(t *testing.T, b []byte) {
		want := true
		for _, c := range b {
			if (c < ' ' || c > '~') && c != '\n' {
				want = false
			}
		}
		if got := printableLines(b); got != want {
			t.Fatalf("printableLines(%q) = %v, want %v", b, got, want)
		}
	})
}

// TestPlainBuffersReused: a chunk decoded into the memory another chunk
// gave back holds its own accounts and ports only, and the memory given
// back points into neither chunk's text.
func TestPlainBuffersReused(t *testing.T) {
	wide := []byte("  - {name: a, uid: 1001, ports: [\"40010-40019\", 40050, 40060]}\n  - {name: b, uid: 1002, ports: [40100, 40200]}\n")
	narrow := []byte("  - {name: c, uid: 1003, ports: [41000]}\n  - {name: d, uid: 1004, ports: [\"42000-42001\"]}\n")
	ports := func(items []any) string {
		var s []string
		for _, it := range items {
			pa, ok := it.(*plainAccount)
			if !ok {
				t.Fatalf("item %#v is not a plainAccount", it)
			}
			s = append(s, fmt.Sprintf("%s %d %v", pa.text(pa.name), pa.uid, pa.portList()))
		}
		return strings.Join(s, "; ")
	}
	fresh, ok := plainAccountList(slices.Clone(narrow), 2)
	if !ok {
		t.Fatal("narrow chunk refused")
	}
	want := ports(fresh)
	for range 3 {
		items, ok := plainAccountList(wide, 2)
		if !ok {
			t.Fatal("wide chunk refused")
		}
		b := items[0].(*plainAccount).p.bufs
		releasePlainItems(items)
		for _, a := range b.accounts[:cap(b.accounts)] {
			if a.p != nil {
				t.Fatal("released buffers still point at the chunk they held")
			}
		}
		items, ok = plainAccountList(narrow, 2)
		if !ok {
			t.Fatal("narrow chunk refused")
		}
		if got := ports(items); got != want {
			t.Errorf("decoded into reused memory: %s, want %s", got, want)
		}
		releasePlainItems(items)
	}
}
