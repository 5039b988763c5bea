package policies

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// cacheFixture is a main file and its include directory, and a Cache of
// them.
type cacheFixture struct {
	t         *testing.T
	dir, file string
	inc       string
	opts      []Option
	c         *Cache
}

func newCacheFixture(t *testing.T, main string, files map[string]string, opts ...Option) *cacheFixture {
	t.Helper()
	all := map[string]string{"nftpol.yaml": main, "policies.d/": ""}
	for name, text := range files {
		all["policies.d/"+name] = text
	}
	dir := writeFiles(t, all)
	f := &cacheFixture{t: t, dir: dir, file: filepath.Join(dir, "nftpol.yaml"), inc: filepath.Join(dir, "policies.d")}
	f.opts = append([]Option{WithLookup(fakeLookup)}, opts...)
	f.c = NewCache(f.file, f.opts...)
	p, err := f.c.Load()
	f.compare("Load", p, err)
	return f
}

// compare checks that p and err are what Load returns for the files now.
func (f *cacheFixture) compare(what string, p *Policy, err error) {
	f.t.Helper()
	want, wantErr := Load(f.file, f.opts...)
	if errString(err) != errString(wantErr) {
		f.t.Fatalf("%s: error\n%s\nwant (Load)\n%s", what, errString(err), errString(wantErr))
	}
	if diff := cmp.Diff(want, p); diff != "" {
		f.t.Fatalf("%s: policy mismatch (-Load +Cache):\n%s", what, diff)
	}
	if p != nil && p.Digest() != want.Digest() {
		f.t.Fatalf("%s: digest differs", what)
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// reload reloads the paths (relative to the include directory, "" for the
// main file) and compares the result with Load's.
func (f *cacheFixture) reload(what string, names ...string) (*Policy, error) {
	f.t.Helper()
	var changed []string
	for _, n := range names {
		switch {
		case n == "":
			changed = append(changed, f.file)
		case filepath.IsAbs(n):
			changed = append(changed, n)
		default:
			changed = append(changed, filepath.Join(f.inc, n))
		}
	}
	p, err := f.c.Reload(changed)
	f.compare(what, p, err)
	return p, err
}

func (f *cacheFixture) write(name, text string) {
	f.t.Helper()
	path := filepath.Join(f.inc, name)
	if name == "" {
		path = f.file
	}
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

func TestCacheOverlapWithUnchangedFile(t *testing.T) {
	f := newCacheFixture(t, "include: policies.d\n", map[string]string{
		"a.yaml": "accounts:\n  - {name: a, uid: 2001, ports: [40010]}\n",
		"b.yaml": "accounts:\n  - {name: b, uid: 2002, ports: [40020]}\n",
	})
	f.write("b.yaml", "accounts:\n  - {name: b, uid: 2002, ports: [\"40010-40015\"]}\n")
	_, err := f.reload("overlap", "b.yaml")
	if err == nil || !strings.Contains(err.Error(), `b.yaml: account "b": ports: port 40010 overlaps account "a" in `) {
		t.Fatalf("Reload error = %v, want the overlap with a", err)
	}
	// The fix is read alone.
	f.write("b.yaml", "accounts:\n  - {name: b, uid: 2002, ports: [40030]}\n")
	p, err := f.reload("fix", "b.yaml")
	if f.c.fullReads != 1 {
		t.Errorf("%d full reads, want only the first", f.c.fullReads)
	}
	if err != nil || len(p.Accounts) != 2 || p.Accounts[1].Ports[0].Lo != 40030 {
		t.Fatalf("after the fix: %v, %+v", err, p)
	}
}

func TestCacheRemovedFile(t *testing.T) {
	f := newCacheFixture(t, "include: policies.d\n", map[string]string{
		"a.yaml": "accounts:\n  - {name: a, uid: 2001, ports: [40010]}\n",
		"b.yaml": "accounts:\n  - {name: b, uid: 2002, ports: [40020]}\n  - {name: b2, uid: 2003, ports: [40021]}\n",
	})
	if err := os.Remove(filepath.Join(f.inc, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	p, err := f.reload("remove", "b.yaml")
	if err != nil || len(p.Accounts) != 1 || p.Accounts[0].Name != "a" {
		t.Fatalf("after the removal: %v, %+v", err, p)
	}
}

func TestCacheRenameOver(t *testing.T) {
	f := newCacheFixture(t, "include: policies.d\n", map[string]string{
		"a.yaml": "accounts:\n  - {name: a, uid: 2001, ports: [40010]}\n",
		"b.yaml": "accounts:\n  - {name: b, uid: 2002, ports: [40020]}\n",
	})
	// As editors and config management write: a hidden temporary file
	// renamed over the old one.
	f.write(".b.yaml.tmp", "accounts:\n  - {name: b, uid: 2002, ports: [40025]}\n")
	if err := os.Rename(filepath.Join(f.inc, ".b.yaml.tmp"), filepath.Join(f.inc, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	p, err := f.reload("rename over", ".b.yaml.tmp", "b.yaml")
	if err != nil || p.Accounts[1].Ports[0].Lo != 40025 {
		t.Fatalf("after the rename: %v, %+v", err, p)
	}
	// A visible file renamed over another: both names change.
	if err := os.Rename(filepath.Join(f.inc, "a.yaml"), filepath.Join(f.inc, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	p, err = f.reload("rename a over b", "a.yaml", "b.yaml")
	if err != nil || len(p.Accounts) != 1 || p.Accounts[0].Name != "a" || p.Accounts[0].File != filepath.Join(f.inc, "b.yaml") {
		t.Fatalf("after renaming a over b: %v, %+v", err, p)
	}
}

// TestCacheUnnamedHardLink checks that a hard link, whose change inotify
// reports under one name, makes Reload read everything.
func TestCacheUnnamedHardLink(t *testing.T) {
	f := newCacheFixture(t, "include: policies.d\n", map[string]string{
		"a.yaml": "accounts:\n  - {name: a, uid: 2001, ports: [40010]}\n",
	})
	if err := os.Link(filepath.Join(f.inc, "a.yaml"), filepath.Join(f.inc, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	f.reload("link", "b.yaml") // a duplicate account
	f.write("a.yaml", "accounts:\n  - {name: a, uid: 2001, ports: [40011]}\n")
	f.reload("write a, named as a", "a.yaml")
	f.write("b.yaml", "accounts:\n  - {name: a, uid: 2001, ports: [40012]}\n")
	f.reload("write b, named as b", "b.yaml")
}

// randomAccount writes account k of a small pool, so that names, UIDs and
// ports collide now and then.
func randomAccount(r *rand.Rand, k int) string {
	name := fmt.Sprintf("acct%d", k)
	if r.IntN(60) == 0 {
		name = fmt.Sprintf("acct%d", r.IntN(30))
	}
	uid := fmt.Sprintf("uid: %d", 2000+k)
	switch r.IntN(80) {
	case 0:
		uid = fmt.Sprintf("uid: %d", 2000+r.IntN(30))
	case 1:
		uid = "user: admin12"
	case 2:
		uid = "user: nobody-such"
	case 3:
		uid = "uid: 12" // below min_uid
	}
	lo := 40010 + 10*k
	ports := fmt.Sprintf("[%d]", lo)
	switch r.IntN(50) {
	case 0:
		ports = fmt.Sprintf("[\"%d-%d\"]", lo, lo+15) // into the next account's
	case 1:
		ports = "[39000]" // outside the zone
	case 2:
		ports = fmt.Sprintf("[%d, %d]", lo, 40010+10*r.IntN(30))
	}
	return fmt.Sprintf("  - {name: %s, %s, ports: %s%s}\n", name, uid, ports, randomProtocols(r, 6))
}

// randomProtocols is an account's protocols setting: TCP only one time in
// odds, UDP only one in odds, else none (the main file's).
func randomProtocols(r *rand.Rand, odds int) string {
	switch r.IntN(odds) {
	case 0:
		return ", protocols: [tcp]"
	case 1:
		return ", protocols: [udp]"
	}
	return ""
}

func randomFile(r *rand.Rand, base int) string {
	switch r.IntN(100) {
	case 0:
		return ""
	case 1:
		return "accounts: [\n"
	case 2:
		return "table: other\naccounts: []\n"
	case 3:
		return "accounts: []\n"
	}
	var b strings.Builder
	b.WriteString("accounts:\n")
	for j := range 1 + r.IntN(2) {
		k := base*2 + j
		if r.IntN(40) == 0 {
			k = r.IntN(30)
		}
		b.WriteString(randomAccount(r, k))
	}
	return b.String()
}

var randomMains = []string{
	"include: policies.d\n",
	"include: policies.d\nzone: \"40010-40300\"\n",
	"include: policies.d\nmin_uid: 2010\n",
	"include: policies.d\nexempt: [2003]\nprotocols: [tcp]\n",
	"include: policies.d\nbind_guard: {enabled: true, reserved: [40100]}\n",
	"include: policies.d\naccounts:\n  - {name: main1, uid: 3001, ports: [40015]}\n  - {name: acct3, uid: 3002, ports: [40200]}\n",
	"include: nowhere.d\n",
	"include: policies.d\nzone: [\n",
}

// TestCacheRandom checks Reload against Load over random sequences of
// changes to the include files and the main file.
func TestCacheRandom(t *testing.T) {
	for _, perms := range []bool{false, true} {
		for seed := range uint64(4) {
			t.Run(fmt.Sprintf("perms=%v/seed=%d", perms, seed), func(t *testing.T) {
				testCacheRandom(t, seed, perms)
			})
		}
	}
}

func testCacheRandom(t *testing.T, seed uint64, perms bool) {
	r := rand.New(rand.NewPCG(seed, 1))
	names := []string{"a.yaml", "b.yml", "c.json", "d.toml", "e.yaml", "f.yaml", "g.yaml", "h.yaml", "site.YAML", "x.txt", ".hidden.yaml", "sub.yaml"}
	files := map[string]string{}
	for i, n := range names[:5] {
		files[n] = "accounts:\n" + randomAccount(r, 2*i)
	}
	files["c.json"] = `{"accounts": [{"name": "acct37", "uid": 2037, "ports": [40380]}]}`
	files["d.toml"] = "[[accounts]]\nname = \"acct39\"\nuid = 2039\nports = [40400]\n"
	f := newCacheFixture(t, randomMains[0], files, WithPermissionCheck(perms))
	outside := t.TempDir()
	text := func(name string) string {
		t := randomFile(r, slices.Index(names, name))
		switch filepath.Ext(name) {
		case ".json":
			if r.IntN(4) != 0 {
				return fmt.Sprintf(`{"accounts": [{"name": "acct%d", "uid": %d, "ports": [%d]}]}`, 37, 2037, 40380)
			}
			return "{bad"
		case ".toml":
			if r.IntN(4) != 0 {
				return "[[accounts]]\nname = \"acct39\"\nuid = 2039\nports = [40400]\n"
			}
			return "[[accounts]\n"
		}
		return t
	}
	small, errs := 0, 0
	for step := range 300 {
		name := names[r.IntN(len(names))]
		path := filepath.Join(f.inc, name)
		what := fmt.Sprintf("step %d", step)
		var changed []string
		switch op := r.IntN(20); {
		case op < 8:
			what += " write " + name
			if name == "sub.yaml" && r.IntN(2) == 0 {
				os.Remove(path)
				os.Mkdir(path, 0o755)
			} else {
				os.RemoveAll(path)
				f.write(name, text(name))
			}
			changed = []string{name}
		case op < 11:
			what += " remove " + name
			os.RemoveAll(path)
			changed = []string{name}
		case op < 14:
			other := names[r.IntN(len(names))]
			what += " rename " + name + " over " + other
			if os.Rename(path, filepath.Join(f.inc, other)) != nil {
				continue
			}
			changed = []string{name, other}
		case op < 16:
			what += " rename in " + name
			tmp := filepath.Join(outside, "tmp")
			os.WriteFile(tmp, []byte(text(name)), 0o644)
			os.RemoveAll(path)
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
			changed = []string{name}
		case op < 17:
			what += " chmod " + name
			if os.Chmod(path, []os.FileMode{0o644, 0o664}[r.IntN(2)]) != nil {
				continue
			}
			changed = []string{name}
		case op < 18:
			what += " main"
			main := randomMains[0]
			if r.IntN(2) == 0 {
				main = randomMains[r.IntN(len(randomMains))]
			}
			f.write("", main)
			changed = []string{""}
		case op < 19:
			what += " nothing"
		default:
			what += " unrelated"
			changed = []string{filepath.Join(f.dir, "other.txt"), filepath.Join(f.inc, "x.txt")}
		}
		before := f.c.fullReads
		if _, err := f.reload(what, changed...); err != nil {
			errs++
		}
		if f.c.fullReads == before {
			small++
		}
	}
	t.Logf("%d of 300 reloads read only what changed, %d of them checked only the changed files' accounts; %d returned an error", small, f.c.fastReloads, errs)
	if small < 150 || errs < 30 || errs > 290 || f.c.fastReloads < 10 {
		t.Errorf("%d small reloads (%d fast), %d errors: the test no longer tests what it should", small, f.c.fastReloads, errs)
	}
}

// TestCacheFallback checks when Reload reads everything.
func TestCacheFallback(t *testing.T) {
	f := newCacheFixture(t, "include: policies.d\n", map[string]string{
		"a.yaml": "accounts:\n  - {name: a, uid: 2001, ports: [40010]}\n",
	})
	// A new include directory setting is seen at once.
	if err := os.Mkdir(filepath.Join(f.dir, "other.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.dir, "other.d", "z.yaml"), []byte("accounts:\n  - {name: z, user: admin12, ports: [40090]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.write("", "include: other.d\n")
	p, err := f.reload("main", "")
	if err != nil || len(p.Accounts) != 1 || p.Accounts[0].Name != "z" {
		t.Fatalf("after the main file changed: %v %+v", err, p)
	}
	// The include directory itself.
	if err := os.WriteFile(filepath.Join(f.dir, "other.d", "y.yaml"), []byte("accounts:\n  - {name: y, uid: 2005, ports: [40080]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.reload("dir", filepath.Join(f.dir, "other.d"))
	// A symbolic link.
	if err := os.Symlink("y.yaml", filepath.Join(f.dir, "other.d", "w.yaml")); err != nil {
		t.Fatal(err)
	}
	f.reload("symlink", filepath.Join(f.dir, "other.d", "w.yaml"))
	if f.c.doubt == "" {
		t.Error("no doubt with a symbolic link among the include files")
	}
	// The file it leads to changes, named under its own name only.
	if err := os.WriteFile(filepath.Join(f.dir, "other.d", "y.yaml"), []byte("accounts:\n  - {name: y, uid: 2005, ports: [40081]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f.reload("symlink target", filepath.Join(f.dir, "other.d", "y.yaml"))
}

// TestCacheFastRandom checks Reload against Load where most changes are
// good, so that most Reloads take the fast path (only the changed files'
// accounts checked): names, UIDs and ports taken from other accounts, on
// shared and on separate protocols, reserved ports, files removed and
// renamed over others, with and without an account in the main file.
func TestCacheFastRandom(t *testing.T) {
	for seed := range uint64(4) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			testCacheFastRandom(t, seed)
		})
	}
}

func testCacheFastRandom(t *testing.T, seed uint64) {
	r := rand.New(rand.NewPCG(seed, 7))
	const n = 60
	main := "include: policies.d\nbind_guard: {enabled: true, reserved: [40100]}\n"
	if seed%2 == 1 {
		main += "accounts:\n  - {name: main1, uid: 3001, ports: [40015]}\n"
	}
	name := func(k int) string { return fmt.Sprintf("acct-%02d.yaml", k) }
	account := func(k int) string {
		nm, uid, lo, width := fmt.Sprintf("acct%d", k), 2000+k, 40200+10*k, r.IntN(10)
		ports := fmt.Sprintf("[\"%d-%d\"]", lo, lo+width)
		protocols := randomProtocols(r, 4)
		if r.IntN(3) == 0 { // something another account has, maybe
			switch r.IntN(10) {
			case 9: // from below into another's first port
				o := 40200 + 10*r.IntN(n)
				ports = fmt.Sprintf("[\"%d-%d\"]", o-2, o)
			case 0:
				nm = fmt.Sprintf("acct%d", r.IntN(n))
			case 1:
				nm = "main1"
			case 2:
				uid = 2000 + r.IntN(n)
			case 3:
				uid = 3001
			case 4, 5:
				ports = fmt.Sprintf("[%d]", 40200+10*r.IntN(n)+r.IntN(3))
			case 6:
				ports = "[40100]" // reserved
			case 7:
				ports = "[40015]" // main1's
			case 8:
				o := 40200 + 10*r.IntN(n)
				ports = fmt.Sprintf("[%d, \"%d-%d\"]", lo, o, o+5)
			}
		}
		return fmt.Sprintf("  - {name: %s, uid: %d, ports: %s%s}\n", nm, uid, ports, protocols)
	}
	good := func(k int) string {
		return fmt.Sprintf("accounts:\n  - {name: acct%d, uid: %d, ports: [%d]}\n", k, 2000+k, 40200+10*k)
	}
	files := map[string]string{}
	for k := range n {
		files[name(k)] = good(k)
	}
	f := newCacheFixture(t, main, files)
	errs, steps := 0, 400
	var dirty []int // files written with account: where problems may be
	for step := range steps {
		k := r.IntN(n)
		what := fmt.Sprintf("step %d", step)
		var changed []string
		op := r.IntN(40)
		if len(dirty) > 0 && r.IntN(2) == 0 {
			op = 24 // write one back
		}
		switch {
		case op < 24:
			text := "accounts:\n" + account(k)
			if r.IntN(5) == 0 {
				text += fmt.Sprintf("  - {name: acct%db, uid: %d, ports: [%d]}\n", k, 2100+k, 41000+k)
			}
			what += " write " + name(k) + ":\n" + text
			f.write(name(k), text)
			dirty = append(dirty, k)
			changed = []string{name(k)}
		case op < 32:
			if len(dirty) > 0 {
				i := r.IntN(len(dirty))
				k = dirty[i]
				dirty = slices.Delete(dirty, i, i+1)
			}
			what += " write back " + name(k)
			f.write(name(k), good(k))
			changed = []string{name(k)}
		case op < 36:
			what += " remove " + name(k)
			os.Remove(filepath.Join(f.inc, name(k)))
			changed = []string{name(k)}
		case op < 39:
			what += " rename in " + name(k)
			tmp := filepath.Join(f.dir, "staged")
			if err := os.WriteFile(tmp, []byte(good(k)), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, filepath.Join(f.inc, name(k))); err != nil {
				t.Fatal(err)
			}
			changed = []string{name(k)}
		default:
			o := r.IntN(n)
			what += " rename " + name(k) + " over " + name(o)
			if os.Rename(filepath.Join(f.inc, name(k)), filepath.Join(f.inc, name(o))) != nil {
				continue
			}
			dirty = append(dirty, o) // holds k's account now
			changed = []string{name(k), name(o)}
		}
		if _, err := f.reload(what, changed...); err != nil {
			errs++
		}
	}
	t.Logf("%d reloads: %d fast, %d full loads, %d errors", steps, f.c.fastReloads, f.c.fullReads, errs)
	if f.c.fastReloads < steps/4 || errs < steps/10 {
		t.Errorf("%d fast reloads, %d errors: the test no longer tests what it should", f.c.fastReloads, errs)
	}
}

// TestCacheReloadNothingKeepsAccounts: a Reload with nothing changed that
// adds accounts returns the accounts it returned before, in the same
// memory, which callers use to skip work (the agent's digest).
func TestCacheReloadNothingKeepsAccounts(t *testing.T) {
	f := newCacheFixture(t, "include: policies.d\n", map[string]string{
		"a.yaml": "accounts:\n  - {name: a, uid: 2001, ports: [40010]}\n",
		"b.yaml": "accounts:\n  - {name: b, uid: 2002, ports: [40020]}\n",
	})
	f.write("a.yaml", "accounts:\n  - {name: a, uid: 2001, ports: [40011]}\n")
	p1, err := f.reload("change a", "a.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := f.reload("nothing")
	if err != nil {
		t.Fatal(err)
	}
	p3, err := f.reload("an unrelated file", filepath.Join(f.dir, "other.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if &p2.Accounts[0] != &p1.Accounts[0] || &p3.Accounts[0] != &p1.Accounts[0] {
		t.Error("a Reload that changed nothing copied the accounts")
	}
}
