package rules

import (
	"cmp"
	"slices"
)

// TableAction says what happens to the table as a whole.
type TableAction string

// Table actions.
const (
	TableNone    TableAction = "none"
	TableCreate  TableAction = "create"
	TableUpdate  TableAction = "update"
	TableReplace TableAction = "replace"
	// TableDelete deletes the table: only the undo of a first
	// transaction that created it (see Change.Undo).
	TableDelete TableAction = "delete"
)

// Action says what happens to one set, chain or account.
type Action string

// Actions on sets, chains and accounts.
const (
	ActionCreate  Action = "create"
	ActionUpdate  Action = "update"
	ActionReplace Action = "replace"
	ActionAdd     Action = "add"
	ActionChange  Action = "change"
	ActionRemove  Action = "remove"
	// ActionDelete deletes a set or a chain (a chain is flushed first).
	ActionDelete Action = "delete"
)

// Plan is what it takes to turn the kernel's table into the desired one.
type Plan struct {
	// Table is the table's name (family inet).
	Table string
	// TableAction is create when the table is absent, replace when its
	// sets or chains are of another definition (changed types or hooks:
	// the table is deleted and created again inside the same transaction),
	// update for element and rule changes, none when nothing changes.
	TableAction TableAction
	// Sets lists set changes in the order they are applied.
	Sets []SetChange
	// Chains lists chain changes in the order they are applied.
	Chains []ChainChange
	// Accounts describes the element changes per account (UID), for people.
	Accounts []AccountChange
	// AccountsLeft counts the changed accounts a brief plan (SyncBrief)
	// leaves out of Accounts; zero in every other plan.
	AccountsLeft int
	// Desired is the ruleset the plan leads to.
	Desired *Ruleset
	// Wake is set when the table is dormant and must be made active.
	Wake bool
	// Retire names a table nftpol applied before under another name; it
	// is deleted in the same transaction. Set by the caller, which knows
	// the previous name, after checking the table is nftpol's.
	Retire string
}

// SetChange is a change to one set.
type SetChange struct {
	Name   string
	Action Action // create, update or replace (rebuilt whole)
	// Set is the desired set.
	Set *Set
	// Delete and Add are element operations, applied in that order so a
	// changed element (same key, new comment) can be replaced. For create
	// and replace Add holds all elements.
	Delete, Add []Element
	// Removed counts the elements a replace leaves out (for people).
	Removed int
}

// ChainChange is a change to one chain.
type ChainChange struct {
	Name   string
	Action Action // create or replace (its rules)
	Chain  *Chain // desired chain
}

// AccountChange is the effect of a plan on one account.
type AccountChange struct {
	UID  uint32
	Name string
	// OldName is the name before a change, when it differs.
	OldName string
	Action  Action // add, change or remove
	// Ports per protocol, before and after. Only protocols with a change
	// or with ports on either side are listed.
	Ports []ProtoPorts
}

