package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
)

// The state is what apply records after a successful transaction, and all
// that restore needs at boot: the ruleset itself (numeric UIDs only, no
// policy, no NSS), with a digest that catches a truncated or edited file.
//
// stateName holds it in format 2, a text file:
//
//	nftpol state 2
//	elements tcp_ports_0 6250            for each set with elements, in the ruleset's order:
//	100000<TAB>10000<TAB>10000<TAB>acct-000000    that many lines (rules.AppendElementLines)
//	...
//	{"version":...,"ruleset":{...}}      one line of JSON: header and ruleset, sets without elements
//	sha256 <hex>                         of every byte before this line
//
// The header comes last because it holds what is known only after the
// kernel committed (the time, the kernel's identity): everything before it
// is written while the kernel works (pendingState).
//
// At 50,000 accounts format 1 (stateNameV1: one JSON document whose sets held
// their elements as JSON strings) took about 65 ms to read and 85 ms to
// write, most of a one-account apply; this takes a few. Format 1 is still
// read, so an upgrade keeps restoring at boot until the next apply rewrites
// it.
const (
	stateName     = "state"
	stateNameV1   = "state.json"
	stateFormat   = 2
	stateFormatV1 = 1
	stateMagic    = "nftpol state 2\n"
	stateTrailer  = "sha256 "
	// oldRulesetName is the rendered ruleset nftpol before format 2 kept
	// beside the state.
	oldRulesetName = "ruleset.nft"
)

