package document

import (
	"bytes"
	"encoding/binary"
	"math"
	"sync"
)

// A policy file is almost always written in a small, plain part of YAML:
// block mappings and lists, one-line flow lists and mappings, names, numbers
// and quoted strings without escapes. yaml.v3 takes about 15 µs and 10 KB of
// garbage to set up for each document, however small, which for 50,000
// include files is most of a load. The functions here decode that plain part
// directly, to exactly the values yaml.v3 gives (map[string]any, []any,
// string, int, nil), and refuse everything else, which then goes to yaml.v3
// (and gets its error messages). Refusing is always safe, so the subset is
// kept strict:
//
//   - printable ASCII and line feeds only: no tabs, carriage returns,
//     control characters or UTF-8 (so no byte order mark either);
//   - block mappings whose keys are names ([A-Za-z_][A-Za-z0-9_.-]*, not
//     true, false or null in any of YAML's spellings), each key once;
//   - block lists ("- " items), also as the value of a key at the key's own
//     indentation, and with a mapping starting on the item's line;
//   - values on one line: a plain scalar, a quoted string without escapes,
//     a flow list of such scalars, or a flow mapping of such keys to such
//     scalars or flow lists;
//   - plain scalars that yaml.v3 resolves without doubt: a name starting
//     with a letter ([A-Za-z0-9._@/-], not true, false or null), a decimal
//     number without sign or leading zero that fits an int, or a port
//     range like 40010-40019 (digits, '-', digits, never 4 digits before
//     the dash, which a date would have);
//   - comments and blank lines anywhere, and nothing that continues a
//     scalar on the next line: a line more indented than the structure it
//     would belong to refuses the document.
//
// FuzzPlainYAML checks that whatever is decoded here equals what yaml.v3
// decodes.

// plainMapping decodes b as a document whose root is a block mapping at the
// first column, or nothing at all (an empty map then, as yaml.v3 leaves the
// map it decodes into), without typed accounts.
func plainMapping(b []byte) (m map[string]any, ok bool) {
	p, ok := newParser(b, false, nil)
	if !ok {
		return nil, false
	}
	return p.document()
}

// plainDocument is plainMapping for a policy file: with typed accounts, a
// block list under the top-level key accounts comes apart from m, in
// accounts, its items as Accounts where they can be (see Account).
func (d *Decoder) plainDocument(b []byte) (m map[string]any, accounts []Item, ok bool) {
	p, ok := newParser(b, d.typed, d.protocols)
	if !ok {
		return nil, nil, false
	}
	if m, ok = p.document(); !ok {
		return nil, nil, false
	}
	return m, p.accountItems, true
}

// document decodes the parser's text as a document whose root is a block
// mapping, or nothing.
func (p *parser) document() (m map[string]any, ok bool) {
	defer p.recover(&ok)
	p.advance()
	if p.eof {
		return map[string]any{}, true
	}
	if p.indent != 0 || isItem(p.line) {
		p.fail()
	}
	m = p.mapping(0, p.line)
	if !p.eof {
		p.fail()
	}
	return m, true
}

// plainList decodes b as a document whose root is a block list, whatever its
// indentation, with room made for n items at once.
func plainList(b []byte, n int) (list []any, ok bool) {
	p, ok := newParser(b, false, nil)
	if !ok {
		return nil, false
	}
	p.room = n
	defer p.recover(&ok)
	p.advance()
	if p.eof || !isItem(p.line[p.indent:]) {
		p.fail()
	}
	list = p.list(p.indent)
	if !p.eof {
		p.fail()
	}
	return list, true
}

// plainAccountList is plainList for a piece of an accounts list (see
// split.go), of n items, with typed accounts: its items are Accounts where
// they can be, in buffers taken from the pool (see Chunk.Release).
func (d *Decoder) plainAccountList(b []byte, n int) (items []Item, bufs *buffers, ok bool) {
	p, ok := newParser(b, true, d.protocols)
	if !ok {
		return nil, nil, false
	}
	p.room = n
	defer p.recover(&ok)
	p.advance()
	if p.eof || !isItem(p.line[p.indent:]) {
		p.fail()
	}
	items = p.accountList(p.indent)
	if !p.eof {
		p.fail()
	}
	return items, p.bufs, true
}

