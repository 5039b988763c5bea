// Package views publishes, at each apply and restore, what an account holder
// may know about the policy: one file per UID, readable by that UID only,
// under the run directory (--run-dir, /run/nftpol), and one world-readable
// file with what is nobody's secret. `nftpol ports` reads them without root.
//
// Layout of the run directory (root's, 0755):
//
//	host.json     0644  table, zone, min_uid, loopback, time of the last apply
//	uid/          0711  root: a user can open a file of it by name, not list it
//	uid/<UID>     0400  owned by UID: its account (name, ranges per protocol)
//	                    or that it is exempt, with the zone, min_uid, loopback
//
// No file for a UID means it has no account (or, below min_uid, is not
// enforced): host.json says which. An account learns nothing about other
// accounts from it: their files are not readable (open fails with EACCES),
// and uid/ cannot be listed. What it can learn is what stat(2) tells about a
// path it guesses: whether a UID has a file, and when it last changed.
//
// Views are derived from the ruleset that was committed, not from the
// policy: restore has no policy, and the views say what the kernel enforces.
// Only views that changed are written (see Publish), since one-account
// changes must stay O(1) in files at 50,000 accounts.
package views

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
)

// Format is the version of the files' content; readers refuse others.
const Format = 1

// Names in the run directory.
const (
	HostFile = "host.json"
	UIDDir   = "uid"
)

// Host is what every user may read: nothing in it is about one account.
type Host struct {
	Format int    `json:"format"`
	Table  string `json:"table"`
	// Zone is the range inside which accounts have their ports.
	Zone policies.PortRange `json:"-"`
	// MinUID: lower UIDs are never enforced.
	MinUID uint32 `json:"min_uid"`
	// Loopback is allow or enforce.
	Loopback policies.Loopback `json:"loopback"`
	// AppliedAt is when the apply or restore that published this ran.
	AppliedAt time.Time `json:"applied_at"`
	// Source identifies what the views were published from (the kernel
	// ruleset's identity after the commit); Publish compares it with the
	// previous publication's to write only what changed.
	Source string `json:"source,omitempty"`
}

// View is what one UID may read about itself.
type View struct {
	Format int    `json:"format"`
	UID    uint32 `json:"uid"`
	// Account is the account's name, "" for an exempt UID.
	Account string `json:"account,omitempty"`
	// Ports holds the account's ranges per protocol (tcp, udp); a
	// protocol the account does not have is absent.
	Ports map[rules.Proto][]policies.PortRange `json:"-"`
	// Exempt: the UID is listed as exempt, so never enforced.
	Exempt bool `json:"exempt,omitempty"`
	// Enforced: nftpol limits where this UID serves from (at or above
	// min_uid and not exempt).
	Enforced bool               `json:"enforced"`
	Table    string             `json:"table"`
	Zone     policies.PortRange `json:"-"`
	MinUID   uint32             `json:"min_uid"`
	Loopback policies.Loopback  `json:"loopback"`
	// PublishedAt is when the apply or restore that last changed this view
	// ran (host.json says when the last one ran).
	PublishedAt time.Time `json:"published_at"`
}

// globals is what every view of one ruleset shares.
type globals struct {
	table    string
	zone     policies.PortRange
	minUID   uint32
	loopback policies.Loopback
}

// account is one UID's part of a ruleset.
type account struct {
	name   string
	ports  [2][]policies.PortRange // by protos index
	exempt bool
}

var protos = [2]rules.Proto{rules.TCP, rules.UDP}

// derive reads the globals and the per-UID data out of rs, as the kernel
// enforces it: rules.Accounts gives the ranges each UID is looked up with
// (moved accounts included), the chains the zone, min_uid and loopback.
func derive(rs *rules.Ruleset) (globals, map[uint32]*account) {
	accounts := map[uint32]*account{}
	get := func(uid uint32) *account {
		a := accounts[uid]
		if a == nil {
			a = &account{}
			accounts[uid] = a
		}
		return a
	}
	byProto := rules.Accounts(rs)
	for i, p := range protos {
		for _, e := range byProto[p] {
			a := get(e.UID)
			a.name = e.Comment
			a.ports[i] = append(a.ports[i], rangeOf(e))
		}
	}
	for uid := range exemptUIDs(rs) {
		get(uid).exempt = true
	}
	return globalsOf(rs), accounts
}

