package policies

import (
	"bytes"
	"math"
	"slices"
)

// An account decoded to map[string]any costs a dozen allocations: the map,
// a string and a box for each value, a []any per list. At 50,000 accounts
// that was most of the time and garbage of a load, for values the loader
// looks at once and drops. So the plain-YAML decoder (plainyaml.go) decodes
// an item of the accounts list that has the usual shape into a plainAccount
// instead, and the loader (loader.plainAccount) turns that into an Account
// directly.
//
// Neither side may change what Load says, so both only take the usual case
// and leave everything else to the generic path:
//
//   - the decoder takes an item only when it is a block or flow mapping,
//     all on the lines its mapping would have, of the account keys, each at
//     most once, to values the loader takes without a problem when seen
//     alone: a string for name and user, a number for uid, a flow list of
//     ports and ranges 1-65535 (numbers, or strings of digits) for ports,
//     a flow list of known protocols for protocols. The generic decoder
//     decodes any other item, from the same place;
//   - the loader takes a plainAccount only when account would find no
//     problem with the value it stands for (problems between accounts are
//     found later, the same either way). Otherwise it has the generic
//     decoder decode the item again, from the text plainAccount points to
//     (generic), and account report on that.
//
// FuzzPlainYAML checks that the decoder takes the same documents either way
// and that each plainAccount says what its generic value does; FuzzLoad and
// TestPlainAccounts check that Load says the same either way (see
// typedAccounts).

// typedAccounts turns the typed path on; tests turn it off to compare.
var typedAccounts = true

// plainAccount is an item of an accounts list as the plain-YAML decoder
// found it. There are as many as accounts, as garbage, so it is kept small
// and with a single pointer, to its parser: the rest refers to the parser's
// text and ports by offsets.
type plainAccount struct {
	p *plainParser
	// Where the item is in p.b: the offset of the line of its dash, and
	// the dash's column.
	at, n uint32
	// name and user are where their strings are in p.b, ports where the
	// ports are in p.ports (unmerged, as written).
	name, user, ports span
	uid               uint32
	// keys holds the accountKey bits of the keys the item has.
	keys accountKey
	// protocols holds the protocols as protocolMask does.
	protocols uint8
}

// span is a part of a slice: s[start:end].
type span struct{ start, end uint32 }

func (a *plainAccount) text(s span) []byte    { return a.p.b[s.start:s.end] }
func (a *plainAccount) portList() []PortRange { return a.p.ports[a.ports.start:a.ports.end] }

// accountKey is a bit standing for one of accountKeys.
type accountKey uint8

const (
	keyName accountKey = 1 << iota
	keyUID
	keyUser
	keyPorts
	keyProtocols
)

// accountKeyOf returns the bit for key, 0 when it is not an account key.
func accountKeyOf(key []byte) accountKey {
	switch string(key) {
	case "name":
		return keyName
	case "uid":
		return keyUID
	case "user":
		return keyUser
	case "ports":
		return keyPorts
	case "protocols":
		return keyProtocols
	}
	return 0
}

// generic returns a as the generic decoder decodes it: it decodes a's text
// again.
func (a *plainAccount) generic() any {
	p := &plainParser{b: a.p.b, next: int(a.at)}
	var v any
	ok := func() (ok bool) {
		defer p.recover(&ok)
		p.advance()
		v = p.item(int(a.n), false)
		return true
	}()
	if !ok {
		// The decoder took an item that it cannot decode generically:
		// FuzzPlainYAML is there so that this never happens.
		panic("policies: the plain-YAML decoder took an account it does not decode")
	}
	return v
}

// accountItem decodes the item of a list at indentation n whose text starts
// at column col of the current line as a plainAccount, and moves past it as
// item would. When the item is not of the shape plainAccount holds, it
// reports false and leaves the parser where it was.
func (p *plainParser) accountItem(n, col int) (*plainAccount, bool) {
	next, line, indent, eof, at, ports := p.next, p.line, p.indent, p.eof, p.at, len(p.ports)
	a := p.newAccount()
	a.p, a.at, a.n = p, uint32(p.at), uint32(n)
	ok := false
	switch text := p.line[col:]; {
	case len(text) > 0 && text[0] == '{':
		var rest []byte
		rest, ok = p.flowAccount(text[1:], a)
		if ok = ok && lineEnds(rest); ok {
			p.advance()
			ok = p.eof || p.indent <= n // item fails on a continued line
		}
	case startsKey(text):
		ok = p.blockAccount(col, text, a)
	}
	if !ok {
		p.next, p.line, p.indent, p.eof, p.at = next, line, indent, eof, at
		p.ports = p.ports[:ports]
		p.accounts = p.accounts[:len(p.accounts)-1]
		return nil, false
	}
	return a, true
}

