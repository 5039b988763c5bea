// Package bindguard closes the two holes packets cannot close (DESIGN.md,
// "Holes that packets cannot close: the bind guard"): an account binding
// a port that is not its own (squatting another account's or a system
// service's port), and datagrams from outside reaching an account's UDP
// socket outside the zone. It compiles the policy into BPF maps read by
// three cgroup v2 programs written with cilium/ebpf's asm package (no C
// compiler):
//
//   - cgroup/bind4 and cgroup/bind6 refuse, with EPERM, an enforced UID's
//     bind to a reserved port, or to a zone port that is not its own for
//     the protocol (TCP; UDP and UDP-Lite share the udp ports). Port 0
//     and ports outside the zone pass: clients and local-only services.
//   - cgroup_skb/ingress drops packets from interfaces other than lo to an
//     enforced UID's TCP listener, or explicitly bound UDP socket, on a
//     port the UID does not own.
//
// It sits beside the nftables table in the flow:
//
//	policies.Policy -> Compile -> Data -> Guard.Install (maps, links)
//
// data.go holds Data and its diff (pure), programs.go the maps and the
// programs, guard.go the kernel side: pinning under bpffs, attaching,
// status, removal. The maps are sized for the port space, not for the
// number of accounts: a ports array indexed by protocol and port holds
// each port's owner, so a bind costs one array lookup whatever the number
// of accounts, and an update writes only the entries that changed.
package bindguard

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// BPFFS is where bpffs is mounted on systemd machines.
const BPFFS = "/sys/fs/bpf"

// DefaultPinDir is the pin directory of the guard that goes with the table
// of the given name.
func DefaultPinDir(table string) string { return filepath.Join(BPFFS, "nftpol", table) }

// ErrUnsupported is wrapped by every error that says the machine cannot run
// the guard (no cgroup v2, no bpffs, no BPF): the nftables table does not
// depend on it.
var ErrUnsupported = errors.New("bind guard unsupported")

// UnsupportedError says what the machine lacks.
type UnsupportedError struct {
	// Missing names it, like "cgroup v2" or "bpffs at /sys/fs/bpf".
	Missing string
	// Hint says how to get it, "" when there is no simple way.
	Hint string
	Err  error
}

func (e *UnsupportedError) Error() string {
	s := "bind guard: needs " + e.Missing
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	if e.Hint != "" {
		s += " (" + e.Hint + ")"
	}
	return s + "; nftables enforcement is unaffected"
}

func (e *UnsupportedError) Unwrap() []error { return []error{ErrUnsupported, e.Err} }

// Config says where the guard lives.
type Config struct {
	// PinDir is the bpffs directory the maps and links are pinned in;
	// "" means DefaultPinDir("nftpol").
	PinDir string
	// Cgroup is the cgroup v2 directory the programs are attached to;
	// "" (you normally leave it empty) means the root of the cgroup v2
	// hierarchy, found in /proc/self/mountinfo.
	Cgroup string
}

// Guard is the bind guard of one pin directory. Its methods are safe to
// call from one process at a time (the engine's lock); each opens what it
// needs from the pins and closes it again.
type Guard struct {
	pinDir string
	cgroup string
}

// New returns the guard cfg describes. It touches nothing; the cgroup v2
// root, when cfg leaves the cgroup out, is looked up by the methods that
// need it.
func New(cfg Config) *Guard {
	g := &Guard{pinDir: cfg.PinDir, cgroup: cfg.Cgroup}
	if g.pinDir == "" {
		g.pinDir = DefaultPinDir("nftpol")
	}
	return g
}

// PinDir is where the guard's maps and links are pinned.
func (g *Guard) PinDir() string { return g.pinDir }

