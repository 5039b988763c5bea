package policies

import (
	"bytes"
	"strconv"
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
// map it decodes into).
func plainMapping(b []byte) (m map[string]any, ok bool) {
	p, ok := newPlainParser(b)
	if !ok {
		return nil, false
	}
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
// indentation.
func plainList(b []byte) (list []any, ok bool) {
	p, ok := newPlainParser(b)
	if !ok {
		return nil, false
	}
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

// plainParser reads a document line by line. Nothing it refuses is an error:
// fail unwinds to plainMapping or plainList, which report !ok.
type plainParser struct {
	b    []byte
	next int // offset of the line after the current one
	// The current content line (not blank, not only a comment), without
	// its line feed, and its indentation; eof when there is none left.
	line   []byte
	indent int
	eof    bool
}

// plainRefused is what fail panics with.
type plainRefused struct{}

func newPlainParser(b []byte) (*plainParser, bool) {
	for _, c := range b {
		if (c < ' ' || c > '~') && c != '\n' {
			return nil, false
		}
	}
	return &plainParser{b: b}, true
}

func (p *plainParser) fail() { panic(plainRefused{}) }

func (p *plainParser) recover(ok *bool) {
	if r := recover(); r != nil {
		if _, refused := r.(plainRefused); !refused {
			panic(r)
		}
		*ok = false
	}
}

// advance moves to the next content line.
func (p *plainParser) advance() {
	for p.next < len(p.b) {
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
			p.line, p.indent = line, i
			return
		}
	}
	p.line, p.indent, p.eof = nil, 0, true
}

// block decodes the mapping or list whose first line is the current one, at
// indentation n.
func (p *plainParser) block(n int) any {
	if isItem(p.line[n:]) {
		return p.list(n)
	}
	return p.mapping(n, p.line[n:])
}

// mapping decodes a block mapping at indentation n whose first key starts
// text, the rest of the current line (an item's line holds a key after its
// "- "). It returns at the first line indented less than n.
func (p *plainParser) mapping(n int, text []byte) map[string]any {
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
			case p.eof || p.indent < n:
				m[key] = nil
			case p.indent > n:
				m[key] = p.block(p.indent)
			case isItem(p.line[n:]):
				m[key] = p.list(n)
			default:
				m[key] = nil
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
func (p *plainParser) list(n int) []any {
	list := []any{}
	for {
		rest := p.line[n+1:]
		col := n + 1
		for col < len(p.line) && p.line[col] == ' ' {
			col++
		}
		switch text := p.line[col:]; {
		case len(text) == 0 || text[0] == '#':
			// The item is on the lines below, or null.
			p.advance()
			if !p.eof && p.indent > n {
				list = append(list, p.block(p.indent))
			} else {
				list = append(list, nil)
			}
		case text[0] == '-':
			p.fail() // a list in a list, or a negative number
		case startsKey(text):
			list = append(list, p.mapping(col, text))
		default:
			value, found := p.inline(rest)
			if !found {
				p.fail()
			}
			list = append(list, value)
			p.advance()
			if !p.eof && p.indent > n {
				p.fail()
			}
		}
		switch {
		case p.eof || p.indent < n || !isItem(p.line[n:]):
			return list
		case p.indent > n:
			p.fail()
		}
	}
}

// key reads "name:" at the start of text and returns the name and the rest
// of the line after the colon.
func (p *plainParser) key(text []byte) (string, []byte) {
	i := keyLen(text)
	if i == 0 || i >= len(text) || text[i] != ':' || i+1 < len(text) && text[i+1] != ' ' {
		p.fail()
	}
	key := intern(text[:i])
	if special(key) {
		p.fail()
	}
	return key, text[i+1:]
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
	for i < len(text) && i < 128 && (isLetter(text[i]) || isDigit(text[i]) || text[i] == '_' || text[i] == '.' || text[i] == '-') {
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
func (p *plainParser) inline(rest []byte) (value any, found bool) {
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
func (p *plainParser) endOfLine(text []byte) {
	t := skipSpaces(text)
	if len(t) > 0 && (t[0] != '#' || len(t) == len(text)) {
		p.fail()
	}
}

// scalarOrFlow decodes a value at the start of text: a flow list, a flow
// mapping (when maps, so never inside a flow collection but a list in a
// mapping) or a scalar; it returns the rest of text.
func (p *plainParser) scalarOrFlow(text []byte, maps bool) (any, []byte) {
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
func (p *plainParser) flowList(text []byte) ([]any, []byte) {
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
func (p *plainParser) flowMapping(text []byte) (map[string]any, []byte) {
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
func (p *plainParser) scalar(text []byte) (any, []byte) {
	switch q := text[0]; q {
	case '"', '\'':
		end := bytes.IndexByte(text[1:], q)
		if end < 0 {
			p.fail()
		}
		s := text[1 : 1+end]
		rest := text[2+end:]
		// No escapes: a backslash in double quotes, a doubled single
		// quote.
		if q == '"' && bytes.IndexByte(s, '\\') >= 0 || q == '\'' && len(rest) > 0 && rest[0] == '\'' {
			p.fail()
		}
		return string(s), rest
	}
	i := 0
	for i < len(text) && plainChar(text[i]) {
		i++
	}
	s := text[:i]
	rest := text[i:]
	if len(rest) > 0 && rest[0] != ' ' && rest[0] != ',' && rest[0] != ']' && rest[0] != '}' {
		p.fail()
	}
	switch {
	case len(s) == 0:
		p.fail()
	case isLetter(s[0]):
		str := intern(s)
		if special(str) {
			p.fail()
		}
		return str, rest
	case isDigit(s[0]):
		digits := 0
		for digits < len(s) && isDigit(s[digits]) {
			digits++
		}
		if digits == len(s) {
			if len(s) > 18 || len(s) > 1 && s[0] == '0' {
				p.fail()
			}
			n, err := strconv.Atoi(string(s))
			if err != nil {
				p.fail()
			}
			return n, rest
		}
		// A port range: digits, a dash, digits, as yaml.v3 leaves it a
		// string when it is no date (four digits before the dash).
		if s[0] != '0' && digits != 4 && s[digits] == '-' && digits+1 < len(s) && allDigits(s[digits+1:]) {
			return string(s), rest
		}
	}
	p.fail()
	return nil, nil
}

// special reports whether yaml.v3 resolves the plain scalar s to something
// other than a string starting with a letter: a bool or null.
func special(s string) bool {
	switch s {
	case "true", "True", "TRUE", "false", "False", "FALSE", "null", "Null", "NULL":
		return true
	}
	return false
}

func plainChar(c byte) bool {
	return isLetter(c) || isDigit(c) || c == '.' || c == '_' || c == '@' || c == '/' || c == '-'
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
