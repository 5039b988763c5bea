package policies

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nftpol/nftpol/policies/internal/document"
)

// Option changes how Load works.
type Option func(*loader)

// WithLookup makes Load resolve user names with lookup instead of NSS, so
// that tests need no real users. lookup returns ErrUnknownUser, or an error
// wrapping it, for a name that does not exist.
func WithLookup(lookup func(name string) (uint32, error)) Option {
	return func(l *loader) { l.lookup, l.nss = lookup, nil }
}

// Defaults for keys the main file leaves out.
const (
	defaultTable  = "nftpol"
	defaultMinUID = 1000
)

var defaultZone = PortRange{40010, 49999}

// Table names end up in every nft command line: validTableName keeps them
// to what nft accepts unquoted. Account names end up in nftables comments
// and log lines, so no quotes, spaces or control characters
// (validAccountName). Both are the regular expressions the tests hold
// them to (tableName, accountName), written out: compiled at start-up they
// cost every nftpol process 0.2 ms.

// The keys each kind of mapping may hold. Keys are matched exactly: viper
// would accept "Table" for "table", but a policy should read the same to
// every tool that parses it.
var (
	mainKeys      = []string{"table", "zone", "min_uid", "exempt", "loopback", "action", "protocols", "include", "accounts", "bind_guard", "terminate"}
	accountKeys   = []string{"name", "uid", "user", "ports", "protocols"}
	bindGuardKeys = []string{"enabled", "cgroup", "reserved"}
	terminateKeys = []string{"after", "grace", "dry_run"}
)

// Load reads the policy in file (YAML, TOML or JSON, by extension) and the
// files of the include directory it names, checks them and resolves user
// names. Unless WithPermissionCheck(false) is given, it also checks that no
// one but root (or the user running it) can change those files, and reports
// each way someone could as a problem.
//
// When file cannot be read, Load returns an error wrapping the one from the
// file system (so errors.Is(err, fs.ErrNotExist) works). When anything the
// files say is wrong, including a file that cannot be parsed, Load returns
// a *ValidationError listing every problem and no Policy: bad input must
// never reach the compiler. A key whose value is null counts as left out,
// but a file that holds nothing at all (empty, only comments, null) is a
// problem: it is most likely a write cut short, and would take every port
// it stood for away from its accounts.
func Load(file string, opts ...Option) (*Policy, error) {
	_, p, err := loadResolved(file, opts, nil)
	return p, err
}

// loadResolved runs a Load with a loader of opts (prepared by setup, when
// not nil) and, when the pass left user names pending, once more with a
// new loader after getent answered for them all: it knows the users the
// first knew, and asks getent itself for a name it has not seen (a file
// changed between the passes). It returns the loader of the last pass,
// ready to ask getent together again.
func loadResolved(file string, opts []Option, setup func(*loader)) (*loader, *Policy, error) {
	l := newLoader(opts)
	if setup != nil {
		setup(l)
	}
	p, err := l.run(file)
	if l.resolvePending() {
		again := newLoader(opts)
		again.users, again.nss, again.direct = l.users, l.nss, true
		if setup != nil {
			setup(again)
		}
		l = again
		p, err = l.run(file)
		l.direct = false
	}
	return l, p, err
}

// newLoader makes the loader of one Load with opts.
func newLoader(opts []Option) *loader {
	l := &loader{
		nss: newNSS(), users: map[string]userResult{},
		checkPerms: true, checkedDirs: map[string]bool{}, permMsgs: map[string]bool{},
		euid: os.Geteuid(),
	}
	for _, o := range opts {
		o(l)
	}
	l.dec = document.NewDecoder(append([]document.Option{document.WithProtocols(protocolNames...)}, l.decoding...)...)
	return l
}

