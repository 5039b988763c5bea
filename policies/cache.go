package policies

import (
	"cmp"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
)

// Cache loads a policy the way Load does and remembers what each file said,
// so that a long-running agent that watches the files (inotify) can apply a
// change of one include file without reading the others again.
//
// Load reads everything. Reload is told which paths changed and reads only
// those; every other file's last result is trusted without looking at the
// file system. Both return exactly what Load would return for the files on
// disk, provided the caller names every path that changed since the
// previous call (see Reload).
//
// A Cache is not safe for concurrent use. The Policies it returns share
// memory with it and with each other: read them, never change them.
type Cache struct {
	file string
	opts []Option

	// ok says the last Load left a state Reload can build on: the main
	// file was read and decoded.
	ok bool
	// doubt, when not "", is why Reload must read everything (a symbolic
	// or hard link among the include files, say).
	doubt string
	// l is the loader of the last Load: the main file's settings (in
	// l.p, a copy owned by the Cache), the users looked up, the
	// directories whose permissions were checked.
	l *loader
	// base is the policy without accounts.
	base Policy
	// absFile and absInclude are the main file and the include directory
	// ("" when none) as absolute paths, to recognize changed paths.
	absFile, absInclude string

	// mainProblems are the problems Load found before the first include
	// file: in the main file, its permissions, its include setting.
	mainProblems []Problem
	mainAccounts []Account
	mainMeta     []meta

	// listed says the include directory was listed: include files can be
	// added and read one at a time.
	listed   bool
	in       *includeReader
	mainInfo fs.FileInfo
	// above are the problems with the directories above the include files
	// (the include directory itself and those above it not checked with
	// the main file): Load reports them on the first include file whose
	// permissions it checks, whichever that is.
	above []Problem
	// files are the include files by name, as Load lists them.
	files []*cachedFile
	// ids are the include files' devices and inodes, sorted (once per
	// name: a slice, a third of a map's memory at 50,000 files), so that
	// a hard link, whose change inotify reports under one name only, is
	// noticed; shared is the number of inodes with more than one name.
	ids    []devIno
	shared int
	// last is the policy the Cache last returned, while it had no
	// problem; idx indexes it, built on the first Reload that needs it
	// (see reloadFast).
	last *Policy
	idx  *accountIndex
	// fullReads counts the Loads, fastReloads the Reloads that checked
	// only the changed files' accounts, for tests.
	fullReads, fastReloads int
}

// cachedFile is what one include file added to the policy.
type cachedFile struct {
	// name is the last element of path, sharing its bytes.
	name, path string
	// id is the file's inode as read, for telling names of one inode.
	id devIno
	// checked says Load checked the file's permissions; own is how many
	// of problems are with the file itself, before those with the
	// directories above it would go (see Cache.above).
	checked bool
	own     int
	// problems the file has on its own, accounts it added in the order
	// read, and what the loader knew about each.
	problems []Problem
	accounts []Account
	meta     []meta
}

// A cachedFile is kept for every include file, 50,000 of them on a large
// host, as long as the agent runs: what it holds is the agent's idle
// memory. The times and size a stat gives are not kept (nothing compares
// them: inotify says what changed), nor the bounds of its accounts among
// the loader's while Load runs (recorder.bounds).

type devIno struct{ dev, ino uint64 }

func identity(fi fs.FileInfo) (devIno, bool) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return devIno{}, false
	}
	return devIno{uint64(st.Dev), st.Ino}, true
}

// baseOf is the last element of path as a substring of it, so that a
// cachedFile's name costs no memory of its own.
func baseOf(path, name string) string {
	if strings.HasSuffix(path, "/"+name) {
		return path[len(path)-len(name):]
	}
	return name
}

// NewCache returns a Cache of the policy in file, read with opts as Load
// reads it. It reads nothing yet: call Load.
func NewCache(file string, opts ...Option) *Cache {
	return &Cache{file: file, opts: slices.Clone(opts)}
}

