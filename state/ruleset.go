package state

import (
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nftpol/nftpol/rules"
)

// The JSON form of a ruleset is what apply records in the state directory
// and restore installs at boot, without the policy or NSS. It is versioned
// by the state file that holds it; fields are only ever added.

type stateRuleset struct {
	Table  string       `json:"table"`
	Sets   []stateSet   `json:"sets"`
	Chains []stateChain `json:"chains"`
}

type stateSet struct {
	Name      string `json:"name"`
	Key       string `json:"key"`
	Interval  bool   `json:"interval,omitempty"`
	Dynamic   bool   `json:"dynamic,omitempty"`
	TimeoutMS int64  `json:"timeout_ms,omitempty"`
	Size      uint32 `json:"size,omitempty"`
	Counter   bool   `json:"counter,omitempty"`
	Comment   string `json:"comment,omitempty"`
	// Elements, one per line: uid, lo, hi and comment separated by tabs
	// (comments never hold tabs or newlines: SanitizeComment). One JSON string decodes an
	// order of magnitude faster than 50,000 JSON arrays.
	Elements string `json:"elements"`
}

type stateChain struct {
	Name     string      `json:"name"`
	Hook     rules.Hook  `json:"hook"`
	Priority int32       `json:"priority"`
	Rules    []stateRule `json:"rules"`
}

type stateRule struct {
	Comment string      `json:"comment,omitempty"`
	Stmts   []stateStmt `json:"stmts"`
}

// stateStmt is a statement tagged by Type; only the fields of that type are
// set.
type stateStmt struct {
	Type    string      `json:"type"`
	Out     bool        `json:"out,omitempty"`
	Op      string      `json:"op,omitempty"`
	UID     uint32      `json:"uid,omitempty"`
	Mask    uint32      `json:"mask,omitempty"`
	Proto   rules.Proto `json:"proto,omitempty"`
	Set     string      `json:"set,omitempty"`
	Lo      uint16      `json:"lo,omitempty"`
	Hi      uint16      `json:"hi,omitempty"`
	Rate    uint64      `json:"rate,omitempty"`
	Unit    string      `json:"unit,omitempty"`
	Prefix  string      `json:"prefix,omitempty"`
	Group   uint16      `json:"group,omitempty"`
	Verdict string      `json:"verdict,omitempty"`
}

var keyNames = map[string]rules.KeyType{rules.KeyUID.String(): rules.KeyUID, rules.KeyPort.String(): rules.KeyPort, rules.KeyUIDPort.String(): rules.KeyUIDPort,
	rules.KeyUIDProtoPort.String(): rules.KeyUIDProtoPort}

var verdictNames = map[rules.VerdictKind]string{rules.Accept: "accept", rules.Drop: "drop", rules.RejectTCPReset: "reject_tcp_reset", rules.RejectPortUnreachable: "reject_port_unreachable"}

// marshalRulesetV1 encodes rs as JSON, elements included (state format 1).
func marshalRulesetV1(rs *rules.Ruleset) ([]byte, error) { return marshalRuleset(rs, true) }

// marshalDefinition encodes rs as JSON without its elements: the sets'
// definitions and the chains. unmarshalRuleset reads it back as a ruleset
// with empty sets; the state file keeps the elements in sections of their
// own (appendElementLines), which cost a fraction of a JSON string to write
// and read.
func marshalDefinition(rs *rules.Ruleset) ([]byte, error) { return marshalRuleset(rs, false) }

