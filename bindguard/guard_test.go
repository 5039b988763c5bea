package bindguard

import (
	"strings"
	"testing"

	"github.com/nftpol/nftpol/policies"
)

// UIDs of the tests: accounts a, b and c, one below min_uid, one exempt.
const (
	uidA      = 2001
	uidB      = 2002
	uidC      = 2003
	uidSystem = 999
	uidExempt = 3000
)

var both = []policies.Protocol{policies.TCP, policies.UDP}

func testPolicy() *policies.Policy {
	return &policies.Policy{
		Zone:   policies.PortRange{Lo: 40010, Hi: 40099},
		MinUID: 1000,
		Exempt: []uint32{uidExempt},
		Accounts: []*policies.Account{
			{Name: "a", UID: uidA, Ports: []policies.PortRange{{Lo: 40010, Hi: 40019}}, Protocols: both},
			{Name: "b", UID: uidB, Ports: []policies.PortRange{{Lo: 40020, Hi: 40029}}, Protocols: both},
			{Name: "c", UID: uidC, Ports: []policies.PortRange{{Lo: 40030, Hi: 40030}}, Protocols: []policies.Protocol{policies.TCP}},
		},
		BindGuard: policies.BindGuard{Enabled: true, Reserved: []policies.PortRange{{Lo: 3306, Hi: 3306}, {Lo: 40090, Hi: 40090}}},
	}
}

// installTest installs the guard for p on a cgroup and a bpffs of the
// test's own, removed in Cleanup.
func installTest(t *testing.T, p *policies.Policy) (*Guard, string) {
	t.Helper()
	requireRoot(t)
	cg := testCgroup(t, "")
	g := New(Config{PinDir: testBPFFS(t), Cgroup: cg})
	d, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Install(d); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Remove(); err != nil {
			t.Error(err)
		}
	})
	return g, cg
}

func TestBind(t *testing.T) {
	g, cg := installTest(t, testPolicy())
	ns := testNetns(t, "bind")
	in := helper{netns: ns, cgroup: cg}
	out := helper{netns: ns}
	for _, tc := range []struct {
		name string
		h    helper
		uid  int
		spec string
		want string
	}{
		{"own tcp v4", in, uidA, "tcp/0.0.0.0/40010", "ok"},
		{"own tcp v6", in, uidA, "tcp/::/40011", "ok"},
		{"own tcp dual-stack", in, uidA, "tcp/dual/40012", "ok"},
		{"own udp v4", in, uidA, "udp/0.0.0.0/40013", "ok"},
		{"own udp v6", in, uidA, "udp/::/40014", "ok"},
		{"own udp dual-stack", in, uidA, "udp/dual/40015", "ok"},
		{"own udplite", in, uidA, "udplite/0.0.0.0/40016", "ok"},
		{"own tcp loopback", in, uidA, "tcp/127.0.0.1/40017", "ok"},
		{"other's tcp v4", in, uidA, "tcp/0.0.0.0/40020", "EPERM"},
		{"other's tcp on loopback", in, uidA, "tcp/127.0.0.1/40020", "EPERM"},
		{"other's udp v6", in, uidA, "udp/::/40021", "EPERM"},
		{"other's tcp dual-stack", in, uidA, "tcp/dual/40022", "EPERM"},
		{"other's udplite", in, uidA, "udplite/0.0.0.0/40023", "EPERM"},
		{"unassigned zone tcp", in, uidA, "tcp/0.0.0.0/40050", "EPERM"},
		{"unassigned zone udp v6", in, uidA, "udp/::/40050", "EPERM"},
		{"tcp-only account's udp", in, uidC, "udp/0.0.0.0/40030", "EPERM"},
		{"tcp-only account's tcp", in, uidC, "tcp/0.0.0.0/40030", "ok"},
		{"reserved outside zone tcp", in, uidA, "tcp/0.0.0.0/3306", "EPERM"},
		{"reserved outside zone udp v6", in, uidA, "udp/::/3306", "EPERM"},
		{"reserved in zone", in, uidA, "tcp/0.0.0.0/40090", "EPERM"},
		{"port 0 tcp", in, uidA, "tcp/0.0.0.0/0", "ok"},
		{"port 0 udp v6", in, uidA, "udp/::/0", "ok"},
		{"outside zone", in, uidA, "tcp/0.0.0.0/8080", "ok"},
		{"below min_uid: other's port", in, uidSystem, "tcp/0.0.0.0/40020", "ok"},
		{"below min_uid: reserved", in, uidSystem, "tcp/0.0.0.0/3306", "ok"},
		{"exempt: other's port", in, uidExempt, "udp/dual/40020", "ok"},
		{"exempt: reserved", in, uidExempt, "tcp/0.0.0.0/3306", "ok"},
		{"outside the cgroup: other's port", out, uidA, "tcp/0.0.0.0/40020", "ok"},
		{"outside the cgroup: reserved", out, uidA, "udp/::/3306", "ok"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.h.run(t, tc.uid, "bind", tc.spec); got != tc.want {
				t.Errorf("uid %d bind %s: %s, want %s", tc.uid, tc.spec, got, tc.want)
			}
		})
	}
	cs, err := g.Counters()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range cs {
		if c.Kind == KindBind && c.UID == uidA && c.Proto == TCP && c.Port == 40020 && c.Count >= 1 {
			found = true
		}
	}
	if !found {
		t.Errorf("no refused-bind counter for uid %d tcp 40020 in %+v", uidA, cs)
	}
}

