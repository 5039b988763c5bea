//go:build linux

package kernel

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"

	"github.com/nftpol/nftpol/netns"
)

// BenchmarkTableFromNothing50k measures what a heal after `nft flush
// ruleset` cannot go below: one batch that creates a table whose sets hold
// one `uid . port` element per account and protocol of 50,000 accounts
// (each with one port and a comment naming it): the batch's send, the
// kernel's work and its answer, the messages built beforehand and not
// counted. It writes through google/nftables, not nftpol's encoder, and
// compares the set backends the kernel offers: the
// interval sets of concatenations (pipapo) nftpol's layout uses (two
// protocols, eight shards each), the same elements in hash sets given a
// size (the kernel then picks nft_hash), and the hash layout's best case,
// one set shared by both protocols. Root only: `go test -run '^$' -bench
// TableFromNothing ./rules/kernel` as root.
func BenchmarkTableFromNothing50k(b *testing.B) {
	const accounts = 50000
	for _, c := range []struct {
		name     string
		sets     int
		interval bool
	}{
		{"pipapo/2x8_shards", 16, true},
		{"hash_sized/2_sets", 2, false},
		{"hash_sized/1_set", 1, false},
	} {
		b.Run(c.name, func(b *testing.B) {
			ns := requireRootNetns(b)
			f, err := netns.Open(ns)
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			conn, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.AsLasting(),
				nftables.WithSockOptions(func(c *netlink.Conn) error { return c.SetWriteBuffer(64 << 20) }))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.CloseLasting()
			perSet := accounts
			if c.sets > 2 {
				perSet = 2 * accounts / c.sets
			}
			for b.Loop() {
				b.StopTimer()
				t := conn.AddTable(&nftables.Table{Name: "floor", Family: nftables.TableFamilyINet})
				for s := range c.sets {
					set := &nftables.Set{Table: t, Name: fmt.Sprintf("ports_%d", s), KeyType: uidPortType,
						Interval: c.interval, Concatenation: c.interval}
					if !c.interval {
						set.Size = uint32(perSet + perSet/4)
					}
					elems := make([]nftables.SetElement, perSet)
					for i := range elems {
						key := make([]byte, 8)
						binary.BigEndian.PutUint32(key, uint32(100000+s*perSet+i))
						binary.BigEndian.PutUint16(key[4:], uint16(10000+i))
						elems[i] = nftables.SetElement{Key: key, Comment: fmt.Sprintf("acct-%06d", s*perSet+i)}
						if c.interval {
							elems[i].KeyEnd = key
						}
					}
					if err := conn.AddSet(set, nil); err != nil {
						b.Fatal(err)
					}
					for len(elems) > 0 {
						n := min(len(elems), 1000) // google/nftables: one 16-bit attribute per call
						if err := conn.SetAddElements(set, elems[:n]); err != nil {
							b.Fatal(err)
						}
						elems = elems[n:]
					}
				}
				b.StartTimer()
				if err := conn.Flush(); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				conn.DelTable(t)
				if err := conn.Flush(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
