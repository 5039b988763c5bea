package views

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
)

// manyAccounts is make bench's policy: n accounts acct-NNNNNN, uid
// 100000+i, port 10000+i, TCP and UDP, zone 10000-65000.
func manyAccounts(n int) *policies.Policy {
	p := &policies.Policy{Table: "nftpol", Zone: policies.PortRange{Lo: 10000, Hi: 65000}, MinUID: 1000,
		Loopback: policies.LoopbackAllow, Action: policies.Reject, Protocols: both}
	for i := 0; i < n; i++ {
		port := uint16(10000 + i)
		p.Accounts = append(p.Accounts, &policies.Account{Name: fmt.Sprintf("acct-%06d", i), UID: uint32(100000 + i),
			Ports: []policies.PortRange{{Lo: port, Hi: port}}, Protocols: both})
	}
	return p
}

// realOwners keeps Publish's chown as root (the cost measured is the real
// one) and makes it a no-op without root.
func realOwners(b *testing.B) {
	if os.Geteuid() != 0 {
		recordOwners(b)
	}
}

// benchDir is where the benchmarks publish: $VIEWS_BENCH_DIR, else
// /dev/shm (tmpfs, as /run is on a systemd host), else the test's
// temporary directory.
func benchDir(b *testing.B) string {
	base := os.Getenv("VIEWS_BENCH_DIR")
	if base == "" {
		if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
			base = "/dev/shm"
		}
	}
	if base == "" {
		return filepath.Join(b.TempDir(), "run")
	}
	dir, err := os.MkdirTemp(base, "nftpol-views-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		b.Fatal(err)
	}
	return dir
}

// BenchmarkPublishFull50k: every view of 50,000 accounts into an empty run
// directory, as the first apply and the restore after a reboot do.
func BenchmarkPublishFull50k(b *testing.B) {
	realOwners(b)
	rs := compile(b, manyAccounts(50000))
	base := benchDir(b)
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		dir := filepath.Join(base, fmt.Sprint(i))
		b.StartTimer()
		st, err := Publish(dir, Publication{rs, "gen 1"}, nil, time.Now())
		if err != nil || st.Written != 50000 {
			b.Fatal(st, err)
		}
		b.StopTimer()
		os.RemoveAll(dir)
		b.StartTimer()
	}
}

// BenchmarkPublishOne50k: the last account's port widened, at 50,000
// accounts, over a run directory that holds the previous publication.
func BenchmarkPublishOne50k(b *testing.B) {
	realOwners(b)
	p := manyAccounts(50000)
	rs := compile(b, p)
	last := p.Accounts[len(p.Accounts)-1]
	narrow := last.Ports
	wide := []policies.PortRange{{Lo: narrow[0].Lo, Hi: narrow[0].Hi + 10}}
	// The two rulesets an apply alternates between, each laid over the
	// other as apply lays the compiled one over what the kernel holds.
	last.Ports = wide
	a := rules.Sync(rs, compile(b, p)).Target
	last.Ports = narrow
	c := rules.Sync(a, compile(b, p)).Target
	dir := benchDir(b)
	if _, err := Publish(dir, Publication{a, "a"}, nil, time.Now()); err != nil {
		b.Fatal(err)
	}
	from, to := Publication{a, "a"}, Publication{c, "c"}
	b.ResetTimer()
	for b.Loop() {
		st, err := Publish(dir, to, &from, time.Now())
		if err != nil || st.Full || st.Written != 1 {
			b.Fatal(st, err)
		}
		// The other way, next time: each is laid over the other.
		from, to = to, from
	}
}
