// Package rules is nftpol's model of the one nftables table it owns, and
// all that can be known about that table without the kernel:
//
//   - the model (ruleset.go, stmt.go): a Ruleset of sets with their
//     elements and base chains with their rules;
//   - the layout (layout.go): what each set is for (Set.Role) and what it
//     is called, the per-account shards, the moved sets and the overlay
//     that keeps a small change from deleting from a shard;
//   - the change (sync.go, diff.go, plan.go): Sync and SyncExact compare
//     what the kernel holds with what it should hold and give a Change:
//     the target, the Plan (Plan.WriteText for people, JSON for tools) and
//     the transactions that carry it out;
//   - the table as nft text (render.go) and as the JSON the state records
//     (json.go).
//
// Where it sits in the flow:
//
//	policy  --compiler.Compile-->   Ruleset  what should be (moved sets empty)
//	kernel  --rules/kernel Read-->  Ruleset  what is (or the recorded state's,
//	                                         when the kernel provably did not change)
//	Sync(current, compiled)  -->  Change{Target, Plan}
//	Change.Transactions()    -->  rules/kernel Apply, one netlink batch each
//
// The model is deliberately small. A rule is a sequence of statements from a
// closed vocabulary (see stmt.go): every statement nftpol ever writes has a
// type here, so the kernel package can encode it exactly and decode it back
// exactly, and anything it does not recognise is a sign that somebody else
// changed the table. Nothing here talks to the kernel.
package rules

import (
	"cmp"
	"slices"
	"strings"
	"time"
)

// Ruleset is the content of nftpol's table in the inet family.
type Ruleset struct {
	// Table is the table name; the family is always inet, so one table
	// covers IPv4 and IPv6 alike.
	Table string
	// Sets, in the order they are rendered and created.
	Sets []*Set
	// Chains, in the order they are rendered and created.
	Chains []*Chain
	// Dormant is set when the kernel's table is dormant: it is there but
	// enforces nothing. nftpol never makes a table dormant.
	Dormant bool
	// Extra names objects in the kernel's table that the model does not
	// hold (named counters, quotas, flowtables...). nftpol never writes
	// them; their presence makes the plan replace the table.
	Extra []string
}