// span returns where s, a part of p.b, is in p.b. Every part of p.b the
// parser takes is a slice of it with two indexes, which keeps the end of
// its capacity: the offset is the difference in capacity.
func (p *plainParser) span(s []byte) span {
	start := cap(p.b) - cap(s)
	return span{uint32(start), uint32(start + len(s))}
}

// newAccount returns a zeroed plainAccount. Accounts are carved from blocks
// that double in size, up to a limit: an include file holds one account,
// a piece of a split file a few hundred.
func (p *plainParser) newAccount() *plainAccount {
	if len(p.accounts) == cap(p.accounts) {
		p.accounts = make([]plainAccount, 0, min(max(2*cap(p.accounts), 1), 128))
	}
	p.accounts = p.accounts[:len(p.accounts)+1]
	a := &p.accounts[len(p.accounts)-1]
	*a = plainAccount{} // it may have been handed out, then taken back
	return a
}

// blockAccount is mapping for an account, decoded into a; it reports false
// where mapping would decode something plainAccount does not hold or fail.
func (p *plainParser) blockAccount(n int, text []byte, a *plainAccount) bool {
	for {
		key, rest, ok := lexKey(text)
		if !ok {
			return false
		}
		// A value on the lines below, "key:#" or no space after the
		// colon: mapping's business (see inline).
		value := skipSpaces(rest)
		if len(value) == 0 || value[0] == '#' || len(value) == len(rest) {
			return false
		}
		if rest, ok = p.accountValue(a, key, value); !ok || !lineEnds(rest) {
			return false
		}
		p.advance()
		switch {
		case p.eof || p.indent < n:
			return true
		case p.indent > n || isItem(p.line[n:]):
			return false
		}
		text = p.line[n:]
	}
}

// flowAccount is flowMapping for an account, decoded into a.
func (p *plainParser) flowAccount(text []byte, a *plainAccount) ([]byte, bool) {
	text = skipSpaces(text)
	if len(text) > 0 && text[0] == '}' {
		return text[1:], true
	}
	for {
		key, rest, ok := lexKey(text)
		if !ok || len(rest) == 0 {
			return nil, false
		}
		if text = skipSpaces(rest); len(text) == 0 {
			return nil, false
		}
		if text, ok = p.accountValue(a, key, text); !ok {
			return nil, false
		}
		text = skipSpaces(text)
		switch {
		case len(text) == 0:
			return nil, false
		case text[0] == '}':
			return text[1:], true
		case text[0] != ',':
			return nil, false
		}
		text = skipSpaces(text[1:])
	}
}

// accountValue decodes the value of key at the start of text (not empty)
// into a, and returns the rest of text. It reports false for a key that is
// not an account's or is there already, and for a value that a cannot
// hold.
func (p *plainParser) accountValue(a *plainAccount, key, text []byte) ([]byte, bool) {
	k := accountKeyOf(key)
	if k == 0 || a.keys&k != 0 {
		return nil, false
	}
	a.keys |= k
	if k == keyPorts || k == keyProtocols {
		return p.accountList(a, k, text)
	}
	if text[0] == '[' || text[0] == '{' {
		return nil, false
	}
	v, rest, ok := lexScalar(text)
	switch {
	case !ok:
		return nil, false
	case k == keyUID:
		// A UID out of range is account's to report.
		a.uid = uint32(v.n)
		return rest, v.isInt && int64(v.n) <= maxUID
	case k == keyName:
		a.name = p.span(v.s)
	default:
		a.user = p.span(v.s)
	}
	return rest, !v.isInt
}

