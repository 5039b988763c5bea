// Package audit judges the sockets that serve clients — listening TCP and
// SCTP sockets, bound UDP and UDP-Lite sockets — under a policy: which of them can be reached
// from outside, which nftpol blocks and why, and which it leaves alone.
//
// The verdicts come from the ruleset the compiler makes from the policy,
// not from a second reading of the policy: for each socket, audit runs the
// two packets that decide whether a client gets through — the client's first
// packet (input chain) and the socket's answer (output chain) — through the
// compiled chains, statement by statement. The policy only explains a block
// (whose port it is). So audit and the kernel cannot disagree about what is
// blocked, as long as the kernel holds what this policy compiles to.
package audit

import (
	"fmt"
	"slices"

	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
	"github.com/nftpol/nftpol/sockets"
)

// Verdict is what the policy does to clients of a socket.
type Verdict string

// Verdicts.
const (
	// Reachable: an enforced account serves from a port of its own.
	Reachable Verdict = "reachable"
	// Blocked: clients from outside do not get through; Reason says why.
	Blocked Verdict = "blocked"
	// LocalOnly: bound to loopback, so clients can only be local, and the
	// policy lets them through (loopback allowed, or the port is fine).
	LocalOnly Verdict = "local-only"
	// NotEnforced: the socket's UID is below min_uid or exempt, and it is
	// not on a zone port that no account has.
	NotEnforced Verdict = "not-enforced"
)

// Verdicts lists every verdict in the order reports count them.
var Verdicts = []Verdict{Reachable, Blocked, LocalOnly, NotEnforced}

// Reason says why a socket is blocked.
type Reason string

// Reasons, for Blocked only.
const (
	// OtherAccount: the port belongs to another account (Finding.Other)
	// for this protocol.
	OtherAccount Reason = "another-account"
	// ProtocolNotAssigned: the port is the account's own, but for the other
	// protocol only.
	ProtocolNotAssigned Reason = "protocol-not-assigned"
	// OutsideRanges: the port is none of the account's ports; also said of
	// an enforced UID that has no account, which has no ports at all.
	OutsideRanges Reason = "outside-ranges"
	// UnassignedZonePort: a zone port that no account has for this
	// protocol. New connections to it are refused whoever listens, so
	// this is the reason given for UIDs that are not enforced.
	UnassignedZonePort Reason = "unassigned-zone-port"
	// TransportNotGranted: the socket's transport is neither TCP nor UDP
	// (UDP-Lite, SCTP): no account can be granted it, so an enforced UID
	// serves it from no port.
	TransportNotGranted Reason = "transport-not-granted"
)

// Finding is one socket and its verdict.
type Finding struct {
	Socket sockets.Socket
	// Processes hold the socket; empty when none was found.
	Processes []sockets.Process
	// Account is the name of the account of the socket's UID, "" when the
	// policy has none.
	Account string
	Verdict Verdict
	// Reason, Other and Rule are set for Blocked only. Other names the
	// account whose port it is (OtherAccount). Rule is the comment of the
	// first rule that stops a client's packets.
	Reason Reason
	Other  string
	Rule   string
	// MaybeClient marks an unconnected UDP socket on a port the kernel
	// may give a socket that binds none (see SetAutoPorts): a client can
	// have such a socket (QUIC does), so a block may hurt no server.
	// Terminate leaves the processes of such sockets alone.
	MaybeClient bool
}

// Explain says why a finding is blocked, for people.
func (f Finding) Explain() string {
	switch f.Reason {
	case OtherAccount:
		return fmt.Sprintf("another account's port (%s)", f.Other)
	case ProtocolNotAssigned:
		return "protocol not assigned"
	case OutsideRanges:
		return "outside the account's ranges"
	case UnassignedZonePort:
		return "unassigned zone port"
	case TransportNotGranted:
		return fmt.Sprintf("%s is never granted (only tcp and udp)", f.Socket.Proto)
	}
	return ""
}

// Judge judges sockets under one policy.
type Judge struct {
	p     *policies.Policy
	rs    *rules.Ruleset
	byUID map[uint32]*policies.Account
	// auto are the ports the kernel picks for sockets that bind none;
	// nil when unknown.
	auto *sockets.AutoPorts
}

// SetAutoPorts tells the Judge which ports the kernel gives sockets that
// bind none (sockets.ReadAutoPorts), so that it can mark UDP sockets that
// may be clients' (Finding.MaybeClient).
func (j *Judge) SetAutoPorts(a sockets.AutoPorts) { j.auto = &a }

