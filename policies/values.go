package policies

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// maxUID is the highest UID an account or exemption may name: 4294967295 is
// (uid_t)-1, which the kernel uses for "no UID".
const maxUID = math.MaxUint32 - 1

// integer returns v as an integer when the file held a whole number. The
// decoders disagree on types: YAML gives int (uint64 or float64 past int64),
// TOML int64, JSON always float64; so 1012.0 counts as 1012 and 2.5 is not
// a number here. Values beyond int64 are clamped, which keeps them out of
// every range the callers accept.
func integer(v any) (int64, bool) {
	switch n := v.(type) {
	case int:
		return int64(n), true
	case int64:
		return n, true
	case uint64:
		if n > math.MaxInt64 {
			return math.MaxInt64, true
		}
		return int64(n), true
	case float64:
		switch {
		case n != math.Trunc(n) || math.IsNaN(n):
			return 0, false
		case n >= math.MaxInt64:
			return math.MaxInt64, true
		case n <= math.MinInt64:
			return math.MinInt64, true
		}
		return int64(n), true
	}
	return 0, false
}

// uidValue returns v as a UID, or a message saying why it is not one.
func uidValue(v any) (uint32, string) {
	n, ok := integer(v)
	switch {
	case !ok:
		return 0, fmt.Sprintf("must be a number, not %s", describe(v))
	case n < 0 || n > maxUID:
		return 0, fmt.Sprintf("%s is out of range; use 0-%d", show(v), maxUID)
	}
	return uint32(n), ""
}

// portRange parses one element of a ports list (or the zone): a number, or a
// string holding a port "A" or a range "A-B". The message says why v is not
// one, "" when it is.
func portRange(v any) (PortRange, string) {
	if s, ok := v.(string); ok {
		return parseRange(s)
	}
	n, ok := integer(v)
	if !ok {
		return PortRange{}, fmt.Sprintf("%s is not a port; use a number like 40500 or a range like \"40010-40019\"", describe(v))
	}
	if n < 1 || n > math.MaxUint16 {
		return PortRange{}, fmt.Sprintf("port %s is outside 1-65535", show(v))
	}
	return PortRange{uint16(n), uint16(n)}, ""
}

func parseRange(s string) (PortRange, string) {
	los, his, isRange := strings.Cut(s, "-")
	if !isRange {
		his = los
	}
	var ends [2]uint16
	for i, e := range []string{los, his} {
		// Base 10 and no sign: "+40010", "0x9c4a" and "4_0010" are not ports.
		e = strings.TrimSpace(e)
		n, err := strconv.ParseUint(e, 10, 64)
		tooBig := errors.Is(err, strconv.ErrRange)
		switch {
		case err != nil && !tooBig && isRange:
			return PortRange{}, fmt.Sprintf("malformed range %q; write both ends as numbers, like \"40010-40019\"", s)
		case err != nil && !tooBig:
			return PortRange{}, fmt.Sprintf("%q is not a port or range; use a number like 40500 or a range like \"40010-40019\"", s)
		case tooBig || n < 1 || n > math.MaxUint16:
			return PortRange{}, fmt.Sprintf("port %s is outside 1-65535", e)
		}
		ends[i] = uint16(n)
	}
	if ends[0] > ends[1] {
		return PortRange{}, fmt.Sprintf("range %q is reversed; write \"%d-%d\"", s, ends[1], ends[0])
	}
	return PortRange{ends[0], ends[1]}, ""
}

// mergeRanges sorts rs and merges ranges that overlap or touch, so that an
// account's ports come out in one canonical form however they were written.
func mergeRanges(rs []PortRange) []PortRange {
	out := MergeInPlace(slices.Clone(rs))
	if len(out) == 0 {
		return nil
	}
	return out
}

// MergeInPlace sorts rs and joins ranges that overlap or touch (40010-40019
// and 40020-40029 become 40010-40029), in rs's own space: it returns a
// prefix of rs, whose elements after that prefix are left in no particular
// state. The loader merges each account's ports with it, and the compiler
// the union of all accounts' ports; neither allocates.
func MergeInPlace(rs []PortRange) []PortRange {
	slices.SortFunc(rs, func(a, b PortRange) int {
		if a.Lo != b.Lo {
			return int(a.Lo) - int(b.Lo)
		}
		return int(a.Hi) - int(b.Hi)
	})
	out := rs[:0]
	for _, r := range rs {
		// int: Hi+1 must not wrap at 65535.
		if n := len(out); n > 0 && int(r.Lo) <= int(out[n-1].Hi)+1 {
			out[n-1].Hi = max(out[n-1].Hi, r.Hi)
			continue
		}
		out = append(out, r)
	}
	return out
}

