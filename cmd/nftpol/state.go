package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
)

// stateFormat versions state.json; a newer format is refused, not guessed.
const stateFormat = 1

// stateFile is what apply records after a successful transaction, and all
// that restore needs at boot: the ruleset itself (numeric UIDs only, no
// policy, no NSS), with a digest that catches a truncated or edited file.
type stateFile struct {
	Format    int       `json:"format"`
	Version   string    `json:"version"`
	AppliedAt time.Time `json:"applied_at"`
	Table     string    `json:"table"`
	// PolicyDigest is the sha256 of the resolved policy (as JSON): it
	// changes when anything that decides the ruleset changes.
	PolicyDigest string `json:"policy_sha256"`
	// RulesetDigest is the sha256 of the ruleset rendered in nft syntax,
	// the text of ruleset.nft and of `nftpol export`; restore checks it.
	RulesetDigest string `json:"ruleset_sha256"`
	// RecordDigest is the sha256 of the bytes of Ruleset below: checked on
	// every read, it catches a torn or edited record for the price of one
	// hash, where rendering 50,000 elements again would cost tens of ms.
	RecordDigest string          `json:"record_sha256"`
	Ruleset      json.RawMessage `json:"ruleset"`
	// Kernel identifies the kernel ruleset right after the apply. While
	// the kernel still has this identity, nobody has committed anything
	// since, and Ruleset is what the kernel holds.
	Kernel *kernel.Identity `json:"kernel,omitempty"`

	ruleset *rules.Ruleset // decoded Ruleset, checked against the digest
	path    string
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// saveState records rs as applied. Each file is written to a temporary file
// in dir, synced, renamed over the old one, and the directory is synced, so
// a crash leaves the old or the new file, never a torn one.
func saveState(dir string, p *policies.Policy, rs *rules.Ruleset, id *kernel.Identity) error {
	if err := ensureStateDir(dir); err != nil {
		return err
	}
	// At 50,000 accounts each of these is megabytes: stream what can be
	// streamed (the rendered text to its file, the policy into its hash)
	// rather than hold every form at once.
	ph := sha256.New()
	if err := json.NewEncoder(ph).Encode(p); err != nil {
		return err
	}
	th := sha256.New()
	if err := writeAtomicFunc(dir, "ruleset.nft", func(w io.Writer) error {
		return rules.Render(io.MultiWriter(w, th), rs)
	}); err != nil {
		return err
	}
	rj, err := rules.MarshalRuleset(rs)
	if err != nil {
		return err
	}
	st := stateFile{
		Format: stateFormat, Version: version, AppliedAt: time.Now().UTC(), Table: rs.Table,
		PolicyDigest: hex.EncodeToString(ph.Sum(nil)), RulesetDigest: hex.EncodeToString(th.Sum(nil)),
		RecordDigest: digest(rj), Ruleset: rj, Kernel: id,
	}
	return writeAtomicFunc(dir, "state.json", func(w io.Writer) error {
		return json.NewEncoder(w).Encode(st) // Encode ends with the newline
	})
}

// errNoState is returned by loadState when nothing was ever applied.
var errNoState = errors.New("no saved state")

// loadState reads and checks dir/state.json.
func loadState(dir string) (*stateFile, error) {
	path := filepath.Join(dir, "state.json")
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NOFOLLOW, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w in %s: run `nftpol apply` first", errNoState, dir)
	}
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	corrupt := func(why error) error {
		return fmt.Errorf("state %s is corrupt (%v): the kernel was not touched; run `nftpol apply` to record the policy again", path, why)
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, corrupt(err)
	}
	if st.Format != stateFormat {
		return nil, corrupt(fmt.Errorf("format %d, this nftpol reads format %d", st.Format, stateFormat))
	}
	if got := digest(st.Ruleset); got != st.RecordDigest {
		return nil, corrupt(fmt.Errorf("record digest %s, recorded %s", got, st.RecordDigest))
	}
	rs, err := rules.UnmarshalRuleset(st.Ruleset)
	if err != nil {
		return nil, corrupt(err)
	}
	if rs.Table != st.Table {
		return nil, corrupt(fmt.Errorf("ruleset of table %s recorded as table %s", rs.Table, st.Table))
	}
	st.ruleset = rs
	st.path = path
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
