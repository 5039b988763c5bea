package policies

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// withNSS makes Load use n as the system's name service.
func withNSS(n *nss) Option { return func(l *loader) { l.nss, l.lookup = n, nil } }

// fakeNSS is a name service of files in a test directory (passwd, the
// files source, and nsswitch.conf) and a directory (the users only LDAP,
// say, would know) that answers case-blind, as LDAP often does, and
// records each run's names.
type fakeNSS struct {
	nss  *nss
	log  []string
	fail error
}

func newFakeNSS(t *testing.T, nsswitch, passwd, directory string) *fakeNSS {
	t.Helper()
	dir := t.TempDir()
	for name, content := range map[string]string{"nsswitch.conf": nsswitch, "passwd": passwd} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f := &fakeNSS{nss: newNSS()}
	f.nss.passwdPath, f.nss.nsswitchPath = filepath.Join(dir, "passwd"), filepath.Join(dir, "nsswitch.conf")
	f.nss.directory = func(names []string) (map[string]uint32, error) {
		f.log = append(f.log, strings.Join(names, " "))
		if f.fail != nil {
			return nil, f.fail
		}
		found := map[string]uint32{}
		for line := range strings.Lines(directory) {
			fields := strings.Split(line, ":")
			for _, name := range names {
				if strings.EqualFold(fields[0], name) {
					uid, _ := strconv.Atoi(fields[2])
					found[fields[0]] = uint32(uid)
				}
			}
		}
		return found, nil
	}
	return f
}

// runs returns the names of each directory run so far.
func (f *fakeNSS) runs(*testing.T) []string { return f.log }

const (
	testPasswd = "root:x:0:0:root:/root:/bin/bash\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\nadmin12:x:1012:1012::/home/admin12:/bin/sh\n+@nis::::::\n"
	// The directory knows admin12 under another UID: with files first,
	// /etc/passwd's answer wins, as it does for NSS.
	testDirectory = "admin12:*:5012:5012::/home/admin12:/bin/sh\nldap13:*:1013:1013::/home/ldap13:/bin/sh\nldap14:*:1014:1014::/home/ldap14:/bin/sh\nLdap15:*:1015:1015::/home/ldap15:/bin/sh\n"
)

// directoryPolicy is a policy whose accounts name users of both sources,
// one include file each.
func directoryPolicy(t *testing.T, users ...string) string {
	t.Helper()
	files := map[string]string{"policy.yaml": "exempt: [www-data]\ninclude: policies.d\n"}
	for i, u := range users {
		files["policies.d/"+u+".yaml"] = "accounts:\n  - {name: site" + string(rune('a'+i)) + ", user: " + u + ", ports: [" + []string{"40010", "40020", "40030", "40040", "40050"}[i] + "]}\n"
	}
	return filepath.Join(writeFiles(t, files), "policy.yaml")
}

func uidsOf(p *Policy) map[string]uint32 {
	m := map[string]uint32{}
	for _, a := range p.Accounts {
		m[a.User] = a.UID
	}
	return m
}

// TestNSSFilesThenGetentOnce: names /etc/passwd holds resolve from it,
// the others through getent, all of them in one run.
func TestNSSFilesThenGetentOnce(t *testing.T) {
	f := newFakeNSS(t, "# comment\npasswd:   files [NOTFOUND=continue] ldap\ngroup: files\n", testPasswd, testDirectory)
	file := directoryPolicy(t, "admin12", "ldap13", "ldap14")
	p, err := Load(file, withNSS(f.nss))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint32{"admin12": 1012, "ldap13": 1013, "ldap14": 1014}
	if got := uidsOf(p); !mapsEqual(got, want) {
		t.Errorf("UIDs = %v, want %v", got, want)
	}
	if !slices.Equal(p.Exempt, []uint32{33}) {
		t.Errorf("Exempt = %v, want [33] (www-data from the passwd file)", p.Exempt)
	}
	if runs := f.runs(t); !slices.Equal(runs, []string{"ldap13 ldap14"}) {
		t.Errorf("getent runs = %q, want one for both directory users", runs)
	}
}

