package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
)

func testRuleset(t *testing.T) (*policies.Policy, *rules.Ruleset) {
	t.Helper()
	p := &policies.Policy{Table: "nftpol", Zone: policies.PortRange{Lo: 40010, Hi: 49999}, MinUID: 1000,
		Loopback: policies.LoopbackAllow, Action: policies.Reject,
		Accounts: []*policies.Account{{Name: "a", UID: 1001, Ports: []policies.PortRange{{Lo: 40010, Hi: 40019}}, Protocols: []policies.Protocol{policies.TCP}}}}
	rs, err := compiler.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	return p, rs
}

func TestStateRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	p, rs := testRuleset(t)
	// What nftpol before format 2 left beside the state goes.
	if err := ensureDir(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, oldRulesetName), []byte("table inet old {}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Save(dir, "test", p.Digest(), rs, nil, nil); err != nil {
		t.Fatal(err)
	}
	st, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rules.RenderString(st.Ruleset()), rules.RenderString(rs); got != want {
		t.Errorf("state round trip:\n%s\nwant\n%s", got, want)
	}
	if _, err := os.Stat(filepath.Join(dir, oldRulesetName)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the old %s is still there (stat: %v)", oldRulesetName, err)
	}
	if len(st.sha) != 64 {
		t.Errorf("state digest %q", st.sha)
	}
	for _, f := range []string{"", stateName} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		want := os.FileMode(0o600)
		if f == "" {
			want = 0o700
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", filepath.Join(dir, f), fi.Mode().Perm(), want)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
}

// manyAccounts is n accounts of one port each, TCP and UDP.
func manyAccounts(n int) *policies.Policy {
	p := &policies.Policy{Table: "nftpol", Zone: policies.PortRange{Lo: 10000, Hi: 65000}, MinUID: 1000,
		Loopback: policies.LoopbackAllow, Action: policies.Reject}
	for i := 0; i < n; i++ {
		port := uint16(10000 + i)
		p.Accounts = append(p.Accounts, &policies.Account{Name: fmt.Sprintf("acct-%06d", i), UID: uint32(100000 + i),
			Ports: []policies.PortRange{{Lo: port, Hi: port}}, Protocols: []policies.Protocol{policies.TCP, policies.UDP}})
	}
	return p
}

// savedState compiles n accounts (manyAccounts), saves their state in a new
// directory and reads it back.
func savedState(t *testing.T, n int) (dir string, p *policies.Policy, rs *rules.Ruleset, st *State) {
	t.Helper()
	dir = filepath.Join(t.TempDir(), "state")
	p = manyAccounts(n)
	rs, err := compiler.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := Save(dir, "test", p.Digest(), rs, nil, nil); err != nil {
		t.Fatal(err)
	}
	if st, err = Load(dir); err != nil {
		t.Fatal(err)
	}
	return dir, p, rs, st
}