// New compiles p (as apply would) and returns a Judge for it. p must come
// from policies.Load.
func New(p *policies.Policy) (*Judge, error) {
	rs, err := compiler.Compile(p)
	if err != nil {
		return nil, err
	}
	j := &Judge{p: p, rs: rs, byUID: map[uint32]*policies.Account{}}
	for _, a := range p.Accounts {
		j.byUID[a.UID] = a
	}
	return j, nil
}

// Judge returns the verdict on s. It fails only when the compiled ruleset
// holds something audit cannot evaluate (a bug: see evaluate).
func (j *Judge) Judge(s sockets.Socket) (Finding, error) {
	f := Finding{Socket: s}
	if a := j.byUID[s.UID]; a != nil {
		f.Account = a.Name
	}
	proto := rules.Proto(s.Proto)
	local := s.LocalOnly()
	// A client's first packet: a new connection (or datagram), inbound, to
	// the socket's port. Clients of a loopback-bound socket come over lo.
	in, err := evaluate(j.rs, rules.HookInput, packet{
		proto: proto, loopback: local, new: true, dport: s.Port,
	})
	if err != nil {
		return f, err
	}
	// The socket's answer: reply direction, owned by the socket's UID, from
	// its port. A listener's SYN-ACK carries the listener's UID.
	out, err := evaluate(j.rs, rules.HookOutput, packet{
		proto: proto, loopback: local, reply: true, hasSocket: true, uid: s.UID, sport: s.Port,
	})
	if err != nil {
		return f, err
	}
	switch {
	case in.blocked || out.blocked:
		f.Verdict, f.Rule = Blocked, in.rule
		if !in.blocked {
			f.Rule = out.rule
		}
		f.Reason, f.Other = j.reason(s)
		f.MaybeClient = (s.Proto == sockets.UDP || s.Proto == sockets.UDPLite) && j.auto != nil && j.auto.Contains(s.Port)
		if f.Reason == "" {
			return f, fmt.Errorf("audit: the compiled ruleset blocks %s %s (uid %d) by rule %q, but the policy gives no reason; this is a bug",
				s.Proto, s.AddrPort(), s.UID, f.Rule)
		}
	case local:
		f.Verdict = LocalOnly
	case !j.enforced(s.UID):
		f.Verdict = NotEnforced
	default:
		f.Verdict = Reachable
	}
	return f, nil
}

// JudgeAll judges every socket, with the processes holding each (by inode).
func (j *Judge) JudgeAll(ss []sockets.Socket, holders map[uint64][]sockets.Process) ([]Finding, error) {
	out := make([]Finding, 0, len(ss))
	for _, s := range ss {
		f, err := j.Judge(s)
		if err != nil {
			return nil, err
		}
		f.Processes = holders[s.Inode]
		out = append(out, f)
	}
	return out, nil
}

func (j *Judge) enforced(uid uint32) bool {
	return uid >= j.p.MinUID && !slices.Contains(j.p.Exempt, uid)
}

// reason explains a blocked socket from the policy. For an enforced UID it
// names what the account did wrong — the most specific first: a port that
// is somebody else's, then a port of its own for the other protocol, then
// any other port. For a UID that is not enforced only the zone can block.
func (j *Judge) reason(s sockets.Socket) (Reason, string) {
	proto := policies.Protocol(s.Proto)
	if !j.enforced(s.UID) {
		if j.p.Zone.Contains(s.Port) && j.owner(proto, s.Port) == nil {
			return UnassignedZonePort, ""
		}
		return "", ""
	}
	if !slices.Contains(policies.Protocols, proto) {
		return TransportNotGranted, ""
	}
	if o := j.owner(proto, s.Port); o != nil && o.UID != s.UID {
		return OtherAccount, o.Name
	}
	if a := j.byUID[s.UID]; a != nil && !a.HasProtocol(proto) && hasPort(a, s.Port) {
		return ProtocolNotAssigned, ""
	}
	return OutsideRanges, ""
}

// owner returns the account that has port for proto, or nil.
func (j *Judge) owner(proto policies.Protocol, port uint16) *policies.Account {
	for _, a := range j.p.Accounts {
		if a.HasProtocol(proto) && hasPort(a, port) {
			return a
		}
	}
	return nil
}

func hasPort(a *policies.Account, port uint16) bool {
	return slices.ContainsFunc(a.Ports, func(r policies.PortRange) bool { return r.Contains(port) })
}
