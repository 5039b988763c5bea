package rules

import (
	"slices"
	"strings"
)

// Why some changes are staged. In one transaction the kernel makes the new
// rules live when it switches the ruleset generation, but publishes an
// interval set's new content (pipapo: "uid . inet_service"; rbtree:
// "inet_service" intervals) only later, when it commits the set at the end
// of the transaction (nf_tables_commit: the generation cursor moves in step
// 3, set->ops->commit runs after the whole commit list was walked;
// nft_pipapo_commit and nft_rbtree_commit swap the lookup data in). For that
// moment new rules see an interval set as it was before the transaction,
// and one created in the same transaction as empty: a rebuild that deletes
// and creates a per-account set and rewrites the rules reading it in one
// transaction drops packets the old and the new ruleset both allow
// (scripts/repro-pipapo-commit.sh: 970 failed connections in 426 such
// transactions; 0 in 476 staged ones).
//
// So no transaction adds or switches rules that read interval-set content
// written in that same transaction:
//   - a rebuilt interval set is created under its other name (altName)
//     and filled in a first transaction, which no rule reads; a second
//     switches the rules to it and deletes the old set;
//   - a table replaced whole (its layout changed, --adopt, restore over
//     another table) gets its new sets, filled, inside the old table first,
//     under names the old table does not use; the second transaction
//     deletes the old chains and sets and creates the new chains;
//   - a first install creates the table and its filled sets first, and the
//     chains in a second transaction.
// A crash between the two leaves sets no rule reads; the next plan deletes
// them (their role is one of nftpol's and nothing references them) before
// anything else. Hash sets (the moved UIDs, exempt) are visible from the
// generation switch and need none of this.

// altSuffix marks the other name of a set: a set rebuilt while rules read it
// alternates between its name and name+altSuffix.
const altSuffix = "_b"

// altName is the other name of the set called name.
func altName(name string) string {
	if n, ok := strings.CutSuffix(name, altSuffix); ok {
		return n
	}
	return name + altSuffix
}

// referencedSets returns the names of the sets rs's rules read or update.
func referencedSets(rs *Ruleset) map[string]bool {
	m := map[string]bool{}
	for _, c := range rs.Chains {
		for _, r := range c.Rules {
			for _, st := range r.Stmts {
				if name, ok := stmtSet(st); ok {
					m[name] = true
				}
			}
		}
	}
	return m
}

// stmtSet returns the set a statement names.
func stmtSet(st Stmt) (string, bool) {
	switch s := st.(type) {
	case SkuidInSet:
		return s.Set, true
	case SkuidSportInSet:
		return s.Set, true
	case DportNotInSet:
		return s.Set, true
	case UpdateSet:
		return s.Set, true
	case UpdateSetTransport:
		return s.Set, true
	}
	return "", false
}

// withSet returns st naming set name instead.
func withSet(st Stmt, name string) Stmt {
	switch s := st.(type) {
	case SkuidInSet:
		s.Set = name
		return s
	case SkuidSportInSet:
		s.Set = name
		return s
	case DportNotInSet:
		s.Set = name
		return s
	case UpdateSet:
		s.Set = name
		return s
	case UpdateSetTransport:
		s.Set = name
		return s
	}
	return st
}

// renamed returns rs with the sets named as m says (old name to new) and its
// rules naming them so. It shares everything it does not rename with rs.
func renamed(rs *Ruleset, m map[string]string) *Ruleset {
	out := *rs
	out.Sets = slices.Clone(rs.Sets)
	for i, s := range out.Sets {
		if to, ok := m[s.Name]; ok {
			c := *s
			c.Name = to
			out.Sets[i] = &c
		}
	}
	out.Chains = slices.Clone(rs.Chains)
	for i, ch := range out.Chains {
		var rules []Rule
		for j, r := range ch.Rules {
			for k, st := range r.Stmts {
				name, ok := stmtSet(st)
				to, rename := m[name]
				if !ok || !rename {
					continue
				}
				if rules == nil {
					rules = slices.Clone(ch.Rules)
				}
				if &rules[j].Stmts[0] == &ch.Rules[j].Stmts[0] {
					rules[j].Stmts = slices.Clone(r.Stmts)
				}
				rules[j].Stmts[k] = withSet(st, to)
			}
		}
		if rules != nil {
			c := *ch
			c.Rules = rules
			out.Chains[i] = &c
		}
	}
	return &out
}

