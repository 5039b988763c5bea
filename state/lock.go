//go:build linux

package state

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/internal/flock"
)

// lockPoll is how often a waiting process retries the lock.
const lockPoll = 50 * time.Millisecond

// Lock is an exclusive flock on STATE_DIR/lock. plan, apply, restore and
// remove hold it from before they read the kernel until after they wrote
// it (and the state), so two nftpol processes never interleave a
// read-diff-write cycle, and a waiting process works on fresh kernel state.
type Lock struct{ f *os.File }

// Acquire takes the lock of the state directory dir for command (named in
// the lock file for whoever waits), creating the directory if needed and
// waiting up to timeout. On timeout the error says who holds it: the
// holder writes its pid, command and start time into the lock file.
func Acquire(ctx context.Context, dir, command string, timeout time.Duration) (*Lock, error) {
	if err := ensureDir(dir); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock file: %w", err)
	}
	if err := flock.Wait(ctx, f, timeout, lockPoll); err != nil {
		if errors.Is(err, flock.ErrTimeout) {
			holder, _ := os.ReadFile(path)
			who := strings.TrimSpace(string(holder))
			if who == "" {
				who = "unknown process"
			}
			err = fmt.Errorf("another nftpol holds %s (%s); gave up after %s (--lock-timeout)", path, who, timeout)
		}
		f.Close()
		return nil, err
	}
	// Say who we are, for a process that times out waiting for us.
	if err := f.Truncate(0); err == nil {
		fmt.Fprintf(f, "pid %d, nftpol %s, since %s\n", os.Getpid(), command, time.Now().UTC().Format(time.RFC3339))
	}
	return &Lock{f}, nil
}

// Release releases the lock.
func (l *Lock) Release() {
	_ = l.f.Truncate(0)
	_ = flock.Unlock(l.f)
	l.f.Close()
}

// ensureDir creates the state directory 0700 if needed and refuses one
// that is a symlink or not owned by us: the state decides what restore
// installs at boot.
func ensureDir(dir string) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("creating state directory: %w", err)
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if fi.Mode()&os.ModeSymlink != 0 {
		return fmt.Errorf("state directory %s is a symlink; refusing to follow it (use the real path with --state-dir)", dir)
	}
	if !fi.IsDir() {
		return fmt.Errorf("state directory %s is not a directory", dir)
	}
	st, ok := fi.Sys().(*unix.Stat_t)
	if ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("state directory %s is owned by uid %d, not by us (uid %d); fix with chown", dir, st.Uid, os.Geteuid())
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("state directory %s: %w", dir, err)
		}
	}
	return nil
}
