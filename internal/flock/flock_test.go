//go:build linux

package flock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestWait: a second open file description waits for the first's lock,
// gives up at its deadline or when its context ends, and gets the lock once
// the first lets go.
func TestWait(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	open := func() *os.File {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	holder, waiter := open(), open()
	ctx := context.Background()
	if err := Wait(ctx, holder, time.Second, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := Wait(ctx, waiter, 30*time.Millisecond, time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Wait on a held lock: %v, want ErrTimeout", err)
	}
	if waited := time.Since(start); waited < 30*time.Millisecond {
		t.Errorf("gave up after %v, before its timeout", waited)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := Wait(cancelled, waiter, time.Minute, time.Millisecond); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with an ended context: %v", err)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		Unlock(holder)
	}()
	if err := Wait(ctx, waiter, 5*time.Second, time.Millisecond); err != nil {
		t.Fatalf("Wait after the holder let go: %v", err)
	}
}