// run is Load with the loader l.
func (l *loader) run(file string) (*Policy, error) {
	doc, err := readFile(l.dec, file)
	var bad badFile
	switch {
	case errors.As(err, &bad):
		l.checkPath(file, "", file, policyFile)
		l.add(file, "", "", bad.msg)
		return nil, &ValidationError{Problems: l.problems}
	case err != nil:
		return nil, fmt.Errorf("reading policy file: %w", err)
	}
	l.checkPath(file, "", file, policyFile)
	mark := len(l.problems)
	if split := doc.Split; split != nil {
		if l.load(file, doc) {
			doc = nil
		} else {
			// The accounts did not decode a chunk at a time: start
			// over from the file decoded whole, which reports why.
			l.problems, l.accounts, l.meta = l.problems[:mark], nil, nil
			if doc, err = split.Whole(); err != nil {
				l.add(file, "", "", parseError(err).msg)
				return nil, &ValidationError{Problems: l.problems}
			}
		}
	}
	if doc != nil {
		if empty(doc) {
			// Most likely a write cut short: loading it would close
			// the whole zone to every account.
			l.add(file, "", "", "empty: no settings and no accounts; if a policy without accounts is meant, write accounts: []")
			return nil, &ValidationError{Problems: l.problems}
		}
		l.load(file, doc)
	}
	if len(l.problems) > 0 {
		return nil, &ValidationError{Problems: l.problems}
	}
	return l.p, nil
}

// loader holds the state of one Load call.
type loader struct {
	// nss is the system's name service (users.go); lookup, when nss is
	// nil, is WithLookup's function.
	nss    *nss
	lookup func(name string) (uint32, error)
	// users caches lookups, so a name used twice is looked up once and
	// reported the same way both times. pending are the names of this
	// pass that only getent can resolve, asked all together after it;
	// direct says to ask getent for each such name at once instead.
	users    map[string]userResult
	pending  []string
	direct   bool
	problems []Problem
	// checkPerms is WithPermissionCheck's setting; checkedDirs holds the
	// directories whose permissions were checked already, permMsgs the
	// permission problems reported already, euid who runs nftpol.
	checkPerms  bool
	checkedDirs map[string]bool
	permMsgs    map[string]bool
	euid        int
	// dec decodes every file, made from decoding, the options tests
	// give it (see document.Option).
	dec      *document.Decoder
	decoding []document.Option

	p *Policy
	// zoneOK is false when the zone is broken; ports are then not checked
	// against it, which would only repeat the zone's problem.
	zoneOK bool
	// accounts in the order they were read, and what else the loader
	// knows about each, meta[i] about accounts[i].
	accounts []Account
	meta     []meta
	// protocols holds the protocol lists accounts share, by the set of
	// protocols as a bit mask (see protocolMask); nil until first needed.
	protocols [1 << 2][]Protocol
	// Scratch space reused from one account to the next.
	keys   []string
	ranges []PortRange
	// slab is where the ports of accounts are carved from: one allocation
	// for many accounts instead of one each.
	slab []PortRange
	// rec, when not nil, records what each file added, for a Cache.
	rec *recorder
}

// meta is what the loader knows about an account beyond the Account.
type meta struct {
	// pos is the account's position in its file's accounts list.
	pos int
	// uidOK says the UID is known, from uid or from user.
	uidOK bool
	// byUser says the UID came from user:, so that problems with it are
	// reported on that field.
	byUser bool
}

// uidField is the field an account's UID came from.
func (m meta) uidField() string {
	if m.byUser {
		return "user"
	}
	return "uid"
}

func (l *loader) add(file, account, field, msg string) {
	l.problems = append(l.problems, Problem{File: file, Account: account, Field: field, Message: msg})
}

// addAccount reports a problem with field of account a at position pos of
// its file. Problems are labelled with the account's name whenever it has
// one, even an invalid one: it is what the reader will search the files
// for. Without a name, the field says which account it is
// ("accounts[2].ports").
func (l *loader) addAccount(a *Account, pos int, field, msg string) {
	if a.Name != "" {
		l.add(a.File, a.Name, field, msg)
		return
	}
	l.add(a.File, "", "accounts["+strconv.Itoa(pos)+"]."+field, msg)
}

