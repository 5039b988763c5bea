package rules

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
)

// WriteText prints the plan for people: the table, then account by account,
// then the kernel objects, then a one-line summary. An empty plan prints
// "No changes." and nothing else.
func (p *Plan) WriteText(w io.Writer) error {
	if p.Empty() {
		_, err := fmt.Fprintln(w, "No changes.")
		return err
	}
	var b strings.Builder
	switch p.TableAction {
	case TableCreate:
		fmt.Fprintf(&b, "Table inet %s will be created.\n", p.Table)
	case TableReplace:
		fmt.Fprintf(&b, "Table inet %s will be replaced (its layout changed or it holds objects nftpol did not write).\n", p.Table)
	case TableUpdate:
		fmt.Fprintf(&b, "Table inet %s will be updated.\n", p.Table)
	}
	if p.Wake {
		fmt.Fprintf(&b, "Table inet %s is dormant (it enforces nothing): it will be made active.\n", p.Table)
	}
	if p.Retire != "" {
		fmt.Fprintf(&b, "Table inet %s, applied before under that name, will be deleted.\n", p.Retire)
	}
	if len(p.Accounts) > 0 {
		b.WriteString("\nAccounts:\n")
		for _, a := range p.Accounts {
			mark := map[Action]string{ActionAdd: "+", ActionChange: "~", ActionRemove: "-"}[a.Action]
			name := a.DisplayName()
			if a.OldName != "" && a.OldName != a.Name {
				name = a.OldName + " -> " + name
			}
			fmt.Fprintf(&b, "  %s %s (uid %d):", mark, name, a.UID)
			for i, pp := range a.Ports {
				if i > 0 {
					b.WriteString(";")
				}
				fmt.Fprintf(&b, " %s %s", pp.Proto, portsChange(a.Action, pp))
			}
			b.WriteString("\n")
		}
	}
	b.WriteString("\nKernel:\n")
	for _, s := range p.Sets {
		switch s.Action {
		case ActionCreate:
			fmt.Fprintf(&b, "  + set %s (%s)\n", s.Name, plural(len(s.Add), "element", "elements"))
		case ActionUpdate:
			fmt.Fprintf(&b, "  ~ set %s: %s to add, %d to delete\n", s.Name, plural(len(s.Add), "element", "elements"), len(s.Delete))
		case ActionReplace:
			fmt.Fprintf(&b, "  ~ set %s: rebuilt with %s (%d to delete: cheaper to rebuild than to delete one by one)\n",
				s.Name, plural(len(s.Add), "element", "elements"), s.Removed)
		case ActionDelete:
			if s.Removed > 0 {
				fmt.Fprintf(&b, "  - set %s: rebuilt as %s (%d to delete: cheaper to rebuild than to delete one by one)\n", s.Name, altName(s.Name), s.Removed)
			} else {
				fmt.Fprintf(&b, "  - set %s\n", s.Name)
			}
		}
	}
	for _, c := range p.Chains {
		switch c.Action {
		case ActionCreate:
			fmt.Fprintf(&b, "  + chain %s (%s)\n", c.Name, plural(len(c.Chain.Rules), "rule", "rules"))
		case ActionReplace:
			fmt.Fprintf(&b, "  ~ chain %s: rules replaced (%s)\n", c.Name, plural(len(c.Chain.Rules), "rule", "rules"))
		case ActionDelete:
			fmt.Fprintf(&b, "  - chain %s\n", c.Name)
		}
	}
	add, chg, rm := 0, 0, 0
	for _, a := range p.Accounts {
		switch a.Action {
		case ActionAdd:
			add++
		case ActionChange:
			chg++
		case ActionRemove:
			rm++
		}
	}
	fmt.Fprintf(&b, "\nPlan: %s to add, %d to change, %d to remove; %d kernel operations.\n",
		plural(add, "account", "accounts"), chg, rm, p.Operations())
	_, err := io.WriteString(w, b.String())
	return err
}

// DisplayName is the account's name for people: "(unnamed)" when it has
// none.
func (a AccountChange) DisplayName() string {
	if a.Name == "" {
		return "(unnamed)"
	}
	return a.Name
}

// Drift says in a few lines how a kernel differs from the ruleset the plan
// leads to, when that is what an apply recorded: what status shows.
func (p *Plan) Drift() []string {
	out, _ := p.drift(-1)
	return out
}

// DriftHead returns the first n lines of Drift and how many it has, and
// formats only those n: a heal after a flush at 50,000 accounts has a line
// for every account, which cost a quarter of the heal to format for a log
// line that shows four.
func (p *Plan) DriftHead(n int) ([]string, int) { return p.drift(n) }

