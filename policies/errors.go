package policies

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrUnknownUser is what a lookup function (see WithLookup) returns, or
// wraps, for a user name that does not exist. Load turns it into an
// "unknown user" problem; any other lookup error is reported as a failed
// lookup, because a broken NSS source must not read as a typo in the policy.
var ErrUnknownUser = errors.New("unknown user")

// ErrInsecurePermissions is what errors.Is finds in a *ValidationError that
// holds at least one problem with the ownership or mode of a policy file or
// directory (see WithPermissionCheck).
var ErrInsecurePermissions = errors.New("insecure permissions")

// Problem is one thing wrong with a policy.
type Problem struct {
	// File is the file the problem is in; always set.
	File string
	// Account is the name of the account the problem is in, "" when the
	// problem is outside any account or the account has no usable name (then
	// Field starts with its position, like "accounts[2].ports").
	Account string
	// Field is the key the problem is in, "" when the problem is with the
	// file as a whole (it cannot be read or parsed).
	Field string
	// Message says what is wrong and what would be valid.
	Message string
	// Err, when not nil, is the kind of problem for errors.Is:
	// ErrInsecurePermissions. Most problems have none.
	Err error
}

// String formats p the way ValidationError prints it:
//
//	file: account "name": field: message
//
// leaving out the account and the field when they are empty.
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(showPath(p.File))
	b.WriteString(": ")
	if p.Account != "" {
		fmt.Fprintf(&b, "account %q: ", p.Account)
	}
	if p.Field != "" {
		b.WriteString(showField(p.Field))
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// ValidationError is the error Load returns when the policy files can be
// read but what they say is wrong. It holds every problem found, not only
// the first, so that one run of the tool is enough to fix a policy.
type ValidationError struct {
	// Problems in the order they were found: the main file first, then the
	// include files by name, then conflicts between accounts.
	Problems []Problem
}

// Error prints one line per problem.
func (e *ValidationError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Unwrap returns the kinds of the problems that have one, so that
// errors.Is(err, ErrInsecurePermissions) tells whether any problem is one.
func (e *ValidationError) Unwrap() []error {
	var errs []error
	for _, p := range e.Problems {
		if p.Err != nil {
			errs = append(errs, p.Err)
		}
	}
	return errs
}

// showPath writes a path in a message as it is when it is plain, quoted
// (with Go escapes) when it holds spaces, quotes, control characters or
// invalid UTF-8: a path comes from the policy (include:) or from a directory
// listing, and must never start a new line or send escape sequences to the
// operator's terminal.
func showPath(s string) string {
	if plain(s) {
		return s
	}
	return strconv.Quote(s)
}

// printable replaces what a terminal would not print as text (control
// characters, invalid UTF-8) with Go escapes, for messages that carry text
// from elsewhere: a decoder's error quoting the file, an error naming a path.
func printable(s string) string {
	var b strings.Builder
	for i, r := range s {
		switch {
		case r == utf8.RuneError && !strings.HasPrefix(s[i:], "\uFFFD"):
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unicode.IsPrint(r) || r == ' ':
			b.WriteRune(r)
		default:
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
	}
	return b.String()
}

// showField writes a field (a key as written in the file, possibly with a
// position like "accounts[2].") the same way.
func showField(s string) string { return showPath(s) }

// plain reports whether s is non-empty printable text without spaces,
// quotes or backslashes.
func plain(s string) bool {
	if s == "" || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || unicode.IsSpace(r) || r == '"' || r == '\\' {
			return false
		}
	}
	return true
}
