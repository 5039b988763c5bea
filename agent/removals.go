package agent

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nftpol/nftpol/policies"
)

// The removal guard over a burst of changes. `apply` refuses to remove more
// than half of the installed accounts in one go; the agent applies each
// change of the include directory as it comes, so config management that
// deletes account files one at a time (or a broken run that empties the
// directory file by file) would pass that test at every step. So the agent
// judges removals against the accounts installed when the burst began: a
// burst begins with a change that removes accounts and lasts while such
// changes come less than burstWindow apart. Once more than half of those
// accounts would be gone (when more than guardMinAccounts were installed),
// nothing more is applied until the files bring them back or an operator
// confirms with `nftpol apply --allow-removals`.
//
// Both judgements run on every change the agent applies, so at 50,000
// accounts they must cost little beside a one-account change: they walk the
// policies' accounts in their UID order side by side, with no map (maps of
// 50,000 UIDs built on every change once took more than half of the agent's
// work for it).
const (
	burstWindow      = time.Minute
	guardMinAccounts = 10
)

// removals remembers the accounts of the burst's start.
type removals struct {
	base []enforcedUID // installed when the burst began, by UID; nil outside a burst
	last time.Time     // when an applied change last removed accounts
}

// enforcedUID is a UID a policy gives ports to, and its account.
type enforcedUID struct {
	uid  uint32
	name string
}

// byUID returns p's accounts in UID order: as Policy keeps them, or sorted
// when p was put together some other way.
func byUID(p *policies.Policy) []*policies.Account {
	acc := p.Accounts
	for i := 1; i < len(acc); i++ {
		if acc[i].UID < acc[i-1].UID {
			return slices.SortedStableFunc(slices.Values(acc), func(a, b *policies.Account) int { return cmp.Compare(a.UID, b.UID) })
		}
	}
	return acc
}

// eachEnforced calls yield for each UID accounts (in UID order) give ports
// to, once, in UID order.
func eachEnforced(accounts []*policies.Account, yield func(enforcedUID)) {
	seen, last := false, uint32(0)
	for _, a := range accounts {
		if len(a.Ports) > 0 && (!seen || a.UID != last) {
			seen, last = true, a.UID
			yield(enforcedUID{a.UID, a.Name})
		}
	}
}

// noneLost reports whether every UID installed gives ports to has ports in
// next too, looking only at the accounts the two do not share: the policies
// a policies.Cache reads share the accounts of every file that did not
// change, so a one-file change of 50,000 accounts compares 50,000 pointers
// and reads a handful of accounts (reading them all, scattered over the
// heap, cost 3 ms of each change). Both in UID order, as Policy keeps
// them. It answers false when it cannot tell at once (the caller then
// judges the whole policies), never true when a UID is lost: a shared
// account is in next, and for any other the walk finds an account of its
// UID with ports in next.
func noneLost(installed, next []*policies.Account) bool {
	j := 0
	for _, a := range installed {
		if j < len(next) && next[j] == a {
			j++
			continue
		}
		if len(a.Ports) == 0 {
			continue
		}
		for j < len(next) && next[j].UID < a.UID {
			j++
		}
		for j < len(next) && next[j].UID == a.UID && len(next[j].Ports) == 0 {
			j++
		}
		if j == len(next) || next[j].UID != a.UID {
			return false
		}
		j++
	}
	return true
}

// enforcedOf lists the UIDs p gives ports to.
func enforcedOf(p *policies.Policy) []enforcedUID {
	var out []enforcedUID
	eachEnforced(byUID(p), func(e enforcedUID) { out = append(out, e) })
	return out
}

// gone calls lost for each UID of base (in UID order) that next (in UID
// order) gives no ports to, and returns how many UIDs base holds.
func gone(base func(yield func(enforcedUID)), next []*policies.Account, lost func(enforcedUID)) int {
	n, j := 0, 0
	base(func(e enforcedUID) {
		n++
		for j < len(next) && next[j].UID < e.uid {
			j++
		}
		for k := j; k < len(next) && next[k].UID == e.uid; k++ {
			if len(next[k].Ports) > 0 {
				return
			}
		}
		lost(e)
	})
	return n
}

// baseFor is what a change at now is judged against: the burst's base, or
// what is installed when no burst is under way.
func (r *removals) baseFor(now time.Time, installed *policies.Policy) func(yield func(enforcedUID)) {
	if r.inBurst(now) {
		return func(yield func(enforcedUID)) {
			for _, e := range r.base {
				yield(e)
			}
		}
	}
	acc := byUID(installed)
	return func(yield func(enforcedUID)) { eachEnforced(acc, yield) }
}

// check says whether going from installed (the policy enforced now) to next
// is allowed at now, and whether it removes accounts installed now (to be
// told to applied); it does not record anything.
func (r *removals) check(now time.Time, installed, next *policies.Policy) (removes bool, err error) {
	if installed == nil {
		return false, nil
	}
	inBurst := r.inBurst(now)
	if !inBurst && noneLost(installed.Accounts, next.Accounts) {
		return false, nil
	}
	var lost []enforcedUID
	n := gone(r.baseFor(now, installed), byUID(next), func(e enforcedUID) { lost = append(lost, e) })
	removes = len(lost) > 0
	if inBurst && removes {
		// Lost since the burst began is not lost now.
		removes = r.removes(installed, next)
	}
	if n <= guardMinAccounts || 2*len(lost) <= n {
		return removes, nil
	}
	names := make([]string, len(lost))
	for i, e := range lost {
		names[i] = fmt.Sprintf("%s (uid %d)", e.name, e.uid)
	}
	slices.Sort(names)
	const show = 10
	more := ""
	if len(names) > show {
		names, more = names[:show], fmt.Sprintf(" and %d more", len(names)-show)
	}
	return removes, fmt.Errorf("refusing to remove %d of the %d accounts installed when this burst of changes began (more than half, within %s of each other): %s%s; "+
		"the last good policy stays enforced. If the policy really lost them, run nftpol apply --allow-removals",
		len(lost), n, burstWindow, strings.Join(names, ", "), more)
}

// removes reports whether next gives no ports to a UID installed gives
// ports to.
func (r *removals) removes(installed, next *policies.Policy) bool {
	if installed == nil {
		return false
	}
	if noneLost(installed.Accounts, next.Accounts) {
		return false
	}
	removed := false
	acc := byUID(installed)
	gone(func(yield func(enforcedUID)) { eachEnforced(acc, yield) }, byUID(next), func(enforcedUID) { removed = true })
	return removed
}

func (r *removals) inBurst(now time.Time) bool {
	return r.base != nil && now.Sub(r.last) <= burstWindow
}

// applied records that a change from installed was applied at now, and
// whether it removed accounts (check or removes said): a change that
// removed accounts begins a burst, or goes on with the one under way.
func (r *removals) applied(now time.Time, installed *policies.Policy, removed bool) {
	if installed == nil {
		return
	}
	inBurst := r.inBurst(now)
	switch {
	case removed && !inBurst:
		r.base, r.last = enforcedOf(installed), now
	case removed:
		r.last = now
	case !inBurst:
		r.base = nil // the burst is over: forget its accounts
	}
}

// reset ends the burst: an operator confirmed the removals.
func (r *removals) reset() { r.base, r.last = nil, time.Time{} }