// adoptNames returns desired with each of its sets under the name current's
// rules read a set of the same role by (a set rebuilt before carries its
// other name), so that the plan compares like with like. It returns desired
// itself when nothing is to be renamed.
func adoptNames(current, desired *Ruleset) *Ruleset {
	if current == nil || !current.Owned() {
		return desired
	}
	var m map[string]string
	var used map[string]bool
	for _, ds := range desired.Sets {
		if current.Set(altName(ds.Name)) == nil {
			continue // the usual case: nothing to choose from
		}
		if used == nil {
			used = referencedSets(current)
		}
		if used[ds.Name] || !used[altName(ds.Name)] {
			continue
		}
		if cs := current.Set(altName(ds.Name)); RoleOf(cs) == RoleOf(ds) {
			if m == nil {
				m = map[string]string{}
			}
			m[ds.Name] = cs.Name
		}
	}
	if m == nil {
		return desired
	}
	return renamed(desired, m)
}

// staleSet reports whether cs, a set of current that the desired ruleset
// lacks, is one a staged change left behind: one of nftpol's layout that no
// rule reads. The plan deletes it.
func staleSet(current *Ruleset, cs *Set, used map[string]bool) bool {
	k := RoleOf(cs).Kind
	return len(used) > 0 && k != SetOther && k != SetUnset && !used[cs.Name]
}

// stageRebuilds turns c's rebuilt interval sets into sets created under
// their other name (filled first, see Transactions) and the old ones
// deleted, with the rules switched to the new names.
func (c *Change) stageRebuilds() {
	p := c.Plan
	m := map[string]string{}
	for _, sc := range p.Sets {
		if sc.Action == ActionReplace && sc.Set.Interval && !sc.Set.Dynamic {
			alt := altName(sc.Name)
			if c.Current.Set(alt) != nil && !slices.ContainsFunc(p.Sets, func(o SetChange) bool { return o.Name == alt && o.Action == ActionDelete }) {
				continue // taken by a set still in use: rebuild in place
			}
			m[sc.Name] = alt
		}
	}
	if len(m) == 0 {
		return
	}
	target := renamed(c.Target, m)
	staged := *p
	staged.Desired = target
	staged.Sets = nil
	var deletions []SetChange
	for _, sc := range p.Sets {
		alt, ok := m[sc.Name]
		if !ok {
			sc.Set = target.Set(sc.Name)
			if sc.Action == ActionDelete {
				sc.Set = c.Current.Set(sc.Name)
			}
			staged.Sets = append(staged.Sets, sc)
			continue
		}
		staged.Sets = append(staged.Sets, SetChange{Name: alt, Action: ActionCreate, Set: target.Set(alt), Add: sc.Add})
		deletions = append(deletions, SetChange{Name: sc.Name, Action: ActionDelete, Set: c.Current.Set(sc.Name), Removed: sc.Removed})
	}
	staged.Sets = append(staged.Sets, deletions...)
	staged.Chains = slices.Clone(p.Chains)
	for i := range staged.Chains {
		staged.Chains[i].Chain = target.Chain(staged.Chains[i].Name)
	}
	c.Target, c.Plan = target, &staged
}

// stageReplace names the sets of a table that replaces current whole so
// that they can be created inside current before it goes (see
// Transactions). It leaves c as it is when current holds objects the model
// does not know or maps (they cannot be deleted one by one in a safe
// order), or when a name and its other name are both taken.
func (c *Change) stageReplace() {
	// Objects the model does not know, and maps (a set of no key type
	// nftpol has; its verdicts may jump to the chains to delete), keep
	// the replace in one transaction: the kernel deletes the table whole.
	if len(c.Current.Extra) > 0 || slices.ContainsFunc(c.Current.Sets, func(s *Set) bool { return s.Key == 0 }) {
		return
	}
	m := map[string]string{}
	for _, s := range c.Target.Sets {
		if c.Current.Set(s.Name) == nil {
			continue
		}
		alt := altName(s.Name)
		if c.Current.Set(alt) != nil || c.Target.Set(alt) != nil {
			return
		}
		m[s.Name] = alt
	}
	if len(m) > 0 {
		target := renamed(c.Target, m)
		c.Target, c.Plan = target, c.replacing(target)
	}
	c.stagedReplace = true
}

