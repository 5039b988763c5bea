//go:build linux

package kernel

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

// uidPortType is "uid . inet_service".
var uidPortType = nftables.MustConcatSetType(nftables.TypeUID, nftables.TypeInetService)

func encodeSet(t *nftables.Table, s *rules.Set) (*nftables.Set, error) {
	ns := &nftables.Set{Table: t, Name: s.Name, Interval: s.Interval, Comment: rules.SanitizeComment(s.Comment)}
	switch s.Key {
	case rules.KeyUID:
		ns.KeyType = nftables.TypeUID
		ns.KeyByteOrder = binaryutil.NativeEndian
	case rules.KeyPort:
		ns.KeyType = nftables.TypeInetService
		ns.KeyByteOrder = binaryutil.BigEndian
	case rules.KeyUIDPort:
		ns.KeyType = uidPortType
		// As nft does: the concat flag (and the field sizes that come
		// with it) only where the kernel needs them, for the pipapo
		// backend of interval sets.
		ns.Concatenation = s.Interval
	case rules.KeyUIDProtoPort:
		ns.KeyType = uidProtoPortType
	default:
		return nil, fmt.Errorf("set %s: unknown key type", s.Name)
	}
	if s.Interval && s.Key == rules.KeyUID {
		return nil, fmt.Errorf("set %s: uid sets have no intervals", s.Name)
	}
	if s.Dynamic {
		if s.Interval {
			return nil, fmt.Errorf("set %s: a dynamic set cannot hold intervals", s.Name)
		}
		ns.Dynamic, ns.HasTimeout, ns.Timeout, ns.Size, ns.Counter = true, true, s.Timeout, s.Size, s.Counter
	}
	return ns, nil
}

// decodeSet maps a kernel set's definition to the model. A set nftpol would
// never write (a map, timeouts, another key type) decodes with Key 0, which
// no desired set has, so the plan replaces the table.
func decodeSet(s kset) *rules.Set {
	has := func(flag uint32) bool { return s.flags&flag != 0 }
	interval, concat := has(unix.NFT_SET_INTERVAL), has(nftSetConcat)
	rs := &rules.Set{Name: s.name, Interval: interval, Comment: s.comment, Counter: s.counter}
	timeout := has(unix.NFT_SET_TIMEOUT) || s.hasTimeout
	if has(unix.NFT_SET_MAP) || has(unix.NFT_SET_ANONYMOUS) || has(unix.NFT_SET_CONSTANT) || has(unix.NFT_SET_EVAL) != timeout {
		return rs.DeriveRole()
	}
	if has(unix.NFT_SET_EVAL) {
		rs.Dynamic, rs.Timeout, rs.Size = true, s.timeout, s.size
	}
	switch s.keyType {
	case nftables.TypeUID.GetNFTMagic():
		rs.Key = rules.KeyUID
	case nftables.TypeInetService.GetNFTMagic():
		rs.Key = rules.KeyPort
	case uidPortType.GetNFTMagic():
		if concat == interval {
			rs.Key = rules.KeyUIDPort
		}
	case uidProtoPortType.GetNFTMagic():
		if !concat && !interval {
			rs.Key = rules.KeyUIDProtoPort
		}
	}
	return rs.DeriveRole()
}

// nftSetConcat is NFT_SET_CONCAT (not in x/sys/unix).
const nftSetConcat = 0x80
