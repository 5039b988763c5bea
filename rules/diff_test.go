package rules

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// sample builds a small ruleset in nftpol's shape: per-account sets, an open
// set and one chain.
func sample(accounts ...Element) *Ruleset {
	ports := &Set{Name: legacyPortsSet(TCP), Key: KeyUIDPort, Interval: true, Elements: SortElements(slices.Clone(accounts))}
	open := &Set{Name: OpenSet(TCP), Key: KeyPort, Interval: true}
	for _, a := range accounts {
		open.Elements = append(open.Elements, Element{Lo: a.Lo, Hi: a.Hi})
	}
	open.Elements = SortElements(open.Elements)
	chain := &Chain{Name: "output", Hook: HookOutput, Rules: []Rule{
		{Stmts: []Stmt{CtDirectionOriginal{}, Verdict{Kind: Accept}}, Comment: OwnerPrefix + "test"},
		{Stmts: []Stmt{SkuidSportInSet{Proto: TCP, Set: legacyPortsSet(TCP)}, Verdict{Kind: Accept}}},
	}}
	return &Ruleset{Table: "nftpol", Sets: []*Set{ports, open}, Chains: []*Chain{chain}}
}

var (
	alpha  = Element{UID: 1001, Lo: 40010, Hi: 40019, Comment: "alpha"}
	beta   = Element{UID: 1002, Lo: 40020, Hi: 40029, Comment: "beta"}
	beta2  = Element{UID: 1002, Lo: 40020, Hi: 40039, Comment: "beta"}
	gamma  = Element{UID: 1003, Lo: 40500, Hi: 40500, Comment: "gamma"}
	betaRn = Element{UID: 1002, Lo: 40020, Hi: 40029, Comment: "beta-renamed"}
)

func TestDiffCreate(t *testing.T) {
	want := sample(alpha, beta)
	p := diff(nil, want)
	if p.TableAction != TableCreate {
		t.Fatalf("TableAction = %s, want create", p.TableAction)
	}
	if len(p.Sets) != 2 || len(p.Chains) != 1 || len(p.Sets[0].Add) != 2 {
		t.Errorf("create plan: %+v", p)
	}
	if len(p.Accounts) != 2 || p.Accounts[0].Action != ActionAdd || p.Accounts[0].Name != "alpha" {
		t.Errorf("accounts: %+v", p.Accounts)
	}
	// table + 2 sets + 2 pipapo elements + 2 rbtree intervals of 2
	// elements each + chain + 2 rules
	if got := p.Operations(); got != 12 {
		t.Errorf("Operations = %d, want 12", got)
	}
}

func TestDiffNoChange(t *testing.T) {
	p := diff(sample(alpha, beta), sample(alpha, beta))
	if !p.Empty() || len(p.Accounts) != 0 || p.Operations() != 0 {
		t.Errorf("identical rulesets gave a plan: %+v", p)
	}
	var b strings.Builder
	if err := p.WriteText(&b); err != nil || b.String() != "No changes.\n" {
		t.Errorf("WriteText = %q, %v", b.String(), err)
	}
}

func TestDiffOneAccountIsElementsOnly(t *testing.T) {
	p := diff(sample(alpha, beta, gamma), sample(alpha, beta2, gamma))
	if p.TableAction != TableUpdate || len(p.Chains) != 0 {
		t.Fatalf("plan touches more than elements: %+v", p)
	}
	ports := p.Sets[0]
	if ports.Name != "tcp_ports" || !slices.Equal(ports.Delete, []Element{beta}) || !slices.Equal(ports.Add, []Element{beta2}) {
		t.Errorf("tcp_ports change: %+v", ports)
	}
	if len(p.Accounts) != 1 {
		t.Fatalf("accounts: %+v", p.Accounts)
	}
	a := p.Accounts[0]
	if a.UID != 1002 || a.Action != ActionChange || a.Name != "beta" ||
		!slices.Equal(a.Ports[0].Old, []string{"40020-40029"}) || !slices.Equal(a.Ports[0].New, []string{"40020-40039"}) {
		t.Errorf("account change: %+v", a)
	}
}

func TestDiffRemoveAndRename(t *testing.T) {
	p := diff(sample(alpha, beta, gamma), sample(alpha, betaRn))
	got := map[uint32]Action{}
	for _, a := range p.Accounts {
		got[a.UID] = a.Action
	}
	if got[1002] != ActionChange || got[1003] != ActionRemove || len(got) != 2 {
		t.Errorf("accounts: %+v", p.Accounts)
	}
}