// Load reads the whole policy as Load(file, opts...) does, returns what
// Load returns, and remembers what each file said. User names are looked
// up afresh.
func (c *Cache) Load() (*Policy, error) {
	var rec *recorder
	l, p, err := loadResolved(c.file, c.opts, func(l *loader) {
		rec = &recorder{}
		l.rec = rec
	})
	*c = Cache{file: c.file, opts: c.opts, fullReads: c.fullReads + 1, fastReloads: c.fastReloads}
	if err == nil {
		c.last = p
	}
	if !rec.reached {
		// The main file could not be read or decoded: nothing to build
		// on, the next Reload reads everything.
		return p, err
	}
	c.keep(l, rec)
	return p, err
}

// keep takes over the state of a Load that decoded the main file.
func (c *Cache) keep(l *loader, rec *recorder) {
	c.ok, c.l, c.doubt = true, l, rec.doubt
	c.base = *l.p
	c.base.Accounts = nil
	// From now on the loader reads into the Cache's copy, never into the
	// Policy the caller holds.
	l.p = &c.base
	var err error
	if c.absFile, err = filepath.Abs(c.file); err != nil {
		c.ok = false
	}
	if c.base.Include != "" {
		if c.absInclude, err = filepath.Abs(c.base.Include); err != nil {
			c.ok = false
		}
	}
	accounts := l.accounts
	nMain := len(accounts)
	if rec.in != nil {
		nMain = rec.mainAccounts
	}
	c.mainAccounts = slices.Clip(accounts[:nMain])
	c.mainMeta = slices.Clip(l.meta[:nMain])
	c.mainProblems = slices.Clone(l.problems[:rec.mainProblems()])
	if rec.in == nil {
		return
	}
	c.listed, c.in, c.mainInfo = true, rec.in, rec.mainInfo
	c.files = rec.files
	for i, f := range c.files {
		a0, a1 := rec.bounds[i][0], rec.bounds[i][1]
		f.accounts = slices.Clip(accounts[a0:a1])
		f.meta = slices.Clip(l.meta[a0:a1])
	}
	for _, f := range c.files {
		if f.checked {
			c.ids = append(c.ids, f.id)
		}
	}
	slices.SortFunc(c.ids, compareDevIno)
	for i := 1; i < len(c.ids); i++ {
		if c.ids[i] == c.ids[i-1] && (i == 1 || c.ids[i-2] != c.ids[i]) {
			c.shared++
		}
	}
	c.above = rec.above
	if l.checkPerms && c.doubt == "" {
		switch {
		case c.in.absErr != nil || !c.in.realOK:
			c.doubt = "the include directory's path cannot be resolved"
		case !rec.aboveDone:
			// No include file had its permissions checked: check the
			// directories above one now, as a file added later would.
			problems := l.problems
			l.problems = nil
			l.checkAbove("", "", filepath.Join(c.in.absDir, "x"), filepath.Join(c.in.realDir, "x"))
			c.above, l.problems = l.problems, problems
		}
	}
}

// count adds n (1 or -1) to the names of f's inode.
func (c *Cache) count(f *cachedFile, n int) {
	if !f.checked {
		return
	}
	i, _ := slices.BinarySearchFunc(c.ids, f.id, compareDevIno)
	before := 0
	for j := i; j < len(c.ids) && c.ids[j] == f.id; j++ {
		before++
	}
	switch {
	case n > 0:
		c.ids = slices.Insert(c.ids, i, f.id)
	case before > 0:
		c.ids = slices.Delete(c.ids, i, i+1)
	default:
		return
	}
	switch after := before + n; {
	case before == 1 && after == 2:
		c.shared++
	case before == 2 && after == 1:
		c.shared--
	}
}

func compareDevIno(a, b devIno) int {
	return cmp.Or(cmp.Compare(a.dev, b.dev), cmp.Compare(a.ino, b.ino))
}

