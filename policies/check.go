package policies

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// checkAccounts finds conflicts between accounts, which no single account
// shows: a name or UID used twice, and ports given to two accounts. Each
// conflict is reported on the account read later, naming the earlier one and
// its file.
func (l *loader) checkAccounts() {
	// Sorting indexes finds the same firsts as maps from name and UID to
	// the first account would, in a tenth of the memory at 50,000
	// accounts: the index breaks ties, so each run starts with the first.
	// The three searches only read the accounts and are independent: at
	// 50,000 accounts they take a few milliseconds each, on every apply,
	// so they run side by side; the problems are reported after, in the
	// order one loop would report them.
	var firstName, firstUID []int32
	var overlaps map[accountPair][]PortRange
	var wg sync.WaitGroup
	wg.Go(func() {
		firstName = l.firsts(func(i int) bool { return l.accounts[i].Name != "" }, func(i, j int) int {
			return strings.Compare(l.accounts[i].Name, l.accounts[j].Name)
		})
	})
	wg.Go(func() {
		firstUID = l.firsts(func(i int) bool { return l.meta[i].uidOK }, func(i, j int) int {
			return cmp.Compare(l.accounts[i].UID, l.accounts[j].UID)
		})
	})
	overlaps = l.findOverlaps()
	wg.Wait()
	for i := range l.accounts {
		a, md := &l.accounts[i], l.meta[i]
		if j := firstName[i]; j >= 0 {
			l.addAccount(a, md.pos, "name", fmt.Sprintf("already defined in %s; account names must be unique", showPath(l.accounts[j].File)))
		}
		if j := firstUID[i]; j >= 0 {
			// The ruleset matches sockets by UID, so two accounts of one
			// UID would each get the other's ports.
			first := &l.accounts[j]
			l.addAccount(a, md.pos, md.uidField(), fmt.Sprintf("%s already belongs to %s in %s; one UID is one account, so merge their ports", who(a), ref(first, l.meta[j].pos), showPath(first.File)))
		}
	}
	l.reportOverlaps(overlaps)
}

// firsts returns, for each account i that has a key (has(i)) equal to that
// of an earlier account, the index of the first account with that key; -1
// for every other account. compare orders accounts by key.
func (l *loader) firsts(has func(i int) bool, compare func(i, j int) int) []int32 {
	first := make([]int32, len(l.accounts))
	idx := make([]int32, 0, len(l.accounts))
	for i := range l.accounts {
		first[i] = -1
		if has(i) {
			idx = append(idx, int32(i))
		}
	}
	slices.SortFunc(idx, func(i, j int32) int {
		return cmp.Or(compare(int(i), int(j)), cmp.Compare(i, j))
	})
	for k := 1; k < len(idx); k++ {
		if compare(int(idx[k]), int(idx[k-1])) == 0 {
			first[idx[k]] = first[idx[k-1]]
			if first[idx[k]] < 0 {
				first[idx[k]] = idx[k-1]
			}
		}
	}
	return first
}

// accountPair is two accounts by index, first < second.
type accountPair struct{ first, second int }

// findOverlaps returns the ports that two accounts with a protocol in
// common both claim, by pair. It sweeps all ranges in port order, so its
// cost grows with the number of ranges and overlaps, not with the square of
// the accounts: the ranges still open at a port that do not conflict are at
// most one per protocol.
func (l *loader) findOverlaps() map[accountPair][]PortRange {
	type span struct {
		r       PortRange
		account int
	}
	n := 0
	for i := range l.accounts {
		n += len(l.accounts[i].Ports)
	}
	spans := make([]span, 0, n)
	for i := range l.accounts {
		for _, r := range l.accounts[i].Ports {
			spans = append(spans, span{r, i})
		}
	}
	slices.SortFunc(spans, func(a, b span) int {
		return cmp.Or(cmp.Compare(a.r.Lo, b.r.Lo), cmp.Compare(a.account, b.account))
	})

	overlaps := map[accountPair][]PortRange{}
	var open []span // spans that may still overlap the next one
	for _, s := range spans {
		open = slices.DeleteFunc(open, func(o span) bool { return o.r.Hi < s.r.Lo })
		for _, o := range open {
			if o.account == s.account || !sharesProtocol(&l.accounts[o.account], &l.accounts[s.account]) {
				continue
			}
			k := accountPair{min(o.account, s.account), max(o.account, s.account)}
			overlaps[k] = append(overlaps[k], PortRange{s.r.Lo, min(o.r.Hi, s.r.Hi)})
		}
		open = append(open, s)
	}
	return overlaps
}

// reportOverlaps reports the overlaps findOverlaps found, each on the later
// account of its pair, in the order of those accounts.
func (l *loader) reportOverlaps(overlaps map[accountPair][]PortRange) {
	pairs := slices.Collect(maps.Keys(overlaps))
	slices.SortFunc(pairs, func(a, b accountPair) int {
		return cmp.Or(cmp.Compare(a.second, b.second), cmp.Compare(a.first, b.first))
	})
	for _, k := range pairs {
		a, first := &l.accounts[k.second], &l.accounts[k.first]
		rs := mergeRanges(overlaps[k])
		what := "ports " + formatRanges(rs) + " overlap"
		if len(rs) == 1 && rs[0].Lo == rs[0].Hi {
			what = "port " + formatRanges(rs) + " overlaps"
		}
		l.addAccount(a, l.meta[k.second].pos, "ports", fmt.Sprintf("%s %s in %s on %s; a port belongs to one account", what, ref(first, l.meta[k.first].pos), showPath(first.File), formatProtocols(shared(first, a))))
	}
}

// sharesProtocol reports whether two accounts have a protocol in common.
func sharesProtocol(a, b *Account) bool {
	return slices.ContainsFunc(a.Protocols, b.HasProtocol)
}

// shared returns the protocols two accounts have in common.
func shared(a, b *Account) []Protocol {
	var ps []Protocol
	for _, p := range a.Protocols {
		if b.HasProtocol(p) {
			ps = append(ps, p)
		}
	}
	return ps
}
