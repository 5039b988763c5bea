package compiler

import (
	"cmp"
	"reflect"
	"slices"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
)

// maxRecompiled bounds the accounts (removed and added) Recompile patches
// in; past it, Compile builds everything.
const maxRecompiled = 512

// Recompile returns what Compile(p) returns, given prev, what Compile
// returned for prevPolicy. An agent compiles the whole policy on every
// change of one include file: at 50,000 accounts that is a few
// milliseconds, most of a one-account change's work besides the kernel's.
// When p differs from prevPolicy only in a few accounts, Recompile builds
// only the sets those accounts' elements are in (their shards, and the
// open sets), from prev's, and shares everything else with prev; prev is
// never changed. In any other case it calls Compile.
//
// Like Compile, it relies on policies.Load's checks: within a protocol, no
// two accounts' ports overlap, so the ports of an account that is gone
// are open for nobody else.
func Recompile(prev *rules.Ruleset, prevPolicy, p *policies.Policy) (*rules.Ruleset, error) {
	if prev == nil || prevPolicy == nil || !sameSettings(prevPolicy, p) {
		return Compile(p)
	}
	removed, added, ok := accountChanges(prevPolicy.Accounts, p.Accounts)
	if !ok {
		return Compile(p)
	}
	if len(removed) == 0 && len(added) == 0 {
		return prev, nil
	}
	rs := &rules.Ruleset{Table: prev.Table, Sets: slices.Clone(prev.Sets), Chains: prev.Chains}
	for _, proto := range []rules.Proto{rules.TCP, rules.UDP} {
		var gone, come [rules.Shards][]rules.Element
		var goneRanges, comeRanges []policies.PortRange
		collect := func(accounts []*policies.Account, to *[rules.Shards][]rules.Element, ranges *[]policies.PortRange) {
			for _, a := range accounts {
				if !a.HasProtocol(policies.Protocol(proto)) {
					continue
				}
				merged := a.Ports
				if !isMerged(merged) {
					merged = Merge(merged)
				}
				k := rules.Shard(a.UID)
				for _, r := range merged {
					to[k] = append(to[k], rules.Element{UID: a.UID, Lo: r.Lo, Hi: r.Hi, Comment: elementComment(a.Name)})
				}
				*ranges = append(*ranges, merged...)
			}
		}
		collect(removed, &gone, &goneRanges)
		collect(added, &come, &comeRanges)
		if len(goneRanges) == 0 && len(comeRanges) == 0 {
			continue
		}
		for i, set := range rs.Sets {
			switch {
			case set.Role.Kind == rules.SetPorts && set.Role.Proto == proto:
				k := set.Role.Shard
				if len(gone[k]) == 0 && len(come[k]) == 0 {
					continue
				}
				s := *set
				s.Elements = patchElements(set.Elements, gone[k], come[k])
				rs.Sets[i] = &s
			case set.Role.Kind == rules.SetOpen && set.Role.Proto == proto:
				s := *set
				s.Elements = patchOpen(set.Elements, goneRanges, comeRanges)
				rs.Sets[i] = &s
			}
		}
	}
	return rs, nil
}

// sameSettings reports whether a and b differ in their accounts at most.
func sameSettings(a, b *policies.Policy) bool {
	x, y := *a, *b
	x.Accounts, y.Accounts = nil, nil
	return reflect.DeepEqual(x, y)
}

// accountChanges walks two account lists in Policy order and returns the
// accounts only the first has or has otherwise (removed) and those only the
// second has or has otherwise (added); ok is false past maxRecompiled.
func accountChanges(before, after []*policies.Account) (removed, added []*policies.Account, ok bool) {
	i, j := 0, 0
	for i < len(before) || j < len(after) {
		if len(removed)+len(added) > maxRecompiled {
			return nil, nil, false
		}
		var c int
		switch {
		case i == len(before):
			c = 1
		case j == len(after):
			c = -1
		default:
			a, b := before[i], after[j]
			c = cmp.Compare(a.UID, b.UID)
			if c == 0 {
				c = cmp.Compare(a.Name, b.Name)
			}
		}
		switch {
		case c < 0:
			removed = append(removed, before[i])
			i++
		case c > 0:
			added = append(added, after[j])
			j++
		default:
			// The policies of a policies.Cache share the accounts no
			// file change touched: most are the same account.
			if a, b := before[i], after[j]; a != b && (!same(a.Ports, b.Ports) || !same(a.Protocols, b.Protocols)) {
				removed, added = append(removed, a), append(added, b)
			}
			i++
			j++
		}
	}
	return removed, added, len(removed)+len(added) <= maxRecompiled
}

// same reports whether two slices hold the same values; the policies of a
// policies.Cache share the slices of the accounts no file change touched,
// so most are the same slice.
func same[E comparable](a, b []E) bool {
	if len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0]) {
		return true
	}
	return slices.Equal(a, b)
}

// patchElements returns es (sorted) without gone and with come, sorted, in
// a new slice.
func patchElements(es, gone, come []rules.Element) []rules.Element {
	out := make([]rules.Element, 0, len(es)-len(gone)+len(come))
	for _, e := range es {
		if !slices.Contains(gone, e) {
			out = append(out, e)
		}
	}
	out = append(out, come...)
	return slices.Clip(rules.SortElements(out))
}

// patchOpen returns the open set's elements (merged ranges, sorted) with
// the ranges gone taken out and those come put in, merged again.
func patchOpen(es []rules.Element, gone, come []policies.PortRange) []rules.Element {
	rs := make([]policies.PortRange, 0, len(es)+2*len(gone)+len(come))
	for _, e := range es {
		rs = append(rs, policies.PortRange{Lo: e.Lo, Hi: e.Hi})
	}
	for _, g := range gone {
		rs = subtract(rs, g)
	}
	rs = policies.MergeInPlace(append(rs, come...))
	if len(rs) == 0 {
		return nil // as Compile leaves it
	}
	out := make([]rules.Element, 0, len(rs))
	for _, r := range rs {
		out = append(out, rules.Element{Lo: r.Lo, Hi: r.Hi})
	}
	return out
}

// subtract takes g out of the sorted, disjoint ranges rs, in place.
func subtract(rs []policies.PortRange, g policies.PortRange) []policies.PortRange {
	// The first range that ends at or after g.Lo.
	i, _ := slices.BinarySearchFunc(rs, g.Lo, func(r policies.PortRange, lo uint16) int { return cmp.Compare(r.Hi, lo) })
	for i < len(rs) && rs[i].Lo <= g.Hi {
		r := rs[i]
		switch {
		case r.Lo < g.Lo && r.Hi > g.Hi: // split in two
			rs = slices.Insert(rs, i+1, policies.PortRange{Lo: g.Hi + 1, Hi: r.Hi})
			rs[i].Hi = g.Lo - 1
			return rs
		case r.Lo < g.Lo:
			rs[i].Hi = g.Lo - 1
			i++
		case r.Hi > g.Hi:
			rs[i].Lo = g.Hi + 1
			return rs
		default:
			rs = slices.Delete(rs, i, i+1)
		}
	}
	return rs
}