// Reload returns the policy after the files at the paths in changed
// changed, reading only those: an include file created, written, renamed
// in or out, removed, or changed in its owner or mode. A path that no
// longer exists is a file removed. A path that is neither the main file,
// the include directory, a file in it nor a directory above either is
// ignored, as are the files Load skips (hidden ones, other types).
//
// Reload reads everything, as Load does, when changed holds the main file,
// the include directory or a directory above them, when the last Load
// could not decode the main file, when an include file is a symbolic link
// or shares its inode with another one (inotify would report a change
// under one name only), or when anything else leaves the cached results in
// doubt.
//
// The caller must name every path that changed since the previous Load or
// Reload: the results of the files it does not name are trusted. After a
// *ValidationError the Cache holds the files as they are, so the Reload of
// a fix reads only the fixed file.
func (c *Cache) Reload(changed []string) (*Policy, error) {
	if !c.ok || c.doubt != "" {
		return c.Load()
	}
	var names []string
	for _, path := range changed {
		abs, err := filepath.Abs(path)
		if err != nil {
			return c.Load()
		}
		switch {
		case abs == c.absFile || within(c.absFile, abs):
			return c.Load()
		case c.absInclude == "":
		case abs == c.absInclude || within(c.absInclude, abs):
			return c.Load()
		case filepath.Dir(abs) == c.absInclude:
			if !c.listed {
				// The include directory was not listed (it did not
				// exist, say): it has to be now.
				return c.Load()
			}
			name := filepath.Base(abs)
			if strings.HasPrefix(name, ".") || format(name) == "" {
				continue
			}
			names = append(names, name)
		}
	}
	slices.Sort(names)
	names = slices.Compact(names)
	// Every permission problem of one file names it: none is one already
	// reported.
	c.l.permMsgs = map[string]bool{}
	olds, news := make([]*cachedFile, len(names)), make([]*cachedFile, len(names))
	for i, name := range names {
		olds[i] = c.cached(name)
	}
	read := func() bool {
		for i, name := range names {
			if !c.update(name) {
				return false
			}
			news[i] = c.cached(name)
		}
		return true
	}
	if !read() {
		return c.Load()
	}
	if c.l.resolvePending() {
		// Read the files once more, now that getent told the users
		// they name.
		c.l.permMsgs, c.l.direct = map[string]bool{}, true
		ok := read()
		c.l.direct = false
		if !ok {
			return c.Load()
		}
	}
	if c.shared > 0 {
		return c.Load()
	}
	if p, ok := c.reloadFast(olds, news); ok {
		return p, nil
	}
	return c.assemble()
}

// cached returns what the include file name added, nil when it is not
// there.
func (c *Cache) cached(name string) *cachedFile {
	i, found := slices.BinarySearchFunc(c.files, name, func(f *cachedFile, name string) int {
		return strings.Compare(f.name, name)
	})
	if !found {
		return nil
	}
	return c.files[i]
}

// within reports whether path lies below the directory dir.
func within(path, dir string) bool {
	return len(path) > len(dir) && strings.HasPrefix(path, dir) && (path[len(dir)] == '/' || dir == "/")
}

// update reads the include file name again. It returns false when the
// result is in doubt and everything must be read.
func (c *Cache) update(name string) bool {
	path := filepath.Join(c.base.Include, name)
	i, found := slices.BinarySearchFunc(c.files, name, func(f *cachedFile, name string) int {
		return strings.Compare(f.name, name)
	})
	if found {
		c.count(c.files[i], -1)
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist) || err == nil && fi.IsDir():
		// Gone, or a directory, which Load does not list.
		if found {
			c.files = slices.Delete(c.files, i, i+1)
		}
		return true
	case err != nil:
		return false
	case fi.Mode()&fs.ModeSymlink != 0:
		return false
	}
	l := c.l
	l.problems, l.accounts, l.meta = nil, nil, nil
	dirs := len(l.checkedDirs)
	r := c.in.read(includeEntry{name: name}, c.mainInfo)
	m := l.includeRead(r, c.mainInfo)
	if len(l.checkedDirs) != dirs || m.above != m.own {
		return false
	}
	f := &cachedFile{name: baseOf(path, name), path: path, checked: m.checked, own: m.own, problems: l.problems, accounts: l.accounts, meta: l.meta}
	if m.checked {
		var ok bool
		if f.id, ok = identity(r.fi); !ok {
			return false
		}
	}
	l.problems, l.accounts, l.meta = nil, nil, nil
	c.count(f, 1)
	if found {
		c.files[i] = f
	} else {
		c.files = slices.Insert(c.files, i, f)
	}
	return true
}

