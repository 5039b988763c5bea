package document

import (
	"bytes"
	"encoding/json"
)

// splitJSON is splitYAML for JSON: it returns b decoded as its top-level
// object without the items of "accounts", and those items in chunks, or nil
// when b cannot be split safely. JSON leaves nothing to guess once the text
// is known to be valid: the scan below finds where each value ends, and each
// piece is decoded by encoding/json exactly as it would be in place. Any
// error in a piece (a number out of range, a key given twice) refuses the
// split, and the file decoded whole reports it.
func (d *Decoder) splitJSON(b []byte) *Document {
	if !json.Valid(b) {
		return nil
	}
	i := skipJSONSpace(b, 0)
	if b[i] != '{' {
		return nil // not an object: decoding it whole reports that
	}
	top := map[string]any{}
	var starts []int
	end := 0
	i = skipJSONSpace(b, i+1)
	for b[i] != '}' {
		k := i
		i = skipJSONString(b, i)
		var key string
		if json.Unmarshal(b[k:i], &key) != nil {
			return nil
		}
		if _, dup := top[key]; dup {
			return nil
		}
		i = skipJSONSpace(b, skipJSONSpace(b, i)+1) // the colon
		v := i
		i = skipJSONValue(b, i)
		if key == "accounts" && b[v] == '[' && starts == nil {
			starts, end = jsonItems(b, v)
			top[key] = nil
		} else {
			var value any
			if json.Unmarshal(b[v:i], &value) != nil || checkJSONKeys(json.NewDecoder(bytes.NewReader(b[v:i]))) != nil {
				return nil
			}
			top[key] = value
		}
		i = skipJSONSpace(b, i)
		if b[i] == ',' {
			i = skipJSONSpace(b, i+1)
		}
	}
	if len(starts) == 0 {
		return nil
	}
	return &Document{Top: top, Split: d.chunk(b, "json", starts, end, decodeJSONChunk)}
}

// jsonItems returns where the items of the array at b[i] start, and where
// the last one ends.
func jsonItems(b []byte, i int) (starts []int, end int) {
	i = skipJSONSpace(b, i+1)
	for b[i] != ']' {
		starts = append(starts, i)
		i = skipJSONValue(b, i)
		end = i
		i = skipJSONSpace(b, i)
		if b[i] == ',' {
			i = skipJSONSpace(b, i+1)
		}
	}
	return starts, end
}

// decodeJSONChunk decodes a chunk of a JSON accounts list: its items and the
// commas between them (and after the last, but for the last chunk), made a
// list again.
func decodeJSONChunk(chunk []byte, _ int) ([]Item, *buffers, bool) {
	chunk = bytes.TrimSuffix(bytes.TrimRight(chunk, " \t\r\n"), []byte(","))
	list := make([]byte, 0, len(chunk)+2)
	list = append(append(append(list, '['), chunk...), ']')
	var items []any
	if json.Unmarshal(list, &items) != nil || checkJSONKeys(json.NewDecoder(bytes.NewReader(list))) != nil {
		return nil, nil, false
	}
	return genericItems(items), nil, true
}

// The skip functions move past JSON text known to be valid.

func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipJSONString returns the offset after the string starting at b[i].
func skipJSONString(b []byte, i int) int {
	for i++; ; i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
}

// skipJSONValue returns the offset after the value starting at b[i].
func skipJSONValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipJSONString(b, i)
	case '{', '[':
		depth := 0
		for ; ; i++ {
			switch b[i] {
			case '"':
				i = skipJSONString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
	}
	// A number, true, false or null.
	for ; i < len(b); i++ {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return i
		}
	}
	return i
}
