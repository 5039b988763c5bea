package rules

import (
	"fmt"
	"strconv"
	"strings"
)

// Stmt is one statement of a rule. The vocabulary is closed: these types are
// everything nftpol writes, each with one exact kernel encoding (in the
// kernel package) and one nft spelling (String, as `nft list` prints it).
//
// Every Stmt is a comparable value type, so two statements are equal when
// their values are.
type Stmt interface {
	fmt.Stringer
	stmt()
}

// Proto is a transport protocol named as nft names it.
type Proto string

// Transport protocols. A policy grants ports of TCP and UDP only; the
// others are named so that the input chain can close the zone for them, and
// so that a violation record can say which one an account used.
const (
	TCP     Proto = "tcp"
	UDP     Proto = "udp"
	UDPLite Proto = "udplite"
	SCTP    Proto = "sctp"
	DCCP    Proto = "dccp"
	// ICMP and ICMPv6 have no ports; L4ProtoNot names them.
	ICMP   Proto = "icmp"
	ICMPv6 Proto = "ipv6-icmp"
)

// Protos lists every transport a statement may name: the ones whose
// header starts with the source and destination ports, where nft's
// `th sport` and `th dport` (and `udplite dport`, `sctp dport`...) read them.
var Protos = []Proto{TCP, UDP, UDPLite, SCTP, DCCP}

// Number is the IP protocol number.
func (p Proto) Number() uint8 {
	switch p {
	case TCP:
		return 6
	case UDP:
		return 17
	case UDPLite:
		return 136
	case SCTP:
		return 132
	case DCCP:
		return 33
	case ICMP:
		return 1
	case ICMPv6:
		return 58
	}
	return 0
}

// ProtoName names IP protocol number n as nft prints an inet_proto value:
// the transports of Protos and ICMP by name, any other protocol by number.
func ProtoName(n uint8) string {
	for _, p := range append(Protos[:len(Protos):len(Protos)], ICMP, ICMPv6) {
		if p.Number() == n {
			return string(p)
		}
	}
	return strconv.Itoa(int(n))
}

// Loopback matches packets on the loopback interface: `iif "lo"` in input
// chains, `oif "lo"` in output chains (Out). It compares the interface index,
// which is 1 for lo in every network namespace.
type Loopback struct{ Out bool }

// CtDirectionOriginal matches packets in the original direction of their
// connection, i.e. sent by whoever opened it. A packet without conntrack
// entry does not match.
type CtDirectionOriginal struct{}

// CtDirectionReply matches packets in the reply direction: answers from
// the side that accepted the connection. A packet without a conntrack entry
// (untracked, invalid) does not match.
type CtDirectionReply struct{}

// CtStateNotNew matches packets of connections that are not new
// (established, related, invalid, untracked).
type CtStateNotNew struct{}

// CmpOp is a relational operator.
type CmpOp int

// Relational operators SkuidCmp supports.
const (
	Lt CmpOp = iota + 1
	Ge
)

// SkuidCmp compares the UID owning the packet's socket. A packet without an
// owning full socket never matches any skuid statement.
type SkuidCmp struct {
	Op  CmpOp
	UID uint32
}

// SkuidInSet looks the socket's UID up in a set of type uid; with Not it
// matches a UID the set does not hold ("!= @set").
type SkuidInSet struct {
	Set string
	Not bool
}

// SkuidMask matches a socket UID whose bits under Mask equal Value
// (`meta skuid & 7 == 3`). It spreads the per-account lookups over shards
// (see Shards).
type SkuidMask struct {
	Mask, Value uint32
}

// L4Proto matches the transport protocol.
type L4Proto struct{ Proto Proto }

// L4ProtoNot matches a transport protocol other than Proto
// (`meta l4proto != udp`). Proto may be ICMP or ICMPv6.
type L4ProtoNot struct{ Proto Proto }

