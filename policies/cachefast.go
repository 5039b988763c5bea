package policies

import (
	"cmp"
	"slices"
	"sort"
	"strings"
)

// The fast path of Reload. assemble checks every account against every
// other (names, UIDs, ports), sorts them all and copies them: at 50,000
// include files that is most of an agent's work for a one-account change,
// while the change itself concerns a few accounts. So, when the last
// assemble (or Load) found no problem, the Cache keeps that policy and an
// index of it (names, and the port ranges of each protocol, sorted), and a
// Reload of a few files checks only their accounts against it. Whenever
// the answer could be anything but "no problem", it gives up and assemble
// runs as before: every message a policy with problems gets comes from the
// one full check, in the same words and order as Load's.

// maxFastAccounts bounds the accounts (removed and added) a fast Reload
// handles; a bigger change is assembled in full.
const maxFastAccounts = 256

// accountIndex indexes the accounts of a policy without problems.
type accountIndex struct {
	names []string                // sorted; unique in a policy without problems
	spans map[Protocol][]portSpan // by protocol, sorted by Lo, disjoint
}

// portSpan is a range of ports an account holds for a protocol.
type portSpan struct {
	lo, hi uint16
	uid    uint32
}

func newAccountIndex(accounts []*Account) *accountIndex {
	x := &accountIndex{names: make([]string, 0, len(accounts)), spans: map[Protocol][]portSpan{}}
	for _, a := range accounts {
		x.names = append(x.names, a.Name)
		for _, proto := range a.Protocols {
			for _, r := range a.Ports {
				x.spans[proto] = append(x.spans[proto], portSpan{r.Lo, r.Hi, a.UID})
			}
		}
	}
	slices.Sort(x.names)
	for proto, s := range x.spans {
		slices.SortFunc(s, func(a, b portSpan) int { return cmp.Compare(a.lo, b.lo) })
		x.spans[proto] = s
	}
	return x
}

// remove takes a's name and ports out of the index; false when they are not
// there as they should be.
func (x *accountIndex) remove(a *Account) bool {
	i, found := slices.BinarySearch(x.names, a.Name)
	if !found {
		return false
	}
	x.names = slices.Delete(x.names, i, i+1)
	for _, proto := range a.Protocols {
		s := x.spans[proto]
		for _, r := range a.Ports {
			j, found := slices.BinarySearchFunc(s, r.Lo, func(sp portSpan, lo uint16) int { return cmp.Compare(sp.lo, lo) })
			if !found || s[j] != (portSpan{r.Lo, r.Hi, a.UID}) {
				return false
			}
			s = slices.Delete(s, j, j+1)
		}
		x.spans[proto] = s
	}
	return true
}

// add puts a's name and ports into the index; false when a's name or one of
// its ports is another account's (the index is then left in between).
func (x *accountIndex) add(a *Account) bool {
	i, found := slices.BinarySearch(x.names, a.Name)
	if found {
		return false
	}
	x.names = slices.Insert(x.names, i, a.Name)
	for _, proto := range a.Protocols {
		s := x.spans[proto]
		for _, r := range a.Ports {
			// The first span starting after r.Lo; the one before it
			// is the only earlier one that can reach into r, as spans
			// are disjoint.
			j := sort.Search(len(s), func(k int) bool { return s[k].lo > r.Lo })
			if j > 0 && s[j-1].hi >= r.Lo || j < len(s) && s[j].lo <= r.Hi {
				return false
			}
			s = slices.Insert(s, j, portSpan{r.Lo, r.Hi, a.UID})
		}
		x.spans[proto] = s
	}
	return true
}

// reloadFast returns the policy after the include files olds became news
// (nil where a file was not there), when that is quick to know and the
// policy has no problem; ok is false when assemble has to decide.
func (c *Cache) reloadFast(olds, news []*cachedFile) (p *Policy, ok bool) {
	if c.last == nil || len(c.above) > 0 || len(c.mainProblems) > 0 {
		return nil, false
	}
	var removed, added []*Account
	for _, f := range olds {
		if f != nil {
			for i := range f.accounts {
				removed = append(removed, &f.accounts[i])
			}
		}
	}
	for _, f := range news {
		if f == nil {
			continue
		}
		if len(f.problems) > 0 {
			return nil, false
		}
		for i := range f.accounts {
			if f.accounts[i].Name == "" || !f.meta[i].uidOK {
				return nil, false
			}
			added = append(added, &f.accounts[i])
		}
	}
	if len(removed)+len(added) > maxFastAccounts {
		return nil, false
	}
	if len(removed)+len(added) == 0 {
		// Nothing that adds accounts changed: the same accounts, in the
		// same memory (a caller may tell the policies apart by it).
		np := *c.last
		return &np, true
	}
	for _, a := range added {
		for _, r := range a.Ports {
			for _, q := range c.base.BindGuard.Reserved {
				if r.Lo <= q.Hi && q.Lo <= r.Hi {
					return nil, false
				}
			}
		}
	}
	last := c.last.Accounts
	// Where the removed accounts are in last, and the added ones in UID
	// order.
	gone := make([]int, 0, len(removed))
	for _, a := range removed {
		i, found := slices.BinarySearchFunc(last, a, compareAccounts)
		if !found {
			return nil, false
		}
		gone = append(gone, i)
	}
	slices.Sort(gone)
	if len(slices.Compact(gone)) != len(removed) {
		return nil, false
	}
	slices.SortFunc(added, compareAccounts)

	if c.idx == nil {
		c.idx = newAccountIndex(last)
	}
	x := c.idx
	for _, a := range removed {
		if !x.remove(a) {
			c.idx = nil
			return nil, false
		}
	}
	for _, a := range added {
		if !x.add(a) {
			c.idx = nil
			return nil, false
		}
	}

	// The accounts: last without gone, with added merged in, copied in
	// runs between the changes; then each added one is checked against
	// its neighbours for a UID already taken.
	at := make([]int, len(added)) // where added[k] goes in last
	for k, a := range added {
		at[k], _ = slices.BinarySearchFunc(last, a, compareAccounts)
	}
	accounts := make([]*Account, 0, len(last)-len(gone)+len(added))
	put := make([]int, 0, len(added)) // where added ones went in accounts
	i, g, k := 0, 0, 0
	for {
		next := len(last)
		if g < len(gone) {
			next = min(next, gone[g])
		}
		if k < len(added) {
			next = min(next, at[k])
		}
		accounts = append(accounts, last[i:next]...)
		i = next
		switch {
		case k < len(added) && at[k] == i: // before last[i], gone or not
			put = append(put, len(accounts))
			accounts = append(accounts, added[k])
			k++
			continue
		case g < len(gone) && gone[g] == i:
			g++
			i++
			continue
		}
		break
	}
	for _, j := range put {
		if j > 0 && accounts[j-1].UID == accounts[j].UID || j+1 < len(accounts) && accounts[j+1].UID == accounts[j].UID {
			c.idx = nil
			return nil, false
		}
	}
	np := c.base
	np.Accounts = accounts
	if len(accounts) == 0 {
		np.Accounts = nil
	}
	c.last = &np
	c.fastReloads++
	return &np, true
}

// compareAccounts orders accounts as Policy.Accounts are.
func compareAccounts(a, b *Account) int {
	if a.UID != b.UID {
		return cmp.Compare(a.UID, b.UID)
	}
	return strings.Compare(a.Name, b.Name)
}