// ref names an account in other accounts' problems.
func ref(a *Account, pos int) string {
	if a.Name != "" {
		return fmt.Sprintf("account %q", a.Name)
	}
	return fmt.Sprintf("accounts[%d]", pos)
}

// load reads the main file's document into l.p. It returns false when the
// document is split and a chunk of its accounts did not decode; l is then
// in no state to go on.
func (l *loader) load(file string, d *document.Document) bool {
	l.p = &Policy{
		File:      file,
		Table:     defaultTable,
		Zone:      defaultZone,
		MinUID:    defaultMinUID,
		Loopback:  LoopbackAllow,
		Action:    Reject,
		Protocols: l.protocolList(protocolMask(Protocols)),
	}
	l.zoneOK = true
	doc := d.Top
	for _, key := range slices.Sorted(maps.Keys(doc)) {
		if v := doc[key]; v != nil {
			l.setting(file, key, v)
		}
	}
	// Accounts last: they need the zone, min_uid, exempt and protocols.
	if !l.accountsOf(file, d) {
		return false
	}
	if v := doc["include"]; v != nil {
		l.include(file, v)
	}
	if l.rec != nil {
		l.rec.checks(l)
	}
	l.checkAccounts()
	l.checkReserved(file)

	// Pointers into the accounts as read, which the Cache keeps in the
	// order they were read.
	l.p.Accounts = pointersTo(l.accounts)
	sortAccounts(l.p.Accounts)
	return true
}

// setting parses one key of the main file other than accounts.
func (l *loader) setting(file, key string, v any) {
	p := l.p
	switch key {
	case "table":
		s, msg := str(v)
		switch {
		case msg != "":
			l.add(file, "", key, msg)
		case !validTableName(s):
			l.add(file, "", key, fmt.Sprintf("invalid table name %q; use 1-32 letters, digits or '_', starting with a letter", s))
		case reservedTableNames[s]:
			l.add(file, "", key, fmt.Sprintf("invalid table name %q: nft reads it as a keyword, so nft could neither list nor load the table; choose another name, like nftpol", s))
		default:
			p.Table = s
		}
	case "zone":
		r, msg := portRange(v)
		if msg != "" {
			l.add(file, "", key, msg)
			l.zoneOK = false
			return
		}
		p.Zone = r
	case "min_uid":
		uid, msg := uidValue(v)
		if msg != "" {
			l.add(file, "", key, msg)
			return
		}
		p.MinUID = uid
	case "exempt":
		l.exempt(file, v)
	case "loopback":
		s, msg := word(v, "loopback mode", string(LoopbackAllow), string(LoopbackEnforce))
		if msg != "" {
			l.add(file, "", key, msg)
			return
		}
		p.Loopback = Loopback(s)
	case "action":
		s, msg := word(v, "action", string(Reject), string(Drop))
		if msg != "" {
			l.add(file, "", key, msg)
			return
		}
		p.Action = Action(s)
	case "protocols":
		protos, msgs := l.protocolsValue(v)
		for _, msg := range msgs {
			l.add(file, "", key, msg)
		}
		if len(protos) > 0 {
			p.Protocols = protos
		}
	case "bind_guard":
		l.bindGuard(file, v)
	case "terminate":
		l.terminate(file, v)
	case "accounts", "include":
		// Read once the other settings are known.
	default:
		l.add(file, "", key, "unknown key; valid keys are "+strings.Join(mainKeys, ", "))
	}
}

// exempt parses the exempt list: UIDs, or user names to resolve. A string
// of digits is a UID, as it is for chown; useradd refuses such names anyway.
func (l *loader) exempt(file string, v any) {
	list, ok := v.([]any)
	if !ok {
		l.add(file, "", "exempt", fmt.Sprintf("must be a list of user names or UIDs, like [www-data, 33], not %s", describe(v)))
		return
	}
	for _, e := range list {
		if s, ok := e.(string); ok {
			if n, err := strconv.ParseUint(s, 10, 64); err == nil {
				e = n
			} else {
				uid, err := l.resolve(s)
				if err != nil {
					l.add(file, "", "exempt", lookupMessage(s, err))
					continue
				}
				e = int64(uid)
			}
		}
		uid, msg := uidValue(e)
		if msg != "" {
			l.add(file, "", "exempt", msg)
			continue
		}
		l.p.Exempt = append(l.p.Exempt, uid)
	}
	slices.Sort(l.p.Exempt)
	l.p.Exempt = slices.Compact(l.p.Exempt)
}

