package policies

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spf13/viper"
)

// formats maps the file extensions Load accepts to viper's format names.
// Viper knows more (ini, env, properties, ...), but a policy in those would
// be read without any structure to check, so they are refused.
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

// readFile reads one policy file with a fresh viper and returns what it
// holds exactly as written. An error is a badFile when the file could be
// read but not decoded; any other error comes from reading the file.
//
// Viper's own view of the file cannot be used for checking it: after
// decoding, viper lower-cases every key in place (so "Table" and "table"
// collide silently), and AllSettings splits keys at dots and drops keys
// whose value is null or an empty mapping, so a stray "bogus: {}" would
// vanish instead of being reported. readFile therefore gives viper a decoder
// registry that keeps a private copy of each decoded document.
func readFile(path string) (map[string]any, error) {
	f := format(path)
	if f == "" {
		return nil, badFile{fmt.Sprintf("unsupported file type %q; use .yaml, .yml, .toml or .json", filepath.Ext(path))}
	}
	raw := &rawDecoders{DecoderRegistry: viper.NewCodecRegistry()}
	v := viper.NewWithOptions(viper.WithDecoderRegistry(raw))
	v.SetConfigFile(path)
	v.SetConfigType(f)
	if err := v.ReadInConfig(); err != nil {
		var pe viper.ConfigParseError
		if errors.As(err, &pe) {
			return nil, parseError(pe.Unwrap())
		}
		return nil, err
	}
	if raw.doc == nil {
		// Viper did not decode anything, which it does only when it
		// failed; never hand back a nil map that reads as an empty file.
		return nil, parseError(errors.New("nothing decoded"))
	}
	return raw.doc, nil
}

// rawDecoders wraps viper's decoders to keep what they decoded before viper
// rewrites it.
type rawDecoders struct {
	viper.DecoderRegistry
	doc map[string]any
}

// Decoder returns viper's decoder for format, wrapped so that the document
// is decoded twice: once for viper to rewrite and once for r.doc. Decoding
// twice is simpler than a deep copy and cannot share a nested map.
func (r *rawDecoders) Decoder(format string) (viper.Decoder, error) {
	d, err := r.DecoderRegistry.Decoder(format)
	if err != nil {
		return nil, err
	}
	return decoderFunc(func(b []byte, v map[string]any) error {
		doc := map[string]any{}
		if err := d.Decode(b, doc); err != nil {
			// encoding/json counts bytes; people count lines.
			var se *json.SyntaxError
			if errors.As(err, &se) {
				return fmt.Errorf("line %d: %w", 1+bytes.Count(b[:se.Offset], []byte("\n")), err)
			}
			return err
		}
		// YAML and TOML refuse a key given twice; encoding/json keeps the
		// last one silently, which would let a stray duplicate override
		// a port list unseen.
		if format == "json" {
			if err := checkJSONKeys(json.NewDecoder(bytes.NewReader(b))); err != nil {
				return err
			}
		}
		r.doc = doc
		return d.Decode(b, v)
	}), nil
}

type decoderFunc func(b []byte, v map[string]any) error

func (f decoderFunc) Decode(b []byte, v map[string]any) error { return f(b, v) }

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
