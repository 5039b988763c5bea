//go:build linux

package kernel

import (
	"errors"
	"fmt"

	"github.com/google/nftables"

	"github.com/nftpol/nftpol/rules"
)

// Stats describes what Apply sent.
type Stats struct {
	// Messages is the number of netlink messages in the batch, not
	// counting the batch begin and end markers.
	Messages int
	// Elements is the number of set elements added or deleted (an rbtree
	// interval counts as its start and end elements).
	Elements int
}

// Apply sends the plan as one netlink batch. The kernel commits it as one
// transaction: when Apply returns an error, nothing of the plan is in
// effect, and the error names the operation the kernel refused. With a
// non-zero genID the batch only commits if the ruleset generation is still
// genID (see Generation); otherwise Apply returns ErrGenerationChanged.
func (k *Kernel) Apply(p *rules.Plan, genID uint32) (Stats, error) {
	if p.Empty() {
		return Stats{}, nil
	}
	b, err := buildBatch(p, k.tableFlags())
	if err != nil {
		return Stats{}, err
	}
	if err := k.commit(b.ops, genID, b.bytes); err != nil {
		if errors.Is(err, ErrGenerationChanged) {
			return Stats{}, err
		}
		if oe := k.explainRefusal(err, p.Table, p.Retire); oe != err {
			return Stats{}, oe
		}
		return Stats{}, fmt.Errorf("applying to table inet %s: %w", p.Table, err)
	}
	return b.stats, nil
}

// batch is a plan turned into calls on a nftables.Conn, with its size.
type batch struct {
	ops   []op
	stats Stats
	bytes int
}

func (b *batch) add(desc string, call func(*nftables.Conn) error) {
	b.ops = append(b.ops, op{desc: desc, call: call})
	b.stats.Messages++
}

// addTable adds a NEWTABLE for t with the given flags; excl makes it a
// create, which fails if the table exists.
func (b *batch) addTable(desc string, t *nftables.Table, flags uint32, excl bool) {
	switch {
	case flags != 0:
		b.ops = append(b.ops, newTableOp(desc, t.Name, flags, excl))
		b.stats.Messages++
	case excl:
		b.add(desc, func(c *nftables.Conn) error { c.CreateTable(t); return nil })
	default:
		b.add(desc, func(c *nftables.Conn) error { c.AddTable(t); return nil })
	}
}

// delTableOp deletes table inet <name>.
func delTableOp(desc, name string) op {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	return op{desc: desc, call: func(c *nftables.Conn) error { c.DelTable(t); return nil }}
}

// buildBatch orders the plan's operations so that every reference is valid
// when the kernel reaches it: the table before its sets, sets (with their
// element changes) before the rules that look them up. Every NEWTABLE
// carries tableFlags (see WithOwnership): with 0 google/nftables encodes
// it, otherwise nftpol does (google/nftables always sends flags 0).
func buildBatch(p *rules.Plan, tableFlags uint32) (*batch, error) {
	b := &batch{}
	t := &nftables.Table{Name: p.Table, Family: nftables.TableFamilyINet}
	if p.Retire != "" {
		old := &nftables.Table{Name: p.Retire, Family: nftables.TableFamilyINet}
		b.add("delete table inet "+p.Retire+" (renamed)", func(c *nftables.Conn) error { c.DelTable(old); return nil })
	}
	switch p.TableAction {
	case rules.TableDelete:
		b.add("delete table inet "+t.Name, func(c *nftables.Conn) error { c.DelTable(t); return nil })
		return b, nil
	case rules.TableReplace:
		b.add("delete table inet "+t.Name, func(c *nftables.Conn) error { c.DelTable(t); return nil })
		b.addTable("add table inet "+t.Name, t, tableFlags, false)
	case rules.TableCreate:
		// Exclusive: if somebody created a table of this name since we
		// read the kernel, fail rather than merge into theirs.
		b.addTable("create table inet "+t.Name, t, tableFlags, true)
	}
	if p.Wake {
		// Sent for an existing table, NEWTABLE without EXCL updates its
		// flags; ours lack DORMANT, which clears it. An owned table must
		// be sent its OWNER|PERSIST again: the kernel refuses to drop
		// either.
		b.addTable("activate table inet "+t.Name, t, tableFlags, false)
	}

	// Rules that will be rewritten go first, and chains that go away, so
	// no rule holds a set that is about to be replaced or deleted.
	for _, cc := range p.Chains {
		ch := &nftables.Chain{Name: cc.Name, Table: t}
		switch cc.Action {
		case rules.ActionReplace:
			b.add("flush chain "+ch.Name, func(c *nftables.Conn) error { c.FlushChain(ch); return nil })
		case rules.ActionDelete:
			b.add("flush chain "+ch.Name+" (to delete it)", func(c *nftables.Conn) error { c.FlushChain(ch); return nil })
			b.add("delete chain "+ch.Name, func(c *nftables.Conn) error { c.DelChain(ch); return nil })
		}
	}

	for _, sc := range p.Sets {
		if sc.Action == rules.ActionDelete {
			old := &nftables.Set{Table: t, Name: sc.Name}
			b.add("delete set "+sc.Name, func(c *nftables.Conn) error { c.DelSet(old); return nil })
			continue
		}
		ns, err := encodeSet(t, sc.Set)
		if err != nil {
			return nil, err
		}
		if sc.Action == rules.ActionReplace {
			old := &nftables.Set{Table: t, Name: sc.Name}
			b.add("delete set "+sc.Name+" (to rebuild it)", func(c *nftables.Conn) error { c.DelSet(old); return nil })
		}
		if sc.Action == rules.ActionCreate || sc.Action == rules.ActionReplace {
			b.add("add set "+ns.Name, func(c *nftables.Conn) error {
				if err := c.AddSet(ns, nil); err != nil {
					return fmt.Errorf("set %s: %w", ns.Name, err)
				}
				return nil
			})
		}
		b.elements(false, ns, sc.Set, sc.Delete)
		b.elements(true, ns, sc.Set, sc.Add)
	}

	for _, cc := range p.Chains {
		if cc.Action == rules.ActionDelete {
			continue
		}
		ch := &nftables.Chain{Name: cc.Name, Table: t}
		switch cc.Action {
		case rules.ActionCreate:
			if err := encodeChain(ch, cc.Chain); err != nil {
				return nil, err
			}
			b.add("add chain "+ch.Name, func(c *nftables.Conn) error { c.AddChain(ch); return nil })
		}
		for i, r := range cc.Chain.Rules {
			exprs, err := encodeRule(r)
			if err != nil {
				return nil, fmt.Errorf("chain %s, rule %d: %w", cc.Name, i+1, err)
			}
			ud := ruleUserData(r)
			b.add(fmt.Sprintf("add rule %d to chain %s (%s)", i+1, ch.Name, r), func(c *nftables.Conn) error {
				c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: exprs, UserData: ud})
				return nil
			})
			b.ops[len(b.ops)-1].modules = modulesFor(r)
		}
	}

	return b, nil
}

