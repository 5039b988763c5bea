package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// files follows the main policy file and the include directory with
// inotify, and collects the paths that changed until the agent takes them.
// Changes that arrive while an apply is in flight wait in the set and make
// the next apply; there is no delay before the first.
type files struct {
	w    *fsnotify.Watcher
	log  *slog.Logger
	main string // the main file, absolute
	dir  string // its directory, watched for the main file's renames
	inc  string // the include directory watched, "" none

	mu      sync.Mutex
	changed map[string]bool
	doubt   bool          // events may have been lost: read everything
	wake    chan struct{} // has a value while changed or doubt is pending
	// barrier is closed when the marker file sync made is seen.
	barrier chan struct{}
}

// syncMarker is the file sync creates and removes beside the main file
// (no policy extension: never read as policy).
const syncMarker = ".nftpol-watch-sync"

func newFiles(main string, log *slog.Logger) (*files, error) {
	main, err := filepath.Abs(main)
	if err != nil {
		return nil, err
	}
	w, err := fsnotify.NewBufferedWatcher(4096)
	if err != nil {
		return nil, err
	}
	f := &files{w: w, log: log, main: main, dir: filepath.Dir(main), changed: map[string]bool{}, wake: make(chan struct{}, 1)}
	if err := w.Add(f.dir); err != nil {
		w.Close()
		return nil, err
	}
	go f.run()
	return f, nil
}

// follow makes inc the include directory watched ("" none). A directory
// newly watched may have changed while nobody looked: the next take says
// to read everything.
func (f *files) follow(inc string) {
	if inc != "" {
		if abs, err := filepath.Abs(inc); err == nil {
			inc = abs
		}
	}
	if inc == f.inc {
		return
	}
	if f.inc != "" && f.inc != f.dir {
		_ = f.w.Remove(f.inc)
	}
	f.inc = ""
	if inc != "" && inc != f.dir {
		if err := f.w.Add(inc); err != nil {
			f.log.Warn("cannot watch the include directory; changes in it are applied at the hourly re-read or on SIGHUP", "dir", inc, "err", err)
			return
		}
	}
	f.inc = inc
	f.mu.Lock()
	f.doubt = true
	f.mu.Unlock()
}

func (f *files) run() {
	for {
		select {
		case ev, ok := <-f.w.Events:
			if !ok {
				return
			}
			f.event(ev)
		case err, ok := <-f.w.Errors:
			if !ok {
				return
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				f.log.Warn("inotify events were lost; reading the whole policy")
			} else {
				f.log.Warn("watching the policy files", "err", err)
			}
			f.mu.Lock()
			f.doubt = true
			f.mu.Unlock()
			f.signal()
		}
	}
}

func (f *files) event(ev fsnotify.Event) {
	name := ev.Name
	dir := filepath.Dir(name)
	if dir == f.dir && filepath.Base(name) == syncMarker {
		f.mu.Lock()
		if f.barrier != nil && ev.Has(fsnotify.Remove) {
			close(f.barrier)
			f.barrier = nil
		}
		f.mu.Unlock()
		return
	}
	if ev.Op == fsnotify.Chmod {
		return // permissions are checked when a file is read
	}
	switch {
	case name == f.main:
	case f.inc != "" && (dir == f.inc || name == f.inc):
	default:
		return // another file beside the main one
	}
	f.mu.Lock()
	f.changed[name] = true
	if name == f.inc && ev.Has(fsnotify.Remove|fsnotify.Rename) {
		f.doubt = true
	}
	f.mu.Unlock()
	f.signal()
}

func (f *files) signal() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// sync returns once every inotify event of a change made before it was
// called has been taken in: it creates and removes a marker file beside
// the main file and waits for the news of the removal, which the kernel
// queues after every event before it (one inotify queue for all the
// watched directories). A command served by the agent thus sees the files
// as they were when it was run without reading every one of them again.
func (f *files) sync(within time.Duration) error {
	f.mu.Lock()
	if f.barrier != nil {
		f.mu.Unlock()
		return errors.New("a sync is already waiting")
	}
	done := make(chan struct{})
	f.barrier = done
	f.mu.Unlock()
	path := filepath.Join(f.dir, syncMarker)
	fd, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err == nil {
		fd.Close()
		err = os.Remove(path)
	}
	if err == nil {
		select {
		case <-done:
			return nil
		case <-time.After(within):
			err = fmt.Errorf("inotify did not report %s within %s", path, within)
		}
	}
	f.mu.Lock()
	if f.barrier == done {
		f.barrier = nil
	}
	f.mu.Unlock()
	return err
}

// peek is take without taking: the paths stay for the agent's own next
// apply (a served plan reads them too, and must not swallow them).
func (f *files) peek() (changed []string, all bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for p := range f.changed {
		changed = append(changed, p)
	}
	return changed, f.doubt
}

// take returns the paths that changed since the last take, and whether
// everything must be read again.
func (f *files) take() (changed []string, all bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for p := range f.changed {
		changed = append(changed, p)
	}
	clear(f.changed)
	all, f.doubt = f.doubt, false
	return changed, all
}

func (f *files) close() { f.w.Close() }