// accountsOf parses the accounts list of one file's document. It returns
// false when the document is split and a chunk did not decode.
func (l *loader) accountsOf(file string, d *document.Document) bool {
	switch {
	case d.Split != nil:
		if !l.splitAccounts(file, d.Split) {
			return false
		}
		// The file's text is no longer needed (only a failed chunk
		// needs it, to decode the file whole): let it go before the
		// checks of all accounts, which need memory of their own.
		d.Split = nil
	case d.Accounts != nil:
		l.grow(len(d.Accounts))
		for i, it := range d.Accounts {
			l.item(file, i, it)
		}
	default:
		l.accountList(file, d.Top["accounts"])
	}
	return true
}

// splitAccounts parses the accounts list of a split file, a chunk at a
// time, decoding chunks in parallel. It returns false, having stopped
// early, when a chunk does not decode to the items it should hold; the file
// must then be decoded whole.
func (l *loader) splitAccounts(file string, sp *document.Split) bool {
	l.grow(sp.Len())
	pos := 0
	ok := true
	// A few chunks ahead keep both cores busy; more would only hold memory.
	ordered(sp.Chunks(), 4, sp.Decode, func(_ int, c document.Chunk) bool {
		if !c.OK {
			ok = false
			return false
		}
		for _, it := range c.Items {
			l.item(file, pos, it)
			pos++
		}
		c.Release()
		return true
	})
	return ok
}

// accountList parses the accounts list of one file.
func (l *loader) accountList(file string, v any) {
	if v == nil {
		return
	}
	list, ok := v.([]any)
	if !ok {
		l.add(file, "", "accounts", fmt.Sprintf("must be a list of accounts, not %s", describe(v)))
		return
	}
	l.grow(len(list))
	for i, a := range list {
		l.account(file, i, a)
	}
}

// grow makes room for n more accounts: at 50,000 accounts, growing the
// slices step by step would leave as much garbage as they hold.
func (l *loader) grow(n int) {
	l.accounts = slices.Grow(l.accounts, n)
	l.meta = slices.Grow(l.meta, n)
}

// account parses the account at position pos of file's accounts list and
// adds it to l.accounts, even when it has problems: its name and UID still
// count as taken.
func (l *loader) account(file string, pos int, v any) {
	m, ok := asMap(v)
	if !ok {
		l.add(file, "", fmt.Sprintf("accounts[%d]", pos), fmt.Sprintf("must be a mapping with name, uid or user, and ports; not %s", describe(v)))
		return
	}
	// All accounts without protocols of their own share the default list.
	a := Account{File: file, Protocols: l.p.Protocols}
	if name, _ := m["name"].(string); name != "" {
		a.Name = name
	}
	md := meta{pos: pos}

	keys := l.keys[:0]
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	l.keys = keys
	for _, key := range keys {
		v := m[key]
		if v == nil {
			continue
		}
		switch key {
		case "name":
			s, msg := str(v)
			switch {
			case msg != "":
				l.addAccount(&a, pos, key, msg)
			case !validAccountName(s):
				l.addAccount(&a, pos, key, fmt.Sprintf("invalid name %q; use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit", s))
			}
		case "ports":
			l.ports(&a, pos, v)
		case "protocols":
			protos, msgs := l.protocolsValue(v)
			for _, msg := range msgs {
				l.addAccount(&a, pos, key, msg)
			}
			if len(protos) > 0 {
				a.Protocols = protos
			}
		case "uid", "user":
			// Below, where both are known.
		default:
			l.addAccount(&a, pos, key, "unknown key; valid keys are "+strings.Join(accountKeys, ", "))
		}
	}
	if m["name"] == nil {
		l.addAccount(&a, pos, "name", "missing; every account needs a name, used in plans, logs and comments")
	}
	if m["ports"] == nil {
		l.addAccount(&a, pos, "ports", fmt.Sprintf("missing; list the account's ports in the zone %s, like [40010, \"40020-40029\"]", l.p.Zone.String()))
	}
	l.uid(&a, &md, m["uid"], m["user"])
	l.accounts = append(l.accounts, a)
	l.meta = append(l.meta, md)
}