func marshalRuleset(rs *rules.Ruleset, elements bool) ([]byte, error) {
	j := stateRuleset{Table: rs.Table, Sets: []stateSet{}, Chains: []stateChain{}}
	for _, s := range rs.Sets {
		js := stateSet{Name: s.Name, Key: s.Key.String(), Interval: s.Interval, Dynamic: s.Dynamic,
			TimeoutMS: s.Timeout.Milliseconds(), Size: s.Size, Counter: s.Counter, Comment: s.Comment}
		if elements {
			js.Elements = string(appendElementLines(nil, s.Elements))
		}
		j.Sets = append(j.Sets, js)
	}
	for _, c := range rs.Chains {
		jc := stateChain{Name: c.Name, Hook: c.Hook, Priority: c.Priority, Rules: []stateRule{}}
		for _, r := range c.Rules {
			jr := stateRule{Comment: r.Comment}
			for _, st := range r.Stmts {
				js, err := stmtToJSON(st)
				if err != nil {
					return nil, fmt.Errorf("chain %s: %w", c.Name, err)
				}
				jr.Stmts = append(jr.Stmts, js)
			}
			jc.Rules = append(jc.Rules, jr)
		}
		j.Chains = append(j.Chains, jc)
	}
	return json.Marshal(j)
}

func stmtToJSON(st rules.Stmt) (stateStmt, error) {
	switch s := st.(type) {
	case rules.Loopback:
		return stateStmt{Type: "loopback", Out: s.Out}, nil
	case rules.CtDirectionOriginal:
		return stateStmt{Type: "ct_direction_original"}, nil
	case rules.CtDirectionReply:
		return stateStmt{Type: "ct_direction_reply"}, nil
	case rules.CtStateNotNew:
		return stateStmt{Type: "ct_state_not_new"}, nil
	case rules.SkuidCmp:
		op := map[rules.CmpOp]string{rules.Lt: "lt", rules.Ge: "ge"}[s.Op]
		if op == "" {
			return stateStmt{}, fmt.Errorf("skuid comparison with unknown operator %d", s.Op)
		}
		return stateStmt{Type: "skuid_cmp", Op: op, UID: s.UID}, nil
	case rules.SkuidInSet:
		if s.Not {
			return stateStmt{Type: "skuid_not_in_set", Set: s.Set}, nil
		}
		return stateStmt{Type: "skuid_in_set", Set: s.Set}, nil
	case rules.SkuidMask:
		return stateStmt{Type: "skuid_mask", Mask: s.Mask, UID: s.Value}, nil
	case rules.L4Proto:
		return stateStmt{Type: "l4proto", Proto: s.Proto}, nil
	case rules.L4ProtoNot:
		return stateStmt{Type: "l4proto_not", Proto: s.Proto}, nil
	case rules.SkuidSportInSet:
		return stateStmt{Type: "skuid_sport_in_set", Proto: s.Proto, Set: s.Set}, nil
	case rules.DportRange:
		return stateStmt{Type: "dport_range", Proto: s.Proto, Lo: s.Lo, Hi: s.Hi}, nil
	case rules.DportNotInSet:
		return stateStmt{Type: "dport_not_in_set", Proto: s.Proto, Set: s.Set}, nil
	case rules.Counter:
		return stateStmt{Type: "counter"}, nil
	case rules.UpdateSet:
		return stateStmt{Type: "update_set", Proto: s.Proto, Set: s.Set}, nil
	case rules.UpdateSetTransport:
		return stateStmt{Type: "update_set_transport", Set: s.Set}, nil
	case rules.Limit:
		return stateStmt{Type: "limit", Rate: s.Rate, Unit: string(s.Unit)}, nil
	case rules.Log:
		return stateStmt{Type: "log", Prefix: s.Prefix, Group: s.Group}, nil
	case rules.Verdict:
		v, ok := verdictNames[s.Kind]
		if !ok {
			return stateStmt{}, fmt.Errorf("unknown verdict %d", s.Kind)
		}
		return stateStmt{Type: "verdict", Verdict: v}, nil
	}
	return stateStmt{}, fmt.Errorf("statement %q cannot be recorded", st)
}

