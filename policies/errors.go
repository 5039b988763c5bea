package policies

import (
	"errors"
	"fmt"
	"strings"
)

// ErrUnknownUser is what a lookup function (see WithLookup) returns, or
// wraps, for a user name that does not exist. Load turns it into an
// "unknown user" problem; any other lookup error is reported as a failed
// lookup, because a broken NSS source must not read as a typo in the policy.
var ErrUnknownUser = errors.New("unknown user")

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
}

// String formats p the way ValidationError prints it:
//
//	file: account "name": field: message
//
// leaving out the account and the field when they are empty.
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	b.WriteString(": ")
	if p.Account != "" {
		fmt.Fprintf(&b, "account %q: ", p.Account)
	}
	if p.Field != "" {
		b.WriteString(p.Field)
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