// drift is Drift's first n lines (all when n < 0) and how many it has.
func (p *Plan) drift(n int) ([]string, int) {
	out := []string{}
	total := 0
	add := func(line func() string) {
		if n < 0 || len(out) < n {
			out = append(out, line())
		}
		total++
	}
	if p.Empty() {
		return out, 0
	}
	if p.Wake {
		add(func() string { return "the table is dormant: it enforces nothing" })
	}
	if p.TableAction == TableReplace {
		add(func() string { return "the table's layout differs or it holds objects nftpol did not write" })
	}
	for _, ac := range p.Accounts {
		add(func() string {
			var parts []string
			for _, pp := range ac.Ports {
				parts = append(parts, fmt.Sprintf("%s kernel %s, recorded %s", pp.Proto, joinOrNone(pp.Old), joinOrNone(pp.New)))
			}
			return fmt.Sprintf("account %s (uid %d): %s", ac.DisplayName(), ac.UID, strings.Join(parts, "; "))
		})
	}
	total += p.AccountsLeft
	for _, c := range p.Chains {
		add(func() string { return fmt.Sprintf("chain %s: rules differ from those recorded", c.Name) })
	}
	for _, s := range p.Sets {
		rebuilt := slices.ContainsFunc(p.Sets, func(o SetChange) bool { return o.Action == ActionDelete && o.Name == altName(s.Name) })
		if s.Action == ActionCreate && p.TableAction != TableReplace && !rebuilt {
			add(func() string { return fmt.Sprintf("set %s is missing", s.Name) })
		}
	}
	return out, total
}

func portsChange(act Action, pp ProtoPorts) string {
	o, n := joinOrNone(pp.Old), joinOrNone(pp.New)
	switch act {
	case ActionAdd:
		return n
	case ActionRemove:
		return o
	}
	if o == n {
		return n
	}
	return o + " -> " + n
}

func joinOrNone(rs []string) string {
	if len(rs) == 0 {
		return "none"
	}
	return strings.Join(rs, ",")
}

// plural spells a count with its noun: "1 account", "2 accounts".
func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

// JSON shapes of a plan. They are part of nftpol's interface to config
// management: fields are only ever added.
type (
	jsonPlan struct {
		Table      string        `json:"table"`
		Changes    bool          `json:"changes"`
		Action     TableAction   `json:"table_action"`
		Wake       bool          `json:"wake_table,omitempty"`
		Retire     string        `json:"retire_table,omitempty"`
		Accounts   []jsonAccount `json:"accounts"`
		Sets       []jsonSet     `json:"sets"`
		Chains     []jsonChain   `json:"chains"`
		Operations int           `json:"operations"`
	}
	jsonAccount struct {
		Name    string               `json:"name"`
		OldName string               `json:"old_name,omitempty"`
		UID     uint32               `json:"uid"`
		Action  Action               `json:"action"`
		Ports   map[Proto]jsonChange `json:"ports"`
	}
	jsonChange struct {
		Old []string `json:"old"`
		New []string `json:"new"`
	}
	jsonSet struct {
		Name   string `json:"name"`
		Action Action `json:"action"`
		Add    int    `json:"add"`
		Delete int    `json:"delete"`
	}
	jsonChain struct {
		Name   string `json:"name"`
		Action Action `json:"action"`
		Rules  int    `json:"rules"`
	}
)

// MarshalJSON renders the plan for tools: per account the old and new
// ranges per protocol, the set and chain changes, and the number of kernel
// operations.
func (p *Plan) MarshalJSON() ([]byte, error) {
	j := jsonPlan{
		Table:      "inet " + p.Table,
		Changes:    !p.Empty(),
		Action:     p.TableAction,
		Wake:       p.Wake,
		Accounts:   []jsonAccount{},
		Sets:       []jsonSet{},
		Chains:     []jsonChain{},
		Operations: p.Operations(),
	}
	if p.Retire != "" {
		j.Retire = "inet " + p.Retire
	}
	for _, a := range p.Accounts {
		ja := jsonAccount{Name: a.Name, OldName: a.OldName, UID: a.UID, Action: a.Action, Ports: map[Proto]jsonChange{}}
		for _, pp := range a.Ports {
			ja.Ports[pp.Proto] = jsonChange{Old: nonNil(pp.Old), New: nonNil(pp.New)}
		}
		j.Accounts = append(j.Accounts, ja)
	}
	for _, s := range p.Sets {
		j.Sets = append(j.Sets, jsonSet{Name: s.Name, Action: s.Action, Add: len(s.Add), Delete: len(s.Delete) + s.Removed})
	}
	for _, c := range p.Chains {
		jc := jsonChain{Name: c.Name, Action: c.Action}
		if c.Chain != nil {
			jc.Rules = len(c.Chain.Rules)
		}
		j.Chains = append(j.Chains, jc)
	}
	return json.Marshal(j)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
