package rules

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// everyStmt is a ruleset using every statement and set kind nftpol has.
func everyStmt() *Ruleset {
	rs := sample(alpha, beta, gamma)
	rs.Sets = append(rs.Sets,
		&Set{Name: "exempt", Key: KeyUID, Comment: OwnerPrefix + "x", Elements: []Element{{UID: 0}, {UID: 4294967295}}},
		&Set{Name: "v", Key: KeyUIDPort, Dynamic: true, Timeout: time.Hour, Size: 65536, Counter: true},
		&Set{Name: "o", Key: KeyUIDProtoPort, Dynamic: true, Timeout: time.Hour, Size: 65536, Counter: true})
	rs.Chains = append(rs.Chains, &Chain{Name: "input", Hook: HookInput, Priority: -5, Rules: []Rule{
		{Stmts: []Stmt{Loopback{}, CtStateNotNew{}, CtDirectionReply{}, Verdict{Kind: Accept}}},
		{Stmts: []Stmt{SkuidCmp{Op: Lt, UID: 1000}, SkuidCmp{Op: Ge, UID: 0}, SkuidInSet{Set: "exempt"}, Verdict{Kind: Drop}}},
		{Stmts: []Stmt{SkuidInSet{Set: "exempt", Not: true}, SkuidSportInSet{Proto: TCP, Set: "tcp_ports"}, Verdict{Kind: Accept}}},
		{Stmts: []Stmt{SkuidMask{Mask: 7, Value: 0}, SkuidMask{Mask: 0xffffffff, Value: 5}, Verdict{Kind: Accept}}},
		{Stmts: []Stmt{L4Proto{Proto: UDP}, UpdateSet{Proto: UDP, Set: "v"}, Limit{Rate: 10, Unit: PerMinute}, Log{Prefix: "p: "}, Counter{}, Verdict{Kind: RejectPortUnreachable}}},
		{Stmts: []Stmt{DportRange{Proto: TCP, Lo: 1, Hi: 65535}, DportNotInSet{Proto: TCP, Set: "tcp_open"}, Loopback{Out: true}, Verdict{Kind: RejectTCPReset}}, Comment: "c"},
		{Stmts: []Stmt{L4ProtoNot{Proto: ICMPv6}, L4ProtoNot{Proto: TCP}, CtDirectionReply{}, UpdateSetTransport{Set: "o"}, DportRange{Proto: UDPLite, Lo: 40010, Hi: 49999}, DportRange{Proto: SCTP, Lo: 1, Hi: 2}, DportRange{Proto: DCCP, Lo: 3, Hi: 3}, Verdict{Kind: Drop}}},
	}})
	return rs
}

func TestRulesetJSONRoundTrip(t *testing.T) {
	rs := everyStmt()
	b, err := MarshalRuleset(rs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalRuleset(b)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := RenderString(rs), RenderString(got); a != b {
		t.Errorf("round trip changed the ruleset:\n%s\n---\n%s", a, b)
	}
	if p := Diff(got, rs); !p.Empty() {
		t.Errorf("round trip is not equal for Diff: %+v", p)
	}
}

func TestRulesetJSONRejectsWhatItDoesNotKnow(t *testing.T) {
	b, _ := MarshalRuleset(everyStmt())
	good := string(b)
	for name, bad := range map[string]string{
		"unknown stmt": strings.Replace(good, `"type":"counter"`, `"type":"queue"`, 1),
		"unknown key":  strings.Replace(good, `"key":"uid"`, `"key":"ipv4_addr"`, 1),
		"unknown hook": strings.Replace(good, `"hook":"input"`, `"hook":"forward"`, 1),
		"bad port":     strings.Replace(good, `1001\t40010\t40019\talpha\n`, `1001\t40010\t70000\talpha\n`, 1),
		"reversed":     strings.Replace(good, `1001\t40010\t40019\talpha\n`, `1001\t40019\t40010\talpha\n`, 1),
		"no newline":   strings.Replace(good, `1001\t40010\t40019\talpha\n`, `1001\t40010\t40019\talpha`, 1),
		"short line":   strings.Replace(good, `1001\t40010\t40019\talpha\n`, `1001\t40010\n`, 1),
		"bad comment":  strings.Replace(good, `1001\t40010\t40019\talpha\n`, `1001\t40010\t40019\tal\"pha\n`, 1),
		"truncated":    good[:len(good)/2],
		"no table":     strings.Replace(good, `"table":"nftpol"`, `"table":""`, 1),
		"bad verdict":  strings.Replace(good, `"verdict":"drop"`, `"verdict":"jump"`, 1),
		"bad protocol": strings.Replace(good, `"proto":"udp"`, `"proto":"gre"`, 1),
	} {
		if bad == good {
			t.Fatalf("%s: the mutation did not apply", name)
		}
		if _, err := UnmarshalRuleset([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestElementLines: every element reads back as written, and every line
// AppendElementLines could not have written is refused.
func TestElementLines(t *testing.T) {
	es := []Element{{UID: 0, Lo: 0, Hi: 0}, {UID: 4294967295, Lo: 65535, Hi: 65535, Comment: "max"},
		{UID: 1001, Lo: 40010, Hi: 40019, Comment: "alpha beta"}, {UID: 7, Lo: 1, Hi: 2, Comment: strings.Repeat("c", MaxCommentLen)}}
	text := string(AppendElementLines(nil, es))
	got, err := ParseElementLines(text)
	if err != nil || !slices.Equal(got, es) {
		t.Fatalf("round trip: %v, %+v\nwant %+v", err, got, es)
	}
	for _, bad := range []string{
		"4294967296\t1\t1\tx\n", // uid too large
		"1\t65536\t65536\tx\n",  // port too large
		"01\t1\t1\tx\n",         // leading zero
		"-1\t1\t1\tx\n",         // sign
		"+1\t1\t1\tx\n",
		"1\t2\t1\tx\n", // reversed
		"1\t1\t1\tx",   // no newline
		"1\t1\n",       // short
		"1 1 1 x\n",    // spaces
		"\t1\t1\tx\n",  // empty number
		"1\t1\t1\ta\tb\n",
		"1\t1\t1\t" + strings.Repeat("c", MaxCommentLen+1) + "\n",
		"1\t1\t1\tq\"uote\n",
	} {
		if es, err := ParseElementLines(bad); err == nil {
			t.Errorf("%q: accepted as %+v", bad, es)
		}
	}
}