// ProtoPorts is an account's port ranges of one protocol before (Old) and
// after (New) the plan, as nft spells them ("40010-40019", "40500").
type ProtoPorts struct {
	Proto Proto
	Old   []string
	New   []string
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool { return p.TableAction == TableNone && p.Retire == "" }

// Operations counts the kernel operations the plan takes: one per table,
// set, chain and rule written or deleted, and one per element added or
// deleted.
func (p *Plan) Operations() int {
	n := 0
	switch p.TableAction {
	case TableCreate:
		n++
	case TableReplace:
		n += 2
	}
	if p.Wake {
		n++
	}
	if p.Retire != "" {
		n++
	}
	if p.TableAction == TableDelete {
		n++
	}
	for _, s := range p.Sets {
		switch s.Action {
		case ActionCreate, ActionDelete:
			n++
		case ActionReplace:
			n += 2
		}
		if s.Set != nil {
			n += s.Set.KernelElements(s.Add) + s.Set.KernelElements(s.Delete)
		}
	}
	for _, c := range p.Chains {
		n++
		if c.Action == ActionDelete {
			n++ // flushed, then deleted
		}
		if c.Chain != nil && c.Action != ActionDelete {
			n += len(c.Chain.Rules)
		}
	}
	return n
}

// KernelElements counts the kernel elements es takes in s: an interval of a
// single-field interval set is a start and an end element (no end when it
// reaches 65535), anything else one element.
func (s *Set) KernelElements(es []Element) int {
	if s.Key != KeyPort || !s.Interval {
		return len(es)
	}
	n := 0
	for _, e := range es {
		n++
		if e.Hi < 0xffff {
			n++
		}
	}
	return n
}

// ReplaceThreshold is how many element deletions from a per-account set
// (uid . port intervals, kept by the kernel's pipapo backend) make the plan
// rebuild the set instead. Deleting from pipapo costs time proportional to
// the set's size for every element (measured on kernel 6.18: ~45 ms per
// element at 50,000, 25 s for 1,000), while rebuilding it inside the same
// transaction costs about as much as nine such deletions (~0.4 s at
// 50,000). Both grow with the set, so the break-even count does not.
const ReplaceThreshold = 8

// diff computes the plan from current (nil when the table does not exist)
// to desired, exactly: desired is what the kernel holds after it. Both must
// hold sorted elements (SortElements order).
func diff(current, desired *Ruleset) *Plan { return plan(current, desired, -1) }

// plan is diff with at most accounts accounts described in Plan.Accounts
// (all when accounts < 0); AccountsLeft counts the others.
func plan(current, desired *Ruleset, accounts int) *Plan {
	p := &Plan{Table: desired.Table, Desired: desired}
	switch {
	case current == nil:
		p.TableAction = TableCreate
		p.createAll()
	case !compatible(current, desired):
		p.TableAction = TableReplace
		p.createAll()
	default:
		p.update(current)
	}
	p.Accounts, p.AccountsLeft = accountChanges(current, desired, accounts)
	return p
}

// compatible reports whether current can be turned into desired by element
// and rule changes alone: every set of current is wanted, with the same
// type, flags and comment; every chain is wanted, with the same hook and
// priority; and there is nothing else in the table. Anything else is
// rebuilt by replacing the whole table inside one transaction, which is
// atomic and needs no reasoning about the order in which strangers' objects
// (maps jumping to chains, say) could be deleted. It happens only when
// nftpol's layout changed or somebody added objects to its table: rarely.
func compatible(current, desired *Ruleset) bool {
	if len(current.Extra) > 0 {
		return false
	}
	var used map[string]bool
	for _, cs := range current.Sets {
		ds := desired.Set(cs.Name)
		if ds == nil {
			if used == nil {
				used = referencedSets(current)
			}
			if staleSet(current, cs, used) {
				continue // deleted by update
			}
		}
		if ds == nil || !ds.SameDefinition(cs) {
			return false
		}
	}
	for _, cc := range current.Chains {
		if dc := desired.Chain(cc.Name); dc == nil || dc.Hook != cc.Hook || dc.Priority != cc.Priority {
			return false
		}
	}
	return true
}

func (p *Plan) createAll() {
	for _, s := range p.Desired.Sets {
		p.Sets = append(p.Sets, SetChange{Name: s.Name, Action: ActionCreate, Set: s, Add: s.Elements})
	}
	for _, c := range p.Desired.Chains {
		p.Chains = append(p.Chains, ChainChange{Name: c.Name, Action: ActionCreate, Chain: c})
	}
}

func (p *Plan) update(current *Ruleset) {
	d := p.Desired
	// Sets a staged change left behind (compatible let only those
	// through) go first: the set to create may have the same name.
	for _, cs := range current.Sets {
		if d.Set(cs.Name) == nil {
			p.Sets = append(p.Sets, SetChange{Name: cs.Name, Action: ActionDelete, Set: cs})
		}
	}
	for _, ds := range d.Sets {
		cs := current.Set(ds.Name)
		if cs == nil {
			p.Sets = append(p.Sets, SetChange{Name: ds.Name, Action: ActionCreate, Set: ds, Add: ds.Elements})
			continue
		}
		if ds.Dynamic {
			continue // filled by the packet path, not by nftpol
		}
		del, add := DiffElements(cs.Elements, ds.Elements)
		switch {
		case len(del) > ReplaceThreshold && ds.Key == KeyUIDPort && ds.Interval:
			p.Sets = append(p.Sets, SetChange{Name: ds.Name, Action: ActionReplace, Set: ds, Add: ds.Elements, Removed: len(del)})
		case len(del)+len(add) > 0:
			p.Sets = append(p.Sets, SetChange{Name: ds.Name, Action: ActionUpdate, Set: ds, Delete: del, Add: add})
		}
	}
	// A set that is replaced is referenced by rules, and the kernel does not
	// delete a set in use: the rules go first (flushed) and come back after
	// the new set, all in the same transaction.
	replacing := slices.ContainsFunc(p.Sets, func(sc SetChange) bool { return sc.Action == ActionReplace })
	for _, dc := range d.Chains {
		switch cc := current.Chain(dc.Name); {
		case cc == nil:
			p.Chains = append(p.Chains, ChainChange{Name: dc.Name, Action: ActionCreate, Chain: dc})
		case replacing || !cc.Equal(dc):
			p.Chains = append(p.Chains, ChainChange{Name: dc.Name, Action: ActionReplace, Chain: dc})
		}
	}
	p.Wake = current.Dormant
	if len(p.Sets)+len(p.Chains) > 0 || p.Wake {
		p.TableAction = TableUpdate
	} else {
		p.TableAction = TableNone
	}
}

// DiffElements returns the elements of cur missing from want (to delete) and
// those of want missing from cur (to add). Both inputs must be sorted.
func DiffElements(cur, want []Element) (del, add []Element) {
	if sameElements(cur, want) {
		return nil, nil
	}
	i, j := 0, 0
	for i < len(cur) && j < len(want) {
		switch c := cur[i].Compare(want[j]); {
		case c == 0:
			i++
			j++
		case c < 0:
			del = append(del, cur[i])
			i++
		default:
			add = append(add, want[j])
			j++
		}
	}
	del = append(del, cur[i:]...)
	add = append(add, want[j:]...)
	return del, add
}

// sameElements reports whether a and b are the same elements in memory, as
// a set the overlay left unchanged is: nothing to compare then, since
// nobody changes an element slice in place (see Set.Elements).
func sameElements(a, b []Element) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// eachUID walks a and b (both sorted by UID) side by side and calls fn with
// every UID either holds and its elements in each, in ascending order, until
// fn returns false.
func eachUID(a, b []Element, fn func(uid uint32, ga, gb []Element) bool) {
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		var uid uint32
		switch {
		case j >= len(b) || (i < len(a) && a[i].UID < b[j].UID):
			uid = a[i].UID
		default:
			uid = b[j].UID
		}
		i0, j0 := i, j
		for i < len(a) && a[i].UID == uid {
			i++
		}
		for j < len(b) && b[j].UID == uid {
			j++
		}
		if !fn(uid, a[i0:i], b[j0:j]) {
			return
		}
	}
}

