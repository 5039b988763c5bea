// Package compiler turns a policy into the ruleset nftpol wants in the
// kernel. It is pure and deterministic: the same policy always compiles to
// the same ruleset, and so exports to byte-identical text.
//
// It holds Compile, the chains' rules (why each one is there, in its
// comment) and the per-account and union sets it fills from the policy's
// accounts (Merge joins an account's ranges). Where it sits:
//
//	policies.Load --> *policies.Policy --Compile--> *rules.Ruleset
//
// and the ruleset goes on to rules.Sync (plan, apply: laid over what the
// kernel holds, then planned) or to rules.Render (export). The names of the
// sets and their roles are rules' (layout.go): the compiler gives every set
// it makes its rules.Role, and leaves the moved sets empty.
//
// The shape (see DESIGN.md): per-account data lives only in sets, so the cost
// of a packet does not grow with the number of accounts, and changing one
// account is a few element operations.
//
//	output: an account's socket answering a connection opened from outside
//	        must use a source port of its own (uid . sport in one of the
//	        <proto>_ports_<k> shards, the one of uid & 7).
//	input:  a new connection to a zone port that no account has is refused
//	        whoever listens (dport in zone, not in <proto>_open).
package compiler

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
)

// Violation recording: each blocked serving packet refreshes the element
// uid . port of <proto>_violations, whose counter `nftpol status` reads. An
// element not seen for ViolationTimeout expires; the set holds at most
// ViolationSetSize offenders (past that, new ones are still blocked, just
// not recorded until old ones expire).
const (
	ViolationTimeout = time.Hour
	ViolationSetSize = 65536
	// NotifyGroup is the NFLOG group that tells `nftpol watch` a serving
	// packet was blocked, at most NotifyRate times a second per rule: a
	// doorbell, not a record (the agent then reads the violation sets),
	// so a flood of blocked packets costs the agent a bounded amount of
	// work. With nobody bound to the group the kernel drops the message.
	NotifyGroup = 9781
	NotifyRate  = 4
	// LogRate bounds the kernel log lines per protocol and minute.
	LogRate = 10
)

// Ungranted are the transports besides TCP and UDP that an unprivileged
// socket can use and that carry ports: no account is granted them, so the
// input chain closes the whole zone to them. (DCCP left Linux in 6.16;
// older distribution kernels still have it.) The output chain refuses
// every transport but TCP, UDP and ICMP to accounts, listed here or not.
var Ungranted = []rules.Proto{rules.UDPLite, rules.SCTP, rules.DCCP}

// Chain priority: filter (0). nftpol's chains only ever drop or reject; an
// accept here does not override a drop elsewhere, so the relative order with
// the host's other filter chains does not weaken either of them.
const priority = 0