// Cgroup returns the cgroup the guard attaches to: the configured one, or
// the cgroup v2 root. It fails, wrapping ErrUnsupported, when there is no
// cgroup v2 hierarchy, or the directory is not on one.
func (g *Guard) Cgroup() (string, error) {
	dir := g.cgroup
	if dir == "" {
		root, err := CgroupRoot()
		if err != nil {
			return "", err
		}
		dir = root
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "", fmt.Errorf("bind guard: cgroup %s: %w", dir, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return "", &UnsupportedError{Missing: "a cgroup v2 directory", Err: fmt.Errorf("%s is not on a cgroup2 file system", dir)}
	}
	return dir, nil
}

// CgroupRoot finds where the cgroup v2 hierarchy is mounted, from
// /proc/self/mountinfo: /sys/fs/cgroup on current distributions,
// /sys/fs/cgroup/unified on hybrid ones.
func CgroupRoot() (string, error) { return cgroupRootFrom("/proc/self/mountinfo") }

func cgroupRootFrom(mountinfo string) (string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", fmt.Errorf("bind guard: finding the cgroup v2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// 41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if sep < 5 || sep+1 >= len(fields) || fields[sep+1] != "cgroup2" || fields[3] != "/" {
			continue
		}
		return unescapeMountinfo(fields[4]), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("bind guard: reading %s: %w", mountinfo, err)
	}
	return "", &UnsupportedError{Missing: "cgroup v2", Err: fmt.Errorf("no cgroup2 file system in %s", mountinfo), Hint: "mount -t cgroup2 none /sys/fs/cgroup/unified, or boot with systemd.unified_cgroup_hierarchy=1"}
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of
// mountinfo's path fields.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var n byte
			ok := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					ok = false
				}
				n = n*8 + c - '0'
			}
			if ok {
				b.WriteByte(n)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Check reports, wrapping ErrUnsupported, what the machine lacks to run the
// guard: cgroup v2, bpffs under the pin directory, BPF programs of the
// cgroup types, socket-local storage. It changes nothing.
func (g *Guard) Check() error {
	if _, err := g.Cgroup(); err != nil {
		return err
	}
	if err := g.checkBPFFS(); err != nil {
		return err
	}
	for _, t := range []ebpf.ProgramType{ebpf.CGroupSockAddr, ebpf.CGroupSKB} {
		if err := features.HaveProgramType(t); err != nil {
			return &UnsupportedError{Missing: "BPF programs of type " + t.String(), Err: err, Hint: "a kernel with CONFIG_BPF_SYSCALL and CONFIG_CGROUP_BPF"}
		}
	}
	if err := features.HaveMapType(ebpf.SkStorage); err != nil {
		return &UnsupportedError{Missing: "BPF socket storage maps", Err: err, Hint: "Linux 5.2 or later with BTF"}
	}
	return nil
}

// checkBPFFS checks that the pin directory is, or would be created, on
// bpffs.
func (g *Guard) checkBPFFS() error {
	dir := g.pinDir
	for {
		var st unix.Statfs_t
		err := unix.Statfs(dir, &st)
		if err == nil {
			if st.Type != unix.BPF_FS_MAGIC {
				return &UnsupportedError{Missing: "bpffs at " + dir, Err: fmt.Errorf("%s is not on a bpf file system", dir), Hint: "mount -t bpf bpf " + BPFFS}
			}
			return nil
		}
		if !errors.Is(err, unix.ENOENT) || dir == "/" {
			return fmt.Errorf("bind guard: pin directory %s: %w", dir, err)
		}
		dir = filepath.Dir(dir)
	}
}

// load opens the guard's maps from their pins, creating and pinning those
// that are missing, and loads the programs.
func (g *Guard) load() (*ebpf.Collection, error) {
	if err := os.MkdirAll(g.pinDir, 0o700); err != nil {
		return nil, fmt.Errorf("bind guard: creating pin directory: %w", err)
	}
	coll, err := ebpf.NewCollectionWithOptions(collectionSpec(), ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: g.pinDir}})
	var verr *ebpf.VerifierError
	switch {
	case errors.Is(err, ebpf.ErrMapIncompatible):
		return nil, fmt.Errorf("bind guard: the maps pinned in %s have another layout (an older nftpol?); remove the guard and install it again: %w", g.pinDir, err)
	case errors.As(err, &verr):
		return nil, fmt.Errorf("bind guard: the kernel's verifier refused a program: %+v", verr)
	case errors.Is(err, unix.EPERM):
		return nil, &UnsupportedError{Missing: "permission to load BPF programs", Err: err, Hint: "run as root; check kernel.unprivileged_bpf_disabled and lockdown"}
	case err != nil:
		return nil, fmt.Errorf("bind guard: loading: %w", err)
	}
	return coll, nil
}