// TestStateRoundTripLarge: a state whose sets span several write slices
// reads back element for element, and every damage to the file is refused.
func TestStateRoundTripLarge(t *testing.T) {
	// Every shard of the per-account sets over sectionMin elements.
	dir, p, rs, st := savedState(t, (sectionElements+52)*rules.Shards)
	if len(st.Ruleset().Sets) != len(rs.Sets) {
		t.Fatalf("%d sets read back, want %d", len(st.Ruleset().Sets), len(rs.Sets))
	}
	for i, s := range rs.Sets {
		got := st.Ruleset().Sets[i]
		if !got.SameDefinition(s) || !slices.Equal(got.Elements, s.Elements) {
			t.Errorf("set %s: read back %d elements (definition equal: %v), wrote %d", s.Name, len(got.Elements), got.SameDefinition(s), len(s.Elements))
		}
	}
	if !rules.SyncExact(st.Ruleset(), rs).Plan.Empty() {
		t.Error("the ruleset read back differs from the one saved")
	}
	if st.PolicyDigest != p.Digest() || len(st.PolicyDigest) != 64 {
		t.Errorf("policy digest %q, want %q", st.PolicyDigest, p.Digest())
	}

	good, err := os.ReadFile(filepath.Join(dir, stateName))
	if err != nil {
		t.Fatal(err)
	}
	text := string(good)
	// The per-account sets (2,100 elements per shard) are in section
	// files; the state refers to them by digest (TCP and UDP hold the same
	// elements here, so each shard's two share one).
	sections, _ := filepath.Glob(filepath.Join(dir, "elements.*"))
	if len(sections) != rules.Shards || strings.Count(text, "\n") > 40 {
		t.Fatalf("%d section files, a state of %d lines; want %d and the elements outside:\n%.500s", len(sections), strings.Count(text, "\n"), rules.Shards, text)
	}
	element := "\n100042\t10042\t10042\tacct-000042\n"
	var section, sectionText string
	for _, f := range sections {
		if b, _ := os.ReadFile(f); strings.Contains(string(b), element) {
			section, sectionText = f, string(b)
		}
	}
	if section == "" {
		t.Fatalf("no section file holds %q", element)
	}
	refused := func(name string) {
		t.Helper()
		if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "is corrupt") || !strings.Contains(err.Error(), "nftpol apply") {
			t.Errorf("%s: loadState = %v, want a corrupt-state error saying what to do", name, err)
		}
	}
	damaged := map[string]string{
		"truncated":        text[:len(text)/2],
		"without trailer":  text[:strings.LastIndex(text[:len(text)-1], "\n")+1],
		"newer format":     strings.Replace(text, "nftpol state 2\n", "nftpol state 3\n", 1),
		"not a state":      "{\"format\": 2}\n",
		"empty":            "",
		"no final newline": text[:len(text)-1],
	}
	for name, content := range damaged {
		if content == text {
			t.Fatalf("%s: the damage did not apply", name)
		}
		if err := os.WriteFile(filepath.Join(dir, stateName), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		refused(name + " state")
	}
	if err := os.WriteFile(filepath.Join(dir, stateName), good, 0o600); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{
		"element changed": strings.Replace(sectionText, element, "\n100042\t10042\t10043\tacct-000042\n", 1),
		"element dropped": strings.Replace(sectionText, element, "\n", 1),
		"truncated":       sectionText[:len(sectionText)/2],
	} {
		if err := os.WriteFile(section, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		refused(name + " section")
	}
	if err := os.Remove(section); err != nil {
		t.Fatal(err)
	}
	refused("missing section")
}

// TestStateSharesEqualSections: TCP's and UDP's sets of the same elements
// share one section file, which is read and parsed once: the two sets
// share the elements read.
func TestStateSharesEqualSections(t *testing.T) {
	_, _, rs, st := savedState(t, (sectionElements+52)*rules.Shards)
	for k := uint32(0); k < rules.Shards; k++ {
		tcp, udp := st.Ruleset().Set(rules.PortsSet(rules.TCP, k)).Elements, st.Ruleset().Set(rules.PortsSet(rules.UDP, k)).Elements
		if !slices.Equal(tcp, rs.Set(rules.PortsSet(rules.TCP, k)).Elements) {
			t.Fatalf("shard %d read back differs", k)
		}
		if len(tcp) == 0 || &tcp[0] != &udp[0] {
			t.Errorf("shard %d: tcp and udp hold equal elements but were parsed twice", k)
		}
	}
}

// TestSectionsFollowTheState: an unchanged large set keeps its section file
// (not written again), a changed one gets a new file, and the files no
// state refers to are removed.
func TestSectionsFollowTheState(t *testing.T) {
	dir, p, _, st := savedState(t, (sectionElements+52)*rules.Shards)
	files := func() map[string]time.Time {
		m := map[string]time.Time{}
		names, _ := filepath.Glob(filepath.Join(dir, "elements.*"))
		for _, n := range names {
			fi, err := os.Stat(n)
			if err != nil {
				t.Fatal(err)
			}
			m[filepath.Base(n)] = fi.ModTime()
		}
		return m
	}
	before := files()
	// udp_ports_0 changed, tcp_ports_0 (same elements before) shared
	// with the recorded state.
	next := rules.Sync(st.Ruleset(), st.Ruleset()).Target
	for i, s := range next.Sets {
		if s.Name == rules.PortsSet(rules.UDP, 0) {
			c := *s
			c.Elements = slices.Clone(s.Elements[1:])
			next.Sets[i] = &c
		}
	}
	if err := Prepare(dir, "test", p.Digest, next, st).Commit(nil); err != nil {
		t.Fatal(err)
	}
	after := files()
	kept, added := 0, 0
	for name, mtime := range after {
		if old, ok := before[name]; ok && old.Equal(mtime) {
			kept++
		} else if !ok {
			added++
		}
	}
	if len(before) != rules.Shards || len(after) != len(before)+1 || kept != len(before) || added != 1 {
		t.Errorf("section files before %v, after %v: want the unchanged one kept, one new, the old one gone", before, after)
	}
	got, err := Load(dir)
	if err != nil || !rules.SyncExact(got.Ruleset(), next).Plan.Empty() {
		t.Errorf("read back: %v", err)
	}
}

// TestStateReadsFormat1: the state.json of nftpol before format 2 still
// restores (an upgrade must not leave a host unprotected at its next boot),
// its damage is still refused, and the next save replaces it.
func TestStateReadsFormat1(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	p := manyAccounts(50)
	rs, err := compiler.Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := ensureDir(dir); err != nil {
		t.Fatal(err)
	}
	rj, err := marshalRulesetV1(rs)
	if err != nil {
		t.Fatal(err)
	}
	v1 := State{Format: 1, Version: "old", Table: rs.Table, RulesetDigest: digest([]byte(rules.RenderString(rs))), RecordDigest: digest(rj), RulesetJSON: rj}
	b, err := json.Marshal(v1)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, stateNameV1), b, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !rules.SyncExact(st.Ruleset(), rs).Plan.Empty() || st.VerifyRendered() != nil || st.Version != "old" {
		t.Errorf("format 1 read back as a different ruleset (render check: %v)", st.VerifyRendered())
	}
	tampered := strings.Replace(string(b), `100001\t10001\t10001`, `100001\t10001\t10002`, 1)
	if tampered == string(b) {
		t.Fatal("the tampering did not apply")
	}
	if err := os.WriteFile(filepath.Join(dir, stateNameV1), []byte(tampered), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "record digest") {
		t.Errorf("tampered format 1: loadState = %v, want a record digest error", err)
	}
	if err := Save(dir, "test", p.Digest(), rs, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, stateNameV1)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("saving format 2 left %s behind (stat: %v)", stateNameV1, err)
	}
	if st, err := Load(dir); err != nil || st.Format != stateFormat {
		t.Errorf("after the save: %v, format %v", err, st)
	}
}