// Compile returns the desired ruleset for p. The policy must come from
// policies.Load, which has validated it; Compile still refuses the few
// inputs it cannot express rather than writing something wrong.
func Compile(p *policies.Policy) (*rules.Ruleset, error) {
	if p.Table == "" {
		return nil, fmt.Errorf("compile: policy has no table name")
	}
	if p.Zone.Lo == 0 || p.Zone.Lo > p.Zone.Hi {
		return nil, fmt.Errorf("compile: invalid zone %d-%d", p.Zone.Lo, p.Zone.Hi)
	}
	rs := &rules.Ruleset{Table: p.Table}

	protos := []rules.Proto{rules.TCP, rules.UDP}
	// ports[i][k] is shard k of protocol protos[i]'s per-account sets (see
	// rules.Shards). The per-account loop runs 50,000 times: sets by
	// index, not by map lookup (a fifth of the compile time, measured).
	var ports [2][rules.Shards]*rules.Set
	open := map[rules.Proto]*rules.Set{}
	for i, proto := range protos {
		for k := range ports[i] {
			ports[i][k] = &rules.Set{Name: rules.PortsSet(proto, uint32(k)), Role: rules.Role{Kind: rules.SetPorts, Proto: proto, Shard: uint32(k)},
				Key: rules.KeyUIDPort, Interval: true,
				Comment: rules.OwnerPrefix + fmt.Sprintf("ports each account with uid & %d == %d may serve %s from", rules.Shards-1, k, proto)}
		}
		open[proto] = &rules.Set{Name: rules.OpenSet(proto), Role: rules.Role{Kind: rules.SetOpen, Proto: proto}, Key: rules.KeyPort, Interval: true,
			Comment: rules.OwnerPrefix + fmt.Sprintf("zone ports some account has for %s", proto)}
	}
	// The protocols' sets are independent: each is filled by a goroutine
	// of its own (at 50,000 accounts, compiling is a few milliseconds of
	// every apply).
	// When every account has both protocols (the default), their sets
	// hold the same elements: compiled once, and shared (nothing changes
	// a set's elements in place: rules.Set.Elements).
	both := true
	for _, a := range p.Accounts {
		if !a.HasProtocol(policies.TCP) || !a.HasProtocol(policies.UDP) {
			both = false
			break
		}
	}
	if both {
		compileProto(p.Accounts, protos[0], &ports[0], open[protos[0]])
		for k := range ports[1] {
			ports[1][k].Elements = ports[0][k].Elements
		}
		open[protos[1]].Elements = open[protos[0]].Elements
	} else {
		var wg sync.WaitGroup
		for i, proto := range protos {
			wg.Go(func() { compileProto(p.Accounts, proto, &ports[i], open[proto]) })
		}
		wg.Wait()
	}
	violations := map[rules.Proto]*rules.Set{}
	for _, proto := range protos {
		violations[proto] = &rules.Set{
			Name: rules.ViolationsSet(proto), Role: rules.Role{Kind: rules.SetViolations, Proto: proto}, Key: rules.KeyUIDPort, Dynamic: true,
			Timeout: ViolationTimeout, Size: ViolationSetSize, Counter: true,
			Comment: rules.OwnerPrefix + fmt.Sprintf("uid . port of blocked %s serving, with counters", proto),
		}
	}
	exempt := &rules.Set{Name: rules.ExemptSet, Role: rules.Role{Kind: rules.SetExempt}, Key: rules.KeyUID, Comment: rules.OwnerPrefix + "uids never enforced"}
	for _, u := range p.Exempt {
		exempt.Elements = append(exempt.Elements, rules.Element{UID: u})
	}
	exempt.Elements = slices.Clip(rules.SortElements(exempt.Elements))

	// The per-account sets come last. A large change rebuilds them inside
	// the transaction (see rules.ReplaceThreshold), and nft lists sets in
	// creation order: with the rebuilt sets last, the table still lists as
	// a fresh install of the same policy does, and the violation records in
	// the dynamic sets survive the rebuild.
	for _, proto := range protos {
		rs.Sets = append(rs.Sets, open[proto])
	}
	rs.Sets = append(rs.Sets, exempt)
	for _, proto := range protos {
		rs.Sets = append(rs.Sets, violations[proto])
	}
	rs.Sets = append(rs.Sets, &rules.Set{
		Name: rules.TransportViolationsSet, Role: rules.Role{Kind: rules.SetTransportViolations},
		Key: rules.KeyUIDProtoPort, Dynamic: true,
		Timeout: ViolationTimeout, Size: ViolationSetSize, Counter: true,
		Comment: rules.OwnerPrefix + "uid . protocol . port of packets of transports no account is granted, with counters",
	})
	// The moved sets (see rules.Sync) are empty in a compiled ruleset:
	// apply fills them from what the kernel holds. The small moved-ports
	// sets come after the large ones, so rebuilding one of them never
	// rebuilds a large one.
	for _, proto := range protos {
		rs.Sets = append(rs.Sets, &rules.Set{Name: rules.MovedSet(proto), Role: rules.Role{Kind: rules.SetMoved, Proto: proto}, Key: rules.KeyUID,
			Comment: rules.OwnerPrefix + fmt.Sprintf("accounts whose %s ports changed since %s_ports_* were built", proto, proto)})
	}
	for i := range protos {
		rs.Sets = append(rs.Sets, ports[i][:]...)
	}
	for _, proto := range protos {
		rs.Sets = append(rs.Sets, &rules.Set{Name: rules.MovedPortsSet(proto), Role: rules.Role{Kind: rules.SetMovedPorts, Proto: proto},
			Key: rules.KeyUIDPort, Interval: true,
			Comment: rules.OwnerPrefix + fmt.Sprintf("ports those accounts may serve %s from now", proto)})
	}

	rs.Chains = []*rules.Chain{outputChain(p, protos), inputChain(p, protos)}
	return rs, nil
}

