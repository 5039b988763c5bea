//go:build linux

package sockets

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Holders finds, under procRoot (normally "/proc"), the processes that hold
// each of inodes. It returns them by inode, sorted by PID, and the number of
// processes whose descriptors could not be read (without root, those of other
// users): a socket without holders may belong to one of them.
//
// Processes that exit during the scan are skipped. Only processes visible in
// this PID namespace are found.
func Holders(procRoot string, inodes []uint64) (map[uint64][]Process, int, error) {
	want := make(map[uint64]bool, len(inodes))
	for _, ino := range inodes {
		want[ino] = true
	}
	entries, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, 0, err
	}
	found := map[uint64][]Process{}
	unreadable := 0
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		held, err := heldSockets(procRoot, pid)
		switch {
		case errors.Is(err, fs.ErrPermission):
			unreadable++
			continue
		case err != nil:
			// Gone, or a kernel thread: nothing to report.
			continue
		}
		var p *Process
		for _, ino := range held {
			if !want[ino] {
				continue
			}
			if p == nil {
				p = &Process{PID: pid, Command: command(procRoot, pid)}
			}
			// A process with two descriptors for one socket is one holder.
			if list := found[ino]; len(list) == 0 || list[len(list)-1].PID != pid {
				found[ino] = append(list, *p)
			}
		}
	}
	for ino := range found {
		slices.SortFunc(found[ino], func(a, b Process) int { return a.PID - b.PID })
	}
	return found, unreadable, nil
}

// Holds reports whether the process pid (under procRoot) holds the socket
// inode now. Terminating uses it to check, once it has a handle on the
// process, that the PID still names the process that was found.
func Holds(procRoot string, pid int, inode uint64) (bool, error) {
	held, err := heldSockets(procRoot, pid)
	if err != nil {
		return false, err
	}
	return slices.Contains(held, inode), nil
}

// heldSockets returns the inodes of the sockets pid has descriptors for, in
// descriptor order.
func heldSockets(procRoot string, pid int) ([]uint64, error) {
	dir := filepath.Join(procRoot, strconv.Itoa(pid), "fd")
	fds, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []uint64
	for _, fd := range fds {
		target, err := os.Readlink(filepath.Join(dir, fd.Name()))
		if err != nil {
			continue // closed since the directory was read
		}
		if ino, ok := socketInode(target); ok {
			out = append(out, ino)
		}
	}
	return out, nil
}

// socketInode parses a descriptor link "socket:[12345]".
func socketInode(target string) (uint64, bool) {
	s, ok := strings.CutPrefix(target, "socket:[")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, "]")
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(s, 10, 64)
	return ino, err == nil
}

func command(procRoot string, pid int) string {
	b, err := os.ReadFile(filepath.Join(procRoot, strconv.Itoa(pid), "comm"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}