func stmtFromJSON(j stateStmt) (rules.Stmt, error) {
	proto := func() (rules.Proto, error) {
		if !slices.Contains(rules.Protos, j.Proto) {
			return "", fmt.Errorf("%s: unknown protocol %q", j.Type, j.Proto)
		}
		return j.Proto, nil
	}
	switch j.Type {
	case "loopback":
		return rules.Loopback{Out: j.Out}, nil
	case "ct_direction_original":
		return rules.CtDirectionOriginal{}, nil
	case "ct_direction_reply":
		return rules.CtDirectionReply{}, nil
	case "ct_state_not_new":
		return rules.CtStateNotNew{}, nil
	case "skuid_cmp":
		op := map[string]rules.CmpOp{"lt": rules.Lt, "ge": rules.Ge}[j.Op]
		if op == 0 {
			return nil, fmt.Errorf("skuid_cmp: unknown operator %q", j.Op)
		}
		return rules.SkuidCmp{Op: op, UID: j.UID}, nil
	case "skuid_in_set":
		return rules.SkuidInSet{Set: j.Set}, nil
	case "skuid_not_in_set":
		return rules.SkuidInSet{Set: j.Set, Not: true}, nil
	case "skuid_mask":
		return rules.SkuidMask{Mask: j.Mask, Value: j.UID}, nil
	case "counter":
		return rules.Counter{}, nil
	case "limit":
		if j.Unit != string(rules.PerSecond) && j.Unit != string(rules.PerMinute) {
			return nil, fmt.Errorf("limit: unknown unit %q", j.Unit)
		}
		return rules.Limit{Rate: j.Rate, Unit: rules.LimitUnit(j.Unit)}, nil
	case "log":
		return rules.Log{Prefix: j.Prefix, Group: j.Group}, nil
	case "update_set_transport":
		return rules.UpdateSetTransport{Set: j.Set}, nil
	case "l4proto_not":
		if j.Proto.Number() == 0 {
			return nil, fmt.Errorf("l4proto_not: unknown protocol %q", j.Proto)
		}
		return rules.L4ProtoNot{Proto: j.Proto}, nil
	case "verdict":
		for k, v := range verdictNames {
			if v == j.Verdict {
				return rules.Verdict{Kind: k}, nil
			}
		}
		return nil, fmt.Errorf("unknown verdict %q", j.Verdict)
	}
	p, err := proto()
	if err != nil {
		return nil, err
	}
	switch j.Type {
	case "l4proto":
		return rules.L4Proto{Proto: p}, nil
	case "skuid_sport_in_set":
		return rules.SkuidSportInSet{Proto: p, Set: j.Set}, nil
	case "dport_range":
		return rules.DportRange{Proto: p, Lo: j.Lo, Hi: j.Hi}, nil
	case "dport_not_in_set":
		return rules.DportNotInSet{Proto: p, Set: j.Set}, nil
	case "update_set":
		return rules.UpdateSet{Proto: p, Set: j.Set}, nil
	}
	return nil, fmt.Errorf("unknown statement type %q", j.Type)
}

// unmarshalRuleset decodes what marshalRulesetV1 wrote. Anything it does not
// understand is an error, never a guess: restore must not install half a
// ruleset.
func unmarshalRuleset(b []byte) (*rules.Ruleset, error) {
	var j stateRuleset
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, err
	}
	if j.Table == "" {
		return nil, fmt.Errorf("ruleset has no table name")
	}
	rs := &rules.Ruleset{Table: j.Table}
	for _, js := range j.Sets {
		key, ok := keyNames[js.Key]
		if !ok {
			return nil, fmt.Errorf("set %s: unknown key type %q", js.Name, js.Key)
		}
		s := &rules.Set{Name: js.Name, Key: key, Interval: js.Interval, Dynamic: js.Dynamic,
			Timeout: time.Duration(js.TimeoutMS) * time.Millisecond, Size: js.Size, Counter: js.Counter, Comment: js.Comment}
		els, err := parseElementLines(js.Elements)
		if err != nil {
			return nil, fmt.Errorf("set %s: %w", js.Name, err)
		}
		s.DeriveRole() // not stored: the JSON stays as it was
		s.Elements = els
		if !slices.IsSortedFunc(s.Elements, rules.Element.Compare) {
			s.Elements = slices.Clip(rules.SortElements(s.Elements)) // see rules.Set.Elements
		}
		rs.Sets = append(rs.Sets, s)
	}
	for _, jc := range j.Chains {
		if jc.Hook != rules.HookInput && jc.Hook != rules.HookOutput {
			return nil, fmt.Errorf("chain %s: unknown hook %q", jc.Name, jc.Hook)
		}
		c := &rules.Chain{Name: jc.Name, Hook: jc.Hook, Priority: jc.Priority}
		for i, jr := range jc.Rules {
			r := rules.Rule{Comment: jr.Comment}
			for _, js := range jr.Stmts {
				st, err := stmtFromJSON(js)
				if err != nil {
					return nil, fmt.Errorf("chain %s, rule %d: %w", jc.Name, i+1, err)
				}
				r.Stmts = append(r.Stmts, st)
			}
			c.Rules = append(c.Rules, r)
		}
		rs.Chains = append(rs.Chains, c)
	}
	return rs, nil
}

