//go:build linux

package views

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

// Publication is a ruleset to publish the views of, and what identifies it.
type Publication struct {
	Ruleset *rules.Ruleset
	// Source identifies Ruleset among the ones published into a run
	// directory (the kernel's identity right after it was committed, as
	// the state records it); "" when unknown.
	Source string
}

// Stats is what Publish did.
type Stats struct {
	// Full: every view was written, because the run directory did not
	// hold the previous publication (first apply, after a reboot, after a
	// failed publication) or the zone, min_uid, loopback or table changed.
	Full bool
	// Written and Removed count view files.
	Written, Removed int
}

// Publish writes the views of next into the run directory dir (created
// 0755 when missing; refused when it is a symbolic link, is not owned by
// this process's user or is writable by group or others).
//
// Only what changed is written. prev, when not nil, is what the previous
// publication into dir was made from (the ruleset the last apply recorded):
// when dir says it holds it (host.json's source is prev.Source), the views
// of the UIDs whose accounts differ between prev and next are written and
// those of UIDs next no longer has removed; the rest is left alone, so a
// one-account change writes two files. Otherwise every view is written and
// every other file of uid/ removed. host.json is written last, so that an
// interrupted publication leaves a source that the next one does not trust.
//
// Files are written to a temporary name and renamed (a reader sees the old
// view or the new one), but not synced: dir is meant to be on tmpfs (/run),
// which a crash empties anyway, and a sync of each of 50,000 files would
// cost seconds. A view is owned by its UID, mode 0400: readable by that UID
// and root only.
func Publish(dir string, next Publication, prev *Publication, at time.Time) (Stats, error) {
	var st Stats
	if err := ensureDir(dir, 0o755, false); err != nil {
		return st, err
	}
	g := globalsOf(next.Ruleset)
	uidDir := filepath.Join(dir, UIDDir)
	old, _ := readHost(dir)
	incremental := prev != nil && prev.Ruleset != nil && prev.Source != "" && old != nil && old.Source == prev.Source
	if incremental {
		if globalsOf(prev.Ruleset) != g {
			incremental = false
		}
	}
	switch _, err := os.Lstat(uidDir); {
	case errors.Is(err, fs.ErrNotExist):
		st.Full = true
		if err := publishNew(dir, g, next.Ruleset, at, &st); err != nil {
			return st, err
		}
	case err != nil:
		return st, err
	case incremental:
		if err := ensureDir(uidDir, 0o711, true); err != nil {
			return st, err
		}
		if err := publishChanged(uidDir, g, prev.Ruleset, next.Ruleset, at, &st); err != nil {
			return st, err
		}
	default:
		st.Full = true
		if err := ensureDir(uidDir, 0o711, true); err != nil {
			return st, err
		}
		if err := publishOver(uidDir, g, next.Ruleset, at, &st); err != nil {
			return st, err
		}
	}
	h := g.host(at, next.Source)
	return st, writeFile(dir, HostFile, appendHost(nil, &h), 0o644, -1)
}

// publishNew writes every view into a directory of its own that nobody can
// enter yet, then renames it to uid/: no file there can be seen half
// written, so each is created in place, without a rename of its own.
func publishNew(dir string, g globals, rs *rules.Ruleset, at time.Time, st *Stats) error {
	staging := filepath.Join(dir, "."+UIDDir+".new")
	if err := os.RemoveAll(staging); err != nil {
		return err
	}
	if err := os.Mkdir(staging, 0o700); err != nil {
		return err
	}
	d, err := openDir(staging)
	if err != nil {
		return err
	}
	defer unix.Close(d)
	_, accounts := derive(rs)
	var buf []byte
	for _, uid := range sortedUIDs(accounts) {
		v := g.view(uid, accounts[uid], at)
		buf = appendView(buf[:0], &v)
		if err := createAt(d, staging, strconv.FormatUint(uint64(uid), 10), buf, 0o400, int(uid)); err != nil {
			return err
		}
		st.Written++
	}
	if err := os.Chmod(staging, 0o711); err != nil {
		return err
	}
	return os.Rename(staging, filepath.Join(dir, UIDDir))
}