func TestDiffDriftInChain(t *testing.T) {
	cur := sample(alpha)
	cur.Chains[0].Rules = cur.Chains[0].Rules[:1] // somebody deleted a rule
	p := diff(cur, sample(alpha))
	if len(p.Chains) != 1 || p.Chains[0].Action != ActionReplace {
		t.Errorf("missing rule not repaired: %+v", p.Chains)
	}
	cur = sample(alpha)
	cur.Chains[0].Rules[1].Stmts = append(cur.Chains[0].Rules[1].Stmts[:1:1], Unknown{Desc: "queue"})
	if p := diff(cur, sample(alpha)); len(p.Chains) != 1 {
		t.Errorf("unknown statement not repaired: %+v", p.Chains)
	}
}

func TestDiffLayoutChangeReplacesTable(t *testing.T) {
	cur := sample(alpha)
	cur.Sets[0].Interval = false
	p := diff(cur, sample(alpha))
	if p.TableAction != TableReplace || len(p.Sets) != 2 || p.Sets[0].Action != ActionCreate {
		t.Errorf("changed set definition: %+v", p)
	}
	cur = sample(alpha)
	cur.Chains[0].Hook = HookInput
	if p := diff(cur, sample(alpha)); p.TableAction != TableReplace {
		t.Errorf("changed hook: %s", p.TableAction)
	}
}

// TestDiffForeignObjectsReplaceTable: sets, chains or other objects nftpol
// did not write make the plan rebuild the table in one transaction rather
// than guess an order in which strangers' objects can be deleted.
func TestDiffForeignObjectsReplaceTable(t *testing.T) {
	for name, mutate := range map[string]func(*Ruleset){
		"extra set":    func(rs *Ruleset) { rs.Sets = append(rs.Sets, &Set{Name: "stray", Key: KeyUID}) },
		"extra chain":  func(rs *Ruleset) { rs.Chains = append(rs.Chains, &Chain{Name: "extra", Hook: HookInput}) },
		"extra object": func(rs *Ruleset) { rs.Extra = []string{"counter cnt"} },
		"set comment":  func(rs *Ruleset) { rs.Sets[0].Comment = "edited" },
	} {
		cur := sample(alpha)
		mutate(cur)
		p := diff(cur, sample(alpha))
		if p.TableAction != TableReplace || len(p.Sets) != 2 || len(p.Chains) != 1 || p.Sets[0].Action != ActionCreate {
			t.Errorf("%s: plan %+v", name, p)
		}
		if len(p.Accounts) != 0 {
			t.Errorf("%s: accounts did not change, plan says %+v", name, p.Accounts)
		}
	}
}

func TestDiffWakesDormantTable(t *testing.T) {
	cur := sample(alpha)
	cur.Dormant = true
	p := diff(cur, sample(alpha))
	if p.Empty() || !p.Wake || p.TableAction != TableUpdate || p.Operations() != 1 {
		t.Errorf("dormant table: %+v", p)
	}
}

func TestPlanRetireAndRename(t *testing.T) {
	p := diff(sample(alpha, beta), sample(alpha, betaRn))
	p.Retire = "oldname"
	var b strings.Builder
	if err := p.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Table inet oldname, applied before under that name, will be deleted.", "~ beta -> beta-renamed (uid 1002)", "Plan: 0 accounts to add, 1 to change, 0 to remove"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("plan text lacks %q:\n%s", want, b.String())
		}
	}
	p = diff(sample(alpha), sample(alpha))
	p.Retire = "oldname"
	if p.Empty() {
		t.Error("a plan that retires a table is not empty")
	}
}

func TestOwned(t *testing.T) {
	rs := sample(alpha)
	if !rs.Owned() {
		t.Fatal("sample not owned")
	}
	rs.Chains[0].Rules = nil // nft flush table: rules go, sets stay
	if rs.Owned() {
		t.Fatal("sample without rules and without set comments still owned")
	}
	rs.Sets[1].Comment = OwnerPrefix + "open ports"
	if !rs.Owned() {
		t.Error("a set comment alone does not mark the table")
	}
}

