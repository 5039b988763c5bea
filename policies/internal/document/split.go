package document

import (
	"bytes"

	"go.yaml.in/yaml/v3"
)

// Decoding a large file whole holds all of it decoded at once: maps and
// boxed values for every account, and for YAML first yaml.v3's node tree of
// the entire file, about 2 KB per account, 100 MB for a main file of 50,000
// accounts. A large file whose accounts list is laid out plainly is
// therefore decoded in pieces: the file without the items of its accounts
// list (the header), then the items a chunk at a time, each chunk as a
// document of its own. The loader walks each chunk's accounts and lets them
// go before later ones are decoded, so memory no longer grows with the
// file's decoded size; the loader decodes a few chunks at once (Split.Decode
// may run in parallel). splitYAML cuts YAML,
// splitJSON and splitTOML the other formats.
//
// Splitting must never change what the file says, so it is only done where
// the pieces provably decode to what the whole file does, and every piece is
// checked; when anything fails, the file is decoded whole, which also gives
// the exact error message. For YAML:
//
//   - no alias ('*' anywhere): an alias could refer to an anchor in another
//     piece, and yaml.v3 limits aliasing per document;
//   - no document markers or directives ("---", "...", "%" at the start
//     of a line), no NUL, no carriage return and no UTF-16 byte order mark,
//     so that the lines scanned here are the lines yaml.v3 reads;
//   - the accounts key is a line "accounts:" (maybe with a comment) at the
//     first column, followed by items "- " at one indentation k, and the
//     list ends at the next line that starts in the first column (other than
//     a comment, or, when k is 0, an item). No line in between is indented
//     less than k;
//   - the header decodes, and in it "accounts" is a plain key on the line
//     where the scan found it, with an empty (null) value: so that line was
//     not inside a string or a flow collection;
//   - each chunk decodes to a list of exactly as many items as it has lines
//     that start an item: a chunk cut inside a quoted string or a flow
//     collection would leave it unterminated, and one holding such a line
//     inside a string would count fewer items.
//
// Inside an item, yaml.v3 reads a line the same in a chunk as in the whole
// file: a chunk keeps its lines intact (columns unchanged), and its list
// sits at the same indentation as in the file.
//
// A chunk that fails is only found once the loader has walked the chunks
// before it; the loader then forgets what they added and starts the file
// over. The user names those accounts named were looked up by then: a
// lookup has no effect but its cost, and its result is cached for the
// second pass.

// Split is the accounts list of a split file: its chunks, each to be
// decoded by Decode, and what it takes to decode the file whole should one
// of them not decode (Whole).
type Split struct {
	// chunks hold whole items of the list; counts[i] is the number of
	// items chunks[i] must decode to.
	chunks [][]byte
	counts []int
	// items is the number of items in all chunks.
	items int
	// decode decodes one chunk to its items, of which there should be
	// n, or reports !ok; bufs, when not nil, is where they are.
	decode func(chunk []byte, n int) (items []Item, bufs *buffers, ok bool)
	// The file's format and text, and the decoder it came from, for
	// Whole.
	dec    *Decoder
	format string
	raw    []byte
}

// Len returns the number of items in all chunks.
func (s *Split) Len() int { return s.items }

// Chunks returns the number of chunks.
func (s *Split) Chunks() int { return len(s.chunks) }

// Chunk is one chunk of a split accounts list, decoded.
type Chunk struct {
	// Items are the chunk's items, in order; OK is false, and Items
	// nil, when the chunk did not decode to the items it holds: the
	// file must then be decoded whole (Split.Whole).
	Items []Item
	OK    bool
	bufs  *buffers
}

// Decode decodes chunk i. It may run for several chunks at once.
func (s *Split) Decode(i int) Chunk {
	items, bufs, ok := s.decode(s.chunks[i], s.counts[i])
	if !ok || len(items) != s.counts[i] {
		return Chunk{}
	}
	return Chunk{Items: items, OK: true, bufs: bufs}
}

// Release gives the memory c was decoded into back, for chunks decoded
// later. The caller must be done with c's items, and with every Account
// among them: what it keeps, it copies.
func (c Chunk) Release() {
	if c.bufs != nil {
		c.bufs.release()
	}
}

// Whole decodes the file whole, as Decode does a file too small to split:
// after a chunk did not decode, this gives the values, or the error, the
// file holds.
func (s *Split) Whole() (*Document, error) {
	return s.dec.whole(s.format, s.raw)
}

// chunk cuts b[starts[0]:end] into chunks of about chunkBytes, each starting
// at one of starts (the offsets where items start), and returns them as a
// Split of b, a file of format f, decoded by decode.
func (d *Decoder) chunk(b []byte, f string, starts []int, end int, decode func([]byte, int) ([]Item, *buffers, bool)) *Split {
	sp := &Split{items: len(starts), decode: decode, dec: d, format: f, raw: b}
	for i := 0; i < len(starts); {
		j := i + 1
		for j < len(starts) && starts[j]-starts[i] < d.chunkBytes {
			j++
		}
		e := end
		if j < len(starts) {
			e = starts[j]
		}
		sp.chunks = append(sp.chunks, b[starts[i]:e])
		sp.counts = append(sp.counts, j-i)
		i = j
	}
	return sp
}

