package document

import (
	"fmt"
	"maps"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// testProtocols are the protocols policies gives the decoder.
var testProtocols = []string{"tcp", "udp"}

// accountItems returns the items of testdata/account-items.txt, which
// policies' TestPlainAccounts loads too.
func accountItems(t testing.TB) []string {
	t.Helper()
	b, err := os.ReadFile("testdata/account-items.txt")
	if err != nil {
		t.Fatal(err)
	}
	var items []string
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSuffix(line, "\n")
		if line == "" || line[0] == '#' {
			continue
		}
		s, err := strconv.Unquote(line)
		if err != nil {
			t.Fatalf("testdata/account-items.txt: %q: %v", line, err)
		}
		items = append(items, s)
	}
	return items
}

// untyped returns items, decoded with typed accounts, as the generic
// decoder gives them, after checking that each Account says what its
// generic value does.
func untyped(t *testing.T, items []Item) []any {
	t.Helper()
	list := make([]any, len(items))
	for i, it := range items {
		list[i] = it.Value()
		if a := it.Account(); a != nil {
			checkAccount(t, a, list[i])
		}
	}
	return list
}

// generic returns d's top-level mapping with its accounts put back, as the
// generic decoder gives them; ok is false when a chunk of a split d does
// not decode.
func generic(t *testing.T, d *Document) (map[string]any, bool) {
	t.Helper()
	top := maps.Clone(d.Top)
	switch {
	case d.Split != nil:
		var list []any
		for i := range d.Split.Chunks() {
			c := d.Split.Decode(i)
			if !c.OK {
				return nil, false
			}
			list = append(list, untyped(t, c.Items)...)
			c.Release()
		}
		top["accounts"] = list
	case d.Accounts != nil:
		top["accounts"] = untyped(t, d.Accounts)
	}
	return top, true
}

// accountKeys are the keys an Account holds.
var accountKeys = []struct {
	k    Key
	name string
}{{KeyName, "name"}, {KeyUID, "uid"}, {KeyUser, "user"}, {KeyPorts, "ports"}, {KeyProtocols, "protocols"}}

// checkAccount fails t unless a holds what its generic value g says, read
// the way policies reads an account: a reference written without the
// decoder's shortcuts.
func checkAccount(t *testing.T, a *Account, g any) {
	t.Helper()
	m, ok := g.(map[string]any)
	if !ok {
		t.Fatalf("Account stands for %#v, not a mapping", g)
	}
	for key := range m {
		if keyOf([]byte(key)) == 0 {
			t.Fatalf("Account stands for %#v, with the key %q", m, key)
		}
	}
	for _, key := range accountKeys {
		v, found := m[key.name]
		if has := a.Has(key.k); has != found {
			t.Fatalf("Account has %s: %v; its value %#v", key.name, has, m)
		}
		if !found {
			continue
		}
		switch key.k {
		case KeyName, KeyUser:
			s := a.Name()
			if key.k == KeyUser {
				s = a.User()
			}
			if v != string(s) {
				t.Fatalf("Account %s %q; its value %#v", key.name, s, v)
			}
		case KeyUID:
			if n, ok := v.(int); !ok || n != int(a.UID()) {
				t.Fatalf("Account uid %d; its value %#v", a.UID(), v)
			}
		case KeyPorts:
			list, ok := v.([]any)
			if !ok {
				t.Fatalf("Account ports %v; its value %#v", a.Ports(), v)
			}
			var rs []Range
			for _, e := range list {
				rs = append(rs, port(t, e))
			}
			if !slices.Equal(rs, a.Ports()) {
				t.Fatalf("Account ports %v; its value %#v", a.Ports(), v)
			}
		case KeyProtocols:
			list, ok := v.([]any)
			if !ok {
				t.Fatalf("Account protocols %b; its value %#v", a.Protocols(), v)
			}
			mask := uint8(0)
			for _, e := range list {
				s, _ := e.(string)
				i := slices.Index(testProtocols, s)
				if i < 0 {
					t.Fatalf("Account took protocol %#v", e)
				}
				mask |= 1 << i
			}
			if mask != a.Protocols() {
				t.Fatalf("Account protocols %b; its value %#v", a.Protocols(), v)
			}
		}
	}
}

