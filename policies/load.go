package policies

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Option changes how Load works.
type Option func(*loader)

// WithLookup makes Load resolve user names with lookup instead of NSS, so
// that tests need no real users. lookup returns ErrUnknownUser, or an error
// wrapping it, for a name that does not exist.
func WithLookup(lookup func(name string) (uint32, error)) Option {
	return func(l *loader) { l.lookup = lookup }
}

// Defaults for keys the main file leaves out.
const (
	defaultTable  = "nftpol"
	defaultMinUID = 1000
)

var defaultZone = PortRange{40010, 49999}

var (
	// Table names end up in every nft command line; keep them to what nft
	// accepts unquoted.
	tableName = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,31}$`)
	// Account names end up in nftables comments and log lines, so no
	// quotes, spaces or control characters.
	accountName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$`)
)

// The keys each kind of mapping may hold. Keys are matched exactly: viper
// would accept "Table" for "table", but a policy should read the same to
// every tool that parses it.
var (
	mainKeys    = []string{"table", "zone", "min_uid", "exempt", "loopback", "action", "protocols", "include", "accounts"}
	accountKeys = []string{"name", "uid", "user", "ports", "protocols"}
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
	l := &loader{lookup: lookupNSS, users: map[string]userResult{}, checkPerms: true, checkedDirs: map[string]bool{}}
	for _, o := range opts {
		o(l)
	}
	doc, err := readFile(file)
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
	if len(doc) == 0 {
		// Most likely a write cut short: loading it would close the
		// whole zone to every account.
		l.add(file, "", "", "empty: no settings and no accounts; if a policy without accounts is meant, write accounts: []")
		return nil, &ValidationError{Problems: l.problems}
	}
	p := l.load(file, doc)
	if len(l.problems) > 0 {
		return nil, &ValidationError{Problems: l.problems}
	}
	return p, nil
}

// loader holds the state of one Load call.
type loader struct {
	lookup func(name string) (uint32, error)
	// users caches lookups, so a name used twice is looked up once and
	// reported the same way both times.
	users    map[string]userResult
	problems []Problem
	// checkPerms is WithPermissionCheck's setting; checkedDirs holds the
	// directories whose permissions were checked already.
	checkPerms  bool
	checkedDirs map[string]bool

	p *Policy
	// zoneOK is false when the zone is broken; ports are then not checked
	// against it, which would only repeat the zone's problem.
	zoneOK  bool
	entries []*entry
}

// entry is an account while it is being loaded.
type entry struct {
	Account
	// label is the Account of the entry's problems: its name, or "" when it
	// has none, and then prefix ("accounts[2].") says which one it is.
	label, prefix string
	// ref names the account in other accounts' problems.
	ref string
	// uidOK says the UID is known, from uid or from user.
	uidOK bool
	// uidField is where the UID came from: "user" when the account names a
	// user, "uid" otherwise.
	uidField string
}

func (l *loader) add(file, account, field, msg string) {
	l.problems = append(l.problems, Problem{File: file, Account: account, Field: field, Message: msg})
}

func (l *loader) addAccount(e *entry, field, msg string) {
	l.add(e.File, e.label, e.prefix+field, msg)
}