// splitYAML returns b decoded as header and chunks, or nil when b is not
// worth splitting or cannot be split safely. The chunks are decoded later,
// by Split.Decode.
func (d *Decoder) splitYAML(b []byte) *Document {
	if len(b) < d.splitThreshold ||
		bytes.IndexByte(b, '*') >= 0 || bytes.IndexByte(b, '\r') >= 0 || bytes.IndexByte(b, 0) >= 0 ||
		bytes.HasPrefix(b, []byte{0xfe, 0xff}) || bytes.HasPrefix(b, []byte{0xff, 0xfe}) {
		return nil
	}
	const (
		before = iota // the accounts key not found yet
		key           // after the accounts key, before its first item
		items         // in the list
		after         // after the list
	)
	state := before
	line := 0      // 1-based number of the current line
	keyLine := 0   // line of the accounts key
	headEnd := 0   // offset just after the accounts key's line
	tail := len(b) // offset of the first line after the list
	k := 0         // indentation of the items
	// Offsets of the lines that start an item; each holds a "- ", so
	// their count is the room to make at once (at 50,000 items, growing
	// the slice step by step would make twice its size in garbage).
	starts := make([]int, 0, bytes.Count(b, []byte("- ")))
	for off := 0; off < len(b); {
		end := bytes.IndexByte(b[off:], '\n')
		next := len(b)
		if end < 0 {
			end = len(b)
		} else {
			end += off
			next = end + 1
		}
		s := b[off:end]
		line++
		if bytes.HasPrefix(s, []byte("---")) || bytes.HasPrefix(s, []byte("...")) || bytes.HasPrefix(s, []byte("%")) {
			return nil
		}
		indent := 0
		for indent < len(s) && s[indent] == ' ' {
			indent++
		}
		blank := indent == len(s) || s[indent] == '#'
		switch state {
		case before:
			if isAccountsKey(s) {
				state, keyLine, headEnd = key, line, next
			}
		case key:
			switch {
			case blank:
			case isItem(s[indent:]):
				state, k = items, indent
				starts = append(starts, off)
			default:
				return nil // not a block list
			}
		case items:
			switch {
			case blank:
			case s[indent] == '\t':
				return nil
			case indent == 0 && (k > 0 || !isItem(s)):
				state, tail = after, off
			case indent < k:
				return nil
			case indent == k && isItem(s[indent:]):
				starts = append(starts, off)
			}
		}
		off = next
	}
	if state < items {
		return nil
	}

	// The header: everything but the items, so that the accounts key is
	// left with an empty value.
	header := make([]byte, 0, headEnd+len(b)-tail)
	header = append(append(header, b[:headEnd]...), b[tail:]...)
	top, ok := plainMapping(header)
	if ok {
		// In plain YAML no value spans lines, so a line starting
		// "accounts:" is the key, and its value is null.
		if v, found := top["accounts"]; !found || v != nil {
			return nil
		}
	} else {
		var root yaml.Node
		if yaml.Unmarshal(header, &root) != nil || !emptyAccountsKey(&root, keyLine) {
			return nil
		}
		top = map[string]any{}
		if root.Decode(&top) != nil {
			return nil
		}
	}

	return &Document{Top: top, Split: d.chunk(b, "yaml", starts, tail, d.decodeYAMLChunk)}
}

// decodeYAMLChunk decodes a chunk of a YAML accounts list of n items.
func (d *Decoder) decodeYAMLChunk(chunk []byte, n int) ([]Item, *buffers, bool) {
	if d.typed {
		if items, bufs, ok := d.plainAccountList(chunk, n); ok {
			return items, bufs, true
		}
	} else if list, ok := plainList(chunk, n); ok {
		return genericItems(list), nil, true
	}
	var list []any
	if yaml.Unmarshal(chunk, &list) != nil {
		return nil, nil, false
	}
	return genericItems(list), nil, true
}

// isAccountsKey reports whether line is "accounts:", maybe followed by
// spaces and a comment.
func isAccountsKey(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, []byte("accounts:"))
	if !ok {
		return false
	}
	rest = bytes.TrimLeft(rest, " ")
	return len(rest) == 0 || rest[0] == '#' && len(rest) < len(line)-len("accounts:")
}

// isItem reports whether s (a line from its indentation on) starts an item
// of a block list.
func isItem(s []byte) bool {
	return len(s) > 0 && s[0] == '-' && (len(s) == 1 || s[1] == ' ')
}

// emptyAccountsKey reports whether the header's top-level mapping has the
// plain key accounts at the start of line, with a null value written as
// nothing at all.
func emptyAccountsKey(root *yaml.Node, line int) bool {
	if root.Kind != yaml.DocumentNode || len(root.Content) != 1 || root.Content[0].Kind != yaml.MappingNode {
		return false
	}
	m := root.Content[0].Content
	for i := 0; i+1 < len(m); i += 2 {
		k, v := m[i], m[i+1]
		if k.Line == line && k.Column == 1 {
			return k.Kind == yaml.ScalarNode && k.Style == 0 && k.Tag == "!!str" && k.Value == "accounts" &&
				v.Kind == yaml.ScalarNode && v.Style == 0 && v.Tag == "!!null" && v.Value == ""
		}
	}
	return false
}
