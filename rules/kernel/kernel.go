// Package kernel connects nftpol's ruleset model to the kernel's nf_tables
// through netlink. It is the only package that imports google/nftables: it
// encodes the model into netlink messages, decodes nftpol's table back into
// the model, and applies a plan as one batch, which the kernel commits as one
// transaction: all of it or nothing.
package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/mdlayher/netlink"
	"github.com/mdlayher/netlink/nltest"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/netns"
	"github.com/nftpol/nftpol/rules"
)

// Kernel reads and writes one network namespace's nf_tables.
type Kernel struct {
	opts []nftables.ConnOption
	ns   *os.File
	// fake receives the batches Apply would send (WithTestDial).
	fake nltest.Func
	// failLast appends an operation the kernel must refuse to every batch
	// (WithInjectedFailure).
	failLast bool
	// commitConn is the socket commits are sent on, open until Close.
	commitConn *netlink.Conn
}

// Option configures a Kernel.
type Option func(*Kernel) error

// WithNetNS makes the Kernel work on the network namespace called name, as
// `ip netns add` creates it (/run/netns/NAME), while the process stays in
// its own namespace. A name containing a slash is taken as a path.
func WithNetNS(name string) Option {
	return func(k *Kernel) error {
		f, err := netns.Open(name)
		if err != nil {
			return err
		}
		k.ns = f
		k.opts = append(k.opts, nftables.WithNetNSFd(int(f.Fd())))
		return nil
	}
}

// WithTestDial sends every netlink message to f instead of the kernel; unit
// tests use it to see the messages without root.
func WithTestDial(f nltest.Func) Option {
	return func(k *Kernel) error {
		k.opts = append(k.opts, nftables.WithTestDial(f))
		k.fake = f
		return nil
	}
}

// InjectFailure turns the injected failure (WithInjectedFailure) on or off
// for the batches sent from now on.
func (k *Kernel) InjectFailure(on bool) { k.failLast = on }

// WithInjectedFailure ends every batch with an operation the kernel must
// refuse (deleting a set that does not exist), after all the valid ones.
// It exists for tests of what a refused transaction leaves behind: nothing.
func WithInjectedFailure() Option {
	return func(k *Kernel) error {
		k.failLast = true
		return nil
	}
}

// Open returns a Kernel. Close it to release the namespace handle.
func Open(opts ...Option) (*Kernel, error) {
	k := &Kernel{}
	for _, o := range opts {
		if err := o(k); err != nil {
			k.Close()
			return nil, err
		}
	}
	return k, nil
}

// Close releases the Kernel's resources.
func (k *Kernel) Close() error {
	var errs []error
	if k.commitConn != nil {
		errs = append(errs, k.commitConn.Close())
		k.commitConn = nil
	}
	if k.ns != nil {
		errs = append(errs, k.ns.Close())
		k.ns = nil
	}
	return errors.Join(errs...)
}