// parser reads a document line by line. Nothing it refuses is an error:
// fail unwinds to the function that started it, which reports !ok.
type parser struct {
	b    []byte
	next int // offset of the line after the current one
	// The current content line (not blank, not only a comment), without
	// its line feed, and its indentation; eof when there is none left.
	line   []byte
	indent int
	eof    bool
	at     int // offset of the current line
	// typed says the accounts list is decoded to Accounts where it can
	// be, with protocols as the names their protocols may take;
	// accounts and ports are where Accounts are carved from.
	typed     bool
	protocols []string
	accounts  []Account
	ports     []Range
	// accountItems is the accounts list of the root mapping, when typed
	// and a block list.
	accountItems []Item
	// room is the number of items the root list should have, when
	// known: growing the list and the accounts step by step would make
	// as much garbage as they hold.
	room int
	// bufs, when set, is where the root list, the accounts and the
	// ports are: memory of a chunk the loader is done with (see
	// Chunk.Release).
	bufs *buffers
}

// buffers is the memory one chunk of an accounts list decodes into. A
// 50,000-account file is about 170 chunks, of which a handful are alive at
// a time: reused, their memory is a few chunks' worth instead of the whole
// file's (3 MB, a tenth of what a one-account apply allocated, and as many
// page faults).
type buffers struct {
	list     []Item
	accounts []Account
	ports    []Range
}

var pool sync.Pool // of *buffers

// takeBuffers returns buffers for a chunk of n items, with room for as many
// port ranges.
func takeBuffers(n int) *buffers {
	b, _ := pool.Get().(*buffers)
	if b == nil || cap(b.list) < n || cap(b.accounts) < n {
		b = &buffers{list: make([]Item, 0, n), accounts: make([]Account, 0, n), ports: make([]Range, 0, n)}
	}
	return b
}

// release gives b back for chunks decoded later. Nothing may use what was
// decoded into it any more.
func (b *buffers) release() {
	// Cleared, so that the pool holds no pointer into the file.
	clear(b.list[:cap(b.list)])
	clear(b.accounts[:cap(b.accounts)])
	b.list, b.accounts, b.ports = b.list[:0], b.accounts[:0], b.ports[:0]
	pool.Put(b)
}

// refused is what fail panics with.
type refused struct{}

func newParser(b []byte, typed bool, protocols []string) (*parser, bool) {
	if !printableLines(b) {
		return nil, false
	}
	// Offsets into b are kept as uint32 (see Account).
	typed = typed && uint64(len(b)) <= math.MaxUint32
	return &parser{b: b, typed: typed, protocols: protocols}, true
}

func (p *parser) fail() { panic(refused{}) }

func (p *parser) recover(ok *bool) {
	if r := recover(); r != nil {
		if _, refused := r.(refused); !refused {
			panic(r)
		}
		*ok = false
	}
}

// advance moves to the next content line.
func (p *parser) advance() {
	for p.next < len(p.b) {
		at := p.next
		line := p.b[p.next:]
		if end := bytes.IndexByte(line, '\n'); end >= 0 {
			line = line[:end]
			p.next += end + 1
		} else {
			p.next = len(p.b)
		}
		i := 0
		for i < len(line) && line[i] == ' ' {
			i++
		}
		if i < len(line) && line[i] != '#' {
			p.line, p.indent, p.at = line, i, at
			return
		}
	}
	p.line, p.indent, p.eof = nil, 0, true
}

// block decodes the mapping or list whose first line is the current one, at
// indentation n.
func (p *parser) block(n int) any {
	if isItem(p.line[n:]) {
		return p.list(n)
	}
	return p.mapping(n, p.line[n:])
}

// mapping decodes a block mapping at indentation n whose first key starts
// text, the rest of the current line (an item's line holds a key after its
// "- "). It returns at the first line indented less than n.
func (p *parser) mapping(n int, text []byte) map[string]any {
	m := map[string]any{}
	for {
		key, rest := p.key(text)
		if _, dup := m[key]; dup {
			p.fail()
		}
		if value, found := p.inline(rest); found {
			m[key] = value
			p.advance()
			if !p.eof && p.indent > n {
				p.fail() // a scalar continued, or something worse
			}
		} else {
			p.advance()
			switch {
			case p.eof || p.indent < n || p.indent == n && !isItem(p.line[n:]):
				m[key] = nil
			case !isItem(p.line[p.indent:]):
				m[key] = p.mapping(p.indent, p.line[p.indent:])
			// A list, further in or at the key's own indentation.
			// Only the root mapping starts at the first column: the
			// items of a list start after "- ", a nested mapping
			// further in.
			case p.typed && n == 0 && key == "accounts":
				m[key] = nil
				p.accountItems = p.accountList(p.indent)
			default:
				m[key] = p.list(p.indent)
			}
		}
		switch {
		case p.eof || p.indent < n:
			return m
		case p.indent > n || isItem(p.line[n:]):
			p.fail()
		}
		text = p.line[n:]
	}
}

