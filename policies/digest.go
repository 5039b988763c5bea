package policies

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
)

// Digest is the sha256 of what decides the ruleset in p, in a fixed text
// form (file names aside): it changes when anything that decides the
// ruleset changes. apply records it in the state. Encoding 50,000 accounts
// as JSON for it cost about 15 ms of every apply; this costs a few.
func (p *Policy) Digest() string {
	h := sha256.New()
	b := make([]byte, 0, 64<<10)
	field := func(v ...any) {
		b = fmt.Appendln(b, v...)
	}
	field("table", p.Table, "zone", p.Zone.Lo, p.Zone.Hi, "min_uid", p.MinUID, "exempt", p.Exempt)
	field("loopback", p.Loopback, "action", p.Action, "protocols", p.Protocols, "include", p.Include)
	if p.BindGuard.Enabled {
		// Only when on: a policy without a guard keeps the digest it
		// had before guards existed.
		field("bind_guard", p.BindGuard.Cgroup, p.BindGuard.Reserved)
	}
	for _, a := range p.Accounts {
		b = append(b, "account\t"...)
		b = append(b, a.Name...)
		b = append(b, '\t')
		b = strconv.AppendUint(b, uint64(a.UID), 10)
		b = append(b, '\t')
		b = append(b, a.User...)
		for _, r := range a.Ports {
			b = append(b, '\t')
			b = strconv.AppendUint(b, uint64(r.Lo), 10)
			b = append(b, '-')
			b = strconv.AppendUint(b, uint64(r.Hi), 10)
		}
		for _, proto := range a.Protocols {
			b = append(b, '\t')
			b = append(b, proto...)
		}
		b = append(b, '\n')
		if len(b) > 60<<10 {
			h.Write(b)
			b = b[:0]
		}
	}
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}
