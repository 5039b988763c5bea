package policies

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
)

// checkAccounts finds conflicts between accounts, which no single account
// shows: a name or UID used twice, and ports given to two accounts. Each
// conflict is reported on the account read later, naming the earlier one and
// its file.
func (l *loader) checkAccounts() {
	names := map[string]*entry{}
	uids := map[uint32]*entry{}
	for _, e := range l.entries {
		if e.Name != "" {
			if first, ok := names[e.Name]; ok {
				l.addAccount(e, "name", fmt.Sprintf("already defined in %s; account names must be unique", showPath(first.File)))
			} else {
				names[e.Name] = e
			}
		}
		if e.uidOK {
			// The ruleset matches sockets by UID, so two accounts of one
			// UID would each get the other's ports.
			if first, ok := uids[e.UID]; ok {
				l.addAccount(e, e.uidField, fmt.Sprintf("%s already belongs to %s in %s; one UID is one account, so merge their ports", who(&e.Account), first.ref, showPath(first.File)))
			} else {
				uids[e.UID] = e
			}
		}
	}
	l.checkOverlaps()
}

// checkOverlaps reports ports that two accounts with a protocol in common
// both claim. It sweeps all ranges in port order, so its cost grows with the
// number of ranges and overlaps, not with the square of the accounts.
func (l *loader) checkOverlaps() {
	type span struct {
		r     PortRange
		entry int
	}
	var spans []span
	for i, e := range l.entries {
		for _, r := range e.Ports {
			spans = append(spans, span{r, i})
		}
	}
	slices.SortFunc(spans, func(a, b span) int {
		return cmp.Or(cmp.Compare(a.r.Lo, b.r.Lo), cmp.Compare(a.entry, b.entry))
	})

	type pair struct{ first, second int } // entry indexes, first < second
	overlaps := map[pair][]PortRange{}
	var open []span // spans that may still overlap the next one
	for _, s := range spans {
		open = slices.DeleteFunc(open, func(o span) bool { return o.r.Hi < s.r.Lo })
		for _, o := range open {
			if o.entry == s.entry || len(shared(l.entries[o.entry], l.entries[s.entry])) == 0 {
				continue
			}
			k := pair{min(o.entry, s.entry), max(o.entry, s.entry)}
			overlaps[k] = append(overlaps[k], PortRange{s.r.Lo, min(o.r.Hi, s.r.Hi)})
		}
		open = append(open, s)
	}

	pairs := slices.Collect(maps.Keys(overlaps))
	slices.SortFunc(pairs, func(a, b pair) int {
		return cmp.Or(cmp.Compare(a.second, b.second), cmp.Compare(a.first, b.first))
	})
	for _, k := range pairs {
		e, first := l.entries[k.second], l.entries[k.first]
		rs := mergeRanges(overlaps[k])
		what := "ports " + formatRanges(rs) + " overlap"
		if len(rs) == 1 && rs[0].Lo == rs[0].Hi {
			what = "port " + formatRanges(rs) + " overlaps"
		}
		l.addAccount(e, "ports", fmt.Sprintf("%s %s in %s on %s; a port belongs to one account", what, first.ref, showPath(first.File), formatProtocols(shared(first, e))))
	}
}

// shared returns the protocols two accounts have in common.
func shared(a, b *entry) []Protocol {
	var ps []Protocol
	for _, p := range a.Protocols {
		if b.HasProtocol(p) {
			ps = append(ps, p)
		}
	}
	return ps
}