// publishOver writes every view of rs into uid/ and removes every other
// file there.
func publishOver(uidDir string, g globals, rs *rules.Ruleset, at time.Time, st *Stats) error {
	_, accounts := derive(rs)
	names, err := readNames(uidDir)
	if err != nil {
		return err
	}
	d, err := openDir(uidDir)
	if err != nil {
		return err
	}
	defer unix.Close(d)
	var buf []byte
	for _, uid := range sortedUIDs(accounts) {
		v := g.view(uid, accounts[uid], at)
		buf = appendView(buf[:0], &v)
		if err := replaceAt(d, uidDir, strconv.FormatUint(uint64(uid), 10), buf, 0o400, int(uid)); err != nil {
			return err
		}
		st.Written++
	}
	for _, name := range names {
		uid, err := strconv.ParseUint(name, 10, 32)
		if err == nil && accounts[uint32(uid)] != nil {
			continue
		}
		if err := unlinkAt(d, uidDir, name); err != nil {
			return err
		}
		st.Removed++
	}
	return nil
}

// publishChanged writes the views of the UIDs whose accounts differ between
// prev (what uid/ holds the views of) and next, and removes those next does
// not have.
func publishChanged(uidDir string, g globals, prev, next *rules.Ruleset, at time.Time, st *Stats) error {
	changed := rules.ChangedAccounts(prev, next)
	// Exempt UIDs have views too; the set is small.
	pe, ne := exemptUIDs(prev), exemptUIDs(next)
	for uid := range pe {
		if !ne[uid] {
			changed = append(changed, uid)
		}
	}
	for uid := range ne {
		if !pe[uid] {
			changed = append(changed, uid)
		}
	}
	if len(changed) == 0 {
		return nil
	}
	slices.Sort(changed)
	changed = slices.Compact(changed)
	accounts := accountsOf(next, changed, ne)
	d, err := openDir(uidDir)
	if err != nil {
		return err
	}
	defer unix.Close(d)
	var buf []byte
	for _, uid := range changed {
		name := strconv.FormatUint(uint64(uid), 10)
		a := accounts[uid]
		if a == nil {
			if err := unlinkAt(d, uidDir, name); err != nil {
				return err
			}
			st.Removed++
			continue
		}
		v := g.view(uid, a, at)
		buf = appendView(buf[:0], &v)
		if err := replaceAt(d, uidDir, name, buf, 0o400, int(uid)); err != nil {
			return err
		}
		st.Written++
	}
	return nil
}

// accountsOf is derive's per-account part for uids only.
func accountsOf(rs *rules.Ruleset, uids []uint32, exempt map[uint32]bool) map[uint32]*account {
	out := map[uint32]*account{}
	for uid, byProto := range rules.AccountsOf(rs, uids) {
		a := &account{}
		for i, p := range protos {
			for _, e := range byProto[p] {
				a.name = e.Comment
				a.ports[i] = append(a.ports[i], rangeOf(e))
			}
		}
		out[uid] = a
	}
	for _, uid := range uids {
		if exempt[uid] {
			if out[uid] == nil {
				out[uid] = &account{}
			}
			out[uid].exempt = true
		}
	}
	return out
}

func sortedUIDs(m map[uint32]*account) []uint32 {
	uids := make([]uint32, 0, len(m))
	for uid := range m {
		uids = append(uids, uid)
	}
	slices.Sort(uids)
	return uids
}

