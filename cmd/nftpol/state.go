package main

import (
	"bufio"
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
//	{"version":...,"ruleset":{...}}      one line of JSON: header and ruleset, sets without elements
//	elements tcp_ports 50000             for each set with elements, in the ruleset's order:
//	100000<TAB>10000<TAB>10000<TAB>acct-000000    that many lines (rules.AppendElementLines)
//	...
//	sha256 <hex>                         of every byte before this line
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
	// RulesetDigest is the sha256 of the ruleset rendered in nft syntax,
	// the text of ruleset.nft and of `nftpol export`; restore checks it.
	RulesetDigest string `json:"ruleset_sha256"`
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
	path    string
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
	if err := ensureStateDir(dir); err != nil {
		return err
	}
	th := sha256.New()
	if err := writeAtomicFunc(dir, "ruleset.nft", func(w io.Writer) error {
		return rules.Render(io.MultiWriter(w, th), rs)
	}); err != nil {
		return err
	}
	def, err := rules.MarshalDefinition(rs)
	if err != nil {
		return err
	}
	head, err := json.Marshal(stateFile{
		Format: stateFormat, Version: version, AppliedAt: time.Now().UTC(), Table: rs.Table,
		PolicyDigest: policyDigest(p), RulesetDigest: hex.EncodeToString(th.Sum(nil)), Ruleset: def, Kernel: id,
	})
	if err != nil {
		return err
	}
	if err := writeAtomicFunc(dir, stateName, func(w io.Writer) error {
		h := sha256.New()
		hw := io.MultiWriter(w, h)
		b := append([]byte(stateMagic), head...)
		b = append(b, '\n')
		for _, s := range rs.Sets {
			if len(s.Elements) == 0 {
				continue
			}
			b = fmt.Appendf(b, "elements %s %d\n", s.Name, len(s.Elements))
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
		if _, err := hw.Write(b); err != nil {
			return err
		}
		_, err := fmt.Fprintf(w, "%s%x\n", stateTrailer, h.Sum(nil))
		return err
	}); err != nil {
		return err
	}
	// The format 1 file is superseded; left behind it would be read
	// should this file ever go missing.
	if err := os.Remove(filepath.Join(dir, stateNameV1)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// errNoState is returned by loadState when nothing was ever applied.
var errNoState = errors.New("no saved state")

// loadState reads and checks the state in dir: format 2, else format 1.
func loadState(dir string) (*stateFile, error) {
	path := filepath.Join(dir, stateName)
	b, err := readStateFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		path = filepath.Join(dir, stateNameV1)
		b, err = readStateFile(path)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s: run `nftpol apply` first", errNoState, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	var st *stateFile
	if path == filepath.Join(dir, stateNameV1) {
		st, err = decodeStateV1(b)
	} else {
		st, err = decodeState(b)
	}
	if err != nil {
		return nil, fmt.Errorf("state %s is corrupt (%v): the kernel was not touched; run `nftpol apply` to record the policy again", path, err)
	}
	if st.ruleset.Table != st.Table {
		return nil, fmt.Errorf("state %s is corrupt (ruleset of table %s recorded as table %s): the kernel was not touched; "+
			"run `nftpol apply` to record the policy again", path, st.ruleset.Table, st.Table)
	}
	st.path = path
	return st, nil
}

func readStateFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(f)
}

// decodeState decodes format 2: the digest first, then the header, then each
// set's elements.
func decodeState(b []byte) (*stateFile, error) {
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
	text := string(b[len(stateMagic):cut])
	head, text, _ := strings.Cut(text, "\n")
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
	for text != "" {
		line, rest, _ := strings.Cut(text, "\n")
		var name string
		var n int
		if _, err := fmt.Sscanf(line, "elements %s %d", &name, &n); err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not the start of a set's elements", line)
		}
		i := slices.IndexFunc(rs.Sets, func(s *rules.Set) bool { return s.Name == name })
		if i < next {
			return nil, fmt.Errorf("elements of set %s: no such set, or out of order", name)
		}
		next = i + 1
		// The n lines that follow.
		end := 0
		for range n {
			j := strings.IndexByte(rest[end:], '\n')
			if j < 0 {
				return nil, fmt.Errorf("set %s: fewer than %d elements", name, n)
			}
			end += j + 1
		}
		if rs.Sets[i].Elements, err = rules.ParseElementLines(rest[:end]); err != nil {
			return nil, fmt.Errorf("set %s: %w", name, err)
		}
		if !slices.IsSortedFunc(rs.Sets[i].Elements, rules.Element.Compare) {
			rs.Sets[i].Elements = rules.SortElements(rs.Sets[i].Elements)
		}
		text = rest[end:]
	}
	st.ruleset = rs
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
	rs, err := rules.UnmarshalRuleset(st.Ruleset)
	if err != nil {
		return nil, err
	}
	st.ruleset = rs
	return &st, nil
}

// verifyRendered checks that the recorded ruleset renders to the text the
// apply recorded: the whole chain from the record to what nft would list.
// restore calls it before it installs anything.
func (st *stateFile) verifyRendered() error {
	if got := digest([]byte(rules.RenderString(st.ruleset))); got != st.RulesetDigest {
		return fmt.Errorf("state %s is corrupt (ruleset digest %s, recorded %s): the kernel was not touched; "+
			"run `nftpol apply` to record the policy again", st.path, got, st.RulesetDigest)
	}
	return nil
}

// writeAtomicFunc writes dir/name through write: into a temporary file in
// dir, synced, renamed over name, and the directory synced.
func writeAtomicFunc(dir, name string, write func(io.Writer) error) error {
	f, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", filepath.Join(dir, name), err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return err
	}
	bw := bufio.NewWriterSize(f, 64<<10)
	if err := write(bw); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("syncing %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return fmt.Errorf("writing %s: %w", filepath.Join(dir, name), err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