// TestUpdate changes an account's ports: the next bind follows, and only
// the entries that changed are written.
func TestUpdate(t *testing.T) {
	p := testPolicy()
	g, cg := installTest(t, p)
	in := helper{netns: testNetns(t, "upd"), cgroup: cg}
	if got := in.run(t, uidA, "bind", "tcp/0.0.0.0/40040", "tcp/0.0.0.0/40010"); got != "EPERM ok" {
		t.Fatalf("before: %s, want EPERM ok", got)
	}
	// a moves from 40010-40019 to 40040-40049.
	p.Accounts[0].Ports = []policies.PortRange{{Lo: 40040, Hi: 40049}}
	d, err := Compile(p)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := g.Plan(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(plan.Ports) != 2*20 || plan.MinUID != nil || len(plan.ExemptAdd)+len(plan.ExemptDel) != 0 {
		t.Errorf("plan: %d port entries (want 40), min_uid %v, exempt +%v -%v", len(plan.Ports), plan.MinUID, plan.ExemptAdd, plan.ExemptDel)
	}
	diff, err := g.Install(d)
	if err != nil {
		t.Fatal(err)
	}
	if len(diff.Ports) != 40 {
		t.Errorf("install wrote %d port entries, want 40", len(diff.Ports))
	}
	if got := in.run(t, uidA, "bind", "tcp/0.0.0.0/40040", "udp/::/40049", "tcp/0.0.0.0/40010"); got != "ok ok EPERM" {
		t.Errorf("after: %s, want ok ok EPERM", got)
	}
	again, err := g.Install(d)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Empty() {
		t.Errorf("second install changed %+v", again)
	}
	st, err := g.Status(d)
	if err != nil {
		t.Fatal(err)
	}
	if !st.InSync() {
		t.Errorf("status not in sync: %+v", st)
	}
	// Detach: the programs stop; the maps stay.
	if err := g.Detach(); err != nil {
		t.Fatal(err)
	}
	if got := in.run(t, uidA, "bind", "tcp/0.0.0.0/40010"); got != "ok" {
		t.Errorf("detached: %s, want ok", got)
	}
	st, err = g.Status(d)
	if err != nil {
		t.Fatal(err)
	}
	if st.InSync() || !st.Installed || st.Links[0].Attached {
		t.Errorf("status after detach: %+v", st)
	}
	// Install attaches again.
	if _, err := g.Install(d); err != nil {
		t.Fatal(err)
	}
	if got := in.run(t, uidA, "bind", "tcp/0.0.0.0/40010"); got != "EPERM" {
		t.Errorf("reattached: %s, want EPERM", got)
	}
}

// TestIngress sends UDP datagrams from another namespace over a veth pair.
func TestIngress(t *testing.T) {
	g, cg := installTest(t, testPolicy())
	rx := testNetns(t, "rx")
	tx := testNetns(t, "tx")
	rxName, txName := rx[len("/run/netns/"):], tx[len("/run/netns/"):]
	ip(t, "-n", txName, "link", "add", "bgtx", "address", "02:00:00:00:00:01", "type", "veth", "peer", "name", "bgrx", "address", "02:00:00:00:00:02", "netns", rxName)
	ip(t, "-n", txName, "addr", "add", "198.18.0.1/24", "dev", "bgtx")
	ip(t, "-n", rxName, "addr", "add", "198.18.0.2/24", "dev", "bgrx")
	ip(t, "-n", txName, "addr", "add", "2001:db8::1/64", "dev", "bgtx", "nodad")
	ip(t, "-n", rxName, "addr", "add", "2001:db8::2/64", "dev", "bgrx", "nodad")
	ip(t, "-n", txName, "link", "set", "bgtx", "up")
	ip(t, "-n", rxName, "link", "set", "bgrx", "up")
	// Static neighbours: no datagram waits for neighbour discovery, so
	// a datagram that does not arrive was dropped.
	ip(t, "-n", txName, "neigh", "add", "198.18.0.2", "lladdr", "02:00:00:00:00:02", "dev", "bgtx")
	ip(t, "-n", txName, "neigh", "add", "2001:db8::2", "lladdr", "02:00:00:00:00:02", "dev", "bgtx")
	ip(t, "-n", rxName, "neigh", "add", "198.18.0.1", "lladdr", "02:00:00:00:00:01", "dev", "bgrx")
	ip(t, "-n", rxName, "neigh", "add", "2001:db8::1", "lladdr", "02:00:00:00:00:01", "dev", "bgrx")
	recv := helper{netns: rx, cgroup: cg}
	for _, tc := range []struct {
		name string
		uid  int
		spec string
		from helper
		to   string
		want string
	}{
		{"own port v4", uidA, "udp/0.0.0.0/40010", helper{netns: tx}, "198.18.0.2", "got"},
		{"own port dual-stack, v4", uidA, "udp/dual/40012", helper{netns: tx}, "198.18.0.2", "got"},
		{"outside the zone v4", uidA, "udp/0.0.0.0/8080", helper{netns: tx}, "198.18.0.2", "timeout"},
		{"outside the zone v6", uidA, "udp/::/8081", helper{netns: tx}, "2001:db8::2", "timeout"},
		{"own port v6", uidA, "udp/::/40011", helper{netns: tx}, "2001:db8::2", "got"},
		{"outside the zone udplite", uidA, "udplite/0.0.0.0/8082", helper{netns: tx}, "198.18.0.2", "timeout"},
		{"own port udplite", uidA, "udplite/0.0.0.0/40016", helper{netns: tx}, "198.18.0.2", "got"},
		{"outside the zone over loopback", uidA, "udp/0.0.0.0/8083", helper{netns: rx}, "127.0.0.1", "got"},
		{"kernel-chosen port (a client)", uidA, "udp/0.0.0.0/0", helper{netns: tx}, "198.18.0.2", "got"},
		{"below min_uid", uidSystem, "udp/0.0.0.0/8084", helper{netns: tx}, "198.18.0.2", "got"},
		{"exempt", uidExempt, "udp/0.0.0.0/8085", helper{netns: tx}, "198.18.0.2", "got"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port, wait := recv.start(t, tc.uid, "recv", tc.spec, "700ms")
			if strings.HasPrefix(port, "E") {
				t.Fatalf("bind %s: %s", tc.spec, port)
			}
			dst := tc.to + ":" + port
			if strings.Contains(tc.to, ":") {
				dst = "[" + tc.to + "]:" + port
			}
			tc.from.run(t, -1, "send", strings.Split(tc.spec, "/")[0], dst, "3")
			if got := wait(); got != tc.want {
				t.Errorf("datagram to uid %d's %s: %s, want %s", tc.uid, tc.spec, got, tc.want)
			}
		})
	}
	cs, err := g.Counters()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, c := range cs {
		if c.Kind == KindIngress && c.UID == uidA && c.Proto == UDP && c.Port == 8080 && c.Count >= 1 {
			found = true
		}
	}
	if !found {
		t.Errorf("no dropped-datagram counter for uid %d udp 8080 in %+v", uidA, cs)
	}
}
