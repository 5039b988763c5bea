//go:build linux

package state

import (
	"bufio"
	"crypto/sha256"
	"encoding"
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
	"strings"
	"time"

	"github.com/nftpol/nftpol/internal/durable"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
)

func Save(dir, version, policyDigest string, rs *rules.Ruleset, id *kernel.Identity, guard *Guard) error {
	ps := Prepare(dir, version, func() string { return policyDigest }, rs, nil)
	ps.SetGuard(guard)
	return ps.Commit(id)
}

type Pending struct {
	dir     string
	version string        // nftpol's, recorded in the header
	guard   *Guard        // the bind guard, recorded in the header
	digest  func() string // the policy's digest (policies.Policy.Digest)
	rs      *rules.Ruleset
	from    *State // the recorded state rs was laid over, or nil
	done    chan struct{}
	err     error
	body    *os.File  // the state up to its header
	hash    hash.Hash // of body's content so far
	policy  string    // digest()
	def     []byte    // rs without elements, as JSON
	stopped bool
	// sections are the digests of the section files the state refers to.
	sections []string
	// written holds the digests of the section files this state wrote;
	// text is the buffer they are formatted in.
	written map[string]bool
	text    []byte
	// sectionText is, per set written as a section file, its digest:
	// what the next state written from Recorded reuses.
	sectionText map[string]section
	committed   *State
	// bodyLen is the length of the body (the file up to its header) and
	// bodyHash the hash's state there: where a header is written.
	bodyLen  int64
	bodyHash []byte
	// sealed is closed once a header Seal asked for is written and synced
	// (sealErr says whether it was); sealID and sealGuard are what it
	// records, sealHead the state it wrote and sealSum its digest.
	sealed    chan struct{}
	sealErr   error
	sealID    kernel.Identity
	sealGuard *Guard
	sealHead  *State
	sealSum   []byte
}

func Prepare(dir, version string, digest func() string, rs *rules.Ruleset, from *State) *Pending {
	ps := &Pending{dir: dir, version: version, digest: digest, rs: rs, from: from, done: make(chan struct{}), hash: sha256.New()}
	go func() {
		defer close(ps.done)
		ps.err = ps.write()
	}()
	return ps
}

// SetGuard records g as the bind guard installed with the ruleset; call it
// before Commit.
func (ps *Pending) SetGuard(g *Guard) { ps.guard = g }

// Ruleset is the ruleset being recorded.
func (ps *Pending) Ruleset() *rules.Ruleset { return ps.rs }

func (ps *Pending) write() error {
	if err := ensureDir(ps.dir); err != nil {
		return err
	}
	var err error
	ps.policy = ps.digest()
	if ps.def, err = marshalDefinition(ps.rs); err != nil {
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
				if ps.sectionText == nil {
					ps.sectionText = map[string]section{}
				}
				ps.sectionText[s.Name] = section{sum: sum}
				continue
			}
			b = fmt.Appendf(b, "elements %s %d\n", s.Name, len(s.Elements))
			// Fewer than sectionElements: one slice of lines, kept
			// with the state as Load keeps what it read, so that the
			// agent's next apply writes it again without formatting
			// it (it formatted every shard of every apply below 16,000
			// accounts).
			text, ok := ps.from.elementText(s)
			reused := ok && text.sum == ""
			if !reused {
				start := len(b)
				b = appendElementLines(b, s.Elements)
				text = section{lines: string(b[start:])}
			}
			if _, err := hw.Write(b); err != nil {
				return err
			}
			b = b[:0]
			if reused {
				if _, err := io.WriteString(hw, text.lines); err != nil {
					return err
				}
			}
			if ps.sectionText == nil {
				ps.sectionText = map[string]section{}
			}
			ps.sectionText[s.Name] = text
		}
		_, err := hw.Write(b)
		return err
	})
	if err == nil && len(ps.written) > 0 {
		// The new section files are durable before the state that
		// refers to them is renamed into place.
		err = durable.SyncDir(ps.dir)
	}
	if err == nil {
		ps.bodyLen, err = ps.body.Seek(0, io.SeekCurrent)
	}
	if err == nil {
		ps.bodyHash, err = ps.hash.(encoding.BinaryMarshaler).MarshalBinary()
	}
	return err
}

// Seal writes the header while the kernel commits: id is the kernel's
// identity the commit will leave (the generation its transactions advance
// to), guard the bind guard to record. The header is added after the body
// and the file synced in the background, so that Commit with the same
// identity and guard only renames it into place: the sync no longer stands
// between the kernel's commit and the end of the apply (at 1,000 accounts
// it and the header were 0.9 of Commit's 1.3 ms). The time recorded is Seal's, just
// before the commit. A second Seal does nothing; Commit writes the header
// again when what it is given differs from what was sealed.
func (ps *Pending) Seal(id kernel.Identity, guard *Guard) {
	if ps.sealed != nil {
		return
	}
	ps.sealed = make(chan struct{})
	ps.sealID, ps.sealGuard = id, guard
	at := time.Now()
	go func() {
		defer close(ps.sealed)
		<-ps.done
		if ps.err == nil {
			ps.sealHead, ps.sealSum, ps.sealErr = ps.finish(&id, guard, at)
		}
	}()
}

