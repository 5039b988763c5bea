package compiler

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	gocmp "github.com/google/go-cmp/cmp"

	"github.com/nftpol/nftpol/policies"
)

// recompilePolicy is a valid policy of accounts in slots of 20 ports each
// (so no two overlap), some of whose ranges touch their neighbours'.
type recompilePolicy struct {
	r     *rand.Rand
	slots int
}

var (
	both    = []policies.Protocol{policies.TCP, policies.UDP}
	tcpOnly = []policies.Protocol{policies.TCP}
	udpOnly = []policies.Protocol{policies.UDP}
)

func (g *recompilePolicy) account(slot int, uid uint32) policies.Account {
	lo := uint16(40000 + 20*slot)
	var ports []policies.PortRange
	switch g.r.IntN(4) {
	case 0: // the whole slot: touches both neighbours' when they take theirs
		ports = []policies.PortRange{{Lo: lo, Hi: lo + 19}}
	case 1:
		ports = []policies.PortRange{{Lo: lo + 2, Hi: lo + 2}, {Lo: lo + 5, Hi: lo + 9}}
	case 2: // not merged as written
		ports = []policies.PortRange{{Lo: lo, Hi: lo + 4}, {Lo: lo + 5, Hi: lo + 6}}
	default:
		ports = []policies.PortRange{{Lo: lo + uint16(g.r.IntN(19)), Hi: lo + 19}}
	}
	if g.r.IntN(10) == 0 {
		ports = nil
	}
	protocols := [][]policies.Protocol{both, both, tcpOnly, udpOnly}[g.r.IntN(4)]
	name := fmt.Sprintf("acct%d", uid)
	if g.r.IntN(8) == 0 {
		name += "x" // a new comment for the same UID
	}
	return policies.Account{Name: name, UID: uid, Ports: ports, Protocols: protocols}
}

func (g *recompilePolicy) policy(accounts []policies.Account) *policies.Policy {
	p := &policies.Policy{Table: "nftpol", Zone: policies.PortRange{Lo: 40000, Hi: 49999}, MinUID: 1000,
		Action: policies.Reject, Protocols: both, Exempt: []uint32{1500}}
	for i := range accounts {
		a := accounts[i]
		p.Accounts = append(p.Accounts, &a)
	}
	slices.SortFunc(p.Accounts, func(a, b *policies.Account) int {
		return cmp.Or(cmp.Compare(a.UID, b.UID), cmp.Compare(a.Name, b.Name))
	})
	return p
}

// TestRecompileIsCompile: over random sequences of changes to a few
// accounts (ports, protocols, names, accounts removed and added, now and
// then a setting or a change too big to patch), what Recompile makes of
// the last ruleset is what Compile makes of the policy, and the last
// ruleset is left as it was.
func TestRecompileIsCompile(t *testing.T) {
	for seed := range uint64(6) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			g := &recompilePolicy{r: rand.New(rand.NewPCG(seed, 3)), slots: 400}
			bySlot := map[int]policies.Account{}
			for slot := range 300 {
				bySlot[slot] = g.account(slot, uint32(2000+slot))
			}
			accounts := func() []policies.Account {
				var out []policies.Account
				for _, a := range bySlot {
					out = append(out, a)
				}
				return out
			}
			p := g.policy(accounts())
			prev, err := Compile(p)
			if err != nil {
				t.Fatal(err)
			}
			patched := 0
			for step := range 200 {
				for range 1 + g.r.IntN(3) {
					slot := g.r.IntN(g.slots)
					switch a, ok := bySlot[slot]; {
					case ok && g.r.IntN(4) == 0:
						delete(bySlot, slot)
					case ok:
						bySlot[slot] = g.account(slot, a.UID)
					default:
						bySlot[slot] = g.account(slot, uint32(5000+slot*7%1000+g.r.IntN(3)*1000))
					}
				}
				if g.r.IntN(40) == 0 { // more than Recompile patches
					for slot := range 300 {
						if a, ok := bySlot[slot]; ok {
							bySlot[slot] = g.account(slot, a.UID)
						}
					}
				}
				next := g.policy(accounts())
				if g.r.IntN(30) == 0 {
					next.MinUID = 1001
				}
				again, _ := Compile(p) // prev, as it was
				got, err := Recompile(prev, p, next)
				if err != nil {
					t.Fatal(err)
				}
				want, err := Compile(next)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(want, got) {
					t.Fatalf("step %d: Recompile differs from Compile (-Compile +Recompile):\n%s", step, gocmp.Diff(want, got))
				}
				if !reflect.DeepEqual(again, prev) {
					t.Fatalf("step %d: Recompile changed the ruleset it was given:\n%s", step, gocmp.Diff(again, prev))
				}
				if _, _, ok := accountChanges(p.Accounts, next.Accounts); ok && sameSettings(p, next) {
					patched++
				}
				p, prev = next, got
			}
			if patched < 150 {
				t.Errorf("%d of 200 changes patched: the test no longer tests Recompile", patched)
			}
		})
	}
}

// TestSubtract: a range taken out of merged ranges, at their edges, across
// several, inside one.
func TestSubtract(t *testing.T) {
	rs := func(pairs ...uint16) []policies.PortRange {
		var out []policies.PortRange
		for i := 0; i < len(pairs); i += 2 {
			out = append(out, policies.PortRange{Lo: pairs[i], Hi: pairs[i+1]})
		}
		return out
	}
	for _, c := range []struct {
		in   []policies.PortRange
		g    policies.PortRange
		want []policies.PortRange
	}{
		{rs(10, 20), policies.PortRange{Lo: 10, Hi: 20}, rs()},
		{rs(10, 20), policies.PortRange{Lo: 12, Hi: 14}, rs(10, 11, 15, 20)},
		{rs(10, 20, 30, 40, 50, 60), policies.PortRange{Lo: 15, Hi: 55}, rs(10, 14, 56, 60)},
		{rs(10, 20, 30, 40), policies.PortRange{Lo: 21, Hi: 29}, rs(10, 20, 30, 40)},
		{rs(0, 5, 65530, 65535), policies.PortRange{Lo: 0, Hi: 65535}, rs()},
		{rs(0, 65535), policies.PortRange{Lo: 0, Hi: 0}, rs(1, 65535)},
		{rs(0, 65535), policies.PortRange{Lo: 65535, Hi: 65535}, rs(0, 65534)},
	} {
		got := subtract(slices.Clone(c.in), c.g)
		if !slices.Equal(got, c.want) {
			t.Errorf("%v minus %v = %v, want %v", c.in, c.g, got, c.want)
		}
	}
}

// BenchmarkRecompile50k: one account of 50,000 moved, as an agent
// compiles it, against Compile of the same policy.
func BenchmarkRecompile50k(b *testing.B) {
	p := benchPolicy(50000)
	next := *p
	next.Accounts = slices.Clone(p.Accounts)
	a := *next.Accounts[25000] // accounts in a policy are never changed
	a.Ports = []policies.PortRange{{Lo: 64000, Hi: 64010}}
	next.Accounts[25000] = &a
	prev, err := Compile(p)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("recompile", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Recompile(prev, p, &next); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("compile", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := Compile(&next); err != nil {
				b.Fatal(err)
			}
		}
	})
}