// elements adds the element operations for es, split into messages that
// keep each element list attribute below 64 KiB.
func (b *batch) elements(add bool, ns *nftables.Set, s *rules.Set, es []rules.Element) {
	verb := "delete"
	if add {
		verb = "add"
	}
	if len(es) == 0 {
		return
	}
	b.stats.Elements += s.KernelElements(es)
	// Chunks are cut on the model's elements and encoded only when their
	// message is built: 100,000 encoded elements held at once for the
	// whole batch were the largest part of a full apply's memory.
	size := func(e rules.Element) int { return modelElementSize(s, e) }
	for _, chunk := range chunk(es, size) {
		for _, e := range chunk {
			b.bytes += size(e)
		}
		desc := fmt.Sprintf("%s %d elements in set %s", verb, len(chunk), ns.Name)
		if len(chunk) == 1 && len(es) == 1 {
			desc = fmt.Sprintf("%s element %s in set %s", verb, s.ElementString(es[0]), ns.Name)
		}
		b.ops = append(b.ops, op{desc: desc, raw: &rawMsg{typ: elemMsgType(add), flags: elemMsgFlags,
			data: func(buf []byte) []byte { return appendElemMsg(buf, ns, s, chunk) }}})
		b.stats.Messages++
	}
}

// maxElemsAttr bounds the payload of one NFTA_SET_ELEM_LIST_ELEMENTS
// attribute. google/nftables v0.3.0 puts every element of one call into one
// attribute whose length field has 16 bits: past 65,535 bytes the length
// wraps and the kernel refuses the batch or keeps a truncated list. We stay
// below with room for the attribute header.
const maxElemsAttr = 65535 - 4

// chunk splits es so that the sizes of no chunk's items add up to more than
// maxElemsAttr bytes, the payload of one element list attribute. An
// interval's start and end elements may land in different chunks: they are
// still in the same batch, which is what the kernel needs.
func chunk[E any](es []E, size func(E) int) [][]E {
	var out [][]E
	start, total := 0, 0
	for i, e := range es {
		n := size(e)
		if total+n > maxElemsAttr && i > start {
			out = append(out, es[start:i])
			start, total = i, 0
		}
		total += n
	}
	if start < len(es) {
		out = append(out, es[start:])
	}
	return out
}

// Delete deletes table inet <table> in one transaction. The caller checks
// first that the table is nftpol's.
func (k *Kernel) Delete(table string) error {
	ops := []op{delTableOp("delete table inet "+table, table)}
	if err := k.commit(ops, 0, 0); err != nil {
		if oe := k.explainRefusal(err, table); oe != err {
			return oe
		}
		return fmt.Errorf("deleting table inet %s: %w", table, err)
	}
	return nil
}