func TestStateRefusesSymlinkAndMissing(t *testing.T) {
	base := t.TempDir()
	real := filepath.Join(base, "real")
	link := filepath.Join(base, "link")
	if err := os.Mkdir(real, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	p, rs := testRuleset(t)
	if err := Save(link, "test", p.Digest(), rs, nil, nil); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("saveState through a symlinked directory: %v", err)
	}
	if _, err := Load(real); !errors.Is(err, ErrNoState) {
		t.Errorf("loadState of an empty directory: %v, want ErrNoState", err)
	}
}

// TestPrefetchedStateIsCheckedUnderTheLock: a state read before the lock is
// used only while the file is still the one read; replaced (by another
// apply) or newly written, Take says so and the caller reads it again.
func TestPrefetchedStateIsCheckedUnderTheLock(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	p1, p2 := manyAccounts(3), manyAccounts(5)
	rs1, _ := compiler.Compile(p1)
	rs2, _ := compiler.Compile(p2)
	accounts := func(st *State, err error) int {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return len(rules.Accounts(st.Ruleset())[rules.TCP])
	}

	// Nothing there when prefetched, written before Take.
	pf := StartPrefetch(dir)
	if _, err := Load(dir); !errors.Is(err, ErrNoState) {
		t.Fatalf("Load of a new directory: %v", err)
	}
	pf.ch <- <-pf.ch // the prefetch has found nothing
	if err := Save(dir, "test", p1.Digest(), rs1, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := pf.Take(); ok {
		t.Error("a state written after an empty prefetch: Take says the prefetch is current")
	}

	// Unchanged: the prefetched state is used.
	pf = StartPrefetch(dir)
	st, err, ok := pf.Take()
	if !ok {
		t.Fatal("unchanged state: Take says the prefetch is stale")
	}
	if n := accounts(st, err); n != 3 {
		t.Errorf("unchanged state: %d accounts, want 3", n)
	}

	// Replaced between the prefetch and Take.
	pf = StartPrefetch(dir)
	pf.ch <- <-pf.ch // the prefetch has read the old state
	if err := Save(dir, "test", p2.Digest(), rs2, nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := pf.Take(); ok {
		t.Error("state replaced after the prefetch: Take says the prefetch is current")
	}
	if n := accounts(Load(dir)); n != 5 {
		t.Errorf("state replaced after the prefetch: %d accounts read again, want 5", n)
	}

	// Dropped without Take.
	StartPrefetch(dir).Close()
}

// TestStateReusesUnchangedSets: a set the new ruleset shares with the
// recorded state is written from the text read, byte for byte what
// formatting it again gives; a changed set is formatted.
func TestStateReusesUnchangedSets(t *testing.T) {
	dir, p, _, st := savedState(t, 3000)
	// Laid over the recorded state: tcp_ports_0 shared, tcp_open changed.
	changed := rules.Sync(st.Ruleset(), st.Ruleset()).Target
	for i, s := range changed.Sets {
		if s.Name == rules.OpenSet(rules.TCP) {
			c := *s
			c.Elements = []rules.Element{{Lo: 10000, Hi: 20000}}
			changed.Sets[i] = &c
		}
	}
	if _, ok := st.elementText(changed.Set(rules.PortsSet(rules.TCP, 0))); !ok {
		t.Fatal("the shared tcp_ports_0 is not reused")
	}
	if _, ok := st.elementText(changed.Set(rules.OpenSet(rules.TCP))); ok {
		t.Fatal("the changed tcp_open is reused")
	}
	body := func(from *State) string {
		if err := Prepare(dir, "test", p.Digest, changed, from).Commit(nil); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dir, stateName))
		if err != nil {
			t.Fatal(err)
		}
		text := strings.TrimSuffix(string(b), "\n")
		text = text[:strings.LastIndex(text, "\n")]   // the digest
		return text[:strings.LastIndex(text, "\n")+1] // the header
	}
	if reused, formatted := body(st), body(nil); reused != formatted {
		t.Errorf("the state written from the text read differs from the one formatted (%d and %d bytes)", len(reused), len(formatted))
	}
	got, err := Load(dir)
	if err != nil || !rules.SyncExact(got.Ruleset(), changed).Plan.Empty() {
		t.Errorf("read back: %v, differs: %v", err, err == nil && !rules.SyncExact(got.Ruleset(), changed).Plan.Empty())
	}
}

