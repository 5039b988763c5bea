package policies

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nftpol/nftpol/policies/internal/document"
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

// empty reports whether the file d decodes held nothing at all.
func empty(d *document.Document) bool { return len(d.Top) == 0 }

// readFile reads one policy file and decodes it with dec. An error is a
// badFile when the file could be read but not decoded; any other error
// comes from reading the file. A large file may come back split (see the
// document package).
func readFile(dec *document.Decoder, path string) (*document.Document, error) {
	f := format(path)
	if f == "" {
		return nil, badFile{fmt.Sprintf("unsupported file type %q; use .yaml, .yml, .toml or .json", filepath.Ext(path))}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return decodeFile(dec, f, b)
}

// decodeFile decodes the text b of a file of format f.
func decodeFile(dec *document.Decoder, f string, b []byte) (*document.Document, error) {
	d, err := dec.Decode(f, b)
	if err != nil {
		return nil, parseError(err)
	}
	return d, nil
}

// oneLine folds a decoder's multi-line message (yaml.v3 lists one error per
// line) so that each problem stays on one line of ValidationError.Error.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
