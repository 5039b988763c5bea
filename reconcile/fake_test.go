package reconcile

import (
	"fmt"
	"slices"

	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/rules/kernel"
)

// fakeKernel is a transactional stand-in for nf_tables: each Apply works on
// a copy of the tables and replaces them only when every operation of the
// plan is valid, as the kernel commits a batch whole or not at all. It
// refuses what the kernel refuses (creating what exists, deleting what does
// not, a rule naming a set that is not there, a stale generation) and
// counts generations as the kernel does.
type fakeKernel struct {
	tables map[string]*rules.Ruleset
	gen    uint32
	// commits are the plans the fake committed, in order.
	commits []*rules.Plan
	hits    map[string][]kernel.Hit
	// beforeApply, when set, runs at the start of every Apply (to let
	// somebody else commit in between).
	beforeApply func(f *fakeKernel)
	// refuse, when set, is asked before each Apply with the 1-based number
	// of the Apply call: true refuses that batch whole.
	refuse func(call int) bool
	calls  int
}

func newFake() *fakeKernel {
	return &fakeKernel{tables: map[string]*rules.Ruleset{}, gen: 1}
}

// open is Config.Open for the fake: every engine talks to the same kernel.
func (f *fakeKernel) open() (Kernel, error) { return f, nil }

func (f *fakeKernel) Identity() (kernel.Identity, error) {
	return kernel.Identity{BootID: "fake-boot", NetnsCookie: 4242, Generation: f.gen}, nil
}

func (f *fakeKernel) Read(table string) (*rules.Ruleset, error) {
	t, ok := f.tables[table]
	if !ok {
		return nil, nil
	}
	return cloneRuleset(t), nil
}

func (f *fakeKernel) Apply(p *rules.Plan, generation uint32) (kernel.Stats, error) {
	if p.Empty() {
		return kernel.Stats{}, nil
	}
	if f.beforeApply != nil {
		f.beforeApply(f)
	}
	f.calls++
	if generation != 0 && generation != f.gen {
		return kernel.Stats{}, kernel.ErrGenerationChanged
	}
	if f.refuse != nil && f.refuse(f.calls) {
		return kernel.Stats{}, fmt.Errorf("applying to table inet %s: the fake refused batch %d", p.Table, f.calls)
	}
	tables := map[string]*rules.Ruleset{}
	for name, t := range f.tables {
		tables[name] = cloneRuleset(t)
	}
	if err := applyPlan(tables, p); err != nil {
		return kernel.Stats{}, fmt.Errorf("applying to table inet %s: %w", p.Table, err)
	}
	f.tables = tables
	f.gen = kernel.NextGeneration(f.gen)
	f.commits = append(f.commits, p)
	return kernel.Stats{Messages: p.Operations()}, nil
}

func (f *fakeKernel) Delete(table string) error {
	if _, ok := f.tables[table]; !ok {
		return fmt.Errorf("deleting table inet %s: no such table", table)
	}
	delete(f.tables, table)
	f.gen = kernel.NextGeneration(f.gen)
	return nil
}

func (f *fakeKernel) Hits(table, set string) ([]kernel.Hit, error) { return f.hits[set], nil }

func (f *fakeKernel) Close() error { return nil }

// commitBy is somebody else (nft, another tool) committing a transaction.
func (f *fakeKernel) commitBy() { f.gen = kernel.NextGeneration(f.gen) }

