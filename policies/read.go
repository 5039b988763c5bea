package policies

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"go.yaml.in/yaml/v3"
)

// formats maps the file extensions Load accepts to their formats. Other
// configuration formats (ini, env, properties, ...) would be read without any
// structure to check, so they are refused.
var formats = map[string]string{
	".yaml": "yaml",
	".yml":  "yaml",
	".toml": "toml",
	".json": "json",
}

// format returns the format of the file named path, "" when Load does not
// read files of its kind. The extension is matched case-insensitively so that
// a "SITE12.YAML" in the include directory is read rather than skipped
// without a word.
func format(path string) string {
	return formats[strings.ToLower(filepath.Ext(path))]
}

// badFile is a file that could be read but not decoded: a problem with
// the file as a whole rather than with one of its keys.
type badFile struct{ msg string }

func (e badFile) Error() string { return e.msg }

func parseError(err error) badFile {
	return badFile{"cannot parse: " + printable(oneLine(err.Error()))}
}

// document is one decoded policy file: its top-level mapping exactly as
// written.
type document struct {
	top map[string]any
	// split, when not nil, holds the accounts list of a large file, which
	// top then maps to nil (see split.go).
	split *splitList
	// format and raw are the file's format and text, kept while split
	// is, to decode the file whole should a chunk of it not decode alone.
	format string
	raw    []byte
}

// empty reports whether the file held nothing at all.
func (d *document) empty() bool { return len(d.top) == 0 }

// readFile reads one policy file and decodes it. An error is a badFile when
// the file could be read but not decoded; any other error comes from reading
// the file. With split, a large YAML file may come back split (see
// splitYAML).
func readFile(path string, split bool) (*document, error) {
	f := format(path)
	if f == "" {
		return nil, badFile{fmt.Sprintf("unsupported file type %q; use .yaml, .yml, .toml or .json", filepath.Ext(path))}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return decodeDocument(f, b, split)
}

// decodeDocument decodes the text b of a file of format f. With split, a
// large YAML file may come back split (see splitYAML).
func decodeDocument(f string, b []byte, split bool) (*document, error) {
	if split && len(b) >= splitThreshold {
		var d *document
		switch f {
		case "yaml":
			d = splitYAML(b)
		case "toml":
			d = splitTOML(b)
		default:
			d = splitJSON(b)
		}
		if d != nil {
			return d, nil
		}
	}
	top, err := decode(f, b)
	if err != nil {
		return nil, err
	}
	return &document{top: top}, nil
}

// decode decodes a whole file of format f.
//
// nftpol used to read policy files through viper; it now calls the same
// libraries the way viper's codecs do (the decode* functions below), which
// gives the same values and the same error messages. Viper's own view of a
// file could not be used for checking it anyway: it lower-cases every key in
// place (so "Table" and "table" collide silently), splits keys at dots and
// drops keys whose value is null or an empty mapping, so a stray "bogus: {}"
// would vanish instead of being reported. Going through viper only added a
// second decode of every file and a rewritten copy of its tree, which at
// 50,000 accounts cost most of the time and memory of a load.
//
// YAML in the plain form policy files are usually written in is decoded by
// plainPolicy, to the same values, without yaml.v3's cost per document, and
// accounts as plainAccounts, which stand for the same values.
func decode(f string, b []byte) (map[string]any, error) {
	if f == "yaml" {
		// Before doc is made: most files need no other map.
		if m, ok := plainPolicy(b); ok {
			return m, nil
		}
	}
	doc := map[string]any{}
	var err error
	switch f {
	case "yaml":
		err = decodeYAML(b, doc)
	case "toml":
		err = decodeTOML(b, doc)
	default:
		err = decodeJSON(b, doc)
	}
	if err != nil {
		return nil, parseError(err)
	}
	return doc, nil
}

// decodeYAML, decodeTOML and decodeJSON decode into v as viper's codecs do,
// down to passing the map by value: a document that decodes to null leaves
// v empty.
func decodeYAML(b []byte, v map[string]any) error { return yaml.Unmarshal(b, &v) }

func decodeTOML(b []byte, v map[string]any) error { return toml.Unmarshal(b, &v) }

func decodeJSON(b []byte, v map[string]any) error {
	if err := json.Unmarshal(b, &v); err != nil {
		// encoding/json counts bytes; people count lines.
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return fmt.Errorf("line %d: %w", 1+bytes.Count(b[:se.Offset], []byte("\n")), err)
		}
		return err
	}
	// YAML and TOML refuse a key given twice; encoding/json keeps the
	// last one silently, which would let a stray duplicate override a
	// port list unseen.
	return checkJSONKeys(json.NewDecoder(bytes.NewReader(b)))
}

// checkJSONKeys walks one JSON value and fails on an object that names a key
// twice. The input has already been decoded once, so syntax errors are not
// expected here.
func checkJSONKeys(dec *json.Decoder) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	switch tok {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				return err
			}
			key, _ := tok.(string)
			if seen[key] {
				return fmt.Errorf("key %q appears twice in one object", key)
			}
			seen[key] = true
			if err := checkJSONKeys(dec); err != nil {
				return err
			}
		}
	case json.Delim('['):
		for dec.More() {
			if err := checkJSONKeys(dec); err != nil {
				return err
			}
		}
	default:
		return nil
	}
	_, err = dec.Token() // the closing delimiter
	return err
}

// oneLine folds a decoder's multi-line message (yaml.v3 lists one error per
// line) so that each problem stays on one line of ValidationError.Error.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