// Install makes the kernel hold the guard for d: it creates and pins the
// maps that are missing, writes only the entries that differ from d, then
// attaches the programs to the cgroup (replacing, atomically, the programs
// of links pinned by an earlier run, or moving the links when the cgroup
// changed). It returns what it changed in the maps. Calling it again with
// the same d changes nothing in the maps.
//
// On a machine that cannot run the guard it fails with an error wrapping
// ErrUnsupported before changing anything. When it fails half-way, the
// maps may hold a mix; the next Install repairs it.
func (g *Guard) Install(d *Data) (*Diff, error) {
	if err := g.Check(); err != nil {
		return nil, err
	}
	cg, err := g.Cgroup()
	if err != nil {
		return nil, err
	}
	// Maps that load creates are empty (an array map starts zeroed):
	// reading 131,072 zero entries back cost a first install 18 ms.
	_, statErr := os.Stat(filepath.Join(g.pinDir, mapPorts))
	fresh := errors.Is(statErr, fs.ErrNotExist)
	coll, err := g.load()
	if err != nil {
		return nil, err
	}
	defer coll.Close()
	m := mapsOf(coll.Maps)
	cur, valid := &Data{Ports: make([]Port, portsEntries)}, false
	if !fresh {
		if cur, valid, err = m.read(); err != nil {
			return nil, err
		}
	}
	diff := diffData(cur, d, valid)
	if err := m.write(diff, d); err != nil {
		return nil, err
	}
	// Attach last: a fresh guard starts with its maps complete.
	for _, p := range []struct {
		name   string
		attach ebpf.AttachType
	}{{progBind4, ebpf.AttachCGroupInet4Bind}, {progBind6, ebpf.AttachCGroupInet6Bind}, {progIngress, ebpf.AttachCGroupInetIngress}} {
		if err := g.attach(p.name, coll.Programs[p.name], p.attach, cg); err != nil {
			return diff, err
		}
	}
	return diff, nil
}

// Plan returns what Install would change in the maps, reading the pinned
// maps; when none are pinned, everything d holds is a change. It changes
// nothing.
func (g *Guard) Plan(d *Data) (*Diff, error) {
	m, err := g.openPinned()
	if errors.Is(err, fs.ErrNotExist) {
		return diffData(&Data{}, d, false), nil
	}
	if err != nil {
		return nil, err
	}
	defer m.close()
	cur, valid, err := m.read()
	if err != nil {
		return nil, err
	}
	return diffData(cur, d, valid), nil
}

// attach makes the link pinned as name attach prog to the cgroup dir.
func (g *Guard) attach(name string, prog *ebpf.Program, at ebpf.AttachType, dir string) error {
	want, err := cgroupID(dir)
	if err != nil {
		return err
	}
	pin := filepath.Join(g.pinDir, name)
	old, err := link.LoadPinnedLink(pin, nil)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("bind guard: opening link %s: %w", pin, err)
	default:
		defer old.Close()
		if id, _ := linkCgroup(old); id == want {
			if err := old.Update(prog); err != nil {
				return fmt.Errorf("bind guard: replacing the %s program: %w", name, err)
			}
			return nil
		}
	}
	l, err := link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: at, Program: prog})
	if err != nil {
		return fmt.Errorf("bind guard: attaching %s to %s: %w", name, dir, err)
	}
	defer l.Close()
	// The new link is attached before the old one goes: for a moment
	// both run, and both say the same.
	if old != nil {
		if err := old.Unpin(); err != nil {
			return fmt.Errorf("bind guard: unpinning the old %s link: %w", name, err)
		}
	}
	if err := l.Pin(pin); err != nil {
		return fmt.Errorf("bind guard: pinning %s: %w", name, err)
	}
	return nil
}

// linkCgroup returns the ID of the cgroup l is attached to, 0 when its
// cgroup is gone (the kernel detaches the link then).
func linkCgroup(l link.Link) (uint64, error) {
	info, err := l.Info()
	if err != nil {
		return 0, err
	}
	if c := info.Cgroup(); c != nil {
		return c.CgroupId, nil
	}
	return 0, nil
}

// cgroupID is the ID the kernel gives the cgroup at dir: its inode number
// on cgroup2.
func cgroupID(dir string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("bind guard: cgroup %s: %w", dir, err)
	}
	return st.Ino, nil
}

// Detach detaches the programs (unpins their links) and keeps the maps and
// their counters. It is not an error when nothing is attached.
func (g *Guard) Detach() error {
	for _, name := range []string{progBind4, progBind6, progIngress} {
		pin := filepath.Join(g.pinDir, name)
		l, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("bind guard: opening link %s: %w", pin, err)
		}
		err = l.Unpin()
		l.Close()
		if err != nil {
			return fmt.Errorf("bind guard: unpinning %s: %w", pin, err)
		}
	}
	return nil
}