// replaceTransactions is a staged replace: the new sets, filled, inside the
// old table; then the old chains and sets deleted and the new chains made.
func (c *Change) replaceTransactions() []*Plan {
	p := c.Plan
	sets := &Plan{Table: p.Table, TableAction: TableUpdate, Desired: p.Desired, Sets: p.Sets, Chains: []ChainChange{}, Accounts: []AccountChange{}}
	swap := &Plan{Table: p.Table, TableAction: TableUpdate, Desired: p.Desired, Wake: c.Current.Dormant, Retire: p.Retire, Accounts: p.Accounts, AccountsLeft: p.AccountsLeft}
	for _, ch := range c.Current.Chains {
		swap.Chains = append(swap.Chains, ChainChange{Name: ch.Name, Action: ActionDelete})
	}
	for _, s := range c.Current.Sets {
		swap.Sets = append(swap.Sets, SetChange{Name: s.Name, Action: ActionDelete, Set: s})
	}
	swap.Chains = append(swap.Chains, p.Chains...)
	return []*Plan{sets, swap}
}

// referenced reports whether a rule of rs reads or updates the set name.
func (rs *Ruleset) referenced(name string) bool { return referencedSets(rs)[name] }

// HandoverTable is the name of the table that enforces the policy while
// table is created anew (Handover).
func HandoverTable(table string) string { return table + "_handover" }

// Handover returns the change that deletes the table and creates Target as
// a new table, without a moment in which a packet sees less than a whole
// ruleset. An agent needs it to own a table created without owner flags:
// the kernel sets a table's OWNER and PERSIST only when it creates it, so
// neither Replace's staging inside the old table nor any change in place can
// give it an owner. One transaction that deletes and creates the table would
// have its new rules read its new interval sets before the kernel publishes
// them (see above): dropped packets. So Target is first installed whole as
// HandoverTable(Plan.Table), next to the old table, at the same hooks:
// both enforce the same policy, and a packet either allows passes both.
// Then the old table is deleted and created anew with its sets, the chains
// follow, and the handover table goes:
//
//  1. create the handover table with Target's sets, filled
//  2. its chains
//  3. delete the table, create it anew with its sets, filled
//  4. its chains
//  5. delete the handover table
//
// Each state between them has at least one whole ruleset in the kernel, and
// no rule reads a set written in its own transaction. Its Plan is Replace's
// (what it does to the table and accounts); c is not changed. The caller
// deletes a handover table an interrupted handover left before (the first
// transaction creates it exclusively), and after one that was interrupted
// once the table was replaced (TakeBack).
func (c *Change) Handover() *Change {
	return &Change{Current: c.Current, Target: c.unstaged, Plan: c.replacing(c.unstaged), unstaged: c.unstaged, handover: true}
}

// handoverTransactions are Handover's five transactions.
func (c *Change) handoverTransactions() []*Plan {
	p := c.Plan
	h := HandoverTable(p.Table)
	none := func(table string, action TableAction) *Plan {
		return &Plan{Table: table, TableAction: action, Desired: p.Desired, Sets: []SetChange{}, Chains: []ChainChange{}, Accounts: []AccountChange{}}
	}
	sets := func(table string, action TableAction) *Plan {
		tx := none(table, action)
		tx.Sets = p.Sets
		return tx
	}
	chains := func(table string) *Plan {
		tx := none(table, TableUpdate)
		tx.Chains = p.Chains
		return tx
	}
	replace := sets(p.Table, TableReplace)
	replace.Retire = p.Retire
	last := chains(p.Table)
	last.Accounts = p.Accounts
	return []*Plan{sets(h, TableCreate), chains(h), replace, last, none(h, TableDelete)}
}