func mapsEqual(a, b map[string]uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestNSSDirectoryFirst: when nsswitch.conf puts another source before
// files, every name goes to getent, which answers as NSS would.
func TestNSSDirectoryFirst(t *testing.T) {
	f := newFakeNSS(t, "passwd: sss files\n", testPasswd, testDirectory+"www-data:*:33:33::/var/www:/bin/false\n")
	p, err := Load(directoryPolicy(t, "admin12", "ldap13"), withNSS(f.nss))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := uidsOf(p), map[string]uint32{"admin12": 5012, "ldap13": 1013}; !mapsEqual(got, want) {
		t.Errorf("UIDs = %v, want %v (the directory's)", got, want)
	}
	if runs := f.runs(t); !slices.Equal(runs, []string{"admin12 ldap13 www-data"}) {
		t.Errorf("getent runs = %q, want one for all three names", runs)
	}
}

// TestNSSUnknownAndRespelled: a name nobody knows is a problem naming the
// file, account and field; a name the directory answers under another
// spelling resolves, with a run of its own.
func TestNSSUnknownAndRespelled(t *testing.T) {
	f := newFakeNSS(t, "passwd: files ldap\n", testPasswd, testDirectory)
	file := directoryPolicy(t, "ldap13", "nosuchuser")
	_, err := Load(file, withNSS(f.nss))
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 1 {
		t.Fatalf("err = %v, want one problem", err)
	}
	pr := ve.Problems[0]
	if pr.File != filepath.Join(filepath.Dir(file), "policies.d", "nosuchuser.yaml") || pr.Account != "siteb" || pr.Field != "user" || !strings.Contains(pr.Message, `unknown user "nosuchuser"`) {
		t.Errorf("problem = %#v", pr)
	}

	f = newFakeNSS(t, "passwd: files ldap\n", testPasswd, testDirectory)
	p, err := Load(directoryPolicy(t, "ldap13", "ldap15"), withNSS(f.nss))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := uidsOf(p), map[string]uint32{"ldap13": 1013, "ldap15": 1015}; !mapsEqual(got, want) {
		t.Errorf("UIDs = %v, want %v", got, want)
	}
	if runs := f.runs(t); !slices.Equal(runs, []string{"ldap13 ldap15", "ldap15"}) {
		t.Errorf("getent runs = %q, want the batch, then ldap15 alone", runs)
	}
}

// TestNSSGetentFails: a getent that cannot run is a problem saying so,
// for each name it was to resolve.
func TestNSSGetentFails(t *testing.T) {
	f := newFakeNSS(t, "passwd: files ldap\n", testPasswd, testDirectory)
	f.fail = errors.New("getent passwd: exec: \"getent\": executable file not found in $PATH")
	_, err := Load(directoryPolicy(t, "admin12", "ldap13"), withNSS(f.nss))
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 1 || !strings.Contains(ve.Problems[0].Message, `cannot look up user "ldap13": getent passwd: exec`) {
		t.Fatalf("err = %v, want one problem with ldap13 naming getent", err)
	}
}

// TestNSSCacheReloadBatches: the Cache resolves a changed file's new
// directory user through getent, once, and keeps what it learnt.
func TestNSSCacheReloadBatches(t *testing.T) {
	f := newFakeNSS(t, "passwd: files ldap\n", testPasswd, testDirectory)
	file := directoryPolicy(t, "admin12", "ldap13")
	c := NewCache(file, withNSS(f.nss))
	if _, err := c.Load(); err != nil {
		t.Fatal(err)
	}
	inc := filepath.Join(filepath.Dir(file), "policies.d")
	changed := filepath.Join(inc, "ldap14.yaml")
	if err := os.WriteFile(changed, []byte("accounts:\n  - {name: sitez, user: ldap14, ports: [40090]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := c.Reload([]string{changed})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := uidsOf(p), map[string]uint32{"admin12": 1012, "ldap13": 1013, "ldap14": 1014}; !mapsEqual(got, want) {
		t.Errorf("UIDs = %v, want %v", got, want)
	}
	// Unchanged files are not read again, so ldap13 is not asked again.
	if runs := f.runs(t); !slices.Equal(runs, []string{"ldap13", "ldap14"}) {
		t.Errorf("getent runs = %q", runs)
	}
	if c.fullReads != 1 {
		t.Errorf("fullReads = %d, want 1: the Reload read one file", c.fullReads)
	}
}

func TestFilesFirst(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		conf string
		want bool
	}{
		{"passwd: files systemd\n", true},
		{"passwd:compat\n", true},
		{"passwd: [NOTFOUND=return] files\n", true},
		{"passwd: sss files\n", false},
		{"passwd: ldap\n", false},
		{"group: ldap\nhosts: files dns\n", true},
		{"# passwd: ldap\npasswd: files ldap # ldap after\n", true},
		{"passwd:\n", true},
	} {
		path := filepath.Join(dir, "nsswitch.conf")
		if err := os.WriteFile(path, []byte(tc.conf), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := filesFirst(path); got != tc.want {
			t.Errorf("filesFirst(%q) = %v, want %v", tc.conf, got, tc.want)
		}
	}
	if !filesFirst(filepath.Join(dir, "none")) {
		t.Error("no nsswitch.conf: want files first, glibc's default")
	}
}

// TestSystemPasswd resolves through this system's /etc/passwd, as Load
// does without WithGetent: the one user every Linux system has, and one no
// system should have.
func TestSystemPasswd(t *testing.T) {
	l := newLoader(nil)
	if uid, err := l.resolve("root"); err != nil || uid != 0 {
		t.Errorf(`resolve("root") = %d, %v; want 0, nil`, uid, err)
	}
	// Nothing to ask beyond the file: unknown at once, not pending.
	if _, err := l.resolve("nftpol-test-no-such-user"); !errors.Is(err, ErrUnknownUser) {
		t.Errorf("resolve(unknown) error = %v, want ErrUnknownUser", err)
	}
	if l.resolvePending() {
		t.Error("resolvePending: a name is pending without a directory to ask")
	}
}

// TestNSSImpossibleName: a name no passwd entry can have is unknown
// without asking, and does not spoil the run of the others.
func TestNSSImpossibleName(t *testing.T) {
	f := newFakeNSS(t, "passwd: files ldap\n", testPasswd, testDirectory)
	file := filepath.Join(writeFiles(t, map[string]string{
		"policy.yaml": "accounts:\n  - {name: sitea, user: ldap13, ports: [40010]}\n  - {name: siteb, user: \"ldap14:x\", ports: [40020]}\n",
	}), "policy.yaml")
	_, err := Load(file, withNSS(f.nss))
	var ve *ValidationError
	if !errors.As(err, &ve) || len(ve.Problems) != 1 || ve.Problems[0].Account != "siteb" || !strings.Contains(ve.Problems[0].Message, `unknown user "ldap14:x"`) {
		t.Fatalf("err = %v, want siteb's user unknown", err)
	}
	if runs := f.runs(t); !slices.Equal(runs, []string{"ldap13"}) {
		t.Errorf("getent runs = %q, want ldap13 alone", runs)
	}
}