// finish writes the header (the state with id, guard and the time at) and
// the trailer after the body, and syncs the file. It can be called again:
// it writes over what an earlier call wrote.
func (ps *Pending) finish(id *kernel.Identity, guard *Guard, at time.Time) (*State, []byte, error) {
	if id != nil {
		// A copy: the caller's identity lives in its own result (an
		// apply's), which a State that lives on must not keep alive, and
		// with it every state before (the agent's memory grew with each
		// apply, the first one's whole plan included).
		c := *id
		id = &c
	}
	st := &State{
		Format: stateFormat, Version: ps.version, AppliedAt: at.UTC(), Table: ps.rs.Table,
		PolicyDigest: ps.policy, RulesetJSON: ps.def, Kernel: id, BindGuard: guard,
	}
	head, err := json.Marshal(st)
	if err != nil {
		return nil, nil, err
	}
	head = append(head, '\n')
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(ps.bodyHash); err != nil {
		return nil, nil, err
	}
	h.Write(head)
	sum := h.Sum(nil)
	tail := fmt.Appendf(head, "%s%x\n", stateTrailer, sum)
	if _, err := ps.body.WriteAt(tail, ps.bodyLen); err != nil {
		return nil, nil, fmt.Errorf("writing %s: %w", ps.body.Name(), err)
	}
	if err := ps.body.Truncate(ps.bodyLen + int64(len(tail))); err != nil {
		return nil, nil, fmt.Errorf("writing %s: %w", ps.body.Name(), err)
	}
	if err := ps.body.Sync(); err != nil {
		return nil, nil, fmt.Errorf("syncing %s: %w", ps.body.Name(), err)
	}
	return st, sum, nil
}

const sectionElements = 2048

type section struct {
	lines, sum string
}

func sectionName(sum string) string { return "elements." + sum }

func (ps *Pending) section(s *rules.Set) (string, error) {
	if text, ok := ps.from.elementText(s); ok && text.sum != "" {
		if _, err := os.Lstat(filepath.Join(ps.dir, sectionName(text.sum))); err == nil {
			return text.sum, nil
		}
	}
	// Formatted whole before it is written, for its name: a set equal to
	// one this state already wrote (TCP's and UDP's shard k, for
	// accounts that have both) is not written again.
	ps.text = appendElementLines(ps.text[:0], s.Elements)
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

func (ps *Pending) Commit(id *kernel.Identity) error {
	<-ps.done
	if ps.sealed != nil {
		<-ps.sealed
	}
	defer ps.Discard()
	if ps.err != nil {
		return ps.err
	}
	st, sum, err := ps.sealHead, ps.sealSum, ps.sealErr
	if ps.sealed == nil || err != nil || id == nil || *id != ps.sealID || ps.guard != ps.sealGuard {
		if st, sum, err = ps.finish(id, ps.guard, time.Now()); err != nil {
			return err
		}
	}
	if err := ps.body.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", ps.body.Name(), err)
	}
	path := filepath.Join(ps.dir, stateName)
	if err := os.Rename(ps.body.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	// What nftpol before state format 2 wrote is superseded: state.json
	// would be read should this file ever go missing, and ruleset.nft
	// would show an old ruleset (`nftpol export --applied` shows this one).
	for _, old := range []string{stateNameV1, oldRulesetName} {
		if err := os.Remove(filepath.Join(ps.dir, old)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if err := durable.SyncDir(ps.dir); err != nil {
		return err
	}
	// Section files no state refers to any more; left behind they would
	// only take space.
	if err := removeStaleSections(ps.dir, ps.sections); err != nil {
		return err
	}
	st.ruleset, st.path, st.sha, st.text = ps.rs, path, fmt.Sprintf("%x", sum), ps.sectionText
	ps.committed = st
	return nil
}

// Recorded is the state a successful Commit wrote, as Load would read it
// back, without reading it: a process that keeps applying (the agent)
// plans its next change from it. nil before a successful Commit.
func (ps *Pending) Recorded() *State { return ps.committed }

func (ps *Pending) Discard() {
	<-ps.done
	if ps.sealed != nil {
		<-ps.sealed
	}
	if ps.stopped {
		return
	}
	ps.stopped = true
	if ps.body != nil {
		ps.body.Close()
		os.Remove(ps.body.Name()) // no-op once renamed
	}
}

func Purge(dir string) error {
	for _, name := range []string{stateName, stateNameV1, oldRulesetName} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return removeStaleSections(dir, nil)
}

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
	// Not synced here: the file is synced once, data and the header with
	// it (two syncs cost two journal commits, measured ~2 ms more).
	return f, nil
}

type yielding struct{ w io.Writer }

func (y yielding) Write(p []byte) (int, error) {
	n, err := y.w.Write(p)
	runtime.Gosched()
	return n, err
}

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