// shardChanges returns the UIDs enforced differently in a and b, two
// views of the same sharding, comparing shard with shard: no merged copy of
// every account (at 50,000 accounts, a plan with nothing to change would
// otherwise allocate megabytes). A shard both views hold in the same
// memory (as the overlay keeps the kernel's) is not walked: only its moved
// UIDs can differ. The UIDs come in no particular order.
func shardChanges(a, b *accountView) []uint32 {
	var uids []uint32
	n := uint32(len(a.bases))
	anyMoved := len(a.moved)+len(b.moved) > 0
	for k := range a.bases {
		if sameElements(a.bases[k], b.bases[k]) {
			continue
		}
		eachUID(a.bases[k], b.bases[k], func(uid uint32, ga, gb []Element) bool {
			switch {
			case uid%n != uint32(k):
				// In another UID's shard: looked up by no rule.
			case anyMoved && (a.isMoved(uid) || b.isMoved(uid)):
				// Compared below.
			case !slices.Equal(ga, gb):
				uids = append(uids, uid)
			}
			return true
		})
	}
	for _, ms := range [][]Element{a.moved, b.moved} {
		for _, m := range ms {
			if !slices.Equal(a.group(m.UID), b.group(m.UID)) {
				uids = append(uids, m.UID)
			}
		}
	}
	return uids
}

// firstComment is the first non-empty comment of es, "" if none.
func firstComment(es []Element) string {
	for _, e := range es {
		if e.Comment != "" {
			return e.Comment
		}
	}
	return ""
}

// uidGroup returns the elements of es (sorted by UID first) that belong to
// uid.
func uidGroup(es []Element, uid uint32) []Element {
	i, _ := slices.BinarySearchFunc(es, uid, func(e Element, u uint32) int { return cmp.Compare(e.UID, u) })
	j := i
	for j < len(es) && es[j].UID == uid {
		j++
	}
	return es[i:j]
}