// compileProto fills the per-account shards and the open set of proto from
// accounts.
func compileProto(accounts []*policies.Account, proto rules.Proto, ports *[rules.Shards]*rules.Set, open *rules.Set) {
	// Per account, only appends into slices sized up front: compiling
	// 50,000 accounts costs a few allocations, not a few per account.
	var n [rules.Shards]int
	for _, a := range accounts {
		if a.HasProtocol(policies.Protocol(proto)) {
			n[rules.Shard(a.UID)] += len(a.Ports)
		}
	}
	total := 0
	for k, set := range ports {
		set.Elements = make([]rules.Element, 0, n[k])
		total += n[k]
	}
	union := make([]policies.PortRange, 0, total)
	for _, a := range accounts {
		if !a.HasProtocol(policies.Protocol(proto)) {
			continue
		}
		merged := a.Ports
		if !isMerged(merged) {
			merged = Merge(merged)
		}
		comment := elementComment(a.Name)
		set := ports[rules.Shard(a.UID)]
		for _, r := range merged {
			set.Elements = append(set.Elements, rules.Element{UID: a.UID, Lo: r.Lo, Hi: r.Hi, Comment: comment})
		}
		union = append(union, merged...)
	}
	for _, r := range policies.MergeInPlace(union) {
		open.Elements = append(open.Elements, rules.Element{Lo: r.Lo, Hi: r.Hi})
	}
	// Clipped: the protocols may share these elements, and an append to
	// one set's must never write into another's (see rules.Set.Elements).
	for _, set := range ports {
		set.Elements = slices.Clip(rules.SortElements(set.Elements))
	}
	open.Elements = slices.Clip(rules.SortElements(open.Elements))
}