// port reads e as policies reads an element of a ports list, and fails t
// for one it would report a problem with.
func port(t *testing.T, e any) Range {
	t.Helper()
	switch e := e.(type) {
	case int:
		if e >= 1 && e <= 65535 {
			return Range{uint16(e), uint16(e)}
		}
	case string:
		los, his, isRange := strings.Cut(e, "-")
		if !isRange {
			his = los
		}
		lo, loErr := strconv.ParseUint(strings.TrimSpace(los), 10, 16)
		hi, hiErr := strconv.ParseUint(strings.TrimSpace(his), 10, 16)
		if loErr == nil && hiErr == nil && lo >= 1 && lo <= hi {
			return Range{uint16(lo), uint16(hi)}
		}
	}
	t.Fatalf("Account took port %#v", e)
	return Range{}
}

// checkTyped fails t unless the typed decoders take b exactly when the
// generic ones do, and to the same values.
func checkTyped(t *testing.T, b []byte) {
	t.Helper()
	dec := NewDecoder(WithProtocols(testProtocols...))
	want, wantOK := plainMapping(b)
	got, accounts, gotOK := dec.plainDocument(b)
	if gotOK != wantOK {
		t.Fatalf("plainMapping ok = %v, typed %v:\n%q", wantOK, gotOK, b)
	}
	if gotOK {
		if accounts != nil {
			if v := got["accounts"]; v != nil {
				t.Fatalf("typed accounts, and in the mapping %#v", v)
			}
			got["accounts"] = untyped(t, accounts)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("plainMapping typed decoded\n%q\nas %#v, generic as %#v", b, got, want)
		}
	}
	wantList, wantOK := plainList(b, 0)
	gotList, _, gotOK := dec.plainAccountList(b, 1)
	if gotOK != wantOK {
		t.Fatalf("plainList ok = %v, typed %v:\n%q", wantOK, gotOK, b)
	}
	if gotOK && !reflect.DeepEqual(untyped(t, gotList), wantList) {
		t.Fatalf("plainList typed decoded\n%q\nas %#v, generic as %#v", b, untyped(t, gotList), wantList)
	}
}

// TestAccountItems checks the typed decoders on each item of
// testdata/account-items.txt, in a main file's accounts list and as a
// piece of one.
func TestAccountItems(t *testing.T) {
	for _, item := range accountItems(t) {
		checkTyped(t, []byte("zone: 40010-49999\nexempt: [33, 2001]\naccounts:\n  - "+item+"\n  - {name: z, uid: 2000, ports: [40500]}\n"))
		checkTyped(t, []byte("  - "+item+"\n"))
	}
}

// TestPlainAccountsTaken makes sure the usual ways of writing an account
// take the typed path, so that it does not silently stop being fast.
func TestPlainAccountsTaken(t *testing.T) {
	dec := NewDecoder(WithProtocols(testProtocols...))
	for _, text := range []string{
		"accounts:\n  - {name: acct-000123, uid: 100123, ports: [\"10123\"]}\n",
		"accounts:\n  - {name: acct-000123, uid: 100123, ports: [10123], protocols: [tcp, udp]}\n",
		"accounts:\n  - name: acct-000123\n    uid: 100123\n    ports: [\"10123\"]\n",
		"accounts:\n- name: site12 # comment\n  user: admin12\n  ports: [\"40010-40019\", 40500]\n  protocols: [tcp]\n",
	} {
		top, accounts, ok := dec.plainDocument([]byte(text))
		if !ok {
			t.Errorf("%q does not take the plain-YAML path", text)
			continue
		}
		if v, found := top["accounts"]; !found || v != nil || len(accounts) != 1 {
			t.Errorf("%q: accounts %#v in the mapping, %d apart", text, v, len(accounts))
		}
		for _, it := range accounts {
			if it.Account() == nil {
				t.Errorf("%q: item %#v is not an Account", text, it.Value())
			}
		}
		items, _, ok := dec.plainAccountList([]byte(strings.TrimPrefix(text, "accounts:\n")), 1)
		if !ok || len(items) != 1 {
			t.Errorf("%q: the list does not take the plain-YAML path", text)
		} else if items[0].Account() == nil {
			t.Errorf("%q: the list's item %#v is not an Account", text, items[0].Value())
		}
	}
}