func TestRecordedIsWhatLoadReadsBack(t *testing.T) {
	dir, p, rs, _ := savedState(t, (sectionElements+52)*rules.Shards)
	ps := Prepare(dir, "test", p.Digest, rs, nil)
	if ps.Recorded() != nil {
		t.Fatal("Recorded before Commit")
	}
	id := &kernel.Identity{Generation: 7}
	if err := ps.Commit(id); err != nil {
		t.Fatal(err)
	}
	mem := ps.Recorded()
	disk, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if mem.Digest() != disk.Digest() || mem.Path() != disk.Path() || mem.Table != disk.Table ||
		mem.PolicyDigest != disk.PolicyDigest || *mem.Kernel != *disk.Kernel || !mem.AppliedAt.Equal(disk.AppliedAt) {
		t.Errorf("in memory %+v, read back %+v", mem, disk)
	}
	if !rules.SyncExact(mem.Ruleset(), disk.Ruleset()).Plan.Empty() {
		t.Error("the ruleset in memory differs from the one read back")
	}
	// The recorded state keeps no pointer into what the caller passed:
	// an apply's identity lives in its result, which would live on (with
	// its plan) as long as the state.
	if mem.Kernel == id {
		t.Error("the state in memory holds the caller's identity, not a copy")
	}
	// The next state written from the one in memory reuses its section
	// files, as one written from the state read back does.
	shard := rs.Set(rules.PortsSet(rules.TCP, 0))
	if text, ok := mem.elementText(shard); !ok || text.sum == "" {
		t.Errorf("the section of %s is not reused from the state in memory", shard.Name)
	}
}

