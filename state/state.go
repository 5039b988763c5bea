//go:build linux

package state

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

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
//	100000<TAB>10000<TAB>10000<TAB>acct-000000    that many lines (appendElementLines)
//	...
//	{"version":...,"ruleset":{...}}      one line of JSON: header and ruleset, sets without elements
//	sha256 <hex>                         of every byte before this line
//
// The header comes last because it holds what is known only after the
// kernel committed (the time, the kernel's identity): everything before it
// is written while the kernel works (Pending).
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

// State is the header of the state; ruleset is decoded from the whole
// file after its digest was checked.
type State struct {
	Format    int       `json:"format"`
	Version   string    `json:"version"`
	AppliedAt time.Time `json:"applied_at"`
	Table     string    `json:"table"`
	// PolicyDigest is the sha256 of the resolved policy
	// (policies.Policy.Digest).
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
	RulesetJSON json.RawMessage `json:"ruleset"`
	// Kernel identifies the kernel ruleset right after the apply. While
	// the kernel still has this identity, nobody has committed anything
	// since, and Ruleset is what the kernel holds.
	Kernel *kernel.Identity `json:"kernel,omitempty"`
	// BindGuard is the bind guard the apply installed with the table
	// (nil: none): what restore installs again, with the accounts' ports
	// from Ruleset.
	BindGuard *Guard `json:"bind_guard,omitempty"`

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

// Save records rs as applied for a policy of digest policyDigest, by
// nftpol version, with the kernel at id (nil: unknown). Each file is written
// to a temporary file in dir, synced, renamed over the old one, and the
// directory is synced, so a crash leaves the old or the new file, never a
// torn one.
// Pending is the state of a ruleset being written while the kernel
// commits it: everything that depends on the ruleset alone (the elements,
// most of the digest) is written in the background; Seal adds, before the
// commit, the header with the identity the commit will leave, and syncs
// the file while the kernel works; Commit renames it into place (writing
// the header again only when the outcome differs from what was sealed). At 50,000 accounts that takes the state's
// tens of milliseconds off the end of every apply: they run while the
// process waits for the kernel.
// Prepare starts writing the state of rs, applied by nftpol version for
// the policy whose digest the function returns (it may still be computing),
// into a temporary file in dir. from, when not nil, is the recorded state rs was
// laid over (rules.Sync): the text of the sets rs shares with it is
// written as it was read instead of being formatted again. Call commit once
// the kernel holds rs, or Discard if it does not.
// A set of sectionElements elements or more (the per-account sets of a large
// policy) is kept in a file of its own, elements.<sha256>, named by the
// sha256 of its content and referred to by it from the state. A set that
// did not change since the last apply is then not written again: a
// one-account apply at 50,000 accounts writes a few KB instead of 3 MB (and
// syncs them), which at the end of every apply was most of what stood
// between the commit and the exit.
// section is the element lines of one set, and the sha256 of the file they
// were read from ("" when they were in the state itself).
// section makes sure the section file of set s exists and returns its
// digest: the recorded one when s is unchanged (the file is there, read
// and checked when the state was), else a new file, written, synced and
// renamed into place.
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
// commit finishes the state, applied with the kernel now at identity id: it writes the header and the digest, syncs, renames the file
// into place, and syncs the directory.
// discard removes what was not committed. It is safe after commit, and
// more than once.
// ErrNoState is returned by loadState when nothing was ever applied.
var ErrNoState = errors.New("no saved state")

// Load reads and checks the state in dir: format 2, else format 1.
func Load(dir string) (*State, error) {
	st, f, err := read(dir)
	if f != nil {
		f.Close()
	}
	return st, err
}

// read is Load that also returns the file it read, still open
// (nil when there was none): Prefetch uses it to tell later whether the
// file is still the current state.
func read(dir string) (*State, *os.File, error) {
	path := filepath.Join(dir, stateName)
	f, b, err := readStateFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		path = filepath.Join(dir, stateNameV1)
		f, b, err = readStateFile(path)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w in %s: run `nftpol apply` first", ErrNoState, dir)
	}
	if err != nil {
		return nil, f, fmt.Errorf("reading state: %w", err)
	}
	var st *State
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

// Prefetch reads the state in the background, for a command that loads
// the policy before it takes the lock: at 50,000 accounts each takes tens
// of milliseconds, and on two CPUs they overlap. Take, under the lock,
// returns what was read only if the file is still the same.
type Prefetch struct {
	dir string
	ch  chan prefetched
}

// prefetched is a state read before the lock was taken, with the file it
// came from held open: while it is open its inode number cannot be reused,
// so the same device and inode, size and times at the path under the lock
// prove the state is still the one read (nftpol replaces the state by
// rename, never in place).
type prefetched struct {
	st  *State
	err error
	f   *os.File
}

// StartPrefetch starts reading the state in dir.
func StartPrefetch(dir string) *Prefetch {
	p := &Prefetch{dir: dir, ch: make(chan prefetched, 1)}
	go func() {
		st, f, err := read(dir)
		p.ch <- prefetched{st: st, err: err, f: f}
	}()
	return p
}

// Take waits for the read and returns its result when the state in the
// directory is still the one read; ok is false when it was replaced since
// (read it again with Load). It closes the prefetch: call it once.
func (p *Prefetch) Take() (st *State, err error, ok bool) {
	r := <-p.ch
	defer r.close()
	if !r.current(p.dir) {
		return nil, nil, false
	}
	return r.st, r.err, true
}

// Close drops a prefetch that nobody took.
func (p *Prefetch) Close() { (<-p.ch).close() }

func (p prefetched) current(dir string) bool {
	if p.f == nil {
		// Nothing was there; it must still be so.
		_, err1 := os.Lstat(filepath.Join(dir, stateName))
		_, err2 := os.Lstat(filepath.Join(dir, stateNameV1))
		return errors.Is(p.err, ErrNoState) && errors.Is(err1, fs.ErrNotExist) && errors.Is(err2, fs.ErrNotExist)
	}
	if filepath.Base(p.f.Name()) == stateNameV1 {
		// Format 1 is read only while no format 2 file exists.
		if _, err := os.Lstat(filepath.Join(dir, stateName)); !errors.Is(err, fs.ErrNotExist) {
			return false
		}
	}
	var held, now unix.Stat_t
	if unix.Fstat(int(p.f.Fd()), &held) != nil || unix.Lstat(p.f.Name(), &now) != nil {
		return false
	}
	return held.Dev == now.Dev && held.Ino == now.Ino && held.Size == now.Size && held.Mtim == now.Mtim && held.Ctim == now.Ctim
}

func (p prefetched) close() {
	if p.f != nil {
		p.f.Close()
	}
}

// Guard is what the state records of the bind guard: the policy's part of
// its data that the ruleset does not hold, and where it was attached.
type Guard struct {
	Cgroup   string      `json:"cgroup,omitempty"`
	ZoneLo   uint16      `json:"zone_lo"`
	ZoneHi   uint16      `json:"zone_hi"`
	MinUID   uint32      `json:"min_uid"`
	Exempt   []uint32    `json:"exempt,omitempty"`
	Reserved [][2]uint16 `json:"reserved,omitempty"`
}

// Ruleset is the recorded ruleset: what the last apply installed.
func (st *State) Ruleset() *rules.Ruleset { return st.ruleset }

// Path is the file the state was read from.
func (st *State) Path() string { return st.path }

// Digest is the sha256 the state file ends with (format 1: of its ruleset
// record).
func (st *State) Digest() string { return st.sha }

// Purge removes the state from dir: what restore would install, what
// nftpol before format 2 kept, and every section file.
// decodeState decodes format 2: the digest first, then the header, then each
// set's elements.
func decodeState(dir string, b []byte) (*State, error) {
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
	var st State
	if err := json.Unmarshal([]byte(head), &st); err != nil {
		return nil, err
	}
	if st.Format != stateFormat {
		return nil, fmt.Errorf("header says format %d", st.Format)
	}
	rs, err := unmarshalRuleset(st.RulesetJSON)
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
			if es, err = parseElementLines(lines); err != nil {
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
func decodeStateV1(b []byte) (*State, error) {
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, err
	}
	if st.Format != stateFormatV1 {
		return nil, fmt.Errorf("format %d in %s, which only format 1 uses", st.Format, stateNameV1)
	}
	if got := digest(st.RulesetJSON); got != st.RecordDigest {
		return nil, fmt.Errorf("record digest %s, recorded %s", got, st.RecordDigest)
	}
	st.sha = st.RecordDigest
	rs, err := unmarshalRuleset(st.RulesetJSON)
	if err != nil {
		return nil, err
	}
	st.ruleset = rs
	return &st, nil
}

// elementText returns the element lines st was read with for set s, when s
// still holds exactly the elements read (the same slice: rules.Sync
// keeps a set it does not change) and they were written in order; "", false
// otherwise. The lines are what appendElementLines writes for them:
// the parser takes nothing else, and the digest proved them unchanged.
func (st *State) elementText(s *rules.Set) (section, bool) {
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

// VerifyRendered checks, for a format 1 state, that the recorded ruleset
// renders to the text the apply recorded. Format 2 has its digest over the
// whole file instead.
func (st *State) VerifyRendered() error {
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
// leaves it open: finishTemp (a section file) or Pending.finish (the state)
// syncs it.
// yielding lets other goroutines run after each write. The state is written
// in the background while apply plans and commits; without it the two
// writing goroutines could hold both CPUs and keep the commit waiting for
// the scheduler's next preemption, up to 10 ms (seen with strace).
// finishTemp syncs and closes the temporary file f and renames it to path.
// The caller syncs the directory.