// list decodes a block list whose items start at indentation n. It returns
// at the first line indented less than n, or at a line indented n that is
// not an item (the next key of the mapping the list is the value of).
func (p *parser) list(n int) []any {
	list := []any{}
	if p.room > 0 {
		list = make([]any, 0, p.room)
		p.room = 0
	}
	for {
		list = append(list, p.item(n))
		switch {
		case p.eof || p.indent < n || !isItem(p.line[n:]):
			return list
		case p.indent > n:
			p.fail()
		}
	}
}

// accountList is list for an accounts list: its items are Accounts where
// they can be, decoded as list's are where they cannot.
func (p *parser) accountList(n int) []Item {
	list := []Item{}
	if p.room > 0 {
		p.bufs = takeBuffers(p.room)
		list, p.accounts, p.ports = p.bufs.list, p.bufs.accounts, p.bufs.ports
		p.room = 0
	}
	for {
		var a *Account
		ok := false
		if p.typed {
			a, ok = p.accountItem(n, itemText(p.line, n))
		}
		if ok {
			list = append(list, Item{account: a})
		} else {
			list = append(list, Item{value: p.item(n)})
		}
		switch {
		case p.eof || p.indent < n || !isItem(p.line[n:]):
			return list
		case p.indent > n:
			p.fail()
		}
	}
}

// itemText returns the column where the text of the item whose dash is at
// column n of line starts.
func itemText(line []byte, n int) int {
	col := n + 1
	for col < len(line) && line[col] == ' ' {
		col++
	}
	return col
}

// item decodes the item of a list at indentation n whose dash is on the
// current line.
func (p *parser) item(n int) any {
	rest := p.line[n+1:]
	col := itemText(p.line, n)
	switch text := p.line[col:]; {
	case len(text) == 0 || text[0] == '#':
		// The item is on the lines below, or null.
		p.advance()
		if !p.eof && p.indent > n {
			return p.block(p.indent)
		}
		return nil
	case text[0] == '-':
		p.fail() // a list in a list, or a negative number
	case startsKey(text):
		return p.mapping(col, text)
	}
	value, found := p.inline(rest)
	if !found {
		p.fail()
	}
	p.advance()
	if !p.eof && p.indent > n {
		p.fail()
	}
	return value
}

// key reads "name:" at the start of text and returns the name and the rest
// of the line after the colon.
func (p *parser) key(text []byte) (string, []byte) {
	key, rest, ok := lexKey(text)
	if !ok {
		p.fail()
	}
	return intern(key), rest
}

// lexKey is key without failing or making a string: ok is false where key
// fails.
func lexKey(text []byte) (key, rest []byte, ok bool) {
	i := keyLen(text)
	if i == 0 || i >= len(text) || text[i] != ':' || i+1 < len(text) && text[i+1] != ' ' || special(text[:i]) {
		return nil, nil, false
	}
	return text[:i], text[i+1:], true
}

// intern returns b as a string, without allocating one for the words every
// account repeats.
func intern(b []byte) string {
	switch string(b) {
	case "accounts":
		return "accounts"
	case "name":
		return "name"
	case "uid":
		return "uid"
	case "user":
		return "user"
	case "ports":
		return "ports"
	case "protocols":
		return "protocols"
	case "tcp":
		return "tcp"
	case "udp":
		return "udp"
	}
	return string(b)
}

// startsKey reports whether text starts with "name:" followed by a space or
// the end of the line.
func startsKey(text []byte) bool {
	i := keyLen(text)
	return i > 0 && i < len(text) && text[i] == ':' && (i+1 == len(text) || text[i+1] == ' ')
}