func formatRanges(rs []PortRange) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.String()
	}
	return strings.Join(s, ", ")
}

// neverGranted are transports with ports that a policy might name and that
// nftpol refuses to every enforced account, whatever the policy says
// (README, "Every transport").
var neverGranted = []string{"udplite", "sctp", "dccp"}

// protocolsValue parses a protocols list into the order of Protocols,
// without duplicates. It returns one message per bad element.
func (l *loader) protocolsValue(v any) ([]Protocol, []string) {
	list, ok := v.([]any)
	if !ok {
		return nil, []string{fmt.Sprintf("must be a list like [tcp, udp], not %s", describe(v))}
	}
	if len(list) == 0 {
		return nil, []string{"empty; name at least one of tcp, udp"}
	}
	var msgs []string
	var seen []Protocol
	for _, e := range list {
		s, ok := e.(string)
		switch {
		case !ok:
			msgs = append(msgs, fmt.Sprintf("%s is not a protocol; use tcp or udp", describe(e)))
		case slices.Contains(neverGranted, s):
			msgs = append(msgs, fmt.Sprintf("protocol %s cannot be granted: accounts serve over tcp and udp only, and every other transport is refused to them; use tcp or udp", show(e)))
		case !slices.Contains(Protocols, Protocol(s)):
			msgs = append(msgs, fmt.Sprintf("unknown protocol %s; use tcp or udp", show(e)))
		case !slices.Contains(seen, Protocol(s)):
			seen = append(seen, Protocol(s))
		}
	}
	return l.protocolList(protocolMask(seen)), msgs
}

// protocolMask returns the set of protocols ps holds as a bit mask, bit i
// standing for Protocols[i].
func protocolMask(ps []Protocol) int {
	mask := 0
	for i, p := range Protocols {
		if slices.Contains(ps, p) {
			mask |= 1 << i
		}
	}
	return mask
}

// protocolList returns the protocols of mask in the order of Protocols, nil
// for none. Accounts with the same protocols share one list (50,000 accounts
// would otherwise hold 50,000 copies of [tcp, udp]); the lists are the
// loader's own, so no two Loads share one.
func (l *loader) protocolList(mask int) []Protocol {
	if mask == 0 {
		return nil
	}
	if l.protocols[mask] == nil {
		var ps []Protocol
		for i, p := range Protocols {
			if mask&(1<<i) != 0 {
				ps = append(ps, p)
			}
		}
		l.protocols[mask] = slices.Clip(ps)
	}
	return l.protocols[mask]
}

func formatProtocols(ps []Protocol) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = string(p)
	}
	return strings.Join(s, ", ")
}

// str returns v as a string, or a message naming what it is instead.
func str(v any) (string, string) {
	if s, ok := v.(string); ok {
		return s, ""
	}
	return "", fmt.Sprintf("must be a string, not %s", describe(v))
}

// show writes a scalar the way the file did: quoted if it is a string, and
// JSON's float64 numbers without an exponent. Anything else (a TOML date,
// say) is quoted when its text is not plain, so that nothing from a policy
// file reaches a message with a line break or a control character in it.
func show(v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case bool, int, int64, uint64:
		return fmt.Sprint(v)
	case []any, map[string]any, map[any]any:
		return describe(v)
	}
	return showPath(fmt.Sprint(v))
}

// word parses a setting that is one of a few words. It returns the word, or
// a message saying what would be valid.
func word(v any, what string, valid ...string) (string, string) {
	s, ok := v.(string)
	switch {
	case ok && slices.Contains(valid, s):
		return s, ""
	case ok || isScalar(v):
		// A number or a bool (action: true) is shown as written.
		return "", fmt.Sprintf("unknown %s %s; use %s", what, show(v), strings.Join(valid, " or "))
	}
	return "", fmt.Sprintf("must be %s, not %s", strings.Join(valid, " or "), describe(v))
}

func isScalar(v any) bool {
	switch v.(type) {
	case []any, map[string]any, map[any]any:
		return false
	}
	return true
}

// describe names the kind of v for "must be X, not Y" messages, with the
// value when it is short.
func describe(v any) string {
	switch v.(type) {
	case nil:
		return "empty"
	case []any:
		return "a list"
	case map[string]any, map[any]any:
		return "a mapping"
	case string:
		return "the string " + show(v)
	case bool:
		return show(v)
	case int, int64, uint64, float64:
		return "the number " + show(v)
	}
	return fmt.Sprintf("%s (%T)", show(v), v)
}
