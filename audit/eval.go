package audit

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nftpol/nftpol/rules"
)

// packet is what the evaluator knows about one packet: enough to decide
// every statement the compiler writes.
type packet struct {
	proto rules.Proto
	// loopback: the packet travels over lo (iif/oif "lo").
	loopback bool
	// reply: conntrack's reply direction (sent by whoever accepted the
	// connection); otherwise the original direction.
	reply bool
	// new: the first packet of a connection (ct state new).
	new bool
	// hasSocket: the packet has an owning full socket, whose UID is uid.
	// Inbound packets have none when they are filtered.
	hasSocket bool
	uid       uint32
	sport     uint16
	dport     uint16
}

// outcome is how a chain (or a hook's chains) treats a packet.
type outcome struct {
	blocked bool
	// rule is the comment of the rule that blocked the packet, without
	// nftpol's mark.
	rule string
}

// evaluate runs pkt through every base chain of rs on hook, in priority
// order, as netfilter would: the first drop or reject ends it; an accept
// ends only its own chain. It fails on a statement it does not know, rather
// than guess what the kernel would do.
func evaluate(rs *rules.Ruleset, hook rules.Hook, pkt packet) (outcome, error) {
	var chains []*rules.Chain
	for _, c := range rs.Chains {
		if c.Hook == hook {
			chains = append(chains, c)
		}
	}
	slices.SortStableFunc(chains, func(a, b *rules.Chain) int { return int(a.Priority) - int(b.Priority) })
	for _, c := range chains {
		o, err := evalChain(rs, c, pkt)
		if err != nil || o.blocked {
			return o, err
		}
	}
	return outcome{}, nil
}

func evalChain(rs *rules.Ruleset, c *rules.Chain, pkt packet) (outcome, error) {
rules:
	for _, r := range c.Rules {
		for _, st := range r.Stmts {
			match, verdict, err := evalStmt(rs, st, pkt)
			if err != nil {
				return outcome{}, fmt.Errorf("chain %s: rule %q: %w", c.Name, r.String(), err)
			}
			if !match {
				continue rules
			}
			switch verdict {
			case rules.Accept:
				return outcome{}, nil
			case rules.Drop, rules.RejectTCPReset, rules.RejectPortUnreachable:
				return outcome{blocked: true, rule: strings.TrimPrefix(r.Comment, rules.OwnerPrefix)}, nil
			}
		}
	}
	return outcome{}, nil // policy accept
}

// evalStmt says whether st matches pkt, and the verdict if st is one.
func evalStmt(rs *rules.Ruleset, st rules.Stmt, pkt packet) (bool, rules.VerdictKind, error) {
	switch s := st.(type) {
	case rules.Loopback:
		return pkt.loopback, 0, nil
	case rules.CtDirectionOriginal:
		return !pkt.reply, 0, nil
	case rules.CtDirectionReply:
		return pkt.reply, 0, nil
	case rules.CtStateNotNew:
		return !pkt.new, 0, nil
	case rules.L4Proto:
		return pkt.proto == s.Proto, 0, nil
	case rules.L4ProtoNot:
		return pkt.proto != s.Proto, 0, nil
	case rules.SkuidCmp:
		// No owning socket: any skuid expression fails.
		if !pkt.hasSocket {
			return false, 0, nil
		}
		switch s.Op {
		case rules.Lt:
			return pkt.uid < s.UID, 0, nil
		case rules.Ge:
			return pkt.uid >= s.UID, 0, nil
		}
		return false, 0, fmt.Errorf("unknown comparison in %s", s)
	case rules.SkuidMask:
		return pkt.hasSocket && pkt.uid&s.Mask == s.Value, 0, nil
	case rules.SkuidInSet:
		if !pkt.hasSocket {
			return false, 0, nil
		}
		set, err := lookupSet(rs, s.Set, rules.KeyUID)
		if err != nil {
			return false, 0, err
		}
		return slices.ContainsFunc(set.Elements, func(e rules.Element) bool { return e.UID == pkt.uid }) != s.Not, 0, nil
	case rules.SkuidSportInSet:
		// `tcp sport` implies `meta l4proto tcp`.
		if pkt.proto != s.Proto || !pkt.hasSocket {
			return false, 0, nil
		}
		set, err := lookupSet(rs, s.Set, rules.KeyUIDPort)
		if err != nil {
			return false, 0, err
		}
		return slices.ContainsFunc(set.Elements, func(e rules.Element) bool {
			return e.UID == pkt.uid && e.Lo <= pkt.sport && pkt.sport <= e.Hi
		}), 0, nil
	case rules.DportRange:
		return pkt.proto == s.Proto && s.Lo <= pkt.dport && pkt.dport <= s.Hi, 0, nil
	case rules.DportNotInSet:
		if pkt.proto != s.Proto {
			return false, 0, nil
		}
		set, err := lookupSet(rs, s.Set, rules.KeyPort)
		if err != nil {
			return false, 0, err
		}
		return !slices.ContainsFunc(set.Elements, func(e rules.Element) bool {
			return e.Lo <= pkt.dport && pkt.dport <= e.Hi
		}), 0, nil
	case rules.Counter, rules.Log, rules.UpdateSet, rules.UpdateSetTransport:
		// Actions that let the packet go on to the next statement.
		return true, 0, nil
	case rules.Limit:
		// One packet is always within the rate.
		return true, 0, nil
	case rules.Verdict:
		return true, s.Kind, nil
	}
	return false, 0, fmt.Errorf("audit cannot evaluate the statement %q (%T); teach audit/eval.go what it matches", st.String(), st)
}

func lookupSet(rs *rules.Ruleset, name string, key rules.KeyType) (*rules.Set, error) {
	set := rs.Set(name)
	switch {
	case set == nil:
		return nil, fmt.Errorf("set %s does not exist", name)
	case set.Key != key:
		return nil, fmt.Errorf("set %s has type %s, want %s", name, set.Key, key)
	}
	return set, nil
}
