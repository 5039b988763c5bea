package state

import (
	"path/filepath"
	"testing"

	"github.com/nftpol/nftpol/compiler"
	"github.com/nftpol/nftpol/policies"
	"github.com/nftpol/nftpol/rules"
)

// policy50k is 50,000 accounts of one port each, TCP and UDP, compiled.
func policy50k(b *testing.B) (*policies.Policy, *rules.Ruleset) {
	p := manyAccounts(50000)
	rs, err := compiler.Compile(p)
	if err != nil {
		b.Fatal(err)
	}
	return p, rs
}

// BenchmarkLoadState50k reads the state of a 50,000-account apply: what
// plan and apply pay on their fast path instead of a full kernel read.
func BenchmarkLoadState50k(b *testing.B) {
	p, rs := policy50k(b)
	dir := filepath.Join(b.TempDir(), "state")
	if err := Save(dir, "bench", p.Digest(), rs, nil, nil); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Load(dir); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSaveState50k writes the state of a 50,000-account apply: what
// every apply pays after its commit.
func BenchmarkSaveState50k(b *testing.B) {
	p, rs := policy50k(b)
	dir := filepath.Join(b.TempDir(), "state")
	b.ReportAllocs()
	for b.Loop() {
		if err := Save(dir, "bench", p.Digest(), rs, nil, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMarshalRuleset50k and BenchmarkUnmarshalRuleset50k measure the
// ruleset's JSON form with its elements (state format 1, still read at
// boot after an upgrade).
func BenchmarkMarshalRuleset50k(b *testing.B) {
	_, rs := policy50k(b)
	data, err := marshalRulesetV1(rs)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := marshalRulesetV1(rs); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkUnmarshalRuleset50k(b *testing.B) {
	_, rs := policy50k(b)
	data, err := marshalRulesetV1(rs)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := unmarshalRuleset(data); err != nil {
			b.Fatal(err)
		}
	}
}
