//go:build linux

package kernel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/rules"
)

var newTableType = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWTABLE)

// recordWith applies p through a fake dial on a Kernel opened with opts
// and returns the messages sent.
func recordWith(t *testing.T, p *rules.Plan, opts ...Option) []netlink.Message {
	t.Helper()
	var got []netlink.Message
	k, err := Open(append(opts, WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		got = append(got, req...)
		return nil, nil
	}))...)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if _, err := k.Apply(p, 0); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return got
}

// googleNewTable is the NEWTABLE google/nftables encodes (flags 0).
func googleNewTable(t *testing.T, name string, excl bool) netlink.Message {
	t.Helper()
	var got []netlink.Message
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		got = append(got, req...)
		return nil, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	tb := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	if excl {
		c.CreateTable(tb)
	} else {
		c.AddTable(tb)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	return got[1] // after batch begin
}

func newTables(ms []netlink.Message) []netlink.Message {
	var out []netlink.Message
	for _, m := range ms {
		if m.Header.Type == newTableType {
			out = append(out, m)
		}
	}
	return out
}

// tableFlagsOf decodes NFTA_TABLE_FLAGS of a NEWTABLE.
func tableFlagsOf(t *testing.T, m netlink.Message) uint32 {
	t.Helper()
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		t.Fatal(err)
	}
	ad.ByteOrder = binary.BigEndian
	var flags uint32
	seen := false
	for ad.Next() {
		if ad.Type() == unix.NFTA_TABLE_FLAGS {
			flags, seen = ad.Uint32(), true
		}
	}
	if err := ad.Err(); err != nil || !seen {
		t.Fatalf("NEWTABLE without flags attribute: %v", err)
	}
	return flags
}

// ownershipPlans are the plans that send a NEWTABLE: create, replace (its
// add) and the wake of a dormant table; excl says whether it is a create.
func ownershipPlans() []struct {
	name string
	plan *rules.Plan
	excl bool
} {
	return []struct {
		name string
		plan *rules.Plan
		excl bool
	}{
		{"create", &rules.Plan{Table: "nftpol", TableAction: rules.TableCreate}, true},
		{"replace", &rules.Plan{Table: "nftpol", TableAction: rules.TableReplace}, false},
		{"wake", &rules.Plan{Table: "nftpol", TableAction: rules.TableUpdate, Wake: true}, false},
	}
}

// TestNewTableWithoutOwnershipUnchanged: a Kernel without WithOwnership
// sends exactly the NEWTABLE google/nftables encodes, flags 0.
func TestNewTableWithoutOwnershipUnchanged(t *testing.T) {
	for _, c := range ownershipPlans() {
		nt := newTables(recordWith(t, c.plan))
		if len(nt) != 1 {
			t.Fatalf("%s: %d NEWTABLE messages, want 1", c.name, len(nt))
		}
		want := googleNewTable(t, "nftpol", c.excl)
		if nt[0].Header.Flags != want.Header.Flags || !bytes.Equal(nt[0].Data, want.Data) {
			t.Errorf("%s: NEWTABLE %v %x, google/nftables encodes %v %x", c.name, nt[0].Header.Flags, nt[0].Data, want.Header.Flags, want.Data)
		}
		if f := tableFlagsOf(t, nt[0]); f != 0 {
			t.Errorf("%s: flags %#x without ownership", c.name, f)
		}
	}
}

// TestNewTableWithOwnership: with WithOwnership every NEWTABLE carries
// OWNER|PERSIST, and differs from the flags-0 message in nothing else.
func TestNewTableWithOwnership(t *testing.T) {
	for _, c := range ownershipPlans() {
		msgs := recordWith(t, c.plan, WithOwnership())
		nt := newTables(msgs)
		if len(nt) != 1 {
			t.Fatalf("%s: %d NEWTABLE messages, want 1", c.name, len(nt))
		}
		if f := tableFlagsOf(t, nt[0]); f != unix.NFT_TABLE_F_MASK&^unix.NFT_TABLE_F_DORMANT {
			t.Errorf("%s: flags %#x, want OWNER|PERSIST (0x6)", c.name, f)
		}
		plain := googleNewTable(t, "nftpol", c.excl)
		if nt[0].Header.Flags != plain.Header.Flags {
			t.Errorf("%s: header flags %v, want %v", c.name, nt[0].Header.Flags, plain.Header.Flags)
		}
		// The flags value is the last 4 bytes of both.
		d, p := nt[0].Data, plain.Data
		if len(d) != len(p) || !bytes.Equal(d[:len(d)-4], p[:len(p)-4]) || !bytes.Equal(d[len(d)-4:], []byte{0, 0, 0, 6}) {
			t.Errorf("%s: owned NEWTABLE %x, plain %x: want only the flags to differ", c.name, d, p)
		}
		// The rest of the batch is what the plain Kernel sends.
		other := recordWith(t, c.plan)
		if len(other) != len(msgs) {
			t.Errorf("%s: %d messages with ownership, %d without", c.name, len(msgs), len(other))
		}
	}
}

// TestOwnSendsAdoption: Own sends NEWTABLE OWNER|PERSIST without EXCL (an
// existing orphan takes the flags), and needs WithOwnership.
func TestOwnSendsAdoption(t *testing.T) {
	var got []netlink.Message
	dial := WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		got = append(got, req...)
		return nil, nil
	})
	k, err := Open(dial, WithOwnership())
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	if err := k.Own("nftpol"); err != nil {
		t.Fatal(err)
	}
	nt := newTables(got)
	if len(nt) != 1 {
		t.Fatalf("%d NEWTABLE messages, want 1", len(nt))
	}
	if f := tableFlagsOf(t, nt[0]); f != 6 {
		t.Errorf("flags %#x, want 0x6", f)
	}
	if nt[0].Header.Flags&netlink.Excl != 0 {
		t.Errorf("adoption sent with EXCL: %v", nt[0].Header.Flags)
	}
	plain, err := Open(dial)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := plain.Own("nftpol"); err == nil {
		t.Error("Own on a Kernel without WithOwnership succeeded")
	}
}

func TestOwnedByOtherError(t *testing.T) {
	refused := &RefusedError{Index: 1, Count: 3, Op: "flush chain output", Err: unix.EPERM}
	e := error(&OwnedByOtherError{Table: "nftpol", PortID: 3367730834, PID: 4242, Err: refused})
	msg := e.Error()
	for _, want := range []string{"table inet nftpol is owned by another process", "`nftpol watch`", "netlink port 3367730834", "pid 4242", "stop it"} {
		if !strings.Contains(msg, want) {
			t.Errorf("%q lacks %q", msg, want)
		}
	}
	var re *RefusedError
	if !errors.Is(e, ErrOwnedByOther) || !errors.Is(e, unix.EPERM) || !errors.As(e, &re) {
		t.Errorf("errors.Is/As broken for %v", e)
	}
	bare := &OwnedByOtherError{Table: "nftpol", PortID: 7}
	if !errors.Is(bare, unix.EPERM) || strings.Contains(bare.Error(), "pid") {
		t.Errorf("without a refusal or pid: %v", bare)
	}
}