// TestOptions: without typed accounts or without the protocols, the
// decoder leaves accounts generic; WithSplit decides what is split.
func TestOptions(t *testing.T) {
	text := []byte("accounts:\n  - {name: a, uid: 1012, ports: [40010]}\n  - {name: b, uid: 1013, ports: [40011], protocols: [tcp]}\n")
	for _, tc := range []struct {
		name  string
		opts  []Option
		typed []bool // which items are Accounts, nil for none apart
		split bool
	}{
		{"default", []Option{WithProtocols(testProtocols...)}, []bool{true, true}, false},
		{"no protocols", nil, []bool{true, false}, false},
		{"generic", []Option{WithProtocols(testProtocols...), WithTypedAccounts(false)}, nil, false},
		{"split", []Option{WithProtocols(testProtocols...), WithSplit(0, 0)}, []bool{true, true}, true},
		{"split generic", []Option{WithTypedAccounts(false), WithSplit(0, 0)}, []bool{false, false}, true},
		{"too small to split", []Option{WithSplit(len(text)+1, 0)}, []bool{true, false}, false},
	} {
		d, err := NewDecoder(tc.opts...).Decode("yaml", text)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := d.Split != nil; got != tc.split {
			t.Errorf("%s: split %v, want %v", tc.name, got, tc.split)
		}
		items := d.Accounts
		if d.Split != nil {
			for i := range d.Split.Chunks() {
				items = append(items, d.Split.Decode(i).Items...)
			}
		}
		var typed []bool
		for _, it := range items {
			typed = append(typed, it.Account() != nil)
		}
		if !slices.Equal(typed, tc.typed) {
			t.Errorf("%s: typed items %v, want %v", tc.name, typed, tc.typed)
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
	dec := NewDecoder(WithProtocols(testProtocols...))
	wide := []byte("  - {name: a, uid: 1001, ports: [\"40010-40019\", 40050, 40060]}\n  - {name: b, uid: 1002, ports: [40100, 40200]}\n")
	narrow := []byte("  - {name: c, uid: 1003, ports: [41000]}\n  - {name: d, uid: 1004, ports: [\"42000-42001\"]}\n")
	ports := func(items []Item) string {
		var s []string
		for _, it := range items {
			a := it.Account()
			if a == nil {
				t.Fatalf("item %#v is not an Account", it.Value())
			}
			s = append(s, fmt.Sprintf("%s %d %v", a.Name(), a.UID(), a.Ports()))
		}
		return strings.Join(s, "; ")
	}
	fresh, _, ok := dec.plainAccountList(slices.Clone(narrow), 2)
	if !ok {
		t.Fatal("narrow chunk refused")
	}
	want := ports(fresh)
	for range 3 {
		items, bufs, ok := dec.plainAccountList(wide, 2)
		if !ok || bufs == nil {
			t.Fatal("wide chunk refused, or not in pooled memory")
		}
		Chunk{Items: items, OK: true, bufs: bufs}.Release()
		for _, a := range bufs.accounts[:cap(bufs.accounts)] {
			if a.p != nil {
				t.Fatal("released buffers still point at the chunk they held")
			}
		}
		items, bufs, ok = dec.plainAccountList(narrow, 2)
		if !ok {
			t.Fatal("narrow chunk refused")
		}
		if got := ports(items); got != want {
			t.Errorf("decoded into reused memory: %s, want %s", got, want)
		}
		bufs.release()
	}
}