// Remove detaches the programs and deletes the maps and the pin directory.
// It is not an error when nothing is installed.
func (g *Guard) Remove() error {
	if err := g.Detach(); err != nil {
		return err
	}
	for name := range mapSpecs() {
		if err := os.Remove(filepath.Join(g.pinDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("bind guard: unpinning map %s: %w", name, err)
		}
	}
	if err := os.Remove(g.pinDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("bind guard: removing %s: %w", g.pinDir, err)
	}
	return nil
}

// LinkStatus is the state of one program's link.
type LinkStatus struct {
	// Name is bind4, bind6 or ingress.
	Name string
	// Attached says a link is pinned and attached to a live cgroup.
	Attached bool
	// CgroupID is the cgroup the link is attached to; Cgroup is its
	// directory when it is the configured cgroup, "" otherwise.
	CgroupID uint64
	Cgroup   string
	// ProgramID is the kernel's ID of the program running.
	ProgramID uint32
}

// Counter is one counter of refused binds or dropped packets.
type Counter struct {
	// Kind is KindBind or KindIngress.
	Kind  uint8
	UID   uint32
	Proto Proto
	Port  uint16
	Count uint64
}

// Status is what the kernel holds of the guard.
type Status struct {
	// PinDir is where it was looked for.
	PinDir string
	// Installed says the maps are pinned.
	Installed bool
	// Links, one per program, in the order bind4, bind6, ingress.
	Links []LinkStatus
	// InCgroup says every link is attached to the configured cgroup.
	InCgroup bool
	// Diff is what Install would change for the data Status was given;
	// nil when given none.
	Diff *Diff
	// Counters, by kind, UID, protocol and port.
	Counters []Counter
}

// InSync reports whether the guard is installed, attached to its cgroup,
// and its maps hold the data Status was given.
func (s *Status) InSync() bool {
	return s.Installed && s.InCgroup && s.Diff != nil && s.Diff.Empty()
}

// Status reads what the kernel holds of the guard, and compares the maps
// with d when d is not nil. It changes nothing. A guard never installed is
// not an error: Installed is false.
func (g *Guard) Status(d *Data) (*Status, error) {
	s := &Status{PinDir: g.pinDir}
	cg, cgErr := g.Cgroup()
	var want uint64
	if cgErr == nil {
		want, _ = cgroupID(cg)
	}
	s.InCgroup = cgErr == nil
	for _, name := range []string{progBind4, progBind6, progIngress} {
		ls := LinkStatus{Name: name}
		l, err := link.LoadPinnedLink(filepath.Join(g.pinDir, name), nil)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("bind guard: opening link %s: %w", name, err)
		default:
			info, err := l.Info()
			l.Close()
			if err != nil {
				return nil, fmt.Errorf("bind guard: link %s: %w", name, err)
			}
			ls.ProgramID = uint32(info.Program)
			if c := info.Cgroup(); c != nil && c.CgroupId != 0 {
				ls.Attached, ls.CgroupID = true, c.CgroupId
				if c.CgroupId == want {
					ls.Cgroup = cg
				}
			}
		}
		if !ls.Attached || ls.CgroupID != want {
			s.InCgroup = false
		}
		s.Links = append(s.Links, ls)
	}
	m, err := g.openPinned()
	if errors.Is(err, fs.ErrNotExist) {
		if d != nil {
			s.Diff = diffData(&Data{}, d, false)
		}
		return s, nil
	}
	if err != nil {
		return nil, err
	}
	defer m.close()
	s.Installed = true
	if d != nil {
		cur, valid, err := m.read()
		if err != nil {
			return nil, err
		}
		s.Diff = diffData(cur, d, valid)
	}
	if s.Counters, err = m.readCounters(); err != nil {
		return nil, err
	}
	return s, nil
}

// Counters returns the counters of refused binds and dropped packets.
func (g *Guard) Counters() ([]Counter, error) {
	m, err := g.openPinned()
	if err != nil {
		return nil, err
	}
	defer m.close()
	return m.readCounters()
}

// openPinned opens the pinned maps, failing with an error wrapping
// fs.ErrNotExist when the guard is not installed.
func (g *Guard) openPinned() (*guardMaps, error) {
	if err := g.checkBPFFS(); err != nil {
		return nil, err
	}
	ms := map[string]*ebpf.Map{}
	closeAll := func() {
		for _, m := range ms {
			m.Close()
		}
	}
	for name := range mapSpecs() {
		m, err := ebpf.LoadPinnedMap(filepath.Join(g.pinDir, name), nil)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("bind guard: opening map %s: %w", name, err)
		}
		ms[name] = m
	}
	return mapsOf(ms), nil
}
