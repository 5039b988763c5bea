package bindguard

import (
	"strconv"
	"testing"

	"github.com/nftpol/nftpol/policies"
)

// benchAccounts is the scale DESIGN.md designs for.
const benchAccounts = 50000

// benchPolicy has 50,000 accounts of one port each, for TCP and UDP, in the
// zone 10000-65000, as policies' benchmarks write them.
func benchPolicy() *policies.Policy {
	p := &policies.Policy{Zone: policies.PortRange{Lo: 10000, Hi: 65000}, MinUID: 1000,
		BindGuard: policies.BindGuard{Enabled: true, Reserved: []policies.PortRange{{Lo: 3306, Hi: 3306}, {Lo: 5432, Hi: 5432}, {Lo: 6379, Hi: 6379}}}}
	for i := range benchAccounts {
		port := uint16(10000 + i)
		p.Accounts = append(p.Accounts, &policies.Account{Name: "acct-" + strconv.Itoa(i), UID: uint32(100000 + i),
			Ports: []policies.PortRange{{Lo: port, Hi: port}}, Protocols: both})
	}
	return p
}

// BenchmarkBindClose binds and closes a TCP socket on an account's own zone
// port (the guard's longest path: port entry, min_uid, exempt, owner) as
// that account, in a cgroup with the guard at 50,000 accounts and in one
// without. bind-ns is the time of one socket+bind+close in the helper,
// without the helper's start.
func BenchmarkBindClose(b *testing.B) {
	requireRoot(b)
	ns := testNetns(b, "bench")
	for _, guarded := range []bool{false, true} {
		name := "without"
		if guarded {
			name = "guard50k"
		}
		b.Run(name, func(b *testing.B) {
			cg := testCgroup(b, name)
			if guarded {
				g := New(Config{PinDir: testBPFFS(b), Cgroup: cg})
				d, err := Compile(benchPolicy())
				if err != nil {
					b.Fatal(err)
				}
				if _, err := g.Install(d); err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { g.Remove() })
			}
			h := helper{netns: ns, cgroup: cg}
			b.ResetTimer()
			out := h.run(b, 100000, "loop", "tcp/0.0.0.0/10000", strconv.Itoa(max(b.N, 1000)))
			b.StopTimer()
			n, err := strconv.ParseFloat(out, 64)
			if err != nil {
				b.Fatalf("helper: %s", out)
			}
			b.ReportMetric(n, "bind-ns")
		})
	}
}

// BenchmarkInstall50k fills fresh maps for 50,000 accounts: create, write
// every entry, load and attach the programs (Compile not included).
func BenchmarkInstall50k(b *testing.B) {
	requireRoot(b)
	d, err := Compile(benchPolicy())
	if err != nil {
		b.Fatal(err)
	}
	cg := testCgroup(b, "")
	pins := testBPFFS(b)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		g := New(Config{PinDir: pins + strconv.Itoa(i), Cgroup: cg})
		if _, err := g.Install(d); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := g.Remove(); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkUpdateOne50k moves one account to another port on a guard of
// 50,000 accounts: read the maps, diff, write 4 entries.
func BenchmarkUpdateOne50k(b *testing.B) {
	requireRoot(b)
	p := benchPolicy()
	d0, err := Compile(p)
	if err != nil {
		b.Fatal(err)
	}
	p.Accounts[0].Ports = []policies.PortRange{{Lo: 64000, Hi: 64000}}
	d1, err := Compile(p)
	if err != nil {
		b.Fatal(err)
	}
	g := New(Config{PinDir: testBPFFS(b), Cgroup: testCgroup(b, "")})
	if _, err := g.Install(d0); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { g.Remove() })
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d := d1
		if i%2 == 1 {
			d = d0
		}
		diff, err := g.Install(d)
		if err != nil {
			b.Fatal(err)
		}
		if len(diff.Ports) != 4 {
			b.Fatalf("wrote %d entries, want 4", len(diff.Ports))
		}
	}
}

// BenchmarkCompile50k compiles the guard's data for 50,000 accounts.
func BenchmarkCompile50k(b *testing.B) {
	p := benchPolicy()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Compile(p); err != nil {
			b.Fatal(err)
		}
	}
}