// keyLen returns the length of the key name text starts with, 0 when none.
// Names are kept well below the 1024 characters YAML allows a key.
func keyLen(text []byte) int {
	if len(text) == 0 || !isLetter(text[0]) && text[0] != '_' {
		return 0
	}
	i := 1
	for i < len(text) && i < 128 && keyChar(text[i]) {
		i++
	}
	if i == 128 {
		return 0
	}
	return i
}

// inline decodes the value that follows a key's colon (or an item's dash)
// on the same line, up to an optional comment. found is false when there is
// none: the value is on the lines below, or null.
func (p *parser) inline(rest []byte) (value any, found bool) {
	text := skipSpaces(rest)
	if len(text) == 0 || text[0] == '#' {
		if len(text) > 0 && len(text) == len(rest) {
			p.fail() // "key:#": not a comment
		}
		return nil, false
	}
	if len(text) == len(rest) {
		p.fail() // no space after the colon
	}
	value, text = p.scalarOrFlow(text, true)
	p.endOfLine(text)
	return value, true
}

// endOfLine accepts what is left of a line after a value: nothing, or
// spaces and a comment.
func (p *parser) endOfLine(text []byte) {
	if !lineEnds(text) {
		p.fail()
	}
}

// lineEnds is endOfLine without failing.
func lineEnds(text []byte) bool {
	t := skipSpaces(text)
	return len(t) == 0 || t[0] == '#' && len(t) < len(text)
}

// scalarOrFlow decodes a value at the start of text: a flow list, a flow
// mapping (when maps, so never inside a flow collection but a list in a
// mapping) or a scalar; it returns the rest of text.
func (p *parser) scalarOrFlow(text []byte, maps bool) (any, []byte) {
	switch text[0] {
	case '[':
		return p.flowList(text[1:])
	case '{':
		if !maps {
			p.fail()
		}
		return p.flowMapping(text[1:])
	}
	return p.scalar(text)
}

// flowList decodes the elements of a flow list up to its "]".
func (p *parser) flowList(text []byte) ([]any, []byte) {
	list := []any{}
	text = skipSpaces(text)
	if len(text) > 0 && text[0] == ']' {
		return list, text[1:]
	}
	for {
		if len(text) == 0 || text[0] == '[' || text[0] == '{' {
			p.fail()
		}
		var v any
		v, text = p.scalar(text)
		list = append(list, v)
		text = skipSpaces(text)
		switch {
		case len(text) == 0:
			p.fail()
		case text[0] == ']':
			return list, text[1:]
		case text[0] != ',':
			p.fail()
		}
		text = skipSpaces(text[1:])
	}
}

// flowMapping decodes the pairs of a flow mapping up to its "}".
func (p *parser) flowMapping(text []byte) (map[string]any, []byte) {
	m := map[string]any{}
	text = skipSpaces(text)
	if len(text) > 0 && text[0] == '}' {
		return m, text[1:]
	}
	for {
		key, rest := p.key(text)
		if _, dup := m[key]; dup || len(rest) == 0 {
			p.fail()
		}
		text = skipSpaces(rest)
		if len(text) == 0 {
			p.fail()
		}
		m[key], text = p.scalarOrFlow(text, false)
		text = skipSpaces(text)
		switch {
		case len(text) == 0:
			p.fail()
		case text[0] == '}':
			return m, text[1:]
		case text[0] != ',':
			p.fail()
		}
		text = skipSpaces(text[1:])
	}
}

// scalar decodes a quoted string or a plain scalar at the start of text and
// returns the rest.
func (p *parser) scalar(text []byte) (any, []byte) {
	v, rest, ok := lexScalar(text)
	if !ok {
		p.fail()
	}
	return v.value(), rest
}

// plainScalar is a scalar as lexScalar found it, before it becomes a value:
// the typed path (Account) looks at the bytes without making a string
// or boxing a number.
type plainScalar struct {
	// s is the text of a string (without its quotes), or the digits of
	// a number.
	s []byte
	// n is the value of a number.
	n     int
	isInt bool
}

// value is the scalar as yaml.v3 gives it: an int or a string.
func (v plainScalar) value() any {
	if v.isInt {
		return v.n
	}
	return intern(v.s)
}