// validTableName reports whether s matches tableName:
// ^[A-Za-z][A-Za-z0-9_]{0,31}$.
func validTableName(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '_'):
		default:
			return false
		}
	}
	return true
}

// validAccountName reports whether s matches accountName:
// ^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$.
func validAccountName[T string | []byte](s T) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '@' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// ports parses an account's ports, checks each against the zone and merges
// them.
func (l *loader) ports(a *Account, pos int, v any) {
	list, ok := v.([]any)
	if !ok {
		l.addAccount(a, pos, "ports", fmt.Sprintf("must be a list of ports and ranges, like [40010, \"40020-40029\"], not %s", describe(v)))
		return
	}
	if len(list) == 0 {
		l.addAccount(a, pos, "ports", fmt.Sprintf("empty; list at least one port or range in the zone %s", l.p.Zone.String()))
		return
	}
	zone := l.p.Zone
	rs := l.ranges[:0]
	for _, el := range list {
		r, msg := portRange(el)
		switch {
		case msg != "":
			l.addAccount(a, pos, "ports", msg)
		case l.zoneOK && r.Lo == r.Hi && !zone.Contains(r.Lo):
			l.addAccount(a, pos, "ports", fmt.Sprintf("port %d is outside the zone %s", r.Lo, zone.String()))
		case l.zoneOK && !(zone.Contains(r.Lo) && zone.Contains(r.Hi)):
			l.addAccount(a, pos, "ports", fmt.Sprintf("range %s is not inside the zone %s", r.String(), zone.String()))
		default:
			rs = append(rs, r)
		}
	}
	l.ranges = rs
	a.Ports = l.keep(MergeInPlace(rs))
}

// keep copies an account's merged ports out of the scratch space into l.slab,
// capped so that an append by a caller cannot reach the next account's.
func (l *loader) keep(rs []PortRange) []PortRange {
	if len(rs) == 0 {
		return nil
	}
	if len(l.slab) < len(rs) {
		l.slab = make([]PortRange, max(len(rs), 1024))
	}
	out := l.slab[:len(rs):len(rs)]
	copy(out, rs)
	l.slab = l.slab[len(rs):]
	return out
}

// uid resolves an account's UID from uid, user or both, and checks it
// against min_uid and exempt.
func (l *loader) uid(a *Account, md *meta, uidV, userV any) {
	var fromUID uint32
	uidOK := false
	if uidV != nil {
		var msg string
		fromUID, msg = uidValue(uidV)
		if msg != "" {
			l.addAccount(a, md.pos, "uid", msg)
		}
		uidOK = msg == ""
	}
	if userV == nil {
		if uidV == nil {
			l.addAccount(a, md.pos, "uid", "missing; give uid: (a number) or user: (a user name)")
			return
		}
		a.UID, md.uidOK = fromUID, uidOK
		l.checkUID(a, md)
		return
	}
	// Only now: str makes a message for a value that is not a string.
	switch name, msg := str(userV); {
	case msg != "":
		l.addAccount(a, md.pos, "user", msg)
		return
	case name == "":
		l.addAccount(a, md.pos, "user", "empty; give a user name, or uid: instead")
		return
	default:
		a.User, md.byUser = name, true
		uid, err := l.resolve(name)
		switch {
		case err != nil:
			l.addAccount(a, md.pos, "user", lookupMessage(name, err))
			return
		case uidV != nil && uidOK && fromUID != uid:
			l.addAccount(a, md.pos, "uid", fmt.Sprintf("uid %d does not match user %q, whose uid is %d; give one of them or make them agree", fromUID, name, uid))
			return
		}
		a.UID, md.uidOK = uid, true
	}
	l.checkUID(a, md)
}

