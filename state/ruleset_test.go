package state

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nftpol/nftpol/rules"
)

// everyStmt is a ruleset using every statement and set kind nftpol has.
func everyStmt() *rules.Ruleset {
	alpha := rules.Element{UID: 1001, Lo: 40010, Hi: 40019, Comment: "alpha"}
	beta := rules.Element{UID: 1002, Lo: 40020, Hi: 40029, Comment: "beta"}
	gamma := rules.Element{UID: 1003, Lo: 40500, Hi: 40500, Comment: "gamma"}
	rs := &rules.Ruleset{Table: "nftpol", Sets: []*rules.Set{
		{Name: "tcp_ports", Key: rules.KeyUIDPort, Interval: true, Elements: []rules.Element{alpha, beta, gamma}},
		{Name: "tcp_open", Key: rules.KeyPort, Interval: true, Elements: []rules.Element{{Lo: 40010, Hi: 40029}, {Lo: 40500, Hi: 40500}}},
		{Name: "exempt", Key: rules.KeyUID, Comment: rules.OwnerPrefix + "x", Elements: []rules.Element{{UID: 0}, {UID: 4294967295}}},
		{Name: "v", Key: rules.KeyUIDPort, Dynamic: true, Timeout: time.Hour, Size: 65536, Counter: true},
		{Name: "o", Key: rules.KeyUIDProtoPort, Dynamic: true, Timeout: time.Hour, Size: 65536, Counter: true},
	}}
	rs.Chains = []*rules.Chain{
		{Name: "output", Hook: rules.HookOutput, Rules: []rules.Rule{
			{Stmts: []rules.Stmt{rules.CtDirectionOriginal{}, rules.Verdict{Kind: rules.Accept}}, Comment: rules.OwnerPrefix + "test"},
			{Stmts: []rules.Stmt{rules.SkuidSportInSet{Proto: rules.TCP, Set: "tcp_ports"}, rules.Verdict{Kind: rules.Accept}}},
		}},
		{Name: "input", Hook: rules.HookInput, Priority: -5, Rules: []rules.Rule{
			{Stmts: []rules.Stmt{rules.Loopback{}, rules.CtStateNotNew{}, rules.CtDirectionReply{}, rules.Verdict{Kind: rules.Accept}}},
			{Stmts: []rules.Stmt{rules.SkuidCmp{Op: rules.Lt, UID: 1000}, rules.SkuidCmp{Op: rules.Ge, UID: 0}, rules.SkuidInSet{Set: "exempt"}, rules.Verdict{Kind: rules.Drop}}},
			{Stmts: []rules.Stmt{rules.SkuidInSet{Set: "exempt", Not: true}, rules.SkuidSportInSet{Proto: rules.TCP, Set: "tcp_ports"}, rules.Verdict{Kind: rules.Accept}}},
			{Stmts: []rules.Stmt{rules.SkuidMask{Mask: 7, Value: 0}, rules.SkuidMask{Mask: 0xffffffff, Value: 5}, rules.Verdict{Kind: rules.Accept}}},
			{Stmts: []rules.Stmt{rules.L4Proto{Proto: rules.UDP}, rules.UpdateSet{Proto: rules.UDP, Set: "v"}, rules.Limit{Rate: 10, Unit: rules.PerMinute}, rules.Log{Prefix: "p: "}, rules.Counter{}, rules.Verdict{Kind: rules.RejectPortUnreachable}}},
			{Stmts: []rules.Stmt{rules.DportRange{Proto: rules.TCP, Lo: 1, Hi: 65535}, rules.DportNotInSet{Proto: rules.TCP, Set: "tcp_open"}, rules.Loopback{Out: true}, rules.Verdict{Kind: rules.RejectTCPReset}}, Comment: "c"},
			{Stmts: []rules.Stmt{rules.L4ProtoNot{Proto: rules.ICMPv6}, rules.L4ProtoNot{Proto: rules.TCP}, rules.CtDirectionReply{}, rules.UpdateSetTransport{Set: "o"}, rules.DportRange{Proto: rules.UDPLite, Lo: 40010, Hi: 49999}, rules.DportRange{Proto: rules.SCTP, Lo: 1, Hi: 2}, rules.DportRange{Proto: rules.DCCP, Lo: 3, Hi: 3}, rules.Verdict{Kind: rules.Drop}}},
		}},
	}
	return rs
}

func TestRulesetJSONRoundTrip(t *testing.T) {
	rs := everyStmt()
	b, err := marshalRulesetV1(rs)
	if err != nil {
		t.Fatal(err)
	}
	got, err := unmarshalRuleset(b)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := rules.RenderString(rs), rules.RenderString(got); a != b {
		t.Errorf("round trip changed the ruleset:\n%s\n---\n%s", a, b)
	}
	if p := rules.SyncExact(got, rs).Plan; !p.Empty() {
		t.Errorf("round trip is not equal for Diff: %+v", p)
	}
	// Roles are not stored: the reader derives them.
	for i, s := range got.Sets {
		if want := rules.RoleOf(rs.Sets[i]); s.Role != want {
			t.Errorf("set %s read back with role %+v, want %+v", s.Name, s.Role, want)
		}
	}
}

func TestRulesetJSONRejectsWhatItDoesNotKnow(t *testing.T) {
	b, _ := marshalRulesetV1(everyStmt())
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
		if _, err := unmarshalRuleset([]byte(bad)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestElementLines: every element reads back as written, and every line
// appendElementLines could not have written is refused.
func TestElementLines(t *testing.T) {
	es := []rules.Element{{UID: 0, Lo: 0, Hi: 0}, {UID: 4294967295, Lo: 65535, Hi: 65535, Comment: "max"},
		{UID: 1001, Lo: 40010, Hi: 40019, Comment: "alpha beta"}, {UID: 7, Lo: 1, Hi: 2, Comment: strings.Repeat("c", rules.MaxCommentLen)}}
	text := string(appendElementLines(nil, es))
	got, err := parseElementLines(text)
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
		"1\t1\t1\t" + strings.Repeat("c", rules.MaxCommentLen+1) + "\n",
		"1\t1\t1\tq\"uote\n",
	} {
		if es, err := parseElementLines(bad); err == nil {
			t.Errorf("%q: accepted as %+v", bad, es)
		}
	}
}
