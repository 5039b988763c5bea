package agent

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

// lockName is the file in the state directory an agent holds for its whole
// life: a second agent on the same state directory would fight the first
// over the table.
const lockName = "agent.lock"

// instance is the agent lock, held until release.
type instance struct{ f *os.File }

// acquire takes the agent lock of the state directory dir, or says which
// agent holds it.
func acquire(dir string) (*instance, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	path := filepath.Join(dir, lockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("agent lock: %w", err)
	}
	if err := flock.Wait(context.Background(), f, 0, time.Millisecond); err != nil {
		if errors.Is(err, flock.ErrTimeout) {
			holder, _ := os.ReadFile(path)
			who := strings.TrimSpace(string(holder))
			if who == "" {
				who = "pid unknown"
			}
			err = fmt.Errorf("another nftpol watch serves the state directory %s (%s); stop it first", dir, who)
		}
		f.Close()
		return nil, err
	}
	if err := f.Truncate(0); err == nil {
		fmt.Fprintf(f, "pid %d, since %s\n", os.Getpid(), time.Now().UTC().Format(time.RFC3339))
	}
	return &instance{f}, nil
}

func (in *instance) release() {
	_ = in.f.Truncate(0)
	in.f.Close()
}