// accountList is flowList for ports or protocols, decoded into a.
func (p *plainParser) accountList(a *plainAccount, k accountKey, text []byte) ([]byte, bool) {
	if text[0] != '[' {
		return nil, false
	}
	start := len(p.ports)
	text = skipSpaces(text[1:])
	if len(text) > 0 && text[0] == ']' {
		return text[1:], true
	}
	for {
		if len(text) == 0 || text[0] == '[' || text[0] == '{' {
			return nil, false
		}
		v, rest, ok := lexScalar(text)
		if !ok {
			return nil, false
		}
		if k == keyPorts {
			r, ok := v.portRange()
			if !ok {
				return nil, false
			}
			p.ports = append(p.ports, r)
		} else {
			i := v.protocol()
			if i < 0 {
				return nil, false
			}
			a.protocols |= 1 << i
		}
		text = skipSpaces(rest)
		switch {
		case len(text) == 0:
			return nil, false
		case text[0] == ']':
			if k == keyPorts {
				a.ports = span{uint32(start), uint32(len(p.ports))}
			}
			return text[1:], true
		case text[0] != ',':
			return nil, false
		}
		text = skipSpaces(text[1:])
	}
}

// plainAccount adds the account pa, at position pos of file's accounts
// list, exactly as account would add the value it stands for, and reports
// true; or reports false, having added nothing, when account would report a
// problem with it. The decoder has checked each value alone already.
func (l *loader) plainAccount(file string, pos int, pa *plainAccount) bool {
	switch {
	case pa.keys&keyName == 0 || !validAccountName(pa.text(pa.name)):
		return false
	case pa.keys&keyPorts == 0 || pa.ports.start == pa.ports.end:
		return false
	case pa.keys&keyProtocols != 0 && pa.protocols == 0: // []
		return false
	case pa.keys&(keyUID|keyUser) == 0:
		return false
	}
	a := Account{File: file, Protocols: l.p.Protocols}
	if pa.keys&keyProtocols != 0 {
		a.Protocols = l.protocolList(int(pa.protocols))
	}
	if zone := l.p.Zone; l.zoneOK {
		for _, r := range pa.portList() {
			// One test for ports and ranges: a port is a range of one.
			if !zone.Contains(r.Lo) || !zone.Contains(r.Hi) {
				return false
			}
		}
	}

	md := meta{pos: pos, uidOK: true}
	if pa.keys&keyUID != 0 {
		a.UID = pa.uid
	}
	if pa.keys&keyUser != 0 {
		if pa.user.start == pa.user.end {
			return false
		}
		// A failed lookup is cached, for account to report.
		name := string(pa.text(pa.user))
		uid, err := l.resolve(name)
		if err != nil || pa.keys&keyUID != 0 && a.UID != uid {
			return false
		}
		a.User, a.UID, md.byUser = name, uid, true
	}
	if _, exempt := slices.BinarySearch(l.p.Exempt, a.UID); exempt || a.UID < l.p.MinUID {
		return false
	}

	a.Name = string(pa.text(pa.name))
	// Merged in the scratch space, as ports does.
	l.ranges = append(l.ranges[:0], pa.portList()...)
	a.Ports = l.keep(MergeInPlace(l.ranges))
	l.accounts = append(l.accounts, a)
	l.meta = append(l.meta, md)
	return true
}

// portRange is portRange (values.go) for the values it takes without a
// message; ok is false for any other.
func (v plainScalar) portRange() (r PortRange, ok bool) {
	if v.isInt {
		if v.n < 1 || v.n > math.MaxUint16 {
			return PortRange{}, false
		}
		return PortRange{uint16(v.n), uint16(v.n)}, true
	}
	lo, hi, isRange := bytes.Cut(v.s, []byte("-"))
	if !isRange {
		hi = lo
	}
	r.Lo, ok = portNumber(lo)
	if !ok {
		return PortRange{}, false
	}
	r.Hi, ok = portNumber(hi)
	return r, ok && r.Lo <= r.Hi
}

// portNumber parses a port written in decimal digits, as parseRange does
// (leading zeros and all), but nothing else: no spaces, which parseRange
// would trim.
func portNumber(s []byte) (uint16, bool) {
	if len(s) == 0 {
		return 0, false
	}
	n := 0
	for _, c := range s {
		if !isDigit(c) {
			return 0, false
		}
		if n = n*10 + int(c-'0'); n > math.MaxUint16 {
			return 0, false
		}
	}
	return uint16(n), n >= 1
}

// protocol returns the index in Protocols of the protocol v names, -1 when
// it names none.
func (v plainScalar) protocol() int {
	if !v.isInt {
		for i, p := range Protocols {
			if string(v.s) == string(p) {
				return i
			}
		}
	}
	return -1
}