// applyPlan applies p to tables in the kernel's order (see rules/kernel's
// batch): the retired table, the table, chains to rewrite flushed, sets and
// their elements, chains and their rules.
func applyPlan(tables map[string]*rules.Ruleset, p *rules.Plan) error {
	if p.Retire != "" {
		if _, ok := tables[p.Retire]; !ok {
			return fmt.Errorf("delete table inet %s: no such table", p.Retire)
		}
		delete(tables, p.Retire)
	}
	t, exists := tables[p.Table]
	switch p.TableAction {
	case rules.TableDelete:
		if !exists {
			return fmt.Errorf("delete table inet %s: no such table", p.Table)
		}
		delete(tables, p.Table)
		return nil
	case rules.TableCreate:
		if exists {
			return fmt.Errorf("create table inet %s: it exists", p.Table)
		}
		t = &rules.Ruleset{Table: p.Table}
	case rules.TableReplace:
		if !exists {
			return fmt.Errorf("delete table inet %s: no such table", p.Table)
		}
		t = &rules.Ruleset{Table: p.Table}
	default:
		if !exists {
			return fmt.Errorf("table inet %s: no such table", p.Table)
		}
	}
	tables[p.Table] = t
	if p.Wake {
		t.Dormant = false
	}
	for _, cc := range p.Chains {
		i := slices.IndexFunc(t.Chains, func(c *rules.Chain) bool { return c.Name == cc.Name })
		switch cc.Action {
		case rules.ActionReplace:
			if i < 0 {
				return fmt.Errorf("flush chain %s: no such chain", cc.Name)
			}
			t.Chains[i].Rules = nil
		case rules.ActionDelete:
			if i < 0 {
				return fmt.Errorf("delete chain %s: no such chain", cc.Name)
			}
			t.Chains = slices.Delete(t.Chains, i, i+1)
		}
	}
	for _, sc := range p.Sets {
		i := slices.IndexFunc(t.Sets, func(s *rules.Set) bool { return s.Name == sc.Name })
		switch sc.Action {
		case rules.ActionDelete:
			if i < 0 {
				return fmt.Errorf("delete set %s: no such set", sc.Name)
			}
			if referenced(t, sc.Name) {
				return fmt.Errorf("delete set %s: in use by a rule", sc.Name)
			}
			t.Sets = slices.Delete(t.Sets, i, i+1)
			continue
		case rules.ActionReplace:
			if i < 0 {
				return fmt.Errorf("delete set %s: no such set", sc.Name)
			}
			if referenced(t, sc.Name) {
				return fmt.Errorf("delete set %s: in use by a rule", sc.Name)
			}
			t.Sets[i] = emptyCopy(sc.Set)
		case rules.ActionCreate:
			if i >= 0 {
				return fmt.Errorf("add set %s: it exists", sc.Name)
			}
			t.Sets = append(t.Sets, emptyCopy(sc.Set))
			i = len(t.Sets) - 1
		default:
			if i < 0 {
				return fmt.Errorf("set %s: no such set", sc.Name)
			}
		}
		s := t.Sets[i]
		for _, e := range sc.Delete {
			j := slices.IndexFunc(s.Elements, func(x rules.Element) bool { return sameKey(x, e) })
			if j < 0 {
				return fmt.Errorf("delete element %s in set %s: no such element", s.ElementString(e), s.Name)
			}
			s.Elements = slices.Delete(s.Elements, j, j+1)
		}
		for _, e := range sc.Add {
			if slices.ContainsFunc(s.Elements, func(x rules.Element) bool { return sameKey(x, e) }) {
				return fmt.Errorf("add element %s in set %s: it exists", s.ElementString(e), s.Name)
			}
			s.Elements = append(s.Elements, e)
		}
		s.Elements = rules.SortElements(s.Elements)
	}
	for _, cc := range p.Chains {
		if cc.Action == rules.ActionDelete {
			continue
		}
		c := t.Chain(cc.Name)
		switch cc.Action {
		case rules.ActionCreate:
			if c != nil {
				return fmt.Errorf("add chain %s: it exists", cc.Name)
			}
			c = &rules.Chain{Name: cc.Name, Hook: cc.Chain.Hook, Priority: cc.Chain.Priority}
			t.Chains = append(t.Chains, c)
		}
		for _, r := range cc.Chain.Rules {
			for _, set := range setsOf(r) {
				if t.Set(set) == nil {
					return fmt.Errorf("add rule to chain %s (%s): no set %s", cc.Name, r, set)
				}
			}
			c.Rules = append(c.Rules, r)
		}
	}
	return nil
}

// sameKey reports whether two elements have the same key: what the kernel
// matches a deletion by (comments are data).
func sameKey(a, b rules.Element) bool { return a.UID == b.UID && a.Lo == b.Lo && a.Hi == b.Hi }

func emptyCopy(s *rules.Set) *rules.Set {
	c := *s
	c.Elements = nil
	return &c
}

func referenced(t *rules.Ruleset, set string) bool {
	for _, c := range t.Chains {
		for _, r := range c.Rules {
			if slices.Contains(setsOf(r), set) {
				return true
			}
		}
	}
	return false
}

// setsOf lists the sets rule r looks up or updates.
func setsOf(r rules.Rule) []string {
	var out []string
	for _, st := range r.Stmts {
		switch s := st.(type) {
		case rules.SkuidInSet:
			out = append(out, s.Set)
		case rules.SkuidSportInSet:
			out = append(out, s.Set)
		case rules.DportNotInSet:
			out = append(out, s.Set)
		case rules.UpdateSet:
			out = append(out, s.Set)
		case rules.UpdateSetTransport:
			out = append(out, s.Set)
		}
	}
	return out
}

func cloneRuleset(rs *rules.Ruleset) *rules.Ruleset {
	c := *rs
	c.Sets = make([]*rules.Set, len(rs.Sets))
	for i, s := range rs.Sets {
		cs := *s
		cs.Elements = slices.Clone(s.Elements)
		c.Sets[i] = &cs
	}
	c.Chains = make([]*rules.Chain, len(rs.Chains))
	for i, ch := range rs.Chains {
		cc := *ch
		cc.Rules = slices.Clone(ch.Rules)
		c.Chains[i] = &cc
	}
	return &c
}