// TestRecordedKeepsInlineText: the state in memory keeps the lines of the
// sets written inline (below sectionElements), as the state read back does,
// so that the next state written from it (the agent's next apply) copies
// them instead of formatting every shard again; and what it writes so is
// what Load reads back.
func TestRecordedKeepsInlineText(t *testing.T) {
	dir, p, rs, _ := savedState(t, 100*rules.Shards)
	ps := Prepare(dir, "test", p.Digest, rs, nil)
	if err := ps.Commit(nil); err != nil {
		t.Fatal(err)
	}
	mem := ps.Recorded()
	disk, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	shard := rs.Set(rules.PortsSet(rules.TCP, 0))
	got, ok := mem.elementText(shard)
	if !ok || got.sum != "" || got.lines == "" {
		t.Fatalf("the lines of %s are not kept in memory: %+v %v", shard.Name, got, ok)
	}
	if want := disk.text[shard.Name]; got.lines != want.lines {
		t.Errorf("the lines kept in memory differ from those read back:\n%q\n%q", got.lines, want.lines)
	}
	before, err := os.ReadFile(filepath.Join(dir, stateName))
	if err != nil {
		t.Fatal(err)
	}
	next := Prepare(dir, "test", p.Digest, rs, mem)
	if err := next.Commit(nil); err != nil {
		t.Fatal(err)
	}
	if again, err := Load(dir); err != nil || !rules.SyncExact(again.Ruleset(), rs).Plan.Empty() {
		t.Fatalf("the state written from the kept lines reads back as %v (%v)", again, err)
	}
	after, err := os.ReadFile(filepath.Join(dir, stateName))
	if err != nil {
		t.Fatal(err)
	}
	// Only the time and the trailer's digest may differ.
	cut := func(b []byte) string { s, _, _ := strings.Cut(string(b), "{\"format\""); return s }
	if cut(before) != cut(after) {
		t.Error("the elements written from the kept lines differ from the ones formatted")
	}
}

// TestSealFinishesTheStateBeforeCommit: Seal writes the header with the
// identity the commit will leave and syncs the file before Commit is
// called, and Commit with that identity puts the very file into place; a
// Commit whose identity or guard differs from what was sealed records its
// own, not the sealed ones.
func TestSealFinishesTheStateBeforeCommit(t *testing.T) {
	for _, n := range []int{3, (sectionElements + 52) * rules.Shards} {
		dir, p, rs, _ := savedState(t, n)
		id := kernel.Identity{BootID: "b", NetnsCookie: 9, Generation: 41}
		guard := &Guard{ZoneLo: 40010, ZoneHi: 49999, MinUID: 1000}

		ps := Prepare(dir, "test", p.Digest, rs, nil)
		before := time.Now()
		ps.Seal(id, guard)
		<-ps.sealed
		if ps.sealErr != nil {
			t.Fatal(ps.sealErr)
		}
		// Before Commit, the temporary file is a whole state already.
		sealed, err := os.ReadFile(ps.body.Name())
		if err != nil {
			t.Fatal(err)
		}
		st, err := decodeState(dir, sealed)
		if err != nil {
			t.Fatalf("n=%d: the sealed file is not a state: %v", n, err)
		}
		if st.Kernel == nil || *st.Kernel != id || st.BindGuard == nil || st.BindGuard.ZoneHi != guard.ZoneHi || st.AppliedAt.Before(before) {
			t.Fatalf("n=%d: sealed %+v, want identity %+v and guard %+v", n, st, id, guard)
		}
		ps.SetGuard(guard)
		if err := ps.Commit(&id); err != nil {
			t.Fatal(err)
		}
		onDisk, err := os.ReadFile(filepath.Join(dir, stateName))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(onDisk, sealed) {
			t.Errorf("n=%d: Commit with the sealed identity wrote the state again", n)
		}
		if got, err := Load(dir); err != nil || got.Digest() != ps.Recorded().Digest() {
			t.Fatalf("n=%d: read back %v, %v; recorded %s", n, got, err, ps.Recorded().Digest())
		}

		// The commit left another identity than the one sealed (another
		// guard): what the state says is what Commit was told.
		other := id
		other.Generation++
		otherGuard := &Guard{ZoneLo: 40010, ZoneHi: 40999, MinUID: 1000}
		for _, c := range []struct {
			id    kernel.Identity
			guard *Guard
		}{{other, guard}, {id, otherGuard}} {
			ps := Prepare(dir, "test", p.Digest, rs, nil)
			ps.Seal(id, guard)
			ps.SetGuard(c.guard)
			if err := ps.Commit(&c.id); err != nil {
				t.Fatal(err)
			}
			got, err := Load(dir)
			if err != nil {
				t.Fatal(err)
			}
			if *got.Kernel != c.id || got.BindGuard.ZoneHi != c.guard.ZoneHi || got.Digest() != ps.Recorded().Digest() {
				t.Errorf("n=%d: committed with %+v and guard %+v, read back %+v and %+v", n, c.id, c.guard, *got.Kernel, *got.BindGuard)
			}
		}
	}
}