// SkuidSportInSet looks up the concatenation of the socket's UID and the
// packet's source port in a set of type uid . inet_service.
type SkuidSportInSet struct {
	Proto Proto
	Set   string
}

// DportRange matches a destination port in Lo..Hi.
type DportRange struct {
	Proto  Proto
	Lo, Hi uint16
}

// DportNotInSet matches a destination port that is not in a set of type
// inet_service.
type DportNotInSet struct {
	Proto Proto
	Set   string
}

// UpdateSet adds the concatenation of the socket's UID and the packet's
// source port to a dynamic set, or refreshes it (and its counter).
type UpdateSet struct {
	Proto Proto
	Set   string
}

// UpdateSetTransport adds the concatenation of the socket's UID, the
// packet's IP protocol and the first two bytes of its transport header (the
// source port of every transport that has ports) to a dynamic set of type
// uid . inet_proto . inet_service, or refreshes it (and its counter). It
// records serving over transports no account is granted; it implies no
// protocol match. On a packet too short to hold the two bytes it does not
// match, so a rule with a verdict must not depend on it.
type UpdateSetTransport struct {
	Set string
}

// Limit matches at most Rate packets per Unit (burst 5, nft's default).
type Limit struct {
	Rate uint64
	Unit LimitUnit
}

// LimitUnit is the time unit of a Limit.
type LimitUnit string

// Limit units.
const (
	PerSecond LimitUnit = "second"
	PerMinute LimitUnit = "minute"
)

// Log writes a kernel log line with Prefix and the socket's UID; with a
// Group, it sends the packet's metadata to that NFLOG group instead (a
// netlink listener such as `nftpol watch` reads it; nobody bound to the
// group, the kernel drops it at once).
type Log struct {
	Prefix string
	Group  uint16
}

// Counter counts packets and bytes. Its values are kernel state, not part of
// the model.
type Counter struct{}

// VerdictKind is what a rule does with a packet it matches.
type VerdictKind int

// Verdicts.
const (
	Accept VerdictKind = iota + 1
	Drop
	// RejectTCPReset answers with a TCP reset.
	RejectTCPReset
	// RejectPortUnreachable answers with ICMP/ICMPv6 port unreachable
	// (nft's icmpx port-unreachable, spelled plain `reject`).
	RejectPortUnreachable
)

// Verdict ends a rule.
type Verdict struct{ Kind VerdictKind }

func (Loopback) stmt()            {}
func (CtDirectionOriginal) stmt() {}
func (CtDirectionReply) stmt()    {}
func (CtStateNotNew) stmt()       {}
func (SkuidCmp) stmt()            {}
func (SkuidInSet) stmt()          {}
func (SkuidMask) stmt()           {}
func (L4Proto) stmt()             {}
func (L4ProtoNot) stmt()          {}
func (SkuidSportInSet) stmt()     {}
func (DportRange) stmt()          {}
func (DportNotInSet) stmt()       {}
func (Counter) stmt()             {}
func (UpdateSet) stmt()           {}
func (UpdateSetTransport) stmt()  {}
func (Limit) stmt()               {}
func (Log) stmt()                 {}
func (Verdict) stmt()             {}

func (s Loopback) String() string {
	if s.Out {
		return `oif "lo"`
	}
	return `iif "lo"`
}

func (CtDirectionOriginal) String() string { return "ct direction original" }
func (CtDirectionReply) String() string    { return "ct direction reply" }
func (CtStateNotNew) String() string       { return "ct state != new" }

func (s SkuidCmp) String() string {
	op := map[CmpOp]string{Lt: "<", Ge: ">="}[s.Op]
	return fmt.Sprintf("meta skuid %s %d", op, s.UID)
}

func (s SkuidInSet) String() string {
	if s.Not {
		return "meta skuid != @" + s.Set
	}
	return "meta skuid @" + s.Set
}
func (s SkuidMask) String() string {
	return fmt.Sprintf("meta skuid & %d == %d", s.Mask, s.Value)
}

