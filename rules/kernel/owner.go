//go:build linux

package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Table ownership (Linux 5.12 OWNER, 6.9 PERSIST). A table created with
// NFT_TABLE_F_OWNER belongs to the netlink socket that created it: every
// other socket's change to it (a rule, a set element, its deletion, `nft
// flush ruleset`, which skips it) is refused with EPERM, while reads (dumps)
// from any socket still work. Without PERSIST the kernel destroys the table
// when that socket closes; with PERSIST it only drops OWNER then, and the
// orphan (PERSIST alone) can be adopted by the next socket that sends
// NEWTABLE with OWNER|PERSIST. Measured on Linux 6.18:
//
//   - orphan (PERSIST) + NEWTABLE OWNER|PERSIST from a new socket: adopted.
//   - table with flags 0 (or DORMANT) + NEWTABLE OWNER|PERSIST: EOPNOTSUPP.
//     Neither flag can be added to an existing table (OWNER only to an
//     orphan, PERSIST never): only deleting and creating it again, in one
//     transaction, gives it an owner.
//   - table owned by a live socket + anything from another socket,
//     NEWTABLE (with or without EXCL), DELTABLE, NEWCHAIN: EPERM.
//   - OWNER without PERSIST on an existing table, orphan or flags 0:
//     EOPNOTSUPP (on an orphan it would drop PERSIST, which cannot
//     change). At creation OWNER alone is accepted, and PERSIST can then
//     never be added (EOPNOTSUPP).
//   - PERSIST without OWNER at creation: accepted; the table is an orphan
//     from the start, which anybody may change or delete, and which a
//     later NEWTABLE OWNER|PERSIST adopts. But every later NEWTABLE on it
//     must carry PERSIST again: flags 0 (what google/nftables sends, and
//     what clears dormant) is EOPNOTSUPP.
//   - once owned, the owner's own NEWTABLE must carry OWNER|PERSIST again
//     (flags 0, OWNER or PERSIST alone: EOPNOTSUPP); the same flags are a
//     no-op, OWNER|PERSIST|DORMANT puts it to sleep.
//   - `nft flush ruleset` deletes an orphan like any table: PERSIST keeps a
//     table across its owner's exit, not against others.
//
// A kernel without PERSIST (before 6.9) refuses the flag with EOPNOTSUPP,
// one without OWNER (before 5.12) too: flags outside NFT_TABLE_F_MASK are
// refused, not ignored.

// Table flags, linux/netfilter/nf_tables.h (enum nft_table_flags).
const (
	tableFDormant = unix.NFT_TABLE_F_DORMANT // 1
	tableFOwner   = 2                        // NFT_TABLE_F_OWNER, 5.12
	tableFPersist = 4                        // NFT_TABLE_F_PERSIST, 6.9

	// ownedFlags are the flags an owning Kernel gives its table.
	ownedFlags = tableFOwner | tableFPersist
)

// nftaTableOwner is NFTA_TABLE_OWNER: the owner's netlink port ID (u32,
// network byte order), in a GETTABLE reply for a table that has OWNER.
const nftaTableOwner = 7

// WithOwnership makes the Kernel own the tables it writes: every NEWTABLE
// it sends (create, the add of a replace, the wake of a dormant table)
// carries NFT_TABLE_F_OWNER|NFT_TABLE_F_PERSIST, and goes over the socket
// the Kernel keeps open until Close, which the kernel then takes for the
// owner. While that socket is open no other process can change or delete
// the table; after it closes (Close, a crash, or a failed commit, after
// which the Kernel opens a new socket) the table stays as it was, ownerless,
// until Own adopts it again. Needs Linux 6.9 (CanOwn tells).
//
// Without this option the Kernel sends flags 0, as nft does.
func WithOwnership() Option {
	return func(k *Kernel) error {
		k.own = true
		return nil
	}
}

// tableFlags returns the flags every NEWTABLE of this Kernel carries.
func (k *Kernel) tableFlags() uint32 {
	if k.own {
		return ownedFlags
	}
	return 0
}

// newTableOp is a NEWTABLE for table inet <name> with the given flags,
// encoded as google/nftables encodes it (addTable) but for the flags, which
// it always sends as 0. excl makes it a create: the kernel refuses it if
// the table exists; without it an existing table takes the new flags.
func newTableOp(desc, name string, flags uint32, excl bool) op {
	// Request|Acknowledge, then Excl for CreateTable, Create for AddTable,
	// as google/nftables sets them.
	hf := netlink.Request | netlink.Acknowledge | netlink.Create
	if excl {
		hf = netlink.Request | netlink.Acknowledge | netlink.Excl
	}
	return op{desc: desc, raw: &rawMsg{
		typ:   netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWTABLE),
		flags: hf,
		data: func(b []byte) []byte {
			b = append(b, unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0)
			b = appendStringAttr(b, unix.NFTA_TABLE_NAME, name)
			return appendAttr(b, unix.NFTA_TABLE_FLAGS, binary.BigEndian.AppendUint32(nil, flags))
		},
	}}
}

