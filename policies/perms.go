package policies

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// WithPermissionCheck turns the check of the policy files' ownership and
// modes on (the default) or off. The policy decides the firewall, so whoever
// can change a policy file can open any port of the zone to any account:
// with the check on, Load refuses files that anyone but root (or the user
// running nftpol) could change. See checkPath for the exact rules.
//
// Turn it off only for files the caller trusts for another reason, such as
// tests writing to their own temporary directory; nftpol's command line turns
// it off with --insecure-permissions.
func WithPermissionCheck(on bool) Option {
	return func(l *loader) { l.checkPerms = on }
}

// What checkPath checks a path as.
type pathKind int

const (
	// A policy file: the main file or a file of the include directory.
	policyFile pathKind = iota
	// The include directory: whoever can write it can add an account file.
	includeDir
)

// checkPath reports, as problems of file (and field, for the include
// directory), everything that lets someone other than a trusted user change
// what Load reads at path:
//
//   - path itself must be owned by a trusted user (root, or the user nftpol
//     runs as, which can change the files anyway) and must not be writable
//     by group or others. A POSIX ACL that grants write access to anyone
//     else shows as the group write bit (the ACL mask), so it is refused
//     too.
//   - every directory above path, up to /, must be owned by a trusted user
//     and must not be writable by group or others, unless it has the
//     sticky bit (like /tmp): there others cannot rename or remove entries
//     they do not own, and the entries below it are checked in turn.
//
// Symbolic links are followed: the directories above both the path as given
// and the path it resolves to are checked. Directories are checked once per
// Load, so that a bad /etc/nftpol is reported once, not once per file.
func (l *loader) checkPath(file, field, path string, kind pathKind) {
	if !l.checkPerms {
		return
	}
	fi, err := os.Stat(path)
	if err != nil {
		// Reading the file reports this better, with its own message.
		return
	}
	abs, absErr := filepath.Abs(path)
	l.checkStat(file, field, path, kind, fi, abs, absErr, realPath(abs, absErr))
}

// realPath returns where abs leads once symbolic links are resolved, "" when
// that cannot be found out.
func realPath(abs string, absErr error) string {
	if absErr != nil {
		return ""
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return ""
	}
	return real
}

// checkStat is checkPath for a path whose FileInfo, absolute path (or the
// error making it) and resolved path (see realPath) are known already: the
// include directory's files are looked at in parallel, their problems
// reported here in order.
func (l *loader) checkStat(file, field, path string, kind pathKind, fi fs.FileInfo, abs string, absErr error, real string) {
	if l.checkSelf(file, field, path, kind, fi, absErr) {
		l.checkAbove(file, field, abs, real)
	}
}

// checkSelf is the part of checkStat about path itself. It returns whether
// the directories above it are to be checked (see checkAbove).
func (l *loader) checkSelf(file, field, path string, kind pathKind, fi fs.FileInfo, absErr error) bool {
	if !l.checkPerms {
		return false
	}
	what := "file"
	if kind == includeDir {
		what = "directory"
	}
	if msg := l.insecure(what, path, fi, false); msg != "" {
		l.addPerm(file, field, msg)
	}
	if absErr != nil {
		l.addPerm(file, field, fmt.Sprintf("cannot check the permissions of %s: %s", showPath(path), printable(absErr.Error())))
		return false
	}
	return true
}

// checkAbove is the part of checkStat about the directories above abs and
// real, those not checked yet.
func (l *loader) checkAbove(file, field, abs, real string) {
	dirs := []string{filepath.Dir(abs)}
	if real != "" && real != abs {
		dirs = append(dirs, filepath.Dir(real))
	}
	for _, dir := range dirs {
		// A directory checked already had every directory above it
		// checked too: 50,000 files of one directory cost one walk.
		for !l.checkedDirs[dir] {
			l.checkDir(file, field, dir)
			parent := filepath.Dir(dir)
			if parent == dir {
				break
			}
			dir = parent
		}
	}
}

// checkDir checks one directory above a policy file or the include
// directory, once per Load.
func (l *loader) checkDir(file, field, dir string) {
	l.checkedDirs[dir] = true
	fi, err := os.Stat(dir)
	if err != nil {
		l.addPerm(file, field, fmt.Sprintf("cannot check the permissions of directory %s: %s", showPath(dir), printable(err.Error())))
		return
	}
	if msg := l.insecure("directory", dir, fi, true); msg != "" {
		l.addPerm(file, field, msg)
	}
}

// insecure returns what is wrong with the owner or the mode of path, ""
// when nothing is. A sticky directory may be writable by others when
// stickyOK.
func (l *loader) insecure(what, path string, fi fs.FileInfo, stickyOK bool) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fmt.Sprintf("cannot check the owner of %s %s", what, showPath(path))
	}
	if !l.trustedOwner(st.Uid) {
		trusted := "root"
		if euid := l.euid; euid != 0 {
			trusted = fmt.Sprintf("root or uid %d (who runs nftpol)", euid)
		}
		return fmt.Sprintf("%s %s is owned by uid %d, not %s, so that user could change the firewall; run chown root %s",
			what, showPath(path), st.Uid, trusted, showPath(path))
	}
	w := fi.Mode().Perm() & 0o022
	if w == 0 || stickyOK && fi.Mode()&fs.ModeSticky != 0 {
		return ""
	}
	who, fix := "group and others", "go-w"
	switch w {
	case 0o020:
		who, fix = "its group", "g-w"
	case 0o002:
		who, fix = "others", "o-w"
	}
	return fmt.Sprintf("%s %s is writable by %s (mode %04o), so they could change the firewall; run chmod %s %s",
		what, showPath(path), who, fi.Mode().Perm(), fix, showPath(path))
}

// trustedOwner reports whether a file owned by uid may decide the firewall:
// root's files, and the files of the user nftpol runs as, who could rewrite
// them anyway. Run as root, as nftpol must be to change the kernel, that is
// root alone.
func (l *loader) trustedOwner(uid uint32) bool {
	return uid == 0 || int64(uid) == int64(l.euid)
}

func (l *loader) addPerm(file, field, msg string) {
	if l.permMsgs[msg] {
		return // one directory above two files
	}
	l.permMsgs[msg] = true
	l.problems = append(l.problems, Problem{File: file, Field: field, Message: msg, Err: ErrInsecurePermissions})
}