// assemble puts the cached results together as Load would, and checks
// what accounts share.
func (c *Cache) assemble() (*Policy, error) {
	l := c.l
	n := len(c.mainAccounts)
	for _, f := range c.files {
		n += len(f.accounts)
	}
	problems := slices.Clone(c.mainProblems)
	accounts := make([]Account, 0, n)
	metas := make([]meta, 0, n)
	accounts = append(accounts, c.mainAccounts...)
	metas = append(metas, c.mainMeta...)
	first := l.checkPerms
	for _, f := range c.files {
		if first && f.checked {
			first = false
			problems = append(problems, f.problems[:f.own]...)
			for _, p := range c.above {
				p.File = f.path
				problems = append(problems, p)
			}
			problems = append(problems, f.problems[f.own:]...)
		} else {
			problems = append(problems, f.problems...)
		}
		accounts = append(accounts, f.accounts...)
		metas = append(metas, f.meta...)
	}
	l.problems, l.accounts, l.meta = problems, accounts, metas
	l.checkAccounts()
	l.checkReserved(c.file)
	problems = l.problems
	l.problems, l.accounts, l.meta = nil, nil, nil
	c.last, c.idx = nil, nil
	if len(problems) > 0 {
		return nil, &ValidationError{Problems: problems}
	}
	p := c.base
	p.Accounts = pointersTo(accounts)
	sortAccounts(p.Accounts)
	c.last = &p
	return &p, nil
}

// sortAccounts sorts accounts as Policy.Accounts are.
func sortAccounts(accounts []*Account) { slices.SortFunc(accounts, compareAccounts) }

// pointersTo returns pointers to the accounts, in their order; nil for none
// (as when none was ever added: JSON null).
func pointersTo(accounts []Account) []*Account {
	if len(accounts) == 0 {
		return nil
	}
	out := make([]*Account, len(accounts))
	for i := range accounts {
		out[i] = &accounts[i]
	}
	return out
}

// recorder notes, while a Cache loads, where each file's problems and
// accounts start and end.
type recorder struct {
	// reached says the main file was decoded and the checks of all
	// accounts were reached; checksAt is where their problems start.
	reached  bool
	checksAt int
	// in, when not nil, is the reader of the include directory, listed
	// after filesAt problems and mainAccounts accounts.
	in           *includeReader
	mainInfo     fs.FileInfo
	filesAt      int
	mainAccounts int
	files        []*cachedFile
	// bounds are where each file's accounts are among the loader's.
	bounds [][2]int
	// above are the problems with the directories above the include
	// files, reported on the first one checked (aboveDone).
	above     []Problem
	aboveDone bool
	doubt     string
}

// mainProblems is how many problems come before the include files.
func (r *recorder) mainProblems() int {
	if r.in != nil {
		return r.filesAt
	}
	return r.checksAt
}

func (r *recorder) start(l *loader, in *includeReader, mainInfo fs.FileInfo) {
	r.in, r.mainInfo = in, mainInfo
	r.filesAt, r.mainAccounts = len(l.problems), len(l.accounts)
}

// file notes what the include file e, read as rd, added: the problems from
// p0 and the accounts from a0 on, with m the marks includeRead returned.
func (r *recorder) file(l *loader, e includeEntry, rd *includeRead, p0, a0 int, m fileMarks) {
	f := &cachedFile{name: baseOf(rd.path, e.name), path: rd.path, checked: m.checked}
	r.bounds = append(r.bounds, [2]int{a0, len(l.accounts)})
	if e.symlink && r.doubt == "" {
		r.doubt = "include file " + rd.path + " is a symbolic link"
	}
	if !m.checked {
		f.problems = slices.Clone(l.problems[p0:])
	} else {
		var ok bool
		if f.id, ok = identity(rd.fi); !ok && r.doubt == "" {
			r.doubt = "cannot tell the inode of " + rd.path
		}
		f.own = m.own - p0
		f.problems = slices.Concat(l.problems[p0:m.own], l.problems[m.above:])
		if l.checkPerms {
			if !r.aboveDone {
				r.aboveDone = true
				r.above = slices.Clone(l.problems[m.own:m.above])
			} else if m.above != m.own && r.doubt == "" {
				r.doubt = "include file " + rd.path + " has directories of its own above it"
			}
		}
	}
	r.files = append(r.files, f)
}

// checks notes that the checks of all accounts start.
func (r *recorder) checks(l *loader) {
	r.reached, r.checksAt = true, len(l.problems)
}