// stateFile is the header of the state; ruleset is decoded from the whole
// file after its digest was checked.
type stateFile struct {
	Format    int       `json:"format"`
	Version   string    `json:"version"`
	AppliedAt time.Time `json:"applied_at"`
	Table     string    `json:"table"`
	// PolicyDigest is the sha256 of the resolved policy (policyDigest):
	// it changes when anything that decides the ruleset changes.
	PolicyDigest string `json:"policy_sha256"`
	// RulesetDigest (format 1 only) is the sha256 of the ruleset rendered
	// in nft syntax, the text of the ruleset.nft format 1 came with;
	// restore checks it. Rendering 50,000 accounts for it and for
	// ruleset.nft cost every apply 12 ms of CPU: format 2 has neither,
	// and `nftpol export --applied` renders the state on demand.
	RulesetDigest string `json:"ruleset_sha256,omitempty"`
	// RecordDigest (format 1 only) is the sha256 of the bytes of Ruleset;
	// format 2 ends with the digest of the whole file instead.
	RecordDigest string `json:"record_sha256,omitempty"`
	// Ruleset is the ruleset as JSON: whole in format 1, without elements
	// in format 2.
	Ruleset json.RawMessage `json:"ruleset"`
	// Kernel identifies the kernel ruleset right after the apply. While
	// the kernel still has this identity, nobody has committed anything
	// since, and Ruleset is what the kernel holds.
	Kernel *kernel.Identity `json:"kernel,omitempty"`

	ruleset *rules.Ruleset // decoded and checked against the digest
	// text holds, per set, its element lines as read (format 2), when
	// they are in order: what prepareState writes again for a set whose
	// elements it still has.
	text map[string]section
	path string
	sha  string // the digest checked: of the file (format 2), of the record (format 1)
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// policyDigest hashes what decides the ruleset in p, in a fixed text form
// (file names aside): encoding 50,000 accounts as JSON for it cost about
// 15 ms of every apply.
func policyDigest(p *policies.Policy) string {
	h := sha256.New()
	b := make([]byte, 0, 64<<10)
	field := func(v ...any) {
		b = fmt.Appendln(b, v...)
	}
	field("table", p.Table, "zone", p.Zone.Lo, p.Zone.Hi, "min_uid", p.MinUID, "exempt", p.Exempt)
	field("loopback", p.Loopback, "action", p.Action, "protocols", p.Protocols, "include", p.Include)
	for _, a := range p.Accounts {
		b = append(b, "account\t"...)
		b = append(b, a.Name...)
		b = append(b, '\t')
		b = strconv.AppendUint(b, uint64(a.UID), 10)
		b = append(b, '\t')
		b = append(b, a.User...)
		for _, r := range a.Ports {
			b = append(b, '\t')
			b = strconv.AppendUint(b, uint64(r.Lo), 10)
			b = append(b, '-')
			b = strconv.AppendUint(b, uint64(r.Hi), 10)
		}
		for _, proto := range a.Protocols {
			b = append(b, '\t')
			b = append(b, proto...)
		}
		b = append(b, '\n')
		if len(b) > 60<<10 {
			h.Write(b)
			b = b[:0]
		}
	}
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

// saveState records rs as applied. Each file is written to a temporary file
// in dir, synced, renamed over the old one, and the directory is synced, so
// a crash leaves the old or the new file, never a torn one.
func saveState(dir string, p *policies.Policy, rs *rules.Ruleset, id *kernel.Identity) error {
	return prepareState(dir, backgroundDigest(p), rs, nil).commit(id)
}

// backgroundDigest starts computing policyDigest(p) and returns a function
// that waits for it. An apply starts it as soon as the policy is loaded:
// at 50,000 accounts the digest takes a few milliseconds, which otherwise
// stood between the commit and the end of the apply.
func backgroundDigest(p *policies.Policy) func() string {
	done := make(chan struct{})
	var sum string
	go func() {
		defer close(done)
		sum = policyDigest(p)
	}()
	return func() string {
		<-done
		return sum
	}
}

// pendingState is the state of a ruleset being written while the kernel
// commits it: everything that depends on the ruleset alone (the elements,
// most of the digest) is written and synced in the background, and commit
// adds what only the outcome decides (the time, the kernel's identity) and
// renames the file into place. At 50,000 accounts that takes the state's
// tens of milliseconds off the end of every apply: they run while the
// process waits for the kernel.
type pendingState struct {
	dir     string
	digest  func() string // the policy's digest (backgroundDigest)
	rs      *rules.Ruleset
	from    *stateFile // the recorded state rs was laid over, or nil
	done    chan struct{}
	err     error
	body    *os.File  // the state up to its header
	hash    hash.Hash // of body's content so far
	policy  string    // policyDigest(p)
	def     []byte    // rs without elements, as JSON
	stopped bool
	// sections are the digests of the section files the state refers to.
	sections []string
	// written holds the digests of the section files this state wrote;
	// text is the buffer they are formatted in.
	written map[string]bool
	text    []byte
}

// prepareState starts writing the state of rs, applied for policy p, into a
// temporary file in dir. from, when not nil, is the recorded state rs was
// laid over (rules.Overlay): the text of the sets rs shares with it is
// written as it was read instead of being formatted again. Call commit once
// the kernel holds rs, or discard if it does not.
func prepareState(dir string, digest func() string, rs *rules.Ruleset, from *stateFile) *pendingState {
	ps := &pendingState{dir: dir, digest: digest, rs: rs, from: from, done: make(chan struct{}), hash: sha256.New()}
	go func() {
		defer close(ps.done)
		ps.err = ps.write()
	}()
	return ps
}

func (ps *pendingState) write() error {
	if err := ensureStateDir(ps.dir); err != nil {
		return err
	}
	var err error
	ps.policy = ps.digest()
	if ps.def, err = rules.MarshalDefinition(ps.rs); err != nil {
		return err
	}
	ps.body, err = writeTemp(ps.dir, stateName, func(w io.Writer) error {
		hw := io.MultiWriter(w, ps.hash)
		b := []byte(stateMagic)
		for _, s := range ps.rs.Sets {
			if len(s.Elements) == 0 {
				continue
			}
			if len(s.Elements) >= sectionElements {
				sum, err := ps.section(s)
				if err != nil {
					return err
				}
				b = fmt.Appendf(b, "elements %s %d %s\n", s.Name, len(s.Elements), sum)
				ps.sections = append(ps.sections, sum)
				continue
			}
			b = fmt.Appendf(b, "elements %s %d\n", s.Name, len(s.Elements))
			if text, ok := ps.from.elementText(s); ok && text.sum == "" {
				if _, err := hw.Write(b); err != nil {
					return err
				}
				b = b[:0]
				if _, err := io.WriteString(hw, text.lines); err != nil {
					return err
				}
				continue
			}
			// Write in slices of a few thousand elements: one buffer
			// of the whole set would be megabytes more RSS.
			for es := s.Elements; len(es) > 0; {
				n := min(len(es), 4096)
				b = rules.AppendElementLines(b, es[:n])
				es = es[n:]
				if _, err := hw.Write(b); err != nil {
					return err
				}
				b = b[:0]
			}
		}
		_, err := hw.Write(b)
		return err
	})
	if err == nil && len(ps.written) > 0 {
		// The new section files are durable before the state that
		// refers to them is renamed into place.
		err = syncDir(ps.dir)
	}
	return err
}

// A set of sectionElements elements or more (the per-account sets of a large
// policy) is kept in a file of its own, elements.<sha256>, named by the
// sha256 of its content and referred to by it from the state. A set that
// did not change since the last apply is then not written again: a
// one-account apply at 50,000 accounts writes a few KB instead of 3 MB (and
// syncs them), which at the end of every apply was most of what stood
// between the commit and the exit.
const sectionElements = 2048

// section is the element lines of one set, and the sha256 of the file they
// were read from ("" when they were in the state itself).
type section struct {
	lines, sum string
}

func sectionName(sum string) string { return "elements." + sum }

// section makes sure the section file of set s exists and returns its
// digest: the recorded one when s is unchanged (the file is there, read
// and checked when the state was), else a new file, written, synced and
// renamed into place.
func (ps *pendingState) section(s *rules.Set) (string, error) {
	if text, ok := ps.from.elementText(s); ok && text.sum != "" {
		if _, err := os.Lstat(filepath.Join(ps.dir, sectionName(text.sum))); err == nil {
			return text.sum, nil
		}
	}
	// Formatted whole before it is written, for its name: a set equal to
	// one this state already wrote (TCP's and UDP's shard k, for
	// accounts that have both) is not written again.
	ps.text = rules.AppendElementLines(ps.text[:0], s.Elements)
	sum := digest(ps.text)
	if ps.written[sum] {
		return sum, nil
	}
	f, err := writeTemp(ps.dir, "elements", func(w io.Writer) error {
		_, err := w.Write(ps.text)
		return err
	})
	if err != nil {
		return "", err
	}
	if err := finishTemp(f, filepath.Join(ps.dir, sectionName(sum))); err != nil {
		os.Remove(f.Name())
		return "", err
	}
	if ps.written == nil {
		ps.written = map[string]bool{}
	}
	ps.written[sum] = true
	return sum, nil
}

// readSection reads the section file named by sum and checks its content
// against it.
func readSection(dir, sum string) (string, error) {
	if len(sum) != 64 || strings.Trim(sum, "0123456789abcdef") != "" {
		return "", fmt.Errorf("%q is not a sha256", sum)
	}
	// Read straight into the string's memory (a section is a few
	// hundred KB at 50,000 accounts, and a copy of it was an eighth of
	// what a one-account apply allocated).
	f, err := os.OpenFile(filepath.Join(dir, sectionName(sum)), os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	var b strings.Builder
	if fi, err := f.Stat(); err == nil {
		b.Grow(int(fi.Size()))
	}
	// Hashed as it is read: the hash takes no string without a copy.
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(&b, h), f); err != nil {
		return "", err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return "", fmt.Errorf("%s has digest %s", sectionName(sum), got)
	}
	return b.String(), nil
}

// removeStaleSections removes the section files of dir that keep does not
// name, and temporary files a crashed apply left: the lock is held, so no
// other nftpol is writing any.
func removeStaleSections(dir string, keep []string) error {
	names, err := filepath.Glob(filepath.Join(dir, "elements.*"))
	if err != nil {
		return err
	}
	tmps, _ := filepath.Glob(filepath.Join(dir, ".elements.tmp*"))
	for _, path := range append(names, tmps...) {
		if slices.Contains(keep, strings.TrimPrefix(filepath.Base(path), "elements.")) {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// commit finishes the state, applied with the kernel now at identity id: it writes the header and the digest, syncs, renames the file
// into place, and syncs the directory.
func (ps *pendingState) commit(id *kernel.Identity) error {
	<-ps.done
	defer ps.discard()
	if ps.err != nil {
		return ps.err
	}
	head, err := json.Marshal(stateFile{
		Format: stateFormat, Version: version, AppliedAt: time.Now().UTC(), Table: ps.rs.Table,
		PolicyDigest: ps.policy, Ruleset: ps.def, Kernel: id,
	})
	if err != nil {
		return err
	}
	head = append(head, '\n')
	ps.hash.Write(head)
	tail := fmt.Appendf(head, "%s%x\n", stateTrailer, ps.hash.Sum(nil))
	if _, err := ps.body.Write(tail); err != nil {
		return fmt.Errorf("writing %s: %w", ps.body.Name(), err)
	}
	if err := finishTemp(ps.body, filepath.Join(ps.dir, stateName)); err != nil {
		return err
	}
	// What nftpol before state format 2 wrote is superseded: state.json
	// would be read should this file ever go missing, and ruleset.nft
	// would show an old ruleset (`nftpol export --applied` shows this one).
	for _, old := range []string{stateNameV1, oldRulesetName} {
		if err := os.Remove(filepath.Join(ps.dir, old)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := syncDir(ps.dir); err != nil {
		return err
	}
	// Section files no state refers to any more; left behind they would
	// only take space.
	return removeStaleSections(ps.dir, ps.sections)
}

// discard removes what was not committed. It is safe after commit, and
// more than once.
func (ps *pendingState) discard() {
	<-ps.done
	if ps.stopped {
		return
	}
	ps.stopped = true
	if ps.body != nil {
		ps.body.Close()
		os.Remove(ps.body.Name()) // no-op once renamed
	}
}

// errNoState is returned by loadState when nothing was ever applied.
var errNoState = errors.New("no saved state")

// loadState reads and checks the state in dir: format 2, else format 1.
func loadState(dir string) (*stateFile, error) {
	st, f, err := readState(dir)
	if f != nil {
		f.Close()
	}
	return st, err
}

// readState is loadState that also returns the file it read, still open
// (nil when there was none): statePrefetch uses it to tell later whether the
// file is still the current state.
func readState(dir string) (*stateFile, *os.File, error) {
	path := filepath.Join(dir, stateName)
	f, b, err := readStateFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		path = filepath.Join(dir, stateNameV1)
		f, b, err = readStateFile(path)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w in %s: run `nftpol apply` first", errNoState, dir)
	}
	if err != nil {
		return nil, f, fmt.Errorf("reading state: %w", err)
	}
	var st *stateFile
	if path == filepath.Join(dir, stateNameV1) {
		st, err = decodeStateV1(b)
	} else {
		st, err = decodeState(dir, b)
	}
	if err != nil {
		return nil, f, fmt.Errorf("state %s is corrupt (%v): the kernel was not touched; run `nftpol apply` to record the policy again", path, err)
	}
	if st.ruleset.Table != st.Table {
		return nil, f, fmt.Errorf("state %s is corrupt (ruleset of table %s recorded as table %s): the kernel was not touched; "+
			"run `nftpol apply` to record the policy again", path, st.ruleset.Table, st.Table)
	}
	st.path = path
	return st, f, nil
}

// readStateFile reads path whole, in one read of its size (the state is
// megabytes: growing a buffer would copy it several times), and returns it
// still open. It does not follow a symlink.
func readStateFile(path string) (*os.File, []byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return f, nil, err
	}
	b := make([]byte, 0, fi.Size()+1) // +1: ReadAll then ends without growing
	for {
		n, err := f.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err == io.EOF {
			return f, b, nil
		}
		if err != nil {
			return f, nil, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)] // the file grew while read
		}
	}
}

// statePrefetch is a state read before the lock was taken, with the file it
// came from held open: while it is open its inode number cannot be reused,
// so the same device and inode, size and times at the path under the lock
// prove the state is still the one read (nftpol replaces the state by
// rename, never in place).
type statePrefetch struct {
	dir string
	st  *stateFile
	err error
	f   *os.File
}

func (p statePrefetch) current() bool {
	if p.f == nil {
		// Nothing was there; it must still be so.
		_, err1 := os.Lstat(filepath.Join(p.dir, stateName))
		_, err2 := os.Lstat(filepath.Join(p.dir, stateNameV1))
		return errors.Is(p.err, errNoState) && errors.Is(err1, fs.ErrNotExist) && errors.Is(err2, fs.ErrNotExist)
	}
	if filepath.Base(p.f.Name()) == stateNameV1 {
		// Format 1 is read only while no format 2 file exists.
		if _, err := os.Lstat(filepath.Join(p.dir, stateName)); !errors.Is(err, fs.ErrNotExist) {
			return false
		}
	}
	var held, now unix.Stat_t
	if unix.Fstat(int(p.f.Fd()), &held) != nil || unix.Lstat(p.f.Name(), &now) != nil {
		return false
	}
	return held.Dev == now.Dev && held.Ino == now.Ino && held.Size == now.Size && held.Mtim == now.Mtim && held.Ctim == now.Ctim
}

func (p statePrefetch) close() {
	if p.f != nil {
		p.f.Close()
	}
}

// decodeState decodes format 2: the digest first, then the header, then each
// set's elements.
func decodeState(dir string, b []byte) (*stateFile, error) {
	if !bytes.HasPrefix(b, []byte(stateMagic)) {
		if bytes.HasPrefix(b, []byte("nftpol state ")) {
			line, _, _ := bytes.Cut(b, []byte("\n"))
			return nil, fmt.Errorf("%q: this nftpol reads format %d", line, stateFormat)
		}
		return nil, errors.New("not an nftpol state file")
	}
	if len(b) == 0 || b[len(b)-1] != '\n' {
		return nil, errors.New("no end of line at the end (truncated?)")
	}
	cut := bytes.LastIndexByte(b[:len(b)-1], '\n') + 1
	last := string(b[cut : len(b)-1])
	sum, ok := strings.CutPrefix(last, stateTrailer)
	if !ok {
		return nil, errors.New("no digest at the end (truncated?)")
	}
	if got := digest(b[:cut]); got != sum {
		return nil, fmt.Errorf("digest %s, recorded %s", got, sum)
	}

	// The header is the line before the digest; the elements come first.
	body := string(b[len(stateMagic):cut])
	h := strings.LastIndexByte(body[:max(len(body)-1, 0)], '\n') + 1
	head, text := body[h:], body[:h]
	var st stateFile
	if err := json.Unmarshal([]byte(head), &st); err != nil {
		return nil, err
	}
	if st.Format != stateFormat {
		return nil, fmt.Errorf("header says format %d", st.Format)
	}
	rs, err := rules.UnmarshalRuleset(st.Ruleset)
	if err != nil {
		return nil, err
	}
	next := 0 // sets before this index are done
	// Sets of equal elements (TCP's and UDP's, for accounts that have
	// both) share a section file: it is read and parsed once, and the
	// sets share the elements, which nothing changes in place.
	type parsed struct {
		lines  string
		es     []rules.Element
		sorted bool // the lines were in order (their text can be reused)
	}
	sections := map[string]parsed{}
	for text != "" {
		line, rest, _ := strings.Cut(text, "\n")
		f := strings.Fields(line)
		n, err := 0, error(nil)
		if len(f) >= 3 {
			n, err = strconv.Atoi(f[2])
		}
		if len(f) < 3 || len(f) > 4 || f[0] != "elements" || err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not the start of a set's elements", line)
		}
		name := f[1]
		i := slices.IndexFunc(rs.Sets, func(s *rules.Set) bool { return s.Name == name })
		if i < next {
			return nil, fmt.Errorf("elements of set %s: no such set, or out of order", name)
		}
		next = i + 1
		var lines, sum string
		var es []rules.Element
		sorted := false
		if len(f) == 4 {
			// In a file of their own, named by the sha256 of its content.
			sum = f[3]
			if p, ok := sections[sum]; ok {
				lines, es, sorted = p.lines, p.es, p.sorted
			} else if lines, err = readSection(dir, sum); err != nil {
				return nil, fmt.Errorf("set %s: %w", name, err)
			}
			if c := strings.Count(lines, "\n"); c != n {
				return nil, fmt.Errorf("set %s: %s holds %d elements, not %d", name, sectionName(sum), c, n)
			}
		} else {
			// The n lines that follow.
			end := 0
			for range n {
				j := strings.IndexByte(rest[end:], '\n')
				if j < 0 {
					return nil, fmt.Errorf("set %s: fewer than %d elements", name, n)
				}
				end += j + 1
			}
			lines, rest = rest[:end], rest[end:]
		}
		if es == nil {
			if es, err = rules.ParseElementLines(lines); err != nil {
				return nil, fmt.Errorf("set %s: %w", name, err)
			}
			if sorted = slices.IsSortedFunc(es, rules.Element.Compare); !sorted {
				es = rules.SortElements(es)
			}
			// Clipped: an append to one set's elements must not
			// write into another's. Sorted before they are shared:
			// nothing changes them in place after this.
			es = slices.Clip(es)
			if sum != "" {
				sections[sum] = parsed{lines, es, sorted}
			}
		}
		rs.Sets[i].Elements = es
		if sorted {
			if st.text == nil {
				st.text = map[string]section{}
			}
			st.text[name] = section{lines: lines, sum: sum}
		}
		text = rest
	}
	st.ruleset, st.sha = rs, sum
	return &st, nil
}

// decodeStateV1 decodes format 1, written by nftpol before format 2.
func decodeStateV1(b []byte) (*stateFile, error) {
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, err
	}
	if st.Format != stateFormatV1 {
		return nil, fmt.Errorf("format %d in %s, which only format 1 uses", st.Format, stateNameV1)
	}
	if got := digest(st.Ruleset); got != st.RecordDigest {
		return nil, fmt.Errorf("record digest %s, recorded %s", got, st.RecordDigest)
	}
	st.sha = st.RecordDigest
	rs, err := rules.UnmarshalRuleset(st.Ruleset)
	if err != nil {
		return nil, err
	}
	st.ruleset = rs
	return &st, nil
}

// elementText returns the element lines st was read with for set s, when s
// still holds exactly the elements read (the same slice: rules.Overlay
// keeps a set it does not change) and they were written in order; "", false
// otherwise. The lines are what rules.AppendElementLines writes for them:
// the parser takes nothing else, and the digest proved them unchanged.
func (st *stateFile) elementText(s *rules.Set) (section, bool) {
	if st == nil || st.text == nil || st.ruleset == nil {
		return section{}, false
	}
	rec := st.ruleset.Set(s.Name)
	text, ok := st.text[s.Name]
	if !ok || rec == nil || len(rec.Elements) != len(s.Elements) || len(s.Elements) == 0 || &rec.Elements[0] != &s.Elements[0] {
		return section{}, false
	}
	return text, true
}

// verifyRendered checks, for a format 1 state, that the recorded ruleset
// renders to the text the apply recorded. Format 2 has its digest over the
// whole file instead.
func (st *stateFile) verifyRendered() error {
	if st.Format != stateFormatV1 {
		return nil
	}
	if got := digest([]byte(rules.RenderString(st.ruleset))); got != st.RulesetDigest {
		return fmt.Errorf("state %s is corrupt (ruleset digest %s, recorded %s): the kernel was not touched; "+
			"run `nftpol apply` to record the policy again", st.path, got, st.RulesetDigest)
	}
	return nil
}

// writeTemp writes a temporary file in dir for name through write and
// leaves it open: finishTemp syncs it and puts it into place.
func writeTemp(dir, name string, write func(io.Writer) error) (*os.File, error) {
	f, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return nil, fmt.Errorf("writing %s: %w", filepath.Join(dir, name), err)
	}
	fail := func(err error) (*os.File, error) {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	if err := f.Chmod(0o600); err != nil {
		return fail(err)
	}
	bw := bufio.NewWriterSize(yielding{f}, 64<<10)
	if err := write(bw); err != nil {
		return fail(err)
	}
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	// Not synced here: finishTemp syncs once, data and the header with it
	// (two syncs cost two journal commits, measured ~2 ms more).
	return f, nil
}

// yielding lets other goroutines run after each write. The state is written
// in the background while apply plans and commits; without it the two
// writing goroutines could hold both CPUs and keep the commit waiting for
// the scheduler's next preemption, up to 10 ms (seen with strace).
type yielding struct{ w io.Writer }

func (y yielding) Write(p []byte) (int, error) {
	n, err := y.w.Write(p)
	runtime.Gosched()
	return n, err
}

// finishTemp syncs and closes the temporary file f and renames it to path.
// The caller syncs the directory.
func finishTemp(f *os.File, path string) error {
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