// Read returns the content of table inet <table>, or nil when there is no
// such table. Rules nftpol did not write decode to rules.Unknown statements;
// use Ruleset.Owned to tell whether the table is nftpol's at all.
func (k *Kernel) Read(table string) (*rules.Ruleset, error) {
	// One socket for the dumps nftpol decodes itself, one (lasting) for
	// those google/nftables decodes.
	raw, err := k.dial()
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	flags, found, err := findTable(raw, table)
	if err != nil || !found {
		return nil, err
	}
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet, Flags: flags}
	rs := &rules.Ruleset{Table: table, Dormant: flags&unix.NFT_TABLE_F_DORMANT != 0}

	c, err := nftables.New(append(k.opts, nftables.AsLasting())...)
	if err != nil {
		return nil, noNetfilter(err)
	}
	defer c.CloseLasting()

	sets, err := getSets(raw, table)
	if err != nil {
		return nil, err
	}
	for _, s := range sets {
		if s.flags&unix.NFT_SET_ANONYMOUS != 0 {
			continue // part of the rule that uses it: goes and comes with it
		}
		ms := decodeSet(s)
		if ms.Dynamic {
			// Filled by the packet path: state, not configuration.
			rs.Sets = append(rs.Sets, ms)
			continue
		}
		es, err := getElements(raw, table, s.name)
		if err != nil {
			return nil, err
		}
		if ms.Elements, err = decodeElements(ms, es); err != nil {
			return nil, err
		}
		rs.Sets = append(rs.Sets, ms)
	}

	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	krules, err := getRules(raw, table)
	if err != nil {
		return nil, err
	}
	for _, ch := range chains {
		if ch.Table.Name != table {
			continue
		}
		mc := decodeChain(ch)
		for _, r := range krules {
			if r.Chain == ch.Name {
				mc.Rules = append(mc.Rules, decodeRule(r.Exprs, r.UserData))
			}
		}
		rs.Chains = append(rs.Chains, mc)
	}

	// Objects the model does not hold. nftpol never writes them, so any
	// there were put by somebody else; the plan will replace the table.
	objs, err := c.GetNamedObjects(t)
	if err != nil {
		return nil, fmt.Errorf("listing objects of table inet %s: %w", table, err)
	}
	for _, o := range objs {
		rs.Extra = append(rs.Extra, fmt.Sprintf("object %T", o))
	}
	fts, err := c.ListFlowtables(t)
	if err != nil {
		return nil, fmt.Errorf("listing flowtables of table inet %s: %w", table, err)
	}
	for _, f := range fts {
		rs.Extra = append(rs.Extra, "flowtable "+f.Name)
	}
	return rs, nil
}