func (s L4Proto) String() string { return "meta l4proto " + string(s.Proto) }

func (s L4ProtoNot) String() string { return "meta l4proto != " + string(s.Proto) }

func (s SkuidSportInSet) String() string {
	return fmt.Sprintf("meta skuid . %s sport @%s", s.Proto, s.Set)
}

func (s DportRange) String() string {
	return fmt.Sprintf("%s dport %s", s.Proto, portRange(s.Lo, s.Hi))
}

func (s DportNotInSet) String() string {
	return fmt.Sprintf("%s dport != @%s", s.Proto, s.Set)
}

func (Counter) String() string { return "counter" }

func (s UpdateSet) String() string {
	return fmt.Sprintf("update @%s { meta skuid . %s sport }", s.Set, s.Proto)
}

func (s UpdateSetTransport) String() string {
	return fmt.Sprintf("update @%s { meta skuid . meta l4proto . th sport }", s.Set)
}

func (s Limit) String() string { return fmt.Sprintf("limit rate %d/%s", s.Rate, s.Unit) }

func (s Log) String() string {
	if s.Group != 0 {
		return fmt.Sprintf("log prefix %s group %d", Quote(s.Prefix), s.Group)
	}
	return fmt.Sprintf("log prefix %s flags skuid", Quote(s.Prefix))
}

func (s Verdict) String() string {
	switch s.Kind {
	case Accept:
		return "accept"
	case Drop:
		return "drop"
	case RejectTCPReset:
		return "reject with tcp reset"
	case RejectPortUnreachable:
		return "reject"
	}
	return "invalid-verdict"
}

func portRange(lo, hi uint16) string {
	b := strconv.AppendUint(make([]byte, 0, 11), uint64(lo), 10)
	if lo != hi {
		b = strconv.AppendUint(append(b, '-'), uint64(hi), 10)
	}
	return string(b)
}

func stmtEqual(a, b Stmt) bool {
	if _, ok := a.(Unknown); ok {
		return false
	}
	return a == b
}

// String renders the rule as nft prints it.
func (r Rule) String() string {
	var b strings.Builder
	for i, s := range r.Stmts {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s.String())
	}
	if r.Comment != "" {
		fmt.Fprintf(&b, " comment %s", Quote(r.Comment))
	}
	return b.String()
}

// Quote renders s as an nft string literal. nft strings have no escapes, so
// characters that would end or break the literal are replaced; the policy
// loader already refuses such names, this is the last line of defence.
func Quote(s string) string {
	s = SanitizeComment(s)
	return `"` + s + `"`
}

// MaxCommentLen is the longest comment nftpol writes; nft refuses longer ones.
const MaxCommentLen = 128

// SanitizeComment makes s safe to store as a comment and to print in nft
// syntax: printable ASCII without double quotes, backslashes or newlines, at
// most MaxCommentLen bytes.
func SanitizeComment(s string) string {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s) && len(b) < MaxCommentLen; i++ {
		c := s[i]
		if !commentByte(c) {
			c = '_'
		}
		b = append(b, c)
	}
	return string(b)
}

// ValidComment reports whether SanitizeComment leaves s as it is, without
// building the sanitized copy.
func ValidComment(s string) bool {
	if len(s) > MaxCommentLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !commentByte(s[i]) {
			return false
		}
	}
	return true
}

// commentByte reports whether c may stand in a comment as it is: printable
// ASCII but for the double quote and the backslash.
func commentByte(c byte) bool { return c >= 0x20 && c <= 0x7e && c != '"' && c != '\\' }

// Unknown stands for kernel expressions nftpol did not write. It equals no
// other statement, so a chain holding one is always rewritten.
type Unknown struct{ Desc string }

func (Unknown) stmt() {}

func (s Unknown) String() string { return "# unrecognised expression " + s.Desc }
