package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
)

// stateFile is what apply records after a successful transaction: the
// resolved policy (numeric UIDs only, so it can be compiled again without
// NSS) and the ruleset it compiled to.
type stateFile struct {
	Version   string           `json:"version"`
	AppliedAt time.Time        `json:"applied_at"`
	Digest    string           `json:"ruleset_sha256"`
	Policy    *policies.Policy `json:"policy"`
}

// saveState writes dir/state.json and dir/ruleset.nft atomically: each is
// written to a temporary file in dir, synced, renamed over the old one, and
// the directory is synced, so a crash leaves the old or the new file, never
// a torn one.
func saveState(dir string, p *policies.Policy, rs *rules.Ruleset) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	text := rules.RenderString(rs)
	sum := sha256.Sum256([]byte(text))
	st := stateFile{Version: version, AppliedAt: time.Now().UTC(), Digest: hex.EncodeToString(sum[:]), Policy: p}
	b, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return err
	}
	if err := writeAtomic(dir, "ruleset.nft", []byte(text)); err != nil {
		return err
	}
	return writeAtomic(dir, "state.json", append(b, '\n'))
}

// loadState reads dir/state.json; nil without error when there is none.
func loadState(dir string) (*stateFile, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading state: %w", err)
	}
	var st stateFile
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("state %s is corrupt: %w", filepath.Join(dir, "state.json"), err)
	}
	return &st, nil
}

func writeAtomic(dir, name string, data []byte) error {
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
	if _, err := f.Write(data); err != nil {
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

// dirLock is an exclusive flock on the state directory's lock file: two
// nftpol processes never read-diff-write the same table at once.
type dirLock struct{ f *os.File }

func lockStateDir(dir string) (*dirLock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("locking %s: %w", f.Name(), err)
	}
	return &dirLock{f}, nil
}

func (l *dirLock) release() {
	_ = unix.Flock(int(l.f.Fd()), unix.LOCK_UN)
	l.f.Close()
}