// appendElementLines appends es to b one per line: UID, low port, high port
// and comment, separated by tabs. Comments are sanitized as the kernel stores
// them, so they never hold a tab or a line break.
func appendElementLines(b []byte, es []rules.Element) []byte {
	for _, e := range es {
		b = strconv.AppendUint(b, uint64(e.UID), 10)
		b = append(b, '\t')
		b = strconv.AppendUint(b, uint64(e.Lo), 10)
		b = append(b, '\t')
		b = strconv.AppendUint(b, uint64(e.Hi), 10)
		b = append(b, '\t')
		if rules.ValidComment(e.Comment) {
			b = append(b, e.Comment...)
		} else {
			b = append(b, rules.SanitizeComment(e.Comment)...)
		}
		b = append(b, '\n')
	}
	return b
}

// parseElementLines reads what appendElementLines wrote. The comments it
// returns are substrings of text, not copies: at 50,000 accounts that saves
// 100,000 small allocations, and text is held anyway while the state is.
// It reads the state of every plan and apply, so it scans by hand.
func parseElementLines(text string) ([]rules.Element, error) {
	out := make([]rules.Element, 0, strings.Count(text, "\n"))
	for n := 1; text != ""; n++ {
		var uid, lo, hi uint64
		var ok bool
		rest := text
		if uid, rest, ok = cutDecimal(rest, math.MaxUint32); ok {
			if lo, rest, ok = cutDecimal(rest, math.MaxUint16); ok {
				hi, rest, ok = cutDecimal(rest, math.MaxUint16)
			}
		}
		if !ok {
			line, _, _ := strings.Cut(text, "\n")
			return nil, fmt.Errorf("element %d: %q is not uid, lo, hi and comment separated by tabs", n, line)
		}
		comment, next, found := strings.Cut(rest, "\n")
		if !found {
			return nil, fmt.Errorf("element %d: no end of line (truncated?)", n)
		}
		if lo > hi {
			return nil, fmt.Errorf("element %d: reversed range %d-%d", n, lo, hi)
		}
		if !rules.ValidComment(comment) {
			return nil, fmt.Errorf("element %d: comment %q is not one nftpol writes", n, comment)
		}
		out = append(out, rules.Element{UID: uint32(uid), Lo: uint16(lo), Hi: uint16(hi), Comment: comment})
		text = next
	}
	return out, nil
}

// cutDecimal reads the decimal number at the start of s, at most max and
// without sign or superfluous leading zero, that ends at a tab, and returns
// what follows the tab.
func cutDecimal(s string, max uint64) (uint64, string, bool) {
	var v uint64
	i := 0
	for ; i < len(s) && '0' <= s[i] && s[i] <= '9'; i++ {
		v = v*10 + uint64(s[i]-'0')
		if v > max {
			return 0, "", false
		}
	}
	if i == 0 || i >= len(s) || s[i] != '\t' || (s[0] == '0' && i > 1) {
		return 0, "", false
	}
	return v, s[i+1:], true
}
