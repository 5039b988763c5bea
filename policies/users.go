package policies

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/nftpol/nftpol/internal/passwd"
)

// User names resolve the way the rest of the system resolves them (NSS:
// /etc/passwd, LDAP, sssd, ...), without cgo: a cgo binary pays the
// dynamic loader and libc's thread start-up in every process (0.7 ms of a
// warm `nftpol --version`, up to 11 ms of a cold one, DESIGN.md), and
// every forwarded `nftpol apply` is such a process.
//
// When nsswitch.conf lists files (or compat) first for passwd, a name
// found in /etc/passwd is what NSS would return, and /etc/passwd is read
// once per Load. Every other name is asked of the directory WithGetent
// gives (nftpol: getent(1)): all of one Load's names at once (see
// loader.pending), so that a policy of 50,000 directory users costs one
// getent run, not 50,000. Without WithGetent, /etc/passwd is all there is.

// nss is the name service of one Load (and of the Loads a Cache builds on
// it).
type nss struct {
	passwdPath, nsswitchPath string
	// directory answers for the names /etc/passwd does not (WithGetent);
	// nil: none.
	directory func(names []string) (map[string]uint32, error)

	// files are /etc/passwd's users when NSS asks it first, read on the
	// first lookup (read).
	read  bool
	files map[string]uint32
}

func newNSS() *nss {
	return &nss{passwdPath: "/etc/passwd", nsswitchPath: "/etc/nsswitch.conf"}
}

// WithGetent makes Load ask getent for user names /etc/passwd does not
// hold, or for every name when nsswitch.conf puts another source first:
// getent returns the UIDs of the names it knows, by the names its entries
// carry. nftpol passes getent.Passwd.
func WithGetent(getent func(names []string) (map[string]uint32, error)) Option {
	return func(l *loader) {
		if l.nss != nil {
			l.nss.directory = getent
		}
	}
}

// fromFiles looks name up in /etc/passwd, when NSS would answer from
// there first; found is false when getent must be asked.
func (n *nss) fromFiles(name string) (uid uint32, found bool) {
	if !n.read {
		n.read = true
		// Without a directory, the passwd file is all there is.
		if n.directory == nil || filesFirst(n.nsswitchPath) {
			// Unreadable: every name goes to the directory, or is
			// unknown.
			n.files, _ = readPasswd(n.passwdPath)
		}
	}
	uid, found = n.files[name]
	return uid, found
}

// filesFirst reports whether the passwd line of the nsswitch.conf at path
// names files or compat first. No file, or no passwd line, is glibc's
// default: files.
func filesFirst(path string) bool {
	b, err := os.ReadFile(path)
	if err != nil {
		return true
	}
	for line := range strings.Lines(string(b)) {
		line, _, _ = strings.Cut(line, "#")
		db, sources, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(db) != "passwd" {
			continue
		}
		for _, s := range strings.Fields(sources) {
			if strings.HasPrefix(s, "[") {
				continue // an action, [NOTFOUND=return]
			}
			return s == "files" || s == "compat"
		}
		return true
	}
	return true
}

// readPasswd reads the names and UIDs of a passwd file; the first line of
// a name counts, as for glibc. Lines of NIS compat (+, -) are skipped:
// getent answers for those names.
func readPasswd(path string) (map[string]uint32, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	users := map[string]uint32{}
	for line := range bytes.Lines(b) {
		name, uid, ok := passwd.Line(line)
		if !ok || name[0] == '+' || name[0] == '-' {
			continue
		}
		if _, dup := users[name]; !dup {
			users[name] = uid
		}
	}
	return users, nil
}

// getentArgs bounds the names of one directory run: getent takes them as
// arguments, far below the kernel's limit.
const getentArgs = 64 << 10

// lookup resolves names through the directory, all of them in as few runs
// as their length allows; a name it does not know is ErrUnknownUser.
func (n *nss) lookup(names []string) map[string]userResult {
	out := make(map[string]userResult, len(names))
	for len(names) > 0 {
		k, size := 1, len(names[0])+1
		for k < len(names) && size+len(names[k])+1 <= getentArgs {
			size += len(names[k]) + 1
			k++
		}
		n.ask(names[:k], out)
		names = names[k:]
	}
	return out
}

// ask runs the directory once for batch and puts its answers into out.
func (n *nss) ask(batch []string, out map[string]userResult) {
	unknown := func(name string) userResult { return userResult{err: fmt.Errorf("%w %q", ErrUnknownUser, name)} }
	if n.directory == nil {
		for _, name := range batch {
			out[name] = unknown(name)
		}
		return
	}
	found, err := n.directory(batch)
	switch {
	case err != nil:
		for _, name := range batch {
			out[name] = userResult{err: err}
		}
		return
	case len(batch) == 1 && len(found) == 1:
		// The answer, however its directory spells the name.
		for _, uid := range found {
			out[batch[0]] = userResult{uid: uid}
		}
		return
	}
	matched := 0
	for _, name := range batch {
		if _, ok := found[name]; ok {
			matched++
		}
	}
	// An entry under a name not asked for answers one of the names asked,
	// spelled as its directory spells it (LDAP is often case-blind):
	// which one, only a run of its own tells.
	respelled := len(found) > matched
	for _, name := range batch {
		switch uid, ok := found[name]; {
		case ok:
			out[name] = userResult{uid: uid}
		case respelled && len(batch) > 1:
			n.ask([]string{name}, out)
		default:
			out[name] = unknown(name)
		}
	}
}

type userResult struct {
	uid uint32
	err error
}

// errPending is resolve's answer for a name only getent can tell, before
// the loader asked it (see loader.pending).
var errPending = errors.New("looked up with the others")

// resolve looks a user name up once per Load. With the system's name
// service, a name /etc/passwd does not answer is pending: the loader
// records it, and the Load runs once more after getent resolved all of
// them together (resolvePending), unless l.direct says to ask at once.
func (l *loader) resolve(name string) (uint32, error) {
	r, ok := l.users[name]
	if ok {
		return r.uid, r.err
	}
	switch {
	case l.nss == nil:
		r.uid, r.err = l.lookup(name)
	default:
		uid, found := l.nss.fromFiles(name)
		switch {
		case found:
			r.uid = uid
		case l.nss.directory == nil || !userName(name):
			r.err = fmt.Errorf("%w %q", ErrUnknownUser, name)
		case !l.direct:
			l.pending = append(l.pending, name)
			return 0, errPending
		default:
			r = l.nss.lookup([]string{name})[name]
		}
	}
	l.users[name] = r
	return r.uid, r.err
}

// userName reports whether name could be one in the passwd database:
// no colon, line end or NUL, which no entry can hold and which would
// spoil the other names of its getent run.
func userName(name string) bool {
	return !strings.ContainsAny(name, ":\n\x00")
}

// resolvePending asks getent for the names the last pass left pending,
// all at once, and remembers the answers; it reports whether there were
// any (then the pass must run again).
func (l *loader) resolvePending() bool {
	if len(l.pending) == 0 {
		return false
	}
	names := slices.Compact(slices.Sorted(slices.Values(l.pending)))
	l.pending = nil
	for name, r := range l.nss.lookup(names) {
		l.users[name] = r
	}
	return true
}

// lookupMessage is the problem for a user name that did not resolve.
func lookupMessage(name string, err error) string {
	if errors.Is(err, ErrUnknownUser) {
		return fmt.Sprintf("unknown user %q; name an existing user, or give uid: instead", name)
	}
	return fmt.Sprintf("cannot look up user %q: %v", name, err)
}