// checkUID checks the UID of account a, when known, against min_uid and
// exempt.
func (l *loader) checkUID(a *Account, md *meta) {
	if !md.uidOK {
		return
	}
	if a.UID < l.p.MinUID {
		l.addAccount(a, md.pos, md.uidField(), fmt.Sprintf("%s is below min_uid %d, so nftpol would not enforce it; use a uid of at least %d", who(a), l.p.MinUID, l.p.MinUID))
	}
	if _, exempt := slices.BinarySearch(l.p.Exempt, a.UID); exempt {
		l.addAccount(a, md.pos, md.uidField(), fmt.Sprintf("%s is exempt; remove it from exempt or remove the account", who(a)))
	}
}

// who names an account's UID in messages, with the user it came from.
func who(a *Account) string {
	if a.User != "" {
		return fmt.Sprintf("uid %d (user %q)", a.UID, a.User)
	}
	return fmt.Sprintf("uid %d", a.UID)
}

// include reads the accounts of every policy file in the include directory,
// in name order. Hidden files are skipped, as are files of other types, so
// that editors' and package managers' leftovers (site12.yaml~,
// site12.yaml.dpkg-old) do not count.
func (l *loader) include(file string, v any) {
	dir, msg := str(v)
	if msg != "" {
		l.add(file, "", "include", msg)
		return
	}
	if dir == "" {
		return
	}
	if !filepath.IsAbs(dir) {
		// Relative to the main file, not to wherever nftpol was started.
		dir = filepath.Join(filepath.Dir(file), dir)
	}
	l.p.Include = dir
	switch fi, err := os.Stat(dir); {
	case errors.Is(err, fs.ErrNotExist):
		l.add(file, "", "include", fmt.Sprintf("directory %s does not exist; create it or remove include:", showPath(dir)))
		return
	case err != nil:
		l.add(file, "", "include", "cannot read directory: "+printable(err.Error()))
		return
	case !fi.IsDir():
		l.add(file, "", "include", fmt.Sprintf("%s is not a directory; include: names a directory of account files", showPath(dir)))
		return
	}
	l.checkPath(file, "include", dir, includeDir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		l.add(file, "", "include", "cannot read directory: "+printable(err.Error()))
		return
	}
	// Only names and types are kept: 50,000 fs.DirEntry values would stay
	// in memory for the whole directory otherwise.
	var files []includeEntry
	for _, de := range entries {
		name := de.Name()
		if strings.HasPrefix(name, ".") || de.IsDir() || format(name) == "" {
			continue
		}
		files = append(files, includeEntry{name, de.Type()&fs.ModeSymlink != 0})
	}
	entries = nil
	// "include: ." next to the main file must not read the main file again
	// as an include file.
	mainInfo, _ := os.Stat(file)
	in := l.newIncludeReader(dir)
	if l.rec != nil {
		l.rec.start(l, in, mainInfo)
	}
	l.grow(len(files)) // typically one account per file
	// Files are read and decoded in parallel, a window of them ahead of
	// the one being checked; everything that reports a problem or adds an
	// account happens here, in name order.
	ordered(len(files), 64, func(i int) *includeRead {
		return in.read(files[i], mainInfo)
	}, func(i int, r *includeRead) bool {
		p0, a0 := len(l.problems), len(l.accounts)
		m := l.includeRead(r, mainInfo)
		if l.rec != nil {
			l.rec.file(l, files[i], r, p0, a0, m)
		}
		return true
	})
}

// fileMarks is where the problems of one include file stand in
// loader.problems: checked says its permissions were checked, own ends the
// problems with the file itself, above the ones with the directories above
// it.
type fileMarks struct {
	checked    bool
	own, above int
}

