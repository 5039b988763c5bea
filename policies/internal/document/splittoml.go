package document

import "bytes"

// splitTOML is splitYAML for TOML: a policy's accounts are a run of
// "[[accounts]]" tables, which splitTOML cuts into chunks of whole tables,
// each a TOML document of its own; the header is the file without them. It
// returns nil when b cannot be split safely:
//
//   - no carriage return, so that the lines scanned are TOML's lines;
//   - the run starts at the first line that is exactly "[[accounts]]"
//     (maybe indented, maybe with a comment), and each of its tables at such
//     a line; it ends at the first other line starting with "[" that is not
//     a sub-table of an account ("[accounts." or "[[accounts.");
//   - the header decodes and has no accounts key: so the first
//     "[[accounts]]" was not inside a string, and nothing before or after
//     the run defines accounts otherwise;
//   - each chunk decodes to a document holding only accounts, with exactly
//     as many tables as it has "[[accounts]]" lines: a chunk cut inside a
//     multi-line string or array would not decode, or count fewer.
func (d *Decoder) splitTOML(b []byte) *Document {
	if bytes.IndexByte(b, '\r') >= 0 {
		return nil
	}
	first, tail := -1, len(b)
	var starts []int
	for off := 0; off < len(b); {
		next := len(b)
		line := b[off:]
		if end := bytes.IndexByte(line, '\n'); end >= 0 {
			line, next = line[:end], off+end+1
		}
		t := bytes.TrimLeft(line, " \t")
		switch {
		case isAccountsTable(t):
			if first < 0 {
				first = off
			}
			starts = append(starts, off)
		case first >= 0 && len(t) > 0 && t[0] == '[' &&
			!bytes.HasPrefix(t, []byte("[accounts.")) && !bytes.HasPrefix(t, []byte("[[accounts.")):
			tail, next = off, len(b)
		}
		off = next
	}
	if len(starts) == 0 {
		return nil
	}
	header := make([]byte, 0, first+len(b)-tail)
	header = append(append(header, b[:first]...), b[tail:]...)
	top := map[string]any{}
	if decodeTOML(header, top) != nil {
		return nil
	}
	if _, found := top["accounts"]; found {
		return nil
	}
	top["accounts"] = nil
	return &Document{Top: top, Split: d.chunk(b, "toml", starts, tail, decodeTOMLChunk)}
}

// isAccountsTable reports whether line (without its indentation) is
// "[[accounts]]", maybe followed by spaces and a comment.
func isAccountsTable(line []byte) bool {
	rest, ok := bytes.CutPrefix(line, []byte("[[accounts]]"))
	rest = bytes.TrimLeft(rest, " \t")
	return ok && (len(rest) == 0 || rest[0] == '#')
}

// decodeTOMLChunk decodes a chunk of "[[accounts]]" tables.
func decodeTOMLChunk(chunk []byte, _ int) ([]Item, *buffers, bool) {
	doc := map[string]any{}
	if decodeTOML(chunk, doc) != nil || len(doc) != 1 {
		return nil, nil, false
	}
	items, ok := doc["accounts"].([]any)
	if !ok {
		return nil, nil, false
	}
	return genericItems(items), nil, true
}
