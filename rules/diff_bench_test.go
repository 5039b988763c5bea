package rules

import (
	"fmt"
	"io"
	"testing"
)

// benchAccounts is the size the scale targets are set at.
const benchAccounts = 50000

// benchRuleset builds a ruleset in the compiler's shape for n accounts:
// account i is uid 100000+i serving port 10000+i over TCP and UDP, in the
// zone 10000-65000. With widenLast the last account has 11 ports instead of
// one: a one-account change of the same shape at every n. Each call builds
// fresh slices, so two rulesets share nothing, as the kernel's and the
// compiler's never do.
func benchRuleset(n int, widenLast bool) *Ruleset {
	const lo, zoneHi, firstUID = 10000, 65000, 100000
	rs := &Ruleset{Table: "nftpol"}
	hi := uint16(lo + n - 1)
	if widenLast {
		hi += 10
	}
	for _, p := range []Proto{TCP, UDP} {
		var ports [Shards]*Set
		for k := range ports {
			ports[k] = &Set{Name: PortsSet(p, uint32(k)), Key: KeyUIDPort, Interval: true, Comment: OwnerPrefix + "ports each account may serve " + string(p) + " from"}
			ports[k].Elements = make([]Element, 0, n/Shards+1)
		}
		for i := range n {
			port := uint16(lo + i)
			e := Element{UID: uint32(firstUID + i), Lo: port, Hi: port, Comment: fmt.Sprintf("acct-%06d", i)}
			if widenLast && i == n-1 {
				e.Hi += 10
			}
			s := ports[Shard(e.UID)]
			s.Elements = append(s.Elements, e)
		}
		open := &Set{Name: OpenSet(p), Key: KeyPort, Interval: true, Comment: OwnerPrefix + "zone ports some account has for " + string(p),
			Elements: []Element{{Lo: lo, Hi: hi}}}
		rs.Sets = append(append(rs.Sets, ports[:]...), open)
	}
	rs.Sets = append(rs.Sets, &Set{Name: ExemptSet, Key: KeyUID, Comment: OwnerPrefix + "exempt uids", Elements: []Element{{UID: 33}}})
	for _, p := range []Proto{TCP, UDP} {
		rs.Sets = append(rs.Sets, &Set{Name: string(p) + "_violations", Key: KeyUIDPort, Dynamic: true, Size: 65536, Counter: true,
			Timeout: 3600e9, Comment: OwnerPrefix + "uid . port of blocked " + string(p) + " serving, with counters"})
	}

	accept := Verdict{Kind: Accept}
	out := &Chain{Name: "output", Hook: HookOutput}
	add := func(c *Chain, why string, stmts ...Stmt) {
		c.Rules = append(c.Rules, Rule{Stmts: stmts, Comment: OwnerPrefix + why})
	}
	add(out, "loopback is not enforced", Loopback{Out: true}, accept)
	add(out, "connections opened from this host", CtDirectionOriginal{}, accept)
	add(out, "uids below min_uid", SkuidCmp{Op: Lt, UID: 1000}, accept)
	add(out, "exempt uids", SkuidInSet{Set: ExemptSet}, accept)
	for _, p := range []Proto{TCP, UDP} {
		for k := uint32(0); k < Shards; k++ {
			add(out, "accounts serve from their own ports", SkuidMask{Mask: Shards - 1, Value: k}, SkuidSportInSet{Proto: p, Set: PortsSet(p, k)}, accept)
		}
	}
	for _, p := range []Proto{TCP, UDP} {
		reject := Verdict{Kind: RejectTCPReset}
		if p == UDP {
			reject = Verdict{Kind: RejectPortUnreachable}
		}
		add(out, "log serving outside the account's ports", L4Proto{Proto: p}, CtDirectionReply{}, SkuidCmp{Op: Ge, UID: 1000},
			Limit{Rate: 10, Unit: PerMinute}, Log{Prefix: "nftpol: blocked " + string(p) + " serving: "})
		add(out, "served outside the account's ports", L4Proto{Proto: p}, CtDirectionReply{}, SkuidCmp{Op: Ge, UID: 1000},
			UpdateSet{Proto: p, Set: string(p) + "_violations"}, Counter{}, reject)
	}
	in := &Chain{Name: "input", Hook: HookInput}
	add(in, "loopback is not enforced", Loopback{}, accept)
	add(in, "only new connections are checked", CtStateNotNew{}, accept)
	for _, p := range []Proto{TCP, UDP} {
		reject := Verdict{Kind: RejectTCPReset}
		if p == UDP {
			reject = Verdict{Kind: RejectPortUnreachable}
		}
		add(in, "zone ports no account has", DportRange{Proto: p, Lo: lo, Hi: zoneHi}, DportNotInSet{Proto: p, Set: OpenSet(p)}, Counter{}, reject)
	}
	rs.Chains = []*Chain{out, in}
	return withRoles(rs)
}