func decodeChain(ch *nftables.Chain) *rules.Chain {
	mc := &rules.Chain{Name: ch.Name}
	switch {
	case ch.Hooknum == nil || ch.Priority == nil || ch.Type != nftables.ChainTypeFilter:
		mc.Hook = "none"
	case ch.Policy != nil && *ch.Policy != nftables.ChainPolicyAccept:
		mc.Hook = "policy-drop"
	case *ch.Hooknum == *nftables.ChainHookInput:
		mc.Hook = rules.HookInput
	case *ch.Hooknum == *nftables.ChainHookOutput:
		mc.Hook = rules.HookOutput
	default:
		mc.Hook = rules.Hook(fmt.Sprintf("hook-%d", *ch.Hooknum))
	}
	if ch.Priority != nil {
		mc.Priority = int32(*ch.Priority)
	}
	return mc
}

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
	b, err := buildBatch(p)
	if err != nil {
		return Stats{}, err
	}
	if k.failLast {
		b.injectFailure(p.Table)
	}
	if err := k.commit(b.ops, genID, b.bytes); err != nil {
		if errors.Is(err, ErrGenerationChanged) {
			return Stats{}, err
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

func (b *batch) injectFailure(table string) {
	s := &nftables.Set{Table: &nftables.Table{Name: table, Family: nftables.TableFamilyINet}, Name: "nftpol_injected_failure"}
	b.add("delete set nftpol_injected_failure (an injected failure)", func(c *nftables.Conn) error { c.DelSet(s); return nil })
}

// buildBatch orders the plan's operations so that every reference is valid
// when the kernel reaches it: the table before its sets, sets (with their
// element changes) before the rules that look them up.
func buildBatch(p *rules.Plan) (*batch, error) {
	b := &batch{}
	t := &nftables.Table{Name: p.Table, Family: nftables.TableFamilyINet}
	if p.Retire != "" {
		old := &nftables.Table{Name: p.Retire, Family: nftables.TableFamilyINet}
		b.add("delete table inet "+p.Retire+" (renamed)", func(c *nftables.Conn) error { c.DelTable(old); return nil })
	}
	switch p.TableAction {
	case rules.TableReplace:
		b.add("delete table inet "+t.Name, func(c *nftables.Conn) error { c.DelTable(t); return nil })
		b.add("add table inet "+t.Name, func(c *nftables.Conn) error { c.AddTable(t); return nil })
	case rules.TableCreate:
		// Exclusive: if somebody created a table of this name since we
		// read the kernel, fail rather than merge into theirs.
		b.add("create table inet "+t.Name, func(c *nftables.Conn) error { c.CreateTable(t); return nil })
	}
	if p.Wake {
		// Sent for an existing table, NEWTABLE without EXCL updates its
		// flags; ours are 0, which clears dormant.
		b.add("activate table inet "+t.Name, func(c *nftables.Conn) error { c.AddTable(t); return nil })
	}

	// Rules that will be rewritten go first, so no rule holds a set that
	// is about to be replaced.
	for _, cc := range p.Chains {
		if cc.Action == rules.ActionReplace {
			ch := &nftables.Chain{Name: cc.Name, Table: t}
			b.add("flush chain "+ch.Name, func(c *nftables.Conn) error { c.FlushChain(ch); return nil })
		}
	}

	for _, sc := range p.Sets {
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
		ch := &nftables.Chain{Name: cc.Name, Table: t}
		switch cc.Action {
		case rules.ActionCreate:
			hook := nftables.ChainHookInput
			if cc.Chain.Hook == rules.HookOutput {
				hook = nftables.ChainHookOutput
			} else if cc.Chain.Hook != rules.HookInput {
				return nil, fmt.Errorf("chain %s: unknown hook %q", cc.Name, cc.Chain.Hook)
			}
			prio := nftables.ChainPriority(cc.Chain.Priority)
			policy := nftables.ChainPolicyAccept
			ch.Type, ch.Hooknum, ch.Priority, ch.Policy = nftables.ChainTypeFilter, hook, &prio, &policy
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

// Delete deletes table inet <table> in one transaction. The caller checks
// first that the table is nftpol's.
func (k *Kernel) Delete(table string) error {
	t := &nftables.Table{Name: table, Family: nftables.TableFamilyINet}
	ops := []op{{desc: "delete table inet " + table, call: func(c *nftables.Conn) error { c.DelTable(t); return nil }}}
	if err := k.commit(ops, 0, 0); err != nil {
		return fmt.Errorf("deleting table inet %s: %w", table, err)
	}
	return nil
}

// Hit is one element of a dynamic violation set: a UID seen serving from a
// port it does not own.
type Hit struct {
	UID uint32
	// Proto names the IP protocol for sets whose key holds it (the
	// record of transports no account is granted); "" for the others,
	// which are one protocol's each.
	Proto   string
	Port    uint16
	Packets uint64
	Bytes   uint64
	// Expires is how long the element has left; the element was last
	// refreshed Timeout-Expires ago.
	Expires time.Duration
}

// Hits reads the elements of the dynamic set <set> of table inet <table>.
// A missing table or set reads as no hits.
func (k *Kernel) Hits(table, set string) ([]Hit, error) {
	c, err := nftables.New(k.opts...)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	s := &nftables.Set{Table: &nftables.Table{Name: table, Family: nftables.TableFamilyINet}, Name: set}
	es, err := c.GetSetElements(s)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, nil
		}
		return nil, fmt.Errorf("reading set %s: %w", set, err)
	}
	var out []Hit
	for _, e := range es {
		if len(e.Key) == int(uidProtoPortType.Bytes) {
			out = append(out, transportHit(e))
			continue
		}
		if len(e.Key) != 8 {
			continue
		}
		h := Hit{
			// Keys of dynamic sets hold the UID in host byte order
			// (no hton before a hash lookup), the port in network order.
			UID:     binaryutil.NativeEndian.Uint32(e.Key[:4]),
			Port:    binary.BigEndian.Uint16(e.Key[4:6]),
			Expires: e.Expires,
		}
		if e.Counter != nil {
			h.Packets, h.Bytes = e.Counter.Packets, e.Counter.Bytes
		}
		out = append(out, h)
	}
	return out, nil
}