// globalsOf reads the table, zone, min_uid and loopback out of rs's chains:
// the rules the compiler writes for them.
func globalsOf(rs *rules.Ruleset) globals {
	g := globals{table: rs.Table, loopback: policies.LoopbackEnforce}
	if c := rs.Chain("output"); c != nil {
		for _, r := range c.Rules {
			if len(r.Stmts) != 2 || !isAccept(r.Stmts[1]) {
				continue
			}
			switch s := r.Stmts[0].(type) {
			case rules.Loopback:
				g.loopback = policies.LoopbackAllow
			case rules.SkuidCmp:
				if s.Op == rules.Lt {
					g.minUID = s.UID
				}
			}
		}
	}
	if c := rs.Chain("input"); c != nil {
		for _, r := range c.Rules {
			for _, st := range r.Stmts {
				if s, ok := st.(rules.DportRange); ok {
					g.zone = policies.PortRange{Lo: s.Lo, Hi: s.Hi}
					return g
				}
			}
		}
	}
	return g
}

func rangeOf(e rules.Element) policies.PortRange { return policies.PortRange{Lo: e.Lo, Hi: e.Hi} }

func exemptUIDs(rs *rules.Ruleset) map[uint32]bool {
	m := map[uint32]bool{}
	// By role, not name: a rebuilt table may hold it as exempt_b.
	if s := rs.SetOfRole(rules.Role{Kind: rules.SetExempt}); s != nil {
		for _, e := range s.Elements {
			m[e.UID] = true
		}
	}
	return m
}

func isAccept(st rules.Stmt) bool {
	v, ok := st.(rules.Verdict)
	return ok && v.Kind == rules.Accept
}

func (g globals) host(at time.Time, source string) Host {
	return Host{Format: Format, Table: g.table, Zone: g.zone, MinUID: g.minUID, Loopback: g.loopback, AppliedAt: at, Source: source}
}

func (g globals) view(uid uint32, a *account, at time.Time) View {
	v := View{Format: Format, UID: uid, Account: a.name, Exempt: a.exempt,
		Enforced: uid >= g.minUID && !a.exempt,
		Table:    g.table, Zone: g.zone, MinUID: g.minUID, Loopback: g.loopback, PublishedAt: at}
	for i, p := range protos {
		if len(a.ports[i]) > 0 {
			if v.Ports == nil {
				v.Ports = map[rules.Proto][]policies.PortRange{}
			}
			v.Ports[p] = a.ports[i]
		}
	}
	return v
}

// Views returns the view of every UID that has one in rs (accounts and
// exempt UIDs), by UID, and the host file's content.
func Views(rs *rules.Ruleset, at time.Time) (Host, map[uint32]View) {
	g, accounts := derive(rs)
	out := make(map[uint32]View, len(accounts))
	for uid, a := range accounts {
		out[uid] = g.view(uid, a, at)
	}
	return g.host(at, ""), out
}

// Policy returns the policy an account may know: its own account only (if
// it has one), with the zone, min_uid and loopback of the real one, and
// itself as exempt when it is. Judged under it (audit.New), the UID's
// sockets get the verdicts the whole policy gives them, except that a port
// of another account reads as outside the account's ranges, and, for a UID
// that is not enforced, a zone port of another account reads as
// unassigned: what an account may not know.
func (h Host) Policy(v *View) *policies.Policy {
	p := &policies.Policy{Table: h.Table, Zone: h.Zone, MinUID: h.MinUID, Loopback: h.Loopback,
		Action: policies.Reject, Protocols: []policies.Protocol{policies.TCP, policies.UDP}}
	if v == nil {
		return p
	}
	if v.Exempt {
		p.Exempt = []uint32{v.UID}
	}
	// A policy gives an account one list of ranges for its protocols;
	// the kernel's sets may say otherwise only for a table written by
	// hand: then one account per protocol.
	tcp, udp := v.Ports[rules.TCP], v.Ports[rules.UDP]
	switch {
	case len(tcp) > 0 && slices.Equal(tcp, udp):
		p.Accounts = []*policies.Account{{Name: v.Account, UID: v.UID, Ports: tcp, Protocols: []policies.Protocol{policies.TCP, policies.UDP}}}
	default:
		for _, proto := range protos {
			if rs := v.Ports[proto]; len(rs) > 0 {
				p.Accounts = append(p.Accounts, &policies.Account{Name: v.Account, UID: v.UID, Ports: rs, Protocols: []policies.Protocol{policies.Protocol(proto)}})
			}
		}
	}
	return p
}

// Host returns the host part of a view: what it says of the whole policy.
func (v *View) Host() Host {
	return Host{Format: v.Format, Table: v.Table, Zone: v.Zone, MinUID: v.MinUID, Loopback: v.Loopback, AppliedAt: v.PublishedAt}
}

// The files are written by hand (appendView, appendHost): at 50,000 views
// encoding/json's reflection was a cost of its own beside the syscalls.
// Names are account names (letters, digits, ._@-) or sanitized comments,
// but appendString escapes whatever it gets.