// TableState is what the kernel says about a table's flags and owner.
type TableState struct {
	Exists  bool
	Dormant bool
	// Owned: a live netlink socket owns the table (NFT_TABLE_F_OWNER);
	// only that socket may change it.
	Owned bool
	// Persist: the table outlives its owner's socket (NFT_TABLE_F_PERSIST).
	// Persist without Owned is an orphan that Own can adopt.
	Persist bool
	// PortID is the owner socket's netlink port ID, when Owned.
	PortID uint32
	// PID is the process that holds the owner socket, when Owned and it
	// could be found (sock_diag gives the socket's inode, /proc the
	// process holding it; 0 when the socket is held by several processes
	// or by none this process may see). A netlink port ID is not a PID:
	// only a process's first socket gets its PID for port ID.
	PID int
	// Mine: the owner is this Kernel's socket.
	Mine bool
}

// Orphan says whether the table survived its owner and waits to be adopted.
func (s TableState) Orphan() bool { return s.Exists && s.Persist && !s.Owned }

func (s TableState) String() string {
	switch {
	case !s.Exists:
		return "absent"
	case s.Mine:
		return "owned by this process"
	case s.Owned:
		return "owned by " + ownerString(s.PortID, s.PID)
	case s.Persist:
		return "orphaned (its owner exited; can be adopted)"
	}
	return "not owned"
}

func ownerString(port uint32, pid int) string {
	s := fmt.Sprintf("netlink port %d", port)
	if pid != 0 {
		s += fmt.Sprintf(", pid %d", pid)
	}
	return s
}

// TableOwner reads table inet <table>'s flags and owner. Reads are allowed
// on any socket, owned table or not.
func (k *Kernel) TableOwner(table string) (TableState, error) {
	conn, err := k.dial()
	if err != nil {
		return TableState{}, err
	}
	defer conn.Close()
	st, err := k.tableState(conn, table)
	if err != nil {
		return st, err
	}
	switch {
	case st.Mine:
		st.PID = os.Getpid()
	case st.Owned:
		st.PID = k.portPID(st.PortID)
	}
	return st, nil
}

// tableState reads the table's flags and owner on conn, without the PID.
func (k *Kernel) tableState(conn *netlink.Conn, table string) (TableState, error) {
	info, err := findTableInfo(conn, table)
	if err != nil || !info.found {
		return TableState{}, err
	}
	st := TableState{
		Exists:  true,
		Dormant: info.flags&tableFDormant != 0,
		Owned:   info.flags&tableFOwner != 0,
		Persist: info.flags&tableFPersist != 0,
		PortID:  info.owner,
	}
	if st.Owned && k.commitConn != nil && k.commitConn.PID() == st.PortID {
		st.Mine = true
	}
	return st, nil
}

// ErrOwnedByOther matches (errors.Is) an OwnedByOtherError.
var ErrOwnedByOther = errors.New("the table is owned by another process")

// ErrCannotAdopt is Own's answer for a table that was created without
// NFT_TABLE_F_PERSIST (by a Kernel without ownership, or by nft): the kernel
// never adds PERSIST or OWNER to an existing table. The way to own it is to
// delete and create it again in one transaction (a rules.TableReplace plan
// applied by a Kernel WithOwnership).
var ErrCannotAdopt = errors.New("the table was created without the persist flag and cannot be adopted; replace it to own it")

// ErrNoPersist says the kernel does not support NFT_TABLE_F_PERSIST (Linux
// 6.9): tables cannot outlive their owner, and WithOwnership cannot work.
var ErrNoPersist = errors.New("this kernel does not support persistent owned tables (NFT_TABLE_F_PERSIST, Linux 6.9 or later)")

// ErrNoTable is Own's answer for a table that does not exist.
var ErrNoTable = errors.New("no such table")

// OwnedByOtherError is a change to a table that another live netlink
// socket owns, refused by the kernel (EPERM).
type OwnedByOtherError struct {
	Table  string
	PortID uint32 // the owner's netlink port ID
	PID    int    // the owner's process, 0 when not known (see TableState.PID)
	// Err is the kernel's refusal, when a commit was refused.
	Err error
}

func (e *OwnedByOtherError) Error() string {
	return fmt.Sprintf("table inet %s is owned by another process (the nftpol agent, `nftpol watch`, %s); stop it or run the command while it serves it",
		e.Table, ownerString(e.PortID, e.PID))
}

func (e *OwnedByOtherError) Is(target error) bool { return target == ErrOwnedByOther }

// Unwrap gives the kernel's refusal (a RefusedError wrapping EPERM), or
// EPERM itself.
func (e *OwnedByOtherError) Unwrap() error {
	if e.Err != nil {
		return e.Err
	}
	return unix.EPERM
}

