package compiler

import (
	"fmt"
	"testing"

	"github.com/nftpol/nftpol/policies"
)

// BenchmarkCompile50k compiles a policy of 50,000 accounts, each with one
// port for TCP and UDP, as policies.Load returns it.
func BenchmarkCompile50k(b *testing.B) {
	p := benchPolicy(50000)
	b.ReportAllocs()
	for b.Loop() {
		rs, err := Compile(p)
		if err != nil {
			b.Fatal(err)
		}
		if got := len(rs.Sets); got == 0 {
			b.Fatal("no sets")
		}
	}
}

// benchPolicy is n accounts with one port each for TCP and UDP, as
// policies.Load returns them.
func benchPolicy(n int) *policies.Policy {
	p := &policies.Policy{
		File: "nftpol.yaml", Table: "nftpol", Zone: policies.PortRange{Lo: 10000, Hi: 65000},
		MinUID: 1000, Loopback: policies.LoopbackAllow, Action: policies.Reject,
		Protocols: []policies.Protocol{policies.TCP, policies.UDP},
	}
	for i := range n {
		p.Accounts = append(p.Accounts, &policies.Account{
			Name: fmt.Sprintf("acct-%06d", i), UID: uint32(100000 + i),
			Ports:     []policies.PortRange{{Lo: uint16(10000 + i), Hi: uint16(10000 + i)}},
			Protocols: p.Protocols, File: "nftpol.yaml",
		})
	}
	return p
}