// lexScalar reads a quoted string or a plain scalar at the start of text
// and returns it and the rest of text; ok is false where scalar fails.
func lexScalar(text []byte) (v plainScalar, rest []byte, ok bool) {
	if len(text) == 0 {
		return plainScalar{}, nil, false
	}
	switch q := text[0]; q {
	case '"', '\'':
		end := bytes.IndexByte(text[1:], q)
		if end < 0 {
			return plainScalar{}, nil, false
		}
		s := text[1 : 1+end]
		rest := text[2+end:]
		// No escapes: a backslash in double quotes, a doubled single
		// quote.
		if q == '"' && bytes.IndexByte(s, '\\') >= 0 || q == '\'' && len(rest) > 0 && rest[0] == '\'' {
			return plainScalar{}, nil, false
		}
		return plainScalar{s: s}, rest, true
	}
	i := 0
	for i < len(text) && plainChar(text[i]) {
		i++
	}
	s := text[:i]
	rest = text[i:]
	if len(rest) > 0 && rest[0] != ' ' && rest[0] != ',' && rest[0] != ']' && rest[0] != '}' {
		return plainScalar{}, nil, false
	}
	switch {
	case len(s) == 0:
	case isLetter(s[0]):
		if !special(s) {
			return plainScalar{s: s}, rest, true
		}
	case isDigit(s[0]):
		digits := 0
		for digits < len(s) && isDigit(s[digits]) {
			digits++
		}
		if digits == len(s) {
			// At most 18 digits, so the value fits an int64; yaml.v3
			// gives an int only when it fits one.
			if len(s) > 18 || len(s) > 1 && s[0] == '0' {
				return plainScalar{}, nil, false
			}
			n := int64(0)
			for _, c := range s {
				n = n*10 + int64(c-'0')
			}
			if n > math.MaxInt {
				return plainScalar{}, nil, false
			}
			return plainScalar{s: s, n: int(n), isInt: true}, rest, true
		}
		// A port range: digits, a dash, digits, as yaml.v3 leaves it a
		// string when it is no date (four digits before the dash).
		if s[0] != '0' && digits != 4 && s[digits] == '-' && digits+1 < len(s) && allDigits(s[digits+1:]) {
			return plainScalar{s: s}, rest, true
		}
	}
	return plainScalar{}, nil, false
}

// special reports whether yaml.v3 resolves the plain scalar s to something
// other than a string starting with a letter: a bool or null.
func special(s []byte) bool {
	switch string(s) {
	case "true", "True", "TRUE", "false", "False", "FALSE", "null", "Null", "NULL":
		return true
	}
	return false
}

func plainChar(c byte) bool { return charClass[c]&plainClass != 0 }

// keyChar reports whether c may follow the first character of a key.
func keyChar(c byte) bool { return charClass[c]&keyClass != 0 }

// charClass tells, for each byte, the classes it belongs to: one table
// lookup per byte in the loops over scalars and keys, which take most of
// the time of decoding.
var charClass = func() (t [256]uint8) {
	for c := range 256 {
		b := byte(c)
		if isLetter(b) || isDigit(b) || b == '.' || b == '_' || b == '-' {
			t[c] |= keyClass | plainClass
		}
		if b == '@' || b == '/' {
			t[c] |= plainClass
		}
	}
	return t
}()

const (
	plainClass = 1 << iota
	keyClass
)

// printableLines reports whether b holds only printable ASCII and line
// feeds. It looks at 8 bytes at a time, in a uint64: a policy file of
// 50,000 accounts is checked in a fraction of a millisecond.
func printableLines(b []byte) bool {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	for len(b) >= 8 {
		w := binary.LittleEndian.Uint64(b)
		// The low 7 bits of each byte: adding to them never carries
		// into the next byte, so each sum's high bit tests one byte.
		low := w &^ highs
		atLeastSpace := (low + ones*(0x80-' ')) & highs
		del := (low + ones) & highs // 0x7f
		nl := w ^ (ones * '\n')     // 0 in the bytes that are '\n'
		isNL := ^((nl&^highs + ones*0x7f) | nl) & highs
		if w&highs|^atLeastSpace&^isNL&highs|del != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if (c < ' ' || c > '~') && c != '\n' {
			return false
		}
	}
	return true
}

func isLetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func allDigits(s []byte) bool {
	for _, c := range s {
		if !isDigit(c) {
			return false
		}
	}
	return true
}

func skipSpaces(s []byte) []byte {
	for len(s) > 0 && s[0] == ' ' {
		s = s[1:]
	}
	return s
}