// Set returns the set called name, or nil.
func (rs *Ruleset) Set(name string) *Set {
	for _, s := range rs.Sets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// Chain returns the chain called name, or nil.
func (rs *Ruleset) Chain(name string) *Chain {
	for _, c := range rs.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// KeyType is the type of a set's keys.
type KeyType int

// The key types nftpol uses.
const (
	// KeyUID holds UIDs ("type uid"). Elements use UID only.
	KeyUID KeyType = iota + 1
	// KeyPort holds ports or port ranges ("type inet_service"). Elements
	// use Lo and Hi.
	KeyPort
	// KeyUIDPort holds a UID concatenated with a port range ("type uid .
	// inet_service"). Elements use UID, Lo and Hi.
	KeyUIDPort
	// KeyUIDProtoPort holds a UID, an IP protocol and a port ("type uid .
	// inet_proto . inet_service"). Only dynamic sets have it: the
	// violation record of transports no account is granted.
	KeyUIDProtoPort
)

func (k KeyType) String() string {
	switch k {
	case KeyUID:
		return "uid"
	case KeyPort:
		return "inet_service"
	case KeyUIDPort:
		return "uid . inet_service"
	case KeyUIDProtoPort:
		return "uid . inet_proto . inet_service"
	}
	return "invalid"
}

// Set is a named set of the table.
type Set struct {
	Name string
	Key  KeyType
	// Role is the set's part in nftpol's layout: what it holds, for which
	// protocol and shard. It follows from Name, Key and Dynamic (RoleOf)
	// and is not stored: the compiler sets it when it makes a set, the
	// state's and the kernel's decoders when they read one. A set made
	// without it (SetUnset, as a literal in a test) gets RoleOf's when
	// the layout asks. Whoever renames a set or changes its key or flags
	// must set Role again (or clear it).
	Role Role
	// Interval sets hold ranges (flags interval). KeyUID sets never do.
	Interval bool
	// Dynamic sets are filled by the packet path (flags dynamic,timeout),
	// not by nftpol: their elements are kernel state, never diffed. A
	// dynamic set has a Timeout after which an element not seen again
	// expires, a Size bound and, with Counter, a counter per element.
	Dynamic bool
	Timeout time.Duration
	Size    uint32
	Counter bool
	// Comment is stored as set userdata. nftpol's sets carry its mark
	// (OwnerPrefix), which survives `nft flush table`.
	Comment string
	// Elements, kept sorted by SortElements order and without duplicates.
	//
	// Element slices are shared, not owned. The compiler gives TCP's and
	// UDP's sets one slice when every account has both protocols; the
	// state reader (cmd/nftpol) gives every set of equal elements the one
	// slice it parsed; Sync's Target keeps the slice of the kernel's
	// (or the recorded) set for every set the overlay leaves as it is,
	// and both protocols' sets share the slice it made for them. The
	// plan counts on it: a set holding the same slice as the kernel's is
	// unchanged without a look at its 50,000 elements (sameElements), and
	// the state writer reuses the text it read for it. So:
	//   - nobody changes an element slice in place (sort, overwrite,
	//     append into its capacity): a set whose elements change gets a
	//     new slice, on a new *Set (the overlay copies the set);
	//   - every slice handed out is clipped (cap == len), so an append
	//     to one set's elements reallocates instead of writing into
	//     another's.
	Elements []Element
}

// Element is one element of a set. Which fields count depends on the set's
// KeyType; the others are zero.
type Element struct {
	UID    uint32
	Lo, Hi uint16
	// Comment labels the element (the account name for per-account
	// elements). It is stored in the kernel as element userdata and is
	// part of the element's identity: a changed comment is a changed
	// element.
	Comment string
}

// Compare orders elements by UID, then port range, then comment.
func (e Element) Compare(o Element) int {
	if c := cmp.Compare(e.UID, o.UID); c != 0 {
		return c
	}
	if c := cmp.Compare(e.Lo, o.Lo); c != 0 {
		return c
	}
	if c := cmp.Compare(e.Hi, o.Hi); c != 0 {
		return c
	}
	return cmp.Compare(e.Comment, o.Comment)
}

// SortElements sorts elements into canonical order and drops exact duplicates.
func SortElements(es []Element) []Element {
	slices.SortFunc(es, Element.Compare)
	return slices.CompactFunc(es, func(a, b Element) bool { return a == b })
}

// Hook is the netfilter hook of a base chain.
type Hook string

// Hooks nftpol attaches to.
const (
	HookInput  Hook = "input"
	HookOutput Hook = "output"
)

// Chain is a base chain of type filter. Its policy is always accept: nftpol
// only ever removes traffic that breaks the policy, it never decides for the
// rest of the host's firewall.
type Chain struct {
	Name     string
	Hook     Hook
	Priority int32
	Rules    []Rule
}

// Rule is a sequence of statements, the last of which is normally a verdict.
type Rule struct {
	Stmts []Stmt
	// Comment is stored as rule userdata. nftpol marks its rules with it so
	// it can tell its own table from a stranger's (see Owned).
	Comment string
}

// Equal reports whether two rules match the same packets the same way.
// Counter values are not compared: they are state, not configuration.
func (r Rule) Equal(o Rule) bool {
	return r.Comment == o.Comment && slices.EqualFunc(r.Stmts, o.Stmts, stmtEqual)
}

// Equal reports whether two chains have the same definition and rules.
func (c *Chain) Equal(o *Chain) bool {
	return c.Name == o.Name && c.Hook == o.Hook && c.Priority == o.Priority &&
		slices.EqualFunc(c.Rules, o.Rules, Rule.Equal)
}

// SameDefinition reports whether two sets have the same name, type, flags
// and comment (their elements aside): whether one can be turned into the
// other by element operations alone.
func (s *Set) SameDefinition(o *Set) bool {
	return s.Name == o.Name && s.Key == o.Key && s.Interval == o.Interval && s.Comment == o.Comment &&
		s.Dynamic == o.Dynamic && s.Timeout == o.Timeout && s.Size == o.Size && s.Counter == o.Counter
}

// OwnerPrefix starts the comment of every rule and set nftpol writes; it is
// how nftpol recognises its own table. The mark survives as long as any of
// nftpol's rules or sets does (`nft flush table` keeps the sets).
const OwnerPrefix = "nftpol: "

// Owned reports whether the ruleset carries nftpol's mark, i.e. whether nftpol
// created it. A table without the mark belongs to somebody else.
func (rs *Ruleset) Owned() bool {
	for _, s := range rs.Sets {
		if strings.HasPrefix(s.Comment, OwnerPrefix) {
			return true
		}
	}
	for _, c := range rs.Chains {
		for _, r := range c.Rules {
			if strings.HasPrefix(r.Comment, OwnerPrefix) {
				return true
			}
		}
	}
	return false
}