func TestPlanJSON(t *testing.T) {
	p := diff(sample(alpha, beta), sample(alpha, beta2, gamma))
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		Table    string `json:"table"`
		Changes  bool   `json:"changes"`
		Accounts []struct {
			Name, Action string
			UID          uint32
			Ports        map[string]struct{ Old, New []string }
		}
		Operations int
	}
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatal(err)
	}
	if got.Table != "inet nftpol" || !got.Changes || len(got.Accounts) != 2 || got.Operations != p.Operations() {
		t.Fatalf("json: %s", b)
	}
	if a := got.Accounts[0]; a.Name != "beta" || a.Action != "change" ||
		!slices.Equal(a.Ports["tcp"].Old, []string{"40020-40029"}) || !slices.Equal(a.Ports["tcp"].New, []string{"40020-40039"}) {
		t.Errorf("beta: %+v", a)
	}
	if a := got.Accounts[1]; a.Name != "gamma" || a.Action != "add" || a.Ports["tcp"].Old == nil {
		t.Errorf("gamma (old must be [] not null): %s", b)
	}
}

func TestDiffElementsMerge(t *testing.T) {
	cur := []Element{{UID: 1}, {UID: 2}, {UID: 4}}
	want := []Element{{UID: 2}, {UID: 3}, {UID: 4}, {UID: 5}}
	del, add := DiffElements(cur, want)
	if !slices.Equal(del, []Element{{UID: 1}}) || !slices.Equal(add, []Element{{UID: 3}, {UID: 5}}) {
		t.Errorf("del=%v add=%v", del, add)
	}
}

func TestQuoteSanitizes(t *testing.T) {
	got := Quote("a\"b\\c\nd" + strings.Repeat("x", 200))
	if strings.ContainsAny(got[1:len(got)-1], "\"\\\n") || len(got) != MaxCommentLen+2 {
		t.Errorf("Quote = %q", got)
	}
}

// TestDiffReplacesSetWhenDeletesAreMany: past ReplaceThreshold deletions a
// per-account set is rebuilt whole, and the chains with it (they reference
// the set); below it, element operations.
func TestDiffReplacesSetWhenDeletesAreMany(t *testing.T) {
	var all []Element
	for i := 0; i < 40; i++ {
		all = append(all, Element{UID: uint32(2000 + i), Lo: uint16(40010 + i), Hi: uint16(40010 + i), Comment: "a"})
	}
	cur := sample(all...)
	few := diff(cur, sample(all[ReplaceThreshold:]...)) // exactly the threshold removed
	if few.Sets[0].Action != ActionUpdate || len(few.Sets[0].Delete) != ReplaceThreshold || len(few.Chains) != 0 {
		t.Errorf("%d deletions: %+v", ReplaceThreshold, few.Sets[0])
	}
	many := diff(cur, sample(all[ReplaceThreshold+1:]...))
	sc := many.Sets[0]
	if sc.Action != ActionReplace || len(sc.Add) != 40-ReplaceThreshold-1 || sc.Removed != ReplaceThreshold+1 || len(sc.Delete) != 0 {
		t.Errorf("%d deletions: %+v", ReplaceThreshold+1, sc)
	}
	if len(many.Chains) != 1 || many.Chains[0].Action != ActionReplace {
		t.Errorf("a replaced set must take its chains along: %+v", many.Chains)
	}
	// Only the per-account set is rebuilt: the open set after it loses
	// its elements one by one (the listing order of a fresh install no
	// longer matters: a staged rebuild renames the set anyway).
	if many.Sets[1].Action != ActionUpdate || len(many.Sets[1].Delete) != ReplaceThreshold+1 {
		t.Errorf("the set after the rebuilt one: %+v", many.Sets[1])
	}
	var b strings.Builder
	_ = many.WriteText(&b)
	if !strings.Contains(b.String(), "rebuilt with 31 elements (9 to delete") {
		t.Errorf("plan text:\n%s", b.String())
	}
}

// TestDriftHead: the head of Drift is its first lines and the count is all
// of them, whatever n.
func TestDriftHead(t *testing.T) {
	p := &Plan{Wake: true, TableAction: TableReplace}
	for uid := uint32(1); uid <= 7; uid++ {
		p.Accounts = append(p.Accounts, AccountChange{UID: uid, Name: fmt.Sprint("a", uid), Action: ActionChange,
			Ports: []ProtoPorts{{Proto: TCP, Old: []string{"10"}, New: []string{"20"}}}})
	}
	p.Chains = append(p.Chains, ChainChange{Name: "output"})
	all := p.Drift()
	if len(all) != 10 || !strings.Contains(all[2], "account a1 (uid 1): tcp kernel 10, recorded 20") {
		t.Fatalf("Drift: %q", all)
	}
	for _, n := range []int{0, 1, 4, 10, 12} {
		head, total := p.DriftHead(n)
		if total != len(all) || !slices.Equal(head, all[:min(n, len(all))]) {
			t.Errorf("DriftHead(%d) = %q, %d; want the first %d of %q, %d", n, head, total, n, all, len(all))
		}
	}
}