func appendView(b []byte, v *View) []byte {
	b = fmt.Appendf(b, `{"format":%d,"uid":%d`, v.Format, v.UID)
	if v.Account != "" {
		b = append(b, `,"account":`...)
		b = appendString(b, v.Account)
	}
	b = append(b, `,"ports":{`...)
	first := true
	for _, p := range protos {
		rs, ok := v.Ports[p]
		if !ok {
			continue
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		b = append(b, '"')
		b = append(b, p...)
		b = append(b, `":[`...)
		for i, r := range rs {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendRange(b, r)
		}
		b = append(b, ']')
	}
	b = append(b, '}')
	if v.Exempt {
		b = append(b, `,"exempt":true`...)
	}
	b = append(b, `,"enforced":`...)
	b = strconv.AppendBool(b, v.Enforced)
	b = appendCommon(b, v.Table, v.Zone, v.MinUID, v.Loopback)
	b = append(b, `,"published_at":`...)
	b = appendTime(b, v.PublishedAt)
	return append(b, "}\n"...)
}

func appendHost(b []byte, h *Host) []byte {
	b = fmt.Appendf(b, `{"format":%d`, h.Format)
	b = appendCommon(b, h.Table, h.Zone, h.MinUID, h.Loopback)
	b = append(b, `,"applied_at":`...)
	b = appendTime(b, h.AppliedAt)
	if h.Source != "" {
		b = append(b, `,"source":`...)
		b = appendString(b, h.Source)
	}
	return append(b, "}\n"...)
}

func appendCommon(b []byte, table string, zone policies.PortRange, minUID uint32, loopback policies.Loopback) []byte {
	b = append(b, `,"table":`...)
	b = appendString(b, table)
	b = append(b, `,"zone":`...)
	b = appendRange(b, zone)
	b = append(b, `,"min_uid":`...)
	b = strconv.AppendUint(b, uint64(minUID), 10)
	b = append(b, `,"loopback":`...)
	return appendString(b, string(loopback))
}

func appendRange(b []byte, r policies.PortRange) []byte {
	b = append(b, '"')
	b = strconv.AppendUint(b, uint64(r.Lo), 10)
	if r.Hi != r.Lo {
		b = append(b, '-')
		b = strconv.AppendUint(b, uint64(r.Hi), 10)
	}
	return append(b, '"')
}

func appendTime(b []byte, t time.Time) []byte {
	b = append(b, '"')
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// appendString writes s as a JSON string.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = fmt.Appendf(b, `\u%04x`, c)
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// The decoded forms: ranges as policy files write them.
type (
	viewJSON struct {
		View
		Ports map[rules.Proto][]string `json:"ports"`
		Zone  string                   `json:"zone"`
	}
	hostJSON struct {
		Host
		Zone string `json:"zone"`
	}
)

// ParseView decodes a view file.
func ParseView(b []byte) (*View, error) {
	var j viewJSON
	if err := strictJSON(b, &j); err != nil {
		return nil, err
	}
	if j.Format != Format {
		return nil, fmt.Errorf("format %d, want %d (nftpol and the nftpol that published it differ; run nftpol apply)", j.Format, Format)
	}
	v := j.View
	var err error
	if v.Zone, err = parseRange(j.Zone); err != nil {
		return nil, err
	}
	for p, rs := range j.Ports {
		if p != rules.TCP && p != rules.UDP {
			return nil, fmt.Errorf("unknown protocol %q", p)
		}
		for _, s := range rs {
			r, err := parseRange(s)
			if err != nil {
				return nil, err
			}
			if v.Ports == nil {
				v.Ports = map[rules.Proto][]policies.PortRange{}
			}
			v.Ports[p] = append(v.Ports[p], r)
		}
	}
	return &v, nil
}

// ParseHost decodes host.json.
func ParseHost(b []byte) (*Host, error) {
	var j hostJSON
	if err := strictJSON(b, &j); err != nil {
		return nil, err
	}
	if j.Format != Format {
		return nil, fmt.Errorf("format %d, want %d (run nftpol apply)", j.Format, Format)
	}
	h := j.Host
	var err error
	h.Zone, err = parseRange(j.Zone)
	return &h, err
}

// strictJSON decodes one JSON document; fields it does not know are
// ignored (a later format adds, the format number says when it breaks).
func strictJSON(b []byte, v any) error {
	return json.Unmarshal(b, v)
}

func parseRange(s string) (policies.PortRange, error) {
	lo, hi, ok := bytes.Cut([]byte(s), []byte("-"))
	l, err := strconv.ParseUint(string(lo), 10, 16)
	h := l
	if err == nil && ok {
		h, err = strconv.ParseUint(string(hi), 10, 16)
	}
	if err != nil || l > h {
		return policies.PortRange{}, fmt.Errorf("bad port range %q", s)
	}
	return policies.PortRange{Lo: uint16(l), Hi: uint16(h)}, nil
}
