// Package policies holds nftpol's policy: which account (a Unix UID) may
// serve on which ports of the zone. It is the first step of the flow:
//
//	policy files -> policies: load, validate, resolve users -> Policy
//	  -> compiler -> rules (the table as data) -> rules/kernel
//
// Load reads the main policy file and the files of its include directory
// (read.go, include.go; decoding the text is internal/document's), checks
// each setting and account (load.go, values.go, names.go; typedaccount.go
// for the accounts the decoder typed), then what accounts share (check.go),
// checks who may change the files (perms.go) and resolves user names
// through NSS (users.go). Every problem is reported with its file and field
// (errors.go), all of them at once. The types it returns are in types.go.
//
// Nothing in this package touches the kernel: a Policy that Load returns
// without error is complete and consistent, and the compiler can turn it into
// a ruleset without further checks.
package policies

import (
	"strconv"
	"time"
)

// Protocol is a transport protocol an account can be given ports for.
type Protocol string

// The protocols nftpol enforces.
const (
	TCP Protocol = "tcp"
	UDP Protocol = "udp"
)

// Protocols lists every protocol nftpol knows, in the order they are rendered.
var Protocols = []Protocol{TCP, UDP}

// Action is what happens to a packet that breaks the policy.
type Action string

// Actions.
const (
	// Reject answers with a TCP reset or an ICMP port-unreachable. A new
	// connection to a closed zone port is refused at once. A serving
	// packet is caught on its way out, so the reset goes to the local
	// socket; the remote client sees a timeout, as with Drop.
	Reject Action = "reject"
	// Drop discards the packet silently.
	Drop Action = "drop"
)

// Loopback says whether traffic over the loopback interface is enforced.
type Loopback string

// Loopback modes.
const (
	// LoopbackAllow leaves all loopback traffic alone (the default): local
	// clients may reach any port, as they could reach a UNIX socket.
	LoopbackAllow Loopback = "allow"
	// LoopbackEnforce applies the same rules to loopback traffic.
	LoopbackEnforce Loopback = "enforce"
)

// PortRange is an inclusive range of ports; a single port has Lo == Hi.
type PortRange struct {
	Lo, Hi uint16
}

// Contains reports whether p lies within r.
func (r PortRange) Contains(p uint16) bool { return p >= r.Lo && p <= r.Hi }

// String writes r the way a policy file does: "40500" for a single port,
// "40010-40019" for a range.
func (r PortRange) String() string {
	if r.Lo == r.Hi {
		return strconv.Itoa(int(r.Lo))
	}
	return strconv.Itoa(int(r.Lo)) + "-" + strconv.Itoa(int(r.Hi))
}

// Policy is a loaded, validated and resolved policy.
type Policy struct {
	// File is the main policy file it was loaded from (for messages).
	File string
	// Table is the name of the inet table nftpol owns (default "nftpol").
	Table string
	// Zone is the port range inside which accounts get their ports.
	Zone PortRange
	// MinUID is the lowest enforced UID; sockets of lower UIDs are never
	// touched (system services).
	MinUID uint32
	// Exempt holds UIDs that are never enforced, sorted and unique.
	Exempt []uint32
	// Loopback says whether loopback traffic is enforced (default allow).
	Loopback Loopback
	// Action is what happens to a packet that breaks the policy (default
	// reject).
	Action Action
	// Protocols is the default for accounts that do not name their own.
	Protocols []Protocol
	// Include is the include directory, "" when none is configured.
	Include string
	// Accounts, sorted by UID then name. An Account is never changed
	// once it is in a Policy: policies the Cache reads share the accounts
	// of files that did not change, so that a one-file change copies
	// 50,000 pointers, not 50,000 accounts (5 MB, most of it fresh memory
	// the kernel had to fault in: 7 ms of a one-file change, measured).
	Accounts []*Account
	// BindGuard is the bind_guard section: the cgroup BPF programs that
	// refuse binds to ports that are not the account's own (off unless
	// enabled).
	BindGuard BindGuard
	// Terminate is the terminate section: when the agent ends the
	// processes behind sockets that stay blocked (never unless given).
	Terminate Terminate
}

// DefaultGrace is terminate.grace when the policy does not give it.
const DefaultGrace = 10 * time.Second

// Terminate says when `nftpol watch` ends a service that serves where its
// account may not.
type Terminate struct {
	// Enabled is true when the policy has a terminate section.
	Enabled bool
	// After: a socket still blocked this long after its first blocked
	// packet has its processes ended.
	After time.Duration
	// Grace: SIGTERM first, SIGKILL this long after.
	Grace time.Duration
	// DryRun: log what would be ended, end nothing.
	DryRun bool
}

// BindGuard configures the bind guard (package bindguard).
type BindGuard struct {
	// Enabled turns the guard on; it is off by default.
	Enabled bool
	// Cgroup is the cgroup v2 directory the programs are attached to; ""
	// (you normally leave it empty) means the root of the cgroup v2
	// hierarchy, which covers every process of the machine.
	Cgroup string
	// Reserved ports (sorted, merged) belong to system services: no
	// enforced UID may bind them, inside the zone or outside it, for any
	// protocol.
	Reserved []PortRange
}

// Account is one hosting account: a UID and the ports its daemons may serve
// on from outside.
type Account struct {
	// Name labels the account in plans, logs and comments.
	Name string
	// UID is the numeric user ID, resolved from User when the policy names
	// a user.
	UID uint32
	// User is the user name as written in the policy, "" when given by uid.
	User string
	// Ports, sorted, merged where adjacent or overlapping.
	Ports []PortRange
	// Protocols the ports apply to, in the order of Protocols. Accounts
	// with the same protocols share one slice (and with Policy.Protocols):
	// read it, never change it in place.
	Protocols []Protocol
	// File is the file that defined the account (for messages).
	File string
}

// HasProtocol reports whether the account's ports apply to p.
func (a Account) HasProtocol(p Protocol) bool {
	for _, q := range a.Protocols {
		if q == p {
			return true
		}
	}
	return false
}