func outputChain(p *policies.Policy, protos []rules.Proto) *rules.Chain {
	var rr []rules.Rule
	accept := rules.Verdict{Kind: rules.Accept}
	if p.Loopback != policies.LoopbackEnforce {
		rr = append(rr, rule("loopback is not enforced", rules.Loopback{Out: true}, accept))
	}
	rr = append(rr, otherTransports(p)...)
	// Only answers to connections opened from outside are enforced: an
	// account's own client traffic travels in the original direction.
	rr = append(rr, rule("connections opened from this host", rules.CtDirectionOriginal{}, accept))
	if p.MinUID > 0 {
		rr = append(rr, rule("uids below min_uid", rules.SkuidCmp{Op: rules.Lt, UID: p.MinUID}, accept))
	}
	rr = append(rr, rule("exempt uids", rules.SkuidInSet{Set: rules.ExemptSet}, accept))
	// One rule per shard: a UID is looked up in its shard's set only, so
	// a packet's lookup costs what a set of N/8 accounts costs. The shard
	// test comes first: it is three register operations, cheaper than
	// the moved set's lookup it saves in the seven other rules.
	for _, proto := range protos {
		rr = append(rr,
			rule(fmt.Sprintf("accounts serve %s from their own ports (changed since %s_ports_* were built)", proto, proto),
				rules.SkuidInSet{Set: rules.MovedSet(proto)}, rules.SkuidSportInSet{Proto: proto, Set: rules.MovedPortsSet(proto)}, accept))
		for k := uint32(0); k < rules.Shards; k++ {
			rr = append(rr, rule(fmt.Sprintf("accounts serve %s from their own ports (uid & %d == %d)", proto, rules.Shards-1, k),
				rules.SkuidMask{Mask: rules.Shards - 1, Value: k},
				rules.SkuidInSet{Set: rules.MovedSet(proto), Not: true},
				rules.SkuidSportInSet{Proto: proto, Set: rules.PortsSet(proto, k)}, accept))
		}
	}
	// The violation rules restate two conditions on purpose. `ct direction
	// reply`: a packet conntrack has no entry for (untracked, invalid)
	// fails the original-direction accept above, and must not be taken for
	// a serving packet either: it passes untouched. skuid: a packet without
	// an owning full socket (kernel resets, time-wait, ICMP errors) makes
	// any skuid expression fail, so it never reaches the verdict.
	//
	// Each violation is logged (rate-limited, with the UID) by a rule of
	// its own: a limit that is over its rate stops the rule it is in, and
	// must never stop the verdict. Then it is recorded per uid . port in
	// a dynamic set with counters, which `nftpol status` reads.
	for _, proto := range protos {
		violation := []rules.Stmt{rules.L4Proto{Proto: proto}, rules.CtDirectionReply{}, rules.SkuidCmp{Op: rules.Ge, UID: p.MinUID}}
		rr = append(rr, rule(fmt.Sprintf("log %s served outside the account's ports", proto),
			append(slices.Clip(violation),
				rules.Limit{Rate: LogRate, Unit: rules.PerMinute},
				rules.Log{Prefix: fmt.Sprintf("nftpol: blocked %s serving: ", proto)})...))
		rr = append(rr, notify(fmt.Sprintf("tell nftpol watch: %s served outside the account's ports", proto), violation))
		rr = append(rr, rule(fmt.Sprintf("%s served outside the account's ports", proto),
			append(slices.Clip(violation),
				rules.UpdateSet{Proto: proto, Set: rules.ViolationsSet(proto)},
				rules.Counter{},
				verdict(p.Action, proto))...))
	}
	return &rules.Chain{Name: "output", Hook: rules.HookOutput, Priority: priority, Rules: rr}
}

func inputChain(p *policies.Policy, protos []rules.Proto) *rules.Chain {
	var rr []rules.Rule
	accept := rules.Verdict{Kind: rules.Accept}
	if p.Loopback != policies.LoopbackEnforce {
		rr = append(rr, rule("loopback is not enforced", rules.Loopback{}, accept))
	}
	rr = append(rr, rule("only new connections are checked", rules.CtStateNotNew{}, accept))
	for _, proto := range protos {
		rr = append(rr, rule(fmt.Sprintf("%s zone ports no account has", proto),
			rules.DportRange{Proto: proto, Lo: p.Zone.Lo, Hi: p.Zone.Hi},
			rules.DportNotInSet{Proto: proto, Set: rules.OpenSet(proto)},
			rules.Counter{},
			verdict(p.Action, proto)))
	}
	// No account has a port of the other transports: the zone is closed
	// to them whole, for new connections as for TCP and UDP. (Conntrack
	// here marks every inbound UDP-Lite datagram invalid, see
	// otherTransports; such a datagram passes the accept above, as an
	// invalid TCP or UDP packet does, and only the output chain judges
	// it.) A TCP or UDP packet that opens a connection pays one protocol
	// comparison per rule here.
	for _, proto := range Ungranted {
		rr = append(rr, rule(fmt.Sprintf("%s zone ports (no account is granted %s)", proto, proto),
			rules.DportRange{Proto: proto, Lo: p.Zone.Lo, Hi: p.Zone.Hi},
			rules.Counter{},
			verdict(p.Action, proto)))
	}
	return &rules.Chain{Name: "input", Hook: rules.HookInput, Priority: priority, Rules: rr}
}

