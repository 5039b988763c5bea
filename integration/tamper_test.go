package integration

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestApplyRepairsTampering: whatever somebody does to nftpol's table by
// hand with nft, plan shows a change (exit 2, never a crash or a refusal)
// and apply brings back exactly what nftpol wrote, as nft itself lists it.
func TestApplyRepairsTampering(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	cases := []struct {
		name   string
		tamper []string // nft commands, each one argument list
		nftF   string   // or a file for nft -f
	}{
		{name: "anonymous set", tamper: []string{"add rule inet nftpol input tcp dport { 22, 80 } accept"}},
		{name: "rule ending in a protocol match", tamper: []string{"add rule inet nftpol input meta l4proto tcp"}},
		{name: "dormant table", tamper: []string{"add table inet nftpol { flags dormant; }"}},
		{name: "flushed table", tamper: []string{"flush table inet nftpol"}},
		{name: "named counter", tamper: []string{"add counter inet nftpol cnt"}},
		{name: "map jumping to an extra chain", nftF: `
table inet nftpol {
	chain extra {
		accept
	}

	map m2 {
		type inet_service : verdict
		elements = { 22 : jump extra }
	}

	chain input {
		tcp dport vmap @m2
	}
}
`},
	}
	for _, c := range cases {
		t.Run(strings.ReplaceAll(c.name, " ", "_"), func(t *testing.T) {
			ns := newNetns(t, "tamper")
			n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: ns, stateDir: t.TempDir()}
			n.apply(t)
			want := nftStateless(t, ns)
			for _, cmd := range c.tamper {
				run(t, "ip", "netns", "exec", ns, "nft", cmd)
			}
			if c.nftF != "" {
				nftLoad(t, ns, c.nftF)
			}
			if nftStateless(t, ns) == want {
				t.Fatal("the tampering changed nothing: the test proves nothing")
			}
			n.planExit(t, 2)
			n.apply(t)
			n.planExit(t, 0)
			if got := nftStateless(t, ns); got != want {
				t.Errorf("after apply the table is not what nftpol wrote:\ngot:\n%s\nwant:\n%s", got, want)
			}
		})
	}
}

// nftStateless lists the table inet nftpol without counter values.
func nftStateless(t *testing.T, ns string) string {
	t.Helper()
	return run(t, "ip", "netns", "exec", ns, "nft", "-s", "list", "table", "inet", "nftpol")
}

// TestRenamedTableIsRetired: renaming the table in the policy moves the
// rules to the new table in one transaction; the old one must not stay
// behind enforcing beside it.
func TestRenamedTableIsRetired(t *testing.T) {
	requireRoot(t)
	bin := buildBinary(t, "cmd/nftpol")
	ns := newNetns(t, "rename")
	n := nftpolRun{bin: bin, config: writePolicy(t, contractPolicy), netns: ns, stateDir: filepath.Join(t.TempDir(), "state")}
	n.apply(t)
	n.setPolicy(t, "table: hostfw\n"+contractPolicy)
	stdout, stderr, code := n.run(t, "plan", "--detailed-exitcode")
	if code != 2 || !strings.Contains(stdout, "Table inet nftpol, applied before under that name, will be deleted.") {
		t.Errorf("plan after a rename exited %d:\n%s\n%s", code, stdout, stderr)
	}
	n.apply(t)
	n.planExit(t, 0)
	tables := run(t, "ip", "netns", "exec", ns, "nft", "list", "tables")
	if strings.TrimSpace(tables) != "table inet hostfw" {
		t.Errorf("tables after the rename:\n%s", tables)
	}
}