// includeRead adds what the include file read as r says, with mainInfo the
// main file's (to skip it).
func (l *loader) includeRead(r *includeRead, mainInfo fs.FileInfo) fileMarks {
	var m fileMarks
	switch fi := r.fi; {
	case r.statErr != nil:
		l.add(r.path, "", "", "cannot read: "+printable(r.statErr.Error()))
		return m
	case mainInfo != nil && os.SameFile(fi, mainInfo):
		return m
	case fi.IsDir():
		// A symbolic link to a directory: skipped like a directory.
		return m
	case !fi.Mode().IsRegular():
		// Reading a FIFO would block nftpol for good.
		l.add(r.path, "", "", fmt.Sprintf("not a regular file (%s); an include file holds accounts:", fi.Mode().Type()))
		return m
	}
	m.checked = true
	if l.checkSelf(r.path, "", r.path, policyFile, r.fi, r.absErr) {
		m.own = len(l.problems)
		l.checkAbove(r.path, "", r.abs, r.real)
	} else {
		m.own = len(l.problems)
	}
	m.above = len(l.problems)
	l.includeFile(r.path, r.doc, r.err)
	return m
}

// includeFile adds what one include file says, from its document d or the
// error reading it.
func (l *loader) includeFile(path string, d *document.Document, err error) {
	if err != nil {
		// Only here: bad escapes, so each file would allocate one.
		var bad badFile
		if errors.As(err, &bad) {
			l.add(path, "", "", bad.msg)
			return
		}
		l.add(path, "", "", "cannot read: "+printable(err.Error()))
		return
	}
	if empty(d) {
		// Most likely a write cut short: its accounts would lose their
		// ports.
		l.add(path, "", "", "empty: no accounts; if none are meant, write accounts: [] or remove the file")
		return
	}
	problems, accounts := len(l.problems), len(l.accounts)
	split := d.Split
	if l.includeDoc(path, d) {
		return
	}
	// A chunk of a split file did not decode: forget what the others
	// added, and decode the file whole.
	l.problems, l.accounts, l.meta = l.problems[:problems], l.accounts[:accounts], l.meta[:accounts]
	d, err = split.Whole()
	if err != nil {
		l.add(path, "", "", parseError(err).msg)
		return
	}
	l.includeDoc(path, d)
}

// includeDoc checks the keys of an include file and adds its accounts. It
// returns false when d is split and a chunk did not decode.
func (l *loader) includeDoc(path string, d *document.Document) bool {
	// The keys sorted in scratch space: 50,000 include files would
	// otherwise make 150,000 pieces of garbage.
	keys := l.keys[:0]
	for key := range d.Top {
		keys = append(keys, key)
	}
	slices.Sort(keys)
	l.keys = keys
	for _, key := range keys {
		switch {
		case key == "accounts":
		case slices.Contains(mainKeys, key):
			l.add(path, "", key, fmt.Sprintf("an include file holds only accounts:; set %s in the main file %s", key, showPath(l.p.File)))
		default:
			l.add(path, "", key, "unknown key; an include file holds only accounts:")
		}
	}
	return l.accountsOf(path, d)
}

// asMap returns v as a mapping with string keys. YAML gives a mapping with
// any non-string key as map[any]any; its keys are spelled out so that they
// are reported as unknown.
func asMap(v any) (map[string]any, bool) {
	switch v := v.(type) {
	case map[string]any:
		return v, true
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[fmt.Sprint(k)] = e
		}
		return m, true
	}
	return nil, false
}