func (l *loader) load(file string, doc map[string]any) *Policy {
	l.p = &Policy{
		File:      file,
		Table:     defaultTable,
		Zone:      defaultZone,
		MinUID:    defaultMinUID,
		Loopback:  LoopbackAllow,
		Action:    Reject,
		Protocols: slices.Clone(Protocols),
	}
	l.zoneOK = true
	for _, key := range slices.Sorted(maps.Keys(doc)) {
		if v := doc[key]; v != nil {
			l.setting(file, key, v)
		}
	}
	// Accounts last: they need the zone, min_uid, exempt and protocols.
	l.accounts(file, doc["accounts"])
	if v := doc["include"]; v != nil {
		l.include(file, v)
	}
	l.checkAccounts()

	for _, e := range l.entries {
		l.p.Accounts = append(l.p.Accounts, e.Account)
	}
	slices.SortFunc(l.p.Accounts, func(a, b Account) int {
		return cmp.Or(cmp.Compare(a.UID, b.UID), strings.Compare(a.Name, b.Name))
	})
	return l.p
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
		case !tableName.MatchString(s):
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
		protos, msgs := protocolList(v)
		for _, msg := range msgs {
			l.add(file, "", key, msg)
		}
		if len(protos) > 0 {
			p.Protocols = protos
		}
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

// accounts parses the accounts list of one file.
func (l *loader) accounts(file string, v any) {
	if v == nil {
		return
	}
	list, ok := v.([]any)
	if !ok {
		l.add(file, "", "accounts", fmt.Sprintf("must be a list of accounts, not %s", describe(v)))
		return
	}
	for i, a := range list {
		l.account(file, i, a)
	}
}

func (l *loader) account(file string, i int, v any) {
	pos := fmt.Sprintf("accounts[%d]", i)
	m, ok := asMap(v)
	if !ok {
		l.add(file, "", pos, fmt.Sprintf("must be a mapping with name, uid or user, and ports; not %s", describe(v)))
		return
	}
	e := &entry{
		Account:  Account{File: file, Protocols: slices.Clone(l.p.Protocols)},
		prefix:   pos + ".",
		ref:      pos,
		uidField: "uid",
	}
	// Problems are labelled with the name whenever there is one, even an
	// invalid one: it is what the reader will search the files for.
	if name, _ := m["name"].(string); name != "" {
		e.Name, e.label, e.prefix, e.ref = name, name, "", fmt.Sprintf("account %q", name)
	}
	l.entries = append(l.entries, e)

	for _, key := range slices.Sorted(maps.Keys(m)) {
		v := m[key]
		if v == nil {
			continue
		}
		switch key {
		case "name":
			s, msg := str(v)
			switch {
			case msg != "":
				l.addAccount(e, key, msg)
			case !accountName.MatchString(s):
				l.addAccount(e, key, fmt.Sprintf("invalid name %q; use 1-64 letters, digits, '.', '_', '@' or '-', starting with a letter or digit", s))
			}
		case "ports":
			l.ports(e, v)
		case "protocols":
			protos, msgs := protocolList(v)
			for _, msg := range msgs {
				l.addAccount(e, key, msg)
			}
			if len(protos) > 0 {
				e.Protocols = protos
			}
		case "uid", "user":
			// Below, where both are known.
		default:
			l.addAccount(e, key, "unknown key; valid keys are "+strings.Join(accountKeys, ", "))
		}
	}
	if m["name"] == nil {
		l.addAccount(e, "name", "missing; every account needs a name, used in plans, logs and comments")
	}
	if m["ports"] == nil {
		l.addAccount(e, "ports", fmt.Sprintf("missing; list the account's ports in the zone %s, like [40010, \"40020-40029\"]", formatRange(l.p.Zone)))
	}
	l.uid(e, m["uid"], m["user"])
}

// ports parses an account's ports, checks each against the zone and merges
// them.
func (l *loader) ports(e *entry, v any) {
	list, ok := v.([]any)
	if !ok {
		l.addAccount(e, "ports", fmt.Sprintf("must be a list of ports and ranges, like [40010, \"40020-40029\"], not %s", describe(v)))
		return
	}
	if len(list) == 0 {
		l.addAccount(e, "ports", fmt.Sprintf("empty; list at least one port or range in the zone %s", formatRange(l.p.Zone)))
		return
	}
	zone := l.p.Zone
	var rs []PortRange
	for _, el := range list {
		r, msg := portRange(el)
		switch {
		case msg != "":
			l.addAccount(e, "ports", msg)
		case l.zoneOK && r.Lo == r.Hi && !zone.Contains(r.Lo):
			l.addAccount(e, "ports", fmt.Sprintf("port %d is outside the zone %s", r.Lo, formatRange(zone)))
		case l.zoneOK && !(zone.Contains(r.Lo) && zone.Contains(r.Hi)):
			l.addAccount(e, "ports", fmt.Sprintf("range %s is not inside the zone %s", formatRange(r), formatRange(zone)))
		default:
			rs = append(rs, r)
		}
	}
	e.Ports = mergeRanges(rs)
}

// uid resolves an account's UID from uid, user or both, and checks it
// against min_uid and exempt.
func (l *loader) uid(e *entry, uidV, userV any) {
	var fromUID uint32
	uidOK := false
	if uidV != nil {
		var msg string
		fromUID, msg = uidValue(uidV)
		if msg != "" {
			l.addAccount(e, "uid", msg)
		}
		uidOK = msg == ""
	}
	switch name, msg := str(userV); {
	case userV == nil && uidV == nil:
		l.addAccount(e, "uid", "missing; give uid: (a number) or user: (a user name)")
		return
	case userV == nil:
		e.UID, e.uidOK = fromUID, uidOK
	case msg != "":
		l.addAccount(e, "user", msg)
		return
	case name == "":
		l.addAccount(e, "user", "empty; give a user name, or uid: instead")
		return
	default:
		e.User, e.uidField = name, "user"
		uid, err := l.resolve(name)
		switch {
		case err != nil:
			l.addAccount(e, "user", lookupMessage(name, err))
			return
		case uidV != nil && uidOK && fromUID != uid:
			l.addAccount(e, "uid", fmt.Sprintf("uid %d does not match user %q, whose uid is %d; give one of them or make them agree", fromUID, name, uid))
			return
		}
		e.UID, e.uidOK = uid, true
	}
	if !e.uidOK {
		return
	}
	if e.UID < l.p.MinUID {
		l.addAccount(e, e.uidField, fmt.Sprintf("%s is below min_uid %d, so nftpol would not enforce it; use a uid of at least %d", who(&e.Account), l.p.MinUID, l.p.MinUID))
	}
	if slices.Contains(l.p.Exempt, e.UID) {
		l.addAccount(e, e.uidField, fmt.Sprintf("%s is exempt; remove it from exempt or remove the account", who(&e.Account)))
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
	// "include: ." next to the main file must not read the main file again
	// as an include file.
	mainInfo, _ := os.Stat(file)
	for _, de := range entries {
		name := de.Name()
		if strings.HasPrefix(name, ".") || de.IsDir() || format(name) == "" {
			continue
		}
		path := filepath.Join(dir, name)
		fi, err := os.Stat(path)
		switch {
		case err != nil:
			l.add(path, "", "", "cannot read: "+printable(err.Error()))
			continue
		case mainInfo != nil && os.SameFile(fi, mainInfo):
			continue
		case fi.IsDir():
			// A symbolic link to a directory: skipped like a directory.
			continue
		case !fi.Mode().IsRegular():
			// Reading a FIFO would block nftpol for good.
			l.add(path, "", "", fmt.Sprintf("not a regular file (%s); an include file holds accounts:", fi.Mode().Type()))
			continue
		}
		l.checkPath(path, "", path, policyFile)
		l.includeFile(path)
	}
}

func (l *loader) includeFile(path string) {
	doc, err := readFile(path)
	var bad badFile
	switch {
	case errors.As(err, &bad):
		l.add(path, "", "", bad.msg)
		return
	case err != nil:
		l.add(path, "", "", "cannot read: "+printable(err.Error()))
		return
	}
	if len(doc) == 0 {
		// Most likely a write cut short: its accounts would lose their
		// ports.
		l.add(path, "", "", "empty: no accounts; if none are meant, write accounts: [] or remove the file")
		return
	}
	for _, key := range slices.Sorted(maps.Keys(doc)) {
		switch {
		case key == "accounts":
		case slices.Contains(mainKeys, key):
			l.add(path, "", key, fmt.Sprintf("an include file holds only accounts:; set %s in the main file %s", key, showPath(l.p.File)))
		default:
			l.add(path, "", key, "unknown key; an include file holds only accounts:")
		}
	}
	l.accounts(path, doc["accounts"])
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