// withRoles gives rs's sets their roles, as the compiler and the decoders
// do: the benchmarks measure what apply runs.
func withRoles(rs *Ruleset) *Ruleset {
	for _, s := range rs.Sets {
		s.DeriveRole()
	}
	return rs
}

// BenchmarkDiff50kNoChange diffs two equal 50,000-account rulesets: the work
// of every plan and apply that finds nothing to do.
func BenchmarkDiff50kNoChange(b *testing.B) {
	cur, want := benchRuleset(benchAccounts, false), benchRuleset(benchAccounts, false)
	b.ReportAllocs()
	for b.Loop() {
		if p := diff(cur, want); !p.Empty() {
			b.Fatalf("equal rulesets gave a plan: %+v", p.Sets)
		}
	}
}

// BenchmarkDiff50kOneAccount diffs a 50,000-account ruleset against the same
// with one account's ports widened.
func BenchmarkDiff50kOneAccount(b *testing.B) {
	cur, want := benchRuleset(benchAccounts, false), benchRuleset(benchAccounts, true)
	b.ReportAllocs()
	for b.Loop() {
		if p := diff(cur, want); len(p.Accounts) != 1 {
			b.Fatalf("one-account change: %d accounts in the plan", len(p.Accounts))
		}
	}
}

// BenchmarkRender50k renders a 50,000-account ruleset in nft syntax, as
// export does and as the state's ruleset.nft is written.
func BenchmarkRender50k(b *testing.B) {
	rs := benchRuleset(benchAccounts, false)
	b.SetBytes(int64(len(RenderString(rs))))
	b.ReportAllocs()
	for b.Loop() {
		if err := Render(io.Discard, rs); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDiff50kInstall plans a 50,000-account table into an empty
// kernel: what a first apply (and a boot without state) pays.
func BenchmarkDiff50kInstall(b *testing.B) {
	rs := benchRuleset(benchAccounts, false)
	b.ReportAllocs()
	for b.Loop() {
		if p := diff(nil, rs); p.Empty() {
			b.Fatal("empty plan")
		}
	}
}

// withMovedSets adds the moved sets (empty) for TCP and UDP to rs.
func withMovedSets(rs *Ruleset) *Ruleset {
	for _, p := range []Proto{TCP, UDP} {
		rs.Sets = append(rs.Sets,
			&Set{Name: MovedSet(p), Key: KeyUID, Comment: OwnerPrefix + "moved"},
			&Set{Name: MovedPortsSet(p), Key: KeyUIDPort, Interval: true, Comment: OwnerPrefix + "moved ports"})
	}
	return withRoles(rs)
}

// BenchmarkOverlayPlan50kOneAccount is what a one-account apply plans at
// 50,000 accounts (Sync): the compiled ruleset laid over the kernel's table
// (the last account moved), then diffed, both ways (widen, narrow back).
func BenchmarkOverlayPlan50kOneAccount(b *testing.B) {
	base, wide := withMovedSets(benchRuleset(benchAccounts, false)), withMovedSets(benchRuleset(benchAccounts, true))
	moved := Sync(base, wide).Target
	b.ReportAllocs()
	for b.Loop() {
		if p := Sync(base, wide).Plan; len(p.Accounts) != 1 {
			b.Fatalf("widen: %d accounts", len(p.Accounts))
		}
		if p := Sync(moved, base).Plan; len(p.Accounts) != 1 {
			b.Fatalf("narrow: %d accounts", len(p.Accounts))
		}
	}
}