// bindGuard parses the bind_guard mapping. Problems name the field as
// bind_guard.KEY.
func (l *loader) bindGuard(file string, v any) {
	m, ok := asMap(v)
	if !ok {
		l.add(file, "", "bind_guard", fmt.Sprintf("must be a mapping with enabled, cgroup and reserved, not %s", describe(v)))
		return
	}
	bg := &l.p.BindGuard
	for _, key := range slices.Sorted(maps.Keys(m)) {
		v := m[key]
		if v == nil {
			continue
		}
		field := "bind_guard." + key
		switch key {
		case "enabled":
			b, ok := v.(bool)
			if !ok {
				l.add(file, "", field, fmt.Sprintf("must be true or false, not %s", describe(v)))
				continue
			}
			bg.Enabled = b
		case "cgroup":
			s, msg := str(v)
			switch {
			case msg != "":
				l.add(file, "", field, msg)
			case !filepath.IsAbs(s) || filepath.Clean(s) != s || strings.ContainsAny(s, "\x00\n"):
				l.add(file, "", field, fmt.Sprintf("invalid cgroup %q; give the absolute, clean path of a cgroup v2 directory, like /sys/fs/cgroup/hosting.slice, or leave it out for the cgroup v2 root", s))
			default:
				bg.Cgroup = s
			}
		case "reserved":
			list, ok := v.([]any)
			if !ok {
				l.add(file, "", field, fmt.Sprintf("must be a list of ports and ranges, like [3306, \"6379-6380\"], not %s", describe(v)))
				continue
			}
			var rs []PortRange
			for _, el := range list {
				r, msg := portRange(el)
				if msg != "" {
					l.add(file, "", field, msg)
					continue
				}
				rs = append(rs, r)
			}
			bg.Reserved = mergeRanges(rs)
		default:
			l.add(file, "", field, "unknown key; valid keys are "+strings.Join(bindGuardKeys, ", "))
		}
	}
}

// terminate parses the terminate mapping. Problems name the field as
// terminate.KEY.
func (l *loader) terminate(file string, v any) {
	m, ok := asMap(v)
	if !ok {
		l.add(file, "", "terminate", fmt.Sprintf("must be a mapping with after, grace and dry_run, like {after: 30s, grace: 10s}, not %s", describe(v)))
		return
	}
	t := &Terminate{Enabled: true, Grace: DefaultGrace}
	for _, key := range slices.Sorted(maps.Keys(m)) {
		v := m[key]
		field := "terminate." + key
		switch key {
		case "after", "grace":
			s, msg := str(v)
			var d time.Duration
			var err error
			if msg == "" {
				d, err = time.ParseDuration(s)
			}
			switch {
			case msg != "":
				l.add(file, "", field, fmt.Sprintf("must be a duration like 30s or 2m, not %s", describe(v)))
				continue
			case err != nil || d < 0:
				l.add(file, "", field, fmt.Sprintf("invalid duration %q; give one like 30s or 2m", s))
				continue
			case key == "after" && d < time.Second:
				l.add(file, "", field, fmt.Sprintf("%s is too short: a socket must be blocked at least 1s before it is ended", s))
				continue
			}
			if key == "after" {
				t.After = d
			} else {
				t.Grace = d
			}
		case "dry_run":
			b, ok := v.(bool)
			if !ok {
				l.add(file, "", field, fmt.Sprintf("must be true or false, not %s", describe(v)))
				continue
			}
			t.DryRun = b
		default:
			l.add(file, "", field, "unknown key; valid keys are "+strings.Join(terminateKeys, ", "))
		}
	}
	if t.After == 0 {
		if _, given := m["after"]; !given {
			l.add(file, "", "terminate.after", "missing: say how long a socket may stay blocked before its process is ended, like after: 30s")
		}
		return
	}
	l.p.Terminate = *t
}

// checkReserved reports reserved ports that are an account's: the guard
// would refuse the account its own port.
func (l *loader) checkReserved(file string) {
	res := l.p.BindGuard.Reserved
	if len(res) == 0 {
		return
	}
	for i := range l.accounts {
		a := &l.accounts[i]
		for _, r := range a.Ports {
			for _, q := range res {
				if r.Lo <= q.Hi && q.Lo <= r.Hi {
					lo, hi := max(r.Lo, q.Lo), min(r.Hi, q.Hi)
					l.add(file, "", "bind_guard.reserved", fmt.Sprintf("%s is reserved but given to %s in %s", PortRange{lo, hi}.String(), ref(a, l.meta[i].pos), showPath(a.File)))
				}
			}
		}
	}
}
