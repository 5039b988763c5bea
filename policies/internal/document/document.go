// Package document decodes the text of one policy file (YAML, TOML or JSON)
// into a Document: its top-level mapping exactly as written, and the items
// of its accounts list. It sits between reading a file and checking it:
//
//	policy files -> policies (read, then document.Decoder.Decode, then
//	check each key and account, resolve users) -> Policy -> compiler
//
// A Document says nothing about whether the policy is right: that is the
// policies package's business, and every message about a file comes from
// there. What this package holds is how to decode fast without changing a
// decoded value:
//
//   - the generic path: yaml.v3, go-toml and encoding/json, called as
//     viper's codecs call them (see Decoder.whole). It is the reference:
//     everything else must decode to exactly what it does, or refuse;
//   - plain YAML (plainyaml.go): the small part of YAML policy files are
//     written in, decoded without yaml.v3's cost per document;
//   - typed accounts (account.go): the items of a plain YAML accounts list
//     decoded straight into an Account instead of a map[string]any, which
//     at 50,000 accounts saves most of the time and garbage of a load;
//   - splitting (split.go): a large file decoded in chunks of its accounts
//     list, so that memory does not grow with the file's decoded size.
//
// The fast paths are on by default; options turn them off or change when
// they start, so that tests compare them with the generic path (see
// FuzzPlainYAML here, and FuzzLoad in policies).
package document

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/pelletier/go-toml/v2"
	"go.yaml.in/yaml/v3"
)

// Document is one decoded policy file. The accounts list is in exactly one
// of three places: in Top (the generic path, and whatever is not a block
// list in plain YAML), in Accounts, or in Split. In the last two cases Top
// maps "accounts" to nil, so that its keys are still the file's keys.
type Document struct {
	// Top is the file's top-level mapping, as the generic decoder gives
	// it; an empty map when the file holds nothing at all (empty, only
	// comments, null).
	Top map[string]any
	// Accounts holds the items of a plain YAML accounts list, decoded as
	// Accounts where they can be; nil when the list is elsewhere.
	Accounts []Item
	// Split, when not nil, holds the accounts list of a large file in
	// chunks, to be decoded one after the other (see split.go).
	Split *Split
}

// Item is one item of an accounts list: an Account when the decoder could
// decode it as one, else the value the generic decoder gives it.
type Item struct {
	account *Account
	value   any
}

// Account returns the item decoded as an Account, nil when it was decoded
// generically.
func (it Item) Account() *Account { return it.account }

// Value returns the item as the generic decoder decodes it: for an Account,
// its text decoded again.
func (it Item) Value() any {
	if it.account != nil {
		return it.account.generic()
	}
	return it.value
}

// genericItems makes Items of a list the generic decoder decoded.
func genericItems(list []any) []Item {
	items := make([]Item, len(list))
	for i, v := range list {
		items[i].value = v
	}
	return items
}

// Decoder decodes policy files. Its settings are fixed when it is made, and
// it may decode many files at once.
type Decoder struct {
	// typed says plain YAML accounts are decoded to Accounts; protocols
	// are the names an Account's protocols may take (see WithProtocols).
	typed     bool
	protocols []string
	// splitThreshold is the size from which Decode splits a file, and
	// chunkBytes the size it aims at for each chunk: small, because a
	// few chunks per core are decoded ahead of the one being walked (64
	// KB chunks cost 10 MB more peak RSS at 50,000 accounts than 16 KB
	// ones, and were no faster).
	splitThreshold, chunkBytes int
}

// Defaults of WithSplit.
const (
	DefaultSplitThreshold = 256 << 10
	DefaultChunkBytes     = 16 << 10
)

// Option changes how a Decoder decodes.
type Option func(*Decoder)

// NewDecoder returns a Decoder with every fast path on: plain YAML, typed
// accounts (once WithProtocols names the protocols) and splitting from
// DefaultSplitThreshold.
func NewDecoder(opts ...Option) *Decoder {
	d := &Decoder{typed: true, splitThreshold: DefaultSplitThreshold, chunkBytes: DefaultChunkBytes}
	for _, o := range opts {
		o(d)
	}
	return d
}

// WithTypedAccounts says whether the items of a plain YAML accounts list
// are decoded to Accounts, as they are by default. Off, the decoder gives
// every account as the generic decoder does, in Top or as an Item without
// an Account: the reference the typed path is tested against.
func WithTypedAccounts(typed bool) Option {
	return func(d *Decoder) { d.typed = typed }
}

// WithProtocols names the protocols an account's protocols list may hold:
// bit i of Account.Protocols stands for names[i]. An account that lists
// any other (or any at all, without this option) is decoded generically.
func WithProtocols(names ...string) Option {
	return func(d *Decoder) { d.protocols = names }
}

// WithSplit makes Decode split files of threshold bytes or more, into
// chunks of about chunkBytes. WithSplit(0, 0) splits every file that can be
// split, into chunks of one item, as tests do.
func WithSplit(threshold, chunkBytes int) Option {
	return func(d *Decoder) { d.splitThreshold, d.chunkBytes = threshold, chunkBytes }
}

// Decode decodes b, the text of a file of format f ("yaml", "toml" or
// "json"). A large file may come back split (Document.Split). The error is
// the decoding library's, as it says it: a file that cannot be decoded.
func (d *Decoder) Decode(f string, b []byte) (*Document, error) {
	if len(b) >= d.splitThreshold {
		var doc *Document
		switch f {
		case "yaml":
			doc = d.splitYAML(b)
		case "toml":
			doc = d.splitTOML(b)
		default:
			doc = d.splitJSON(b)
		}
		if doc != nil {
			return doc, nil
		}
	}
	return d.whole(f, b)
}

// whole decodes b whole: as plain YAML where it can, else generically.
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
func (d *Decoder) whole(f string, b []byte) (*Document, error) {
	if f == "yaml" {
		if top, accounts, ok := d.plainDocument(b); ok {
			return &Document{Top: top, Accounts: accounts}, nil
		}
	}
	top := map[string]any{}
	var err error
	switch f {
	case "yaml":
		err = decodeYAML(b, top)
	case "toml":
		err = decodeTOML(b, top)
	default:
		err = decodeJSON(b, top)
	}
	if err != nil {
		return nil, err
	}
	return &Document{Top: top}, nil
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
