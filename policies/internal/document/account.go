package document

import (
	"bytes"
	"math"
)

// An account decoded to map[string]any costs a dozen allocations: the map,
// a string and a box for each value, a []any per list. At 50,000 accounts
// that was most of the time and garbage of a load, for values the loader
// looks at once and drops. So the plain-YAML decoder (plainyaml.go) decodes
// an item of the accounts list that has the usual shape into an Account
// instead, and the loader (policies' loader.plainAccount) turns that into a
// policies.Account directly.
//
// Neither side may change what policies.Load says, so both only take the
// usual case and leave everything else to the generic path:
//
//   - the decoder takes an item only when it is a block or flow mapping,
//     all on the lines its mapping would have, of the account keys, each at
//     most once, to values the loader takes without a problem when seen
//     alone: a string for name and user, a number for uid (that fits a
//     uint32), a flow list of ports and ranges 1-65535 (numbers, or strings
//     of digits) for ports, a flow list of the protocols WithProtocols
//     names for protocols. The generic decoder decodes any other item, from
//     the same place;
//   - the loader takes an Account only when it would find no problem with
//     the value it stands for (problems between accounts are found later,
//     the same either way). Otherwise it has the generic decoder decode the
//     item again, from the text the Account points to (Item.Value), and
//     reports on that.
//
// FuzzPlainYAML checks that the decoder takes the same documents either way
// and that each Account says what its generic value does; FuzzLoad and
// TestPlainAccounts in policies check that Load says the same either way
// (see WithTypedAccounts).

// Account is an item of an accounts list as the plain-YAML decoder found
// it: which of the account keys it has, and their values. What it returns
// points into the decoded text and the decoder's memory: read it, never
// change it, and copy what is kept (see Chunk.Release).
//
// There are as many as accounts, as garbage, so it is kept small and with a
// single pointer, to its parser: the rest refers to the parser's text and
// ports by offsets.
type Account struct {
	p *parser
	// Where the item is in p.b: the offset of the line of its dash, and
	// the dash's column.
	at, n uint32
	// name and user are where their strings are in p.b, ports where the
	// ports are in p.ports (unmerged, as written).
	name, user, ports span
	uid               uint32
	// keys holds the keys the item has.
	keys Key
	// protocols holds the protocols, bit i for the decoder's protocols[i].
	protocols uint8
}

// span is a part of a slice: s[start:end].
type span struct{ start, end uint32 }

func (a *Account) text(s span) []byte { return a.p.b[s.start:s.end] }

// Has reports whether the item has the key k.
func (a *Account) Has(k Key) bool { return a.keys&k != 0 }

// Name returns the value of name, a string; empty when there is none.
func (a *Account) Name() []byte { return a.text(a.name) }

// User returns the value of user, a string; empty when there is none.
func (a *Account) User() []byte { return a.text(a.user) }

// UID returns the value of uid; 0 when there is none.
func (a *Account) UID() uint32 { return a.uid }

// Ports returns the ports and ranges of ports as written: in their order,
// not merged, each from 1 to 65535 and not reversed.
func (a *Account) Ports() []Range { return a.p.ports[a.ports.start:a.ports.end] }

// Protocols returns the protocols as a set of bits: bit i stands for the
// i-th name WithProtocols gave. 0 when there is none, or the list is empty.
func (a *Account) Protocols() uint8 { return a.protocols }

// Range is an inclusive range of ports, a single port when Lo == Hi. It has
// the fields of policies.Range, so that one converts to the other.
type Range struct {
	Lo, Hi uint16
}

// Key is a set of the keys an account may have, a bit for each.
type Key uint8

// The account keys.
const (
	KeyName Key = 1 << iota
	KeyUID
	KeyUser
	KeyPorts
	KeyProtocols
)

// keyOf returns the bit for key, 0 when it is not an account key.
func keyOf(key []byte) Key {
	switch string(key) {
	case "name":
		return KeyName
	case "uid":
		return KeyUID
	case "user":
		return KeyUser
	case "ports":
		return KeyPorts
	case "protocols":
		return KeyProtocols
	}
	return 0
}