// explainRefusal turns a commit's EPERM into an OwnedByOtherError when one
// of tables is owned by another socket: EPERM for one operation of a batch
// means exactly that (a process without CAP_NET_ADMIN has its whole batch
// refused at the header). Other errors come back unchanged.
func (k *Kernel) explainRefusal(err error, tables ...string) error {
	var re *RefusedError
	if k.fake != nil || !errors.As(err, &re) || !errors.Is(re.Err, unix.EPERM) {
		return err
	}
	for _, t := range tables {
		if t == "" {
			continue
		}
		st, rerr := k.TableOwner(t)
		if rerr == nil && st.Owned && !st.Mine {
			return &OwnedByOtherError{Table: t, PortID: st.PortID, PID: st.PID, Err: err}
		}
	}
	return err
}

// Own makes this Kernel's socket the owner of table inet <table>, which
// must exist: an orphan (created by an owning Kernel whose socket has since
// closed) is adopted, with its content and dormancy untouched, in a
// transaction of its own (the generation moves on); a table this Kernel
// already owns costs one read. Call it before planning on a table the
// Kernel did not create itself, and again after a failed commit: that one
// closed the owning socket (see WithOwnership).
//
// Errors: ErrNoTable; *OwnedByOtherError (errors.Is ErrOwnedByOther) when a
// live socket owns it; ErrCannotAdopt when the table was created without
// PERSIST (replace it instead) on a kernel that has PERSIST, ErrNoPersist
// on one that has not. The Kernel must be opened WithOwnership.
func (k *Kernel) Own(table string) error {
	if !k.own {
		return errors.New("Own needs a Kernel opened WithOwnership")
	}
	if k.fake != nil {
		return k.commit([]op{newTableOp("adopt table inet "+table, table, ownedFlags, false)}, 0, 0)
	}
	// The adoption is a NEWTABLE without EXCL, which would create the
	// table if it had gone since it was read: the batch carries the
	// generation of the read, so that the kernel refuses it then.
	for try := 0; ; try++ {
		conn, err := k.conn()
		if err != nil {
			return err
		}
		gen, err := generation(conn)
		if err != nil {
			k.dropConn()
			return err
		}
		st, err := k.tableState(conn, table)
		if err != nil {
			k.dropConn()
			return err
		}
		switch {
		case !st.Exists:
			return fmt.Errorf("adopting table inet %s: %w", table, ErrNoTable)
		case st.Mine:
			return nil
		case st.Owned:
			return &OwnedByOtherError{Table: table, PortID: st.PortID, PID: k.portPID(st.PortID)}
		case !st.Persist:
			ok, err := k.CanOwn()
			if err != nil {
				return fmt.Errorf("adopting table inet %s: %w", table, err)
			}
			if !ok {
				return fmt.Errorf("adopting table inet %s: %w", table, ErrNoPersist)
			}
			return fmt.Errorf("adopting table inet %s: %w", table, ErrCannotAdopt)
		}
		flags := uint32(ownedFlags)
		if st.Dormant {
			flags |= tableFDormant
		}
		err = k.commit([]op{newTableOp("adopt table inet "+table, table, flags, false)}, gen, 0)
		if errors.Is(err, ErrGenerationChanged) && try < 3 {
			continue
		}
		if err != nil {
			return fmt.Errorf("adopting table inet %s: %w", table, k.explainRefusal(err, table))
		}
		return nil
	}
}

// CanOwn says whether the kernel supports owned persistent tables
// (WithOwnership, Own). It sends a batch that creates a probe table with
// OWNER|PERSIST and then deletes a table that does not exist: the kernel
// answers the creation (accepted, or EOPNOTSUPP for flags it does not
// know), refuses the deletion (ENOENT), and so aborts the transaction.
// Nothing is created, and the ruleset generation does not move.
func (k *Kernel) CanOwn() (bool, error) {
	if k.fake != nil {
		return true, nil
	}
	conn, err := k.dial()
	if err != nil {
		return false, err
	}
	defer conn.Close()
	probe := "nftpol-probe-" + strconv.Itoa(os.Getpid()) + "-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	ops := []op{
		newTableOp("create probe table inet "+probe+" with owner and persist flags", probe, ownedFlags, true),
		delTableOp("delete table inet "+probe+"-absent (to abort the probe)", probe+"-absent"),
	}
	batch, fill, err := encode(ops)
	if err != nil {
		return false, err
	}
	err = k.exchange(conn, batch, fill, ops, 0)
	var re *RefusedError
	if !errors.As(err, &re) {
		if err == nil {
			// Both accepted: cannot be, the second table does not exist.
			return false, fmt.Errorf("probing for owned tables: the kernel accepted the deletion of a table that does not exist (probe %s)", probe)
		}
		return false, fmt.Errorf("probing for owned tables: %w", err)
	}
	switch {
	case re.Index == 2 && errors.Is(re.Err, unix.ENOENT):
		return true, nil
	case re.Index == 1 && errors.Is(re.Err, unix.EOPNOTSUPP):
		return false, nil
	}
	return false, fmt.Errorf("probing for owned tables: %w", err)
}