// ensureDir makes sure dir is a directory of ours that only we can change,
// creating it with mode when it is missing; with fix, a directory of ours
// whose mode is not mode gets it (uid/ must stay unlistable).
func ensureDir(dir string, mode os.FileMode, fix bool) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.Mkdir(dir, mode); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("run directory: %w", err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			return err
		}
		fi, err = os.Lstat(dir)
	}
	if err != nil {
		return fmt.Errorf("run directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("run directory %s is not a directory (a symbolic link is refused)", dir)
	}
	sys, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Errorf("run directory %s: no owner", dir)
	}
	if int(sys.Uid) != os.Geteuid() {
		return fmt.Errorf("run directory %s is owned by uid %d, not by this user (%d); refusing to publish into it", dir, sys.Uid, os.Geteuid())
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("run directory %s is writable by group or others (mode %04o); run chmod go-w %s", dir, fi.Mode().Perm(), dir)
	}
	if fix && fi.Mode().Perm() != mode {
		return os.Chmod(dir, mode)
	}
	return nil
}

func readHost(dir string) (*Host, error) {
	b, err := os.ReadFile(filepath.Join(dir, HostFile))
	if err != nil {
		return nil, err
	}
	return ParseHost(b)
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}

func openDir(dir string) (int, error) {
	d, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	return d, nil
}

// createAt creates name in the directory d (called path, for messages)
// with content b and mode, then gives it to owner (-1: stays root's).
// Until the chown the file is root's and mode 0400 at most, so its owner
// cannot open it before it is whole.
func createAt(d int, path, name string, b []byte, mode uint32, owner int) error {
	fd, err := unix.Openat(d, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if errors.Is(err, unix.EEXIST) && strings.HasSuffix(name, ".tmp") {
		// Left behind by an interrupted publication.
		if err = unix.Unlinkat(d, name, 0); err == nil {
			fd, err = unix.Openat(d, name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
		}
	}
	if err != nil {
		return &fs.PathError{Op: "create", Path: filepath.Join(path, name), Err: err}
	}
	fail := func(op string, err error) error {
		unix.Close(fd)
		unix.Unlinkat(d, name, 0)
		return &fs.PathError{Op: op, Path: filepath.Join(path, name), Err: err}
	}
	// A file of a few hundred bytes: one write takes it whole.
	if n, err := unix.Write(fd, b); err != nil || n != len(b) {
		if err == nil {
			err = errors.New("short write")
		}
		return fail("write", err)
	}
	if mode != 0o400 {
		// Past the umask: host.json must be readable by every user.
		if err := unix.Fchmod(fd, mode); err != nil {
			return fail("chmod", err)
		}
	}
	if owner >= 0 {
		if err := chown(fd, owner); err != nil {
			return fail("chown", err)
		}
	}
	if err := unix.Close(fd); err != nil {
		unix.Unlinkat(d, name, 0)
		return &fs.PathError{Op: "close", Path: filepath.Join(path, name), Err: err}
	}
	return nil
}

// chown gives the file fd to uid; tests without root replace it.
var chown = func(fd, uid int) error { return unix.Fchown(fd, uid, -1) }

// replaceAt writes name in d through a temporary file and a rename.
func replaceAt(d int, path, name string, b []byte, mode uint32, owner int) error {
	tmp := "." + name + ".tmp"
	if err := createAt(d, path, tmp, b, mode, owner); err != nil {
		return err
	}
	if err := unix.Renameat(d, tmp, d, name); err != nil {
		unix.Unlinkat(d, tmp, 0)
		return &fs.PathError{Op: "rename", Path: filepath.Join(path, name), Err: err}
	}
	return nil
}

func unlinkAt(d int, path, name string) error {
	if err := unix.Unlinkat(d, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return &fs.PathError{Op: "remove", Path: filepath.Join(path, name), Err: err}
	}
	return nil
}

// writeFile replaces dir/name with b, as replaceAt does.
func writeFile(dir, name string, b []byte, mode uint32, owner int) error {
	d, err := openDir(dir)
	if err != nil {
		return err
	}
	defer unix.Close(d)
	return replaceAt(d, dir, name, b, mode, owner)
}

// Withdraw removes every view from dir (nftpol remove: with the table gone,
// they would promise what nothing enforces). A missing dir is no error.
func Withdraw(dir string) error {
	if dir == "" {
		return errors.New("no run directory to withdraw the views from")
	}
	for _, name := range []string{HostFile, UIDDir, "." + UIDDir + ".new"} {
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}