// generic returns a as the generic decoder decodes it: it decodes a's text
// again.
func (a *Account) generic() any {
	p := &parser{b: a.p.b, next: int(a.at)}
	var v any
	ok := func() (ok bool) {
		defer p.recover(&ok)
		p.advance()
		v = p.item(int(a.n))
		return true
	}()
	if !ok {
		// The decoder took an item that it cannot decode generically:
		// FuzzPlainYAML is there so that this never happens.
		panic("document: the plain-YAML decoder took an account it does not decode")
	}
	return v
}

// accountItem decodes the item of a list at indentation n whose text starts
// at column col of the current line as an Account, and moves past it as
// item would. When the item is not of the shape an Account holds, it
// reports false and leaves the parser where it was.
func (p *parser) accountItem(n, col int) (*Account, bool) {
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
func (p *parser) span(s []byte) span {
	start := cap(p.b) - cap(s)
	return span{uint32(start), uint32(start + len(s))}
}

// newAccount returns a zeroed Account. Accounts are carved from blocks
// that double in size, up to a limit: an include file holds one account,
// a piece of a split file a few hundred.
func (p *parser) newAccount() *Account {
	if len(p.accounts) == cap(p.accounts) {
		p.accounts = make([]Account, 0, min(max(2*cap(p.accounts), 1), 128))
	}
	p.accounts = p.accounts[:len(p.accounts)+1]
	a := &p.accounts[len(p.accounts)-1]
	*a = Account{} // it may have been handed out, then taken back
	return a
}

// blockAccount is mapping for an account, decoded into a; it reports false
// where mapping would decode something an Account does not hold or fail.
func (p *parser) blockAccount(n int, text []byte, a *Account) bool {
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
func (p *parser) flowAccount(text []byte, a *Account) ([]byte, bool) {
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
func (p *parser) accountValue(a *Account, key, text []byte) ([]byte, bool) {
	k := keyOf(key)
	if k == 0 || a.keys&k != 0 {
		return nil, false
	}
	a.keys |= k
	if k == KeyPorts || k == KeyProtocols {
		return p.accountFlowList(a, k, text)
	}
	if text[0] == '[' || text[0] == '{' {
		return nil, false
	}
	v, rest, ok := lexScalar(text)
	switch {
	case !ok:
		return nil, false
	case k == KeyUID:
		// A UID out of range is the loader's to report, from the
		// generic value: an Account holds any that fits a uint32.
		a.uid = uint32(v.n)
		return rest, v.isInt && int64(v.n) <= math.MaxUint32
	case k == KeyName:
		a.name = p.span(v.s)
	default:
		a.user = p.span(v.s)
	}
	return rest, !v.isInt
}

// accountFlowList is flowList for ports or protocols, decoded into a.
func (p *parser) accountFlowList(a *Account, k Key, text []byte) ([]byte, bool) {
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
		if k == KeyPorts {
			r, ok := v.portRange()
			if !ok {
				return nil, false
			}
			p.ports = append(p.ports, r)
		} else {
			i := p.protocol(v)
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
			if k == KeyPorts {
				a.ports = span{uint32(start), uint32(len(p.ports))}
			}
			return text[1:], true
		case text[0] != ',':
			return nil, false
		}
		text = skipSpaces(text[1:])
	}
}

// portRange is policies' portRange for the values it takes without a
// message; ok is false for any other.
func (v plainScalar) portRange() (r Range, ok bool) {
	if v.isInt {
		if v.n < 1 || v.n > math.MaxUint16 {
			return Range{}, false
		}
		return Range{uint16(v.n), uint16(v.n)}, true
	}
	lo, hi, isRange := bytes.Cut(v.s, []byte("-"))
	if !isRange {
		hi = lo
	}
	r.Lo, ok = portNumber(lo)
	if !ok {
		return Range{}, false
	}
	r.Hi, ok = portNumber(hi)
	return r, ok && r.Lo <= r.Hi
}

// portNumber parses a port written in decimal digits, as policies'
// parseRange does (leading zeros and all), but nothing else: no spaces,
// which parseRange would trim.
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

// protocol returns the index in p.protocols of the protocol v names, -1
// when it names none (of the first 8, which is what Account.Protocols
// holds).
func (p *parser) protocol(v plainScalar) int {
	if !v.isInt {
		for i, name := range p.protocols[:min(len(p.protocols), 8)] {
			if string(v.s) == name {
				return i
			}
		}
	}
	return -1
}
