package views

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
)

var both = []policies.Protocol{policies.TCP, policies.UDP}

func testPolicy() *policies.Policy {
	return &policies.Policy{Table: "nftpol", Zone: policies.PortRange{Lo: 40010, Hi: 49999}, MinUID: 1000,
		Exempt: []uint32{1500}, Loopback: policies.LoopbackEnforce, Action: policies.Reject, Protocols: both,
		Accounts: []*policies.Account{
			{Name: "site12", UID: 1012, Ports: []policies.PortRange{{Lo: 40010, Hi: 40019}, {Lo: 40500, Hi: 40500}}, Protocols: both},
			{Name: "site13", UID: 1013, Ports: []policies.PortRange{{Lo: 40020, Hi: 40029}}, Protocols: []policies.Protocol{policies.TCP}},
		}}
}

func compile(t testing.TB, p *policies.Policy) *rules.Ruleset {
	t.Helper()
	rs, err := compiler.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// asUser makes Publish's chown a no-op without root: the owner is then
// checked by what the test asks chown to do, not by the file.
var chownMu sync.Mutex

func recordOwners(t testing.TB) map[string]int {
	t.Helper()
	chownMu.Lock()
	owners := map[string]int{}
	saved := chown
	chown = func(fd, uid int) error {
		name, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		if err != nil {
			return err
		}
		owners[filepath.Base(name)] = uid
		if os.Geteuid() == 0 {
			return saved(fd, uid)
		}
		return nil
	}
	t.Cleanup(func() { chown = saved; chownMu.Unlock() })
	return owners
}

func TestViewsOfRuleset(t *testing.T) {
	at := time.Date(2026, 11, 26, 3, 27, 15, 0, time.UTC)
	host, views := Views(compile(t, testPolicy()), at)
	wantHost := Host{Format: Format, Table: "nftpol", Zone: policies.PortRange{Lo: 40010, Hi: 49999}, MinUID: 1000,
		Loopback: policies.LoopbackEnforce, AppliedAt: at}
	if host != wantHost {
		t.Errorf("host = %+v, want %+v", host, wantHost)
	}
	common := View{Format: Format, Table: "nftpol", Zone: wantHost.Zone, MinUID: 1000, Loopback: policies.LoopbackEnforce, PublishedAt: at}
	want := map[uint32]View{}
	v := common
	v.UID, v.Account, v.Enforced = 1012, "site12", true
	v.Ports = map[rules.Proto][]policies.PortRange{
		rules.TCP: {{Lo: 40010, Hi: 40019}, {Lo: 40500, Hi: 40500}},
		rules.UDP: {{Lo: 40010, Hi: 40019}, {Lo: 40500, Hi: 40500}},
	}
	want[1012] = v
	v = common
	v.UID, v.Account, v.Enforced = 1013, "site13", true
	v.Ports = map[rules.Proto][]policies.PortRange{rules.TCP: {{Lo: 40020, Hi: 40029}}}
	want[1013] = v
	v = common
	v.UID, v.Exempt = 1500, true
	want[1500] = v
	if !reflect.DeepEqual(views, want) {
		t.Errorf("views:\n%+v\nwant\n%+v", views, want)
	}

	// A table replaced in place holds its sets under their other names
	// (exempt_b): what the kernel enforces is the same.
	rebuilt := compile(t, testPolicy())
	for _, s := range rebuilt.Sets {
		if s.Name == rules.ExemptSet {
			s.Name += "_b"
			s.Role = rules.Role{}
			s.DeriveRole()
		}
	}
	if _, got := Views(rebuilt, at); !reflect.DeepEqual(got, want) {
		t.Errorf("views of the sets under their other names:\n%+v\nwant\n%+v", got, want)
	}

	p := testPolicy()
	p.Loopback, p.MinUID = policies.LoopbackAllow, 0
	if host, _ := Views(compile(t, p), at); host.Loopback != policies.LoopbackAllow || host.MinUID != 0 {
		t.Errorf("loopback allow, min_uid 0: host = %+v", host)
	}
}

func TestViewFileRoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 26, 3, 27, 15, 123456789, time.UTC)
	host, views := Views(compile(t, testPolicy()), at)
	for uid, v := range views {
		b := appendView(nil, &v)
		got, err := ParseView(b)
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if !reflect.DeepEqual(*got, v) {
			t.Errorf("uid %d: %s decodes to %+v, want %+v", uid, b, *got, v)
		}
	}
	v := views[1013]
	if got := string(appendView(nil, &v)); got != `{"format":1,"uid":1013,"account":"site13","ports":{"tcp":["40020-40029"]},"enforced":true,"table":"nftpol","zone":"40010-49999","min_uid":1000,"loopback":"enforce","published_at":"2026-11-26T03:27:15.123456789Z"}`+"\n" {
		t.Errorf("view file:\n%s", got)
	}
	host.Source = `boot "x"`
	got, err := ParseHost(appendHost(nil, &host))
	if err != nil || *got != host {
		t.Errorf("host round trip: %+v, %v; want %+v", got, err, host)
	}
	// What a name could hold that JSON must escape.
	v.Account = "a\"b\\c\x01"
	if got, err := ParseView(appendView(nil, &v)); err != nil || got.Account != v.Account {
		t.Errorf("escaped name: %+v, %v", got, err)
	}
	if _, err := ParseView([]byte(`{"format":2}`)); err == nil {
		t.Error("format 2 accepted")
	}
}

