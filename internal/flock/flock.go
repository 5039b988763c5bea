//go:build linux

// Package flock takes exclusive flock(2) locks with a deadline. The kernel
// releases such a lock when its holder dies, so a crashed nftpol never
// blocks the next one; a holder that is alive makes the waiter give up
// after its timeout with an error that can say who holds it.
package flock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// ErrTimeout is returned by Wait when the lock stayed held until the
// deadline.
var ErrTimeout = errors.New("lock held by another process")

// Wait takes an exclusive flock on f, retrying every poll until timeout
// passes or ctx ends. On ErrTimeout and on ctx's error f is left open: the
// caller closes it (and may first read who holds the lock from it).
func Wait(ctx context.Context, f *os.File, timeout, poll time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("locking %s: %w", f.Name(), err)
		}
		if time.Now().After(deadline) {
			return ErrTimeout
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
}

// Unlock releases a lock Wait took; closing f releases it too.
func Unlock(f *os.File) error { return unix.Flock(int(f.Fd()), unix.LOCK_UN) }