// accountChanges groups the per-account sets' differences by UID. It walks
// the sorted sets side by side and looks closer only at the UIDs whose
// elements differ, so a plan with nothing to change costs one comparison
// per element and no allocation: it runs on every plan and apply. It
// describes the first limit changed UIDs (all when limit < 0) and returns
// how many it left out: finding the UIDs is cheap, describing them is not
// (a heal after a flush at 50,000 accounts spent 15% of its time here).
func accountChanges(current, desired *Ruleset, limit int) ([]AccountChange, int) {
	old, cur := accountViews(current), accountViews(desired)
	var protos []Proto
	for p := range old {
		protos = append(protos, p)
	}
	for p := range cur {
		if _, ok := old[p]; !ok {
			protos = append(protos, p)
		}
	}
	slices.Sort(protos)

	// The changed UIDs of all protocols are sorted once (a map of 50,000
	// UIDs costs more).
	var uids []uint32
	for _, p := range protos {
		if a, b := old[p], cur[p]; a != nil && b != nil && len(a.bases) == len(b.bases) {
			uids = append(uids, shardChanges(a, b)...)
			continue
		}
		eachUID(old[p].all(), cur[p].all(), func(uid uint32, a, b []Element) bool {
			if !slices.Equal(a, b) {
				uids = append(uids, uid)
			}
			return true
		})
	}
	slices.Sort(uids)
	uids = slices.Compact(uids)
	left := 0
	if limit >= 0 && len(uids) > limit {
		uids, left = uids[:limit], len(uids)-limit
	}

	// A plan of 50,000 accounts (a first apply) holds 100,000 port lists:
	// they are cut from shared blocks rather than allocated one by one,
	// which took two thirds of the plan's memory.
	out := make([]AccountChange, 0, len(uids))
	ppBlock := make([]ProtoPorts, 0, len(uids)*len(protos))
	var strBlock []string
	ranges := func(es []Element) []string {
		if len(es) == 0 {
			return nil
		}
		if cap(strBlock)-len(strBlock) < len(es) {
			strBlock = make([]string, 0, max(1024, len(es)))
		}
		n := len(strBlock)
		for _, e := range es {
			strBlock = append(strBlock, portRange(e.Lo, e.Hi))
		}
		return strBlock[n:len(strBlock):len(strBlock)]
	}
	for _, u := range uids {
		ac := AccountChange{UID: u}
		var oldName, newName string
		hadOld, hasNew := false, false
		first := len(ppBlock)
		for _, p := range protos {
			og, ng := old[p].group(u), cur[p].group(u)
			if len(og)+len(ng) == 0 {
				continue
			}
			hadOld, hasNew = hadOld || len(og) > 0, hasNew || len(ng) > 0
			if oldName == "" {
				oldName = firstComment(og)
			}
			if newName == "" {
				newName = firstComment(ng)
			}
			ppBlock = append(ppBlock, ProtoPorts{Proto: p, Old: ranges(og), New: ranges(ng)})
		}
		ac.Ports = ppBlock[first:len(ppBlock):len(ppBlock)]
		switch {
		case !hadOld:
			ac.Action, ac.Name = ActionAdd, newName
		case !hasNew:
			ac.Action, ac.Name = ActionRemove, oldName
		default:
			ac.Action, ac.Name = ActionChange, newName
			if oldName != newName {
				ac.OldName = oldName
			}
		}
		out = append(out, ac)
	}
	return out, left
}

// ShareElements returns rs with the elements of each of its sets that holds
// the same elements as other's set of that name taken from other: rs where
// nothing is to share, else a copy (rs is not changed). Sets compared by
// identity (sameElements) are then found the same at once: an agent shares
// its compiled ruleset with the one the kernel holds as recorded, so that
// the overlay of its next change walks only the sets that change touched,
// and it keeps one copy of each set, not two.
func ShareElements(rs, other *Ruleset) *Ruleset {
	if rs == nil || other == nil {
		return rs
	}
	out := rs
	for i, s := range rs.Sets {
		o := other.Set(s.Name)
		if o == nil || sameElements(s.Elements, o.Elements) || !slices.Equal(s.Elements, o.Elements) {
			continue
		}
		if out == rs {
			c := *rs
			c.Sets = slices.Clone(rs.Sets)
			out = &c
		}
		c := *s
		c.Elements = o.Elements
		out.Sets[i] = &c
	}
	return out
}