// otherTransports refuses every transport the policy cannot grant
// (UDP-Lite, SCTP, DCCP, any IP protocol but TCP, UDP and ICMP) to enforced
// accounts, in both directions. They cannot come after the TCP and UDP
// rules with a `ct direction reply` guard, as the violation rules do:
// conntrack here marks every inbound UDP-Lite datagram invalid (its
// checksum check, with the default nf_conntrack_checksum=1), so a server's
// answer starts a new connection in the original direction, which
// `ct direction original accept` would let out; a client can make other
// transports' first packets invalid to conntrack too. So they come before
// that accept, and an account's own UDP-Lite or SCTP client traffic is
// refused as well. TCP and UDP packets pay the first one or two protocol
// comparisons of each of the two rules, nothing more.
//
// ICMP passes: the kernel sends echo replies and errors from sockets of its
// own, which `meta skuid` does not read, and an account's ping socket
// sends echo requests only. Packets without an owning socket fail the
// skuid guard, as in the violation rules. The log has a rule of its own
// (its limit must never stop the verdict); the verdict is always drop: a
// reject on the way out is addressed to this host, not to the client,
// which sees a timeout either way, and a dropped datagram fails the
// sender's sendmsg with EPERM.
func otherTransports(p *policies.Policy) []rules.Rule {
	guard := []rules.Stmt{
		rules.L4ProtoNot{Proto: rules.TCP}, rules.L4ProtoNot{Proto: rules.UDP},
		rules.L4ProtoNot{Proto: rules.ICMP}, rules.L4ProtoNot{Proto: rules.ICMPv6},
		rules.SkuidCmp{Op: rules.Ge, UID: p.MinUID}, rules.SkuidInSet{Set: rules.ExemptSet, Not: true},
	}
	with := func(ss ...rules.Stmt) []rules.Stmt { return append(slices.Clip(guard), ss...) }
	return []rules.Rule{
		rule("log transports no account is granted",
			with(rules.Limit{Rate: LogRate, Unit: rules.PerMinute}, rules.Log{Prefix: "nftpol: blocked transport: "})...),
		notify("tell nftpol watch: transports no account is granted", guard),
		rule("accounts use tcp and udp only",
			with(rules.UpdateSetTransport{Set: rules.TransportViolationsSet}, rules.Counter{}, rules.Verdict{Kind: rules.Drop})...),
	}
}

// notify is the doorbell rule of a violation: rate-limited, in a rule of
// its own like the log (its limit must never stop the verdict).
func notify(why string, match []rules.Stmt) rules.Rule {
	return rule(why, append(slices.Clip(match),
		rules.Limit{Rate: NotifyRate, Unit: rules.PerSecond}, rules.Log{Prefix: "nftpol", Group: NotifyGroup})...)
}

// rule makes a rule with a comment that says why it is there; the comment
// also carries nftpol's mark (rules.OwnerPrefix).
func rule(why string, stmts ...rules.Stmt) rules.Rule {
	return rules.Rule{Stmts: stmts, Comment: rules.OwnerPrefix + why}
}

func verdict(a policies.Action, proto rules.Proto) rules.Verdict {
	switch {
	case a == policies.Drop:
		return rules.Verdict{Kind: rules.Drop}
	case proto == rules.TCP:
		return rules.Verdict{Kind: rules.RejectTCPReset}
	default:
		return rules.Verdict{Kind: rules.RejectPortUnreachable}
	}
}

// Merge returns rs sorted with overlapping and adjacent ranges joined:
// 40010-40019 and 40020-40029 become 40010-40029. Fewer, wider intervals mean
// fewer set elements and no two elements of one account that touch.
func Merge(rs []policies.PortRange) []policies.PortRange {
	if len(rs) == 0 {
		return nil
	}
	return policies.MergeInPlace(slices.Clone(rs))
}

// isMerged reports whether rs is what Merge would make of it, as the ports of
// every account policies.Load returns are: then Compile uses them as they
// are instead of a merged copy.
func isMerged(rs []policies.PortRange) bool {
	for i, r := range rs {
		if r.Lo > r.Hi || i > 0 && uint32(r.Lo) <= uint32(rs[i-1].Hi)+1 {
			return false
		}
	}
	return true
}

// elementComment is rules.SanitizeComment(name), without the copy it makes
// when the name needs no change, as no name policies.Load accepts does.
func elementComment(name string) string {
	if len(name) > rules.MaxCommentLen {
		return rules.SanitizeComment(name)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return rules.SanitizeComment(name)
		}
	}
	return name
}