// runDir is a run directory the test owns.
func runDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "run")
	return dir
}

type fileState struct {
	ino   uint64
	mode  fs.FileMode
	bytes string
}

func files(t *testing.T, dir string) map[string]fileState {
	t.Helper()
	out := map[string]fileState{}
	entries, err := os.ReadDir(filepath.Join(dir, UIDDir))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		path := filepath.Join(dir, UIDDir, e.Name())
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = fileState{st.Ino, fs.FileMode(st.Mode & 0o7777), string(b)}
	}
	return out
}

func readView(t *testing.T, dir string, uid uint32) *View {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, UIDDir, strconv.Itoa(int(uid))))
	if err != nil {
		t.Fatal(err)
	}
	v, err := ParseView(b)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestPublishWritesOnlyWhatChanged(t *testing.T) {
	owners := recordOwners(t)
	dir := runDir(t)
	p := testPolicy()
	first := compile(t, p)
	t0 := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	st, err := Publish(dir, Publication{first, "gen 1"}, nil, t0)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Full || st.Written != 3 || st.Removed != 0 {
		t.Errorf("first publication: %+v, want full, 3 written", st)
	}
	for name, want := range map[string]fs.FileMode{"": 0o755, UIDDir: 0o711, HostFile: 0o644} {
		fi, err := os.Lstat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %04o, want %04o", name, fi.Mode().Perm(), want)
		}
	}
	before := files(t, dir)
	for _, name := range []string{"1012", "1013", "1500"} {
		if before[name].mode != 0o400 {
			t.Errorf("uid/%s: mode %04o, want 0400", name, before[name].mode)
		}
		if owners[name] != mustAtoi(name) {
			t.Errorf("uid/%s given to %d", name, owners[name])
		}
	}
	if len(before) != 3 {
		t.Errorf("uid/ holds %v", before)
	}

	// One account changes: as apply lays it over what the kernel held.
	p.Accounts[0].Ports = []policies.PortRange{{Lo: 40010, Hi: 40015}}
	second := rules.Sync(first, compile(t, p)).Target
	t1 := t0.Add(time.Hour)
	st, err = Publish(dir, Publication{second, "gen 2"}, &Publication{first, "gen 1"}, t1)
	if err != nil {
		t.Fatal(err)
	}
	if st.Full || st.Written != 1 || st.Removed != 0 {
		t.Errorf("one account changed: %+v, want 1 written", st)
	}
	after := files(t, dir)
	if after["1013"] != before["1013"] || after["1500"] != before["1500"] {
		t.Error("views of unchanged accounts were written again")
	}
	if v := readView(t, dir, 1012); !slices.Equal(v.Ports[rules.TCP], p.Accounts[0].Ports) || !v.PublishedAt.Equal(t1) {
		t.Errorf("changed view: %+v", v)
	}
	if h, err := readHost(dir); err != nil || !h.AppliedAt.Equal(t1) || h.Source != "gen 2" {
		t.Errorf("host.json: %+v, %v", h, err)
	}

	// Nothing changes: no view written, host.json says when.
	st, err = Publish(dir, Publication{second, "gen 2"}, &Publication{second, "gen 2"}, t1.Add(time.Minute))
	if err != nil || st.Full || st.Written+st.Removed != 0 {
		t.Errorf("nothing changed: %+v, %v", st, err)
	}

	// An account removed, an exempt UID no longer exempt.
	p.Accounts = p.Accounts[:1]
	p.Exempt = nil
	third := rules.Sync(second, compile(t, p)).Target
	st, err = Publish(dir, Publication{third, "gen 3"}, &Publication{second, "gen 2"}, t1.Add(2*time.Minute))
	if err != nil || st.Full || st.Written != 0 || st.Removed != 2 {
		t.Errorf("removed: %+v, %v; want 2 removed", st, err)
	}
	if got := files(t, dir); len(got) != 1 || got["1012"] != after["1012"] {
		t.Errorf("uid/ after the removal: %v", got)
	}
}

func mustAtoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		panic(err)
	}
	return n
}

func TestPublishRewritesWhatItCannotTrust(t *testing.T) {
	recordOwners(t)
	dir := runDir(t)
	p := testPolicy()
	first := compile(t, p)
	t0 := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	if _, err := Publish(dir, Publication{first, "gen 1"}, nil, t0); err != nil {
		t.Fatal(err)
	}
	// A file nobody published (or of an account removed while a
	// publication failed) is removed by the next full one.
	if err := os.WriteFile(filepath.Join(dir, UIDDir, "4242"), []byte("{}"), 0o400); err != nil {
		t.Fatal(err)
	}
	// The previous publication is not what dir holds (its source
	// differs): every view is written again.
	st, err := Publish(dir, Publication{first, "gen 5"}, &Publication{first, "gen 4"}, t0)
	if err != nil || !st.Full || st.Written != 3 || st.Removed != 1 {
		t.Errorf("untrusted run directory: %+v, %v; want full, 3 written, 1 removed", st, err)
	}
	// A change of the zone is in every view.
	p.Zone.Hi = 48000
	st, err = Publish(dir, Publication{rules.Sync(first, compile(t, p)).Target, "gen 6"}, &Publication{first, "gen 5"}, t0)
	if err != nil || !st.Full || st.Written != 3 {
		t.Errorf("zone changed: %+v, %v; want full", st, err)
	}
	if v := readView(t, dir, 1013); v.Zone.Hi != 48000 {
		t.Errorf("zone not republished: %+v", v)
	}
}

func TestPublishRefusesForeignDirectories(t *testing.T) {
	recordOwners(t)
	rs := compile(t, testPolicy())
	base := t.TempDir()
	link := filepath.Join(base, "link")
	if err := os.Symlink(base, link); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{link, open} {
		if _, err := Publish(dir, Publication{rs, "x"}, nil, time.Now()); err == nil {
			t.Errorf("published into %s", dir)
		}
	}
	if _, err := Publish(filepath.Join(base, "missing", "run"), Publication{rs, "x"}, nil, time.Now()); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing parent: %v", err)
	}
}

func TestWithdraw(t *testing.T) {
	recordOwners(t)
	dir := runDir(t)
	if _, err := Publish(dir, Publication{compile(t, testPolicy()), "x"}, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := Withdraw(dir); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("left behind: %v", entries)
	}
}

func TestPolicyOfView(t *testing.T) {
	host, views := Views(compile(t, testPolicy()), time.Now())
	v := views[1013]
	p := host.Policy(&v)
	if len(p.Accounts) != 1 || p.Accounts[0].Name != "site13" || !slices.Equal(p.Accounts[0].Protocols, []policies.Protocol{policies.TCP}) {
		t.Errorf("policy of site13: %+v", p.Accounts)
	}
	v = views[1012]
	if p := host.Policy(&v); len(p.Accounts) != 1 || !slices.Equal(p.Accounts[0].Protocols, both) {
		t.Errorf("policy of site12: %+v", p.Accounts)
	}
	v = views[1500]
	if p := host.Policy(&v); len(p.Accounts) != 0 || !slices.Equal(p.Exempt, []uint32{1500}) {
		t.Errorf("policy of exempt 1500: %+v", p)
	}
}
