//go:build linux

package kernel

import (
	"fmt"
	"slices"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

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
	shareEqualElements(rs.Sets)

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

// shareEqualElements makes sets that hold the same elements share one
// slice, as the compiler and the state reader leave them (see
// rules.Set.Elements): TCP's and UDP's per-account sets hold the same
// elements when every account has both protocols, and the kernel reports
// each on its own. At 50,000 accounts that is megabytes an agent would
// otherwise keep twice.
func shareEqualElements(sets []*rules.Set) {
	for i, a := range sets {
		for _, b := range sets[i+1:] {
			if len(a.Elements) > 0 && len(a.Elements) == len(b.Elements) && &a.Elements[0] != &b.Elements[0] &&
				a.Elements[0] == b.Elements[0] && slices.Equal(a.Elements, b.Elements) {
				a.Elements = slices.Clip(a.Elements)
				b.Elements = a.Elements
			}
		}
	}
}
