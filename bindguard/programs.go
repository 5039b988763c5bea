package bindguard

import (
	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// The maps, by the names they are pinned under. Names stay within the
// kernel's 15 characters.
const (
	mapPorts    = "ports"
	mapConfig   = "config"
	mapExempt   = "exempt"
	mapCounters = "counters"
	mapBound    = "bound"
)

// The programs, by the names their links are pinned under.
const (
	progBind4   = "bind4"
	progBind6   = "bind6"
	progIngress = "ingress"
)

// MaxCounters is the size of the counters map, an LRU hash: the busiest
// (UID, port) pairs are kept, the oldest forgotten.
const MaxCounters = 16384

// Kinds of counter.
const (
	// KindBind counts refused binds.
	KindBind uint8 = 1
	// KindIngress counts dropped packets.
	KindIngress uint8 = 2
)

// configValid is set in config's flags once the maps hold a policy: until
// then (a zeroed array entry would say min_uid 0, enforcing root) the
// programs let everything pass.
const configValid = 1

// Offsets into the context structures of include/uapi/linux/bpf.h.
const (
	// struct bpf_sock_addr
	sockAddrUserPort = 24
	sockAddrType     = 32
	sockAddrProtocol = 36
	sockAddrSk       = 64
	// struct __sk_buff
	skbIngressIfindex = 36
	skbSk             = 168
	// struct bpf_sock
	sockType     = 8
	sockProtocol = 12
	sockSrcPort  = 44 // host byte order
	sockDstPort  = 48 // network byte order, 16 bits
	sockState    = 72

	bpfTCPListen = 10 // BPF_TCP_LISTEN
	loIfindex    = 1  // LOOPBACK_IFINDEX: lo is 1 in every namespace
)

// Stack slots (offsets from R10) the programs share.
const (
	slotKey     = -4  // u32 key for the array maps
	slotOwner   = -8  // u32 the port's owner
	slotUID     = -12 // u32 the UID checked
	slotPort    = -16 // u32 the port, host order
	slotCounter = -24 // counter key: uid u32, port u16, proto u8, kind u8
	slotOne     = -32 // u64 1, a new counter's value
)

// mapSpecs are the guard's maps, all pinned by name in the pin directory.
func mapSpecs() map[string]*ebpf.MapSpec {
	u32 := &btf.Int{Name: "u32", Size: 4}
	return map[string]*ebpf.MapSpec{
		// Indexed by proto<<16|port: two blocks of 65,536 entries,
		// 1 MiB, whatever the number of accounts. See Data.
		mapPorts: {Name: mapPorts, Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: portsEntries, Pinning: ebpf.PinByName},
		// One entry: min_uid u32, flags u32.
		mapConfig:   {Name: mapConfig, Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1, Pinning: ebpf.PinByName},
		mapExempt:   {Name: mapExempt, Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: MaxExempt, Pinning: ebpf.PinByName},
		mapCounters: {Name: mapCounters, Type: ebpf.LRUHash, KeySize: 8, ValueSize: 8, MaxEntries: MaxCounters, Pinning: ebpf.PinByName},
		// Socket-local storage: the port a UDP socket of an enforced
		// UID was explicitly bound to (see ingress). The kernel frees
		// it with the socket; it wants BTF for key and value.
		mapBound: {
			Name: mapBound, Type: ebpf.SkStorage, KeySize: 4, ValueSize: 8, Flags: unix.BPF_F_NO_PREALLOC, Pinning: ebpf.PinByName,
			Key: &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed},
			Value: &btf.Struct{Name: "nftpol_bound", Size: 8, Members: []btf.Member{
				{Name: "port", Type: u32, Offset: 0}, {Name: "uid", Type: u32, Offset: 32},
			}},
		},
	}
}

// collectionSpec is the guard: its maps and its three programs.
func collectionSpec() *ebpf.CollectionSpec {
	return &ebpf.CollectionSpec{
		Maps: mapSpecs(),
		Programs: map[string]*ebpf.ProgramSpec{
			progBind4:   {Name: "nftpol_bind4", Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet4Bind, Instructions: bindProgram(), License: "GPL"},
			progBind6:   {Name: "nftpol_bind6", Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet6Bind, Instructions: bindProgram(), License: "GPL"},
			progIngress: {Name: "nftpol_ingress", Type: ebpf.CGroupSKB, AttachType: ebpf.AttachCGroupInetIngress, Instructions: ingressProgram(), License: "GPL"},
		},
	}
}

// protoIndex sets R8 to the ports map's protocol block for a socket whose
// type is in typ and protocol in proto, or jumps to pass for sockets the
// guard leaves alone. SOCK_STREAM is TCP (MPTCP binds its TCP subflow);
// SOCK_DGRAM is UDP or UDP-Lite. stream, when not "", is jumped to for
// stream sockets instead of setting R8 (ingress checks their state first).
func protoIndex(typ, proto asm.Register, pass, stream, udp string) asm.Instructions {
	streamTarget := udp + "_tcp"
	if stream != "" {
		streamTarget = stream
	}
	return asm.Instructions{
		asm.Mov.Imm(asm.R8, int32(TCP)),
		asm.JEq.Imm(typ, unix.SOCK_STREAM, streamTarget),
		asm.JNE.Imm(typ, unix.SOCK_DGRAM, pass),
		asm.JEq.Imm(proto, unix.IPPROTO_UDP, udp),
		asm.JNE.Imm(proto, unix.IPPROTO_UDPLITE, pass),
	}
}

// enforced jumps to pass unless the UID in slotUID is enforced: the maps
// hold a policy, uid >= min_uid, and the UID is not exempt.
func enforced(pass string) asm.Instructions {
	return asm.Instructions{
		asm.StoreImm(asm.R10, slotKey, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapConfig),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, slotKey),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, pass),
		asm.LoadMem(asm.R1, asm.R0, 4, asm.Word),
		asm.JNE.Imm(asm.R1, configValid, pass),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.LoadMem(asm.R2, asm.R10, slotUID, asm.Word),
		asm.JLT.Reg(asm.R2, asm.R1, pass),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapExempt),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, slotUID),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, pass),
	}
}

// lookupPort looks up the port in slotPort for the protocol block in R8;
// R0 is the entry, or 0 (never, for a key in range).
func lookupPort() asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R1, asm.R8),
		asm.LSh.Imm(asm.R1, 16),
		asm.LoadMem(asm.R2, asm.R10, slotPort, asm.Word),
		asm.Or.Reg(asm.R1, asm.R2),
		asm.StoreMem(asm.R10, slotKey, asm.R1, asm.Word),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapPorts),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, slotKey),
		asm.FnMapLookupElem.Call(),
	}
}

// count adds one to the counter of kind for the UID in slotUID, the port
// in slotPort and the protocol block in R8. Work is bounded: one lookup,
// and one insert when the key is new (a race with another CPU inserting
// the same key loses that one count).
func count(kind uint8, label string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R1, asm.R10, slotUID, asm.Word).WithSymbol(label),
		asm.StoreMem(asm.R10, slotCounter, asm.R1, asm.Word),
		asm.LoadMem(asm.R1, asm.R10, slotPort, asm.Word),
		asm.StoreMem(asm.R10, slotCounter+4, asm.R1, asm.Half),
		asm.StoreMem(asm.R10, slotCounter+6, asm.R8, asm.Byte),
		asm.StoreImm(asm.R10, slotCounter+7, int64(kind), asm.Byte),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapCounters),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, slotCounter),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, label+"_new"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Ja.Label(label + "_done"),
		asm.Mov.Imm(asm.R1, 1).WithSymbol(label + "_new"),
		asm.StoreMem(asm.R10, slotOne, asm.R1, asm.DWord),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapCounters),
		asm.Mov.Reg(asm.R2, asm.R10),
		asm.Add.Imm(asm.R2, slotCounter),
		asm.Mov.Reg(asm.R3, asm.R10),
		asm.Add.Imm(asm.R3, slotOne),
		asm.Mov.Imm(asm.R4, int32(ebpf.UpdateNoExist)),
		asm.FnMapUpdateElem.Call(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol(label + "_done"),
	}
}

// bindProgram is the cgroup/bind4 and cgroup/bind6 program (the context,
// struct bpf_sock_addr, reads the same for both). It returns 0, which the
// kernel turns into EPERM, for an enforced UID's bind to a non-zero port
// that is reserved, or inside the zone and not the UID's own for the
// protocol; 1 otherwise. Binds outside the zone that are not reserved pass
// before the UID is even read (for TCP), so a client's bind costs one
// array lookup. A UDP socket that an enforced UID binds explicitly is
// marked in the bound map for the ingress program.
func bindProgram() asm.Instructions {
	var p asm.Instructions
	p = append(p,
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R7, asm.R6, sockAddrUserPort, asm.Word),
		asm.HostTo(asm.BE, asm.R7, asm.Half),
		asm.JEq.Imm(asm.R7, 0, "allow"),
		asm.StoreMem(asm.R10, slotPort, asm.R7, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, sockAddrType, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, sockAddrProtocol, asm.Word),
	)
	p = append(p, protoIndex(asm.R2, asm.R3, "allow", "", "udp")...)
	p = append(p,
		asm.Mov.Imm(asm.R8, int32(UDP)).WithSymbol("udp"),
		asm.Mov.Reg(asm.R8, asm.R8).WithSymbol("udp_tcp"),
	)
	p = append(p, lookupPort()...)
	p = append(p,
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.LoadMem(asm.R9, asm.R0, 4, asm.Word),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.StoreMem(asm.R10, slotOwner, asm.R1, asm.Word),
		asm.JNE.Imm(asm.R9, 0, "check"),
		asm.JEq.Imm(asm.R8, int32(TCP), "allow"),
		asm.FnGetCurrentUidGid.Call().WithSymbol("check"),
		asm.StoreMem(asm.R10, slotUID, asm.R0, asm.Word),
	)
	p = append(p, enforced("allow")...)
	p = append(p,
		asm.JSet.Imm(asm.R9, int32(FlagReserved), "deny"),
		asm.Mov.Reg(asm.R1, asm.R9),
		asm.And.Imm(asm.R1, int32(FlagZone)),
		asm.JEq.Imm(asm.R1, 0, "passed"),
		asm.Mov.Reg(asm.R1, asm.R9),
		asm.And.Imm(asm.R1, int32(FlagOwned)),
		asm.JEq.Imm(asm.R1, 0, "deny"),
		asm.LoadMem(asm.R1, asm.R10, slotOwner, asm.Word),
		asm.LoadMem(asm.R2, asm.R10, slotUID, asm.Word),
		asm.JNE.Reg(asm.R1, asm.R2, "deny"),
		// An allowed bind of an enforced UID: mark UDP sockets.
		asm.JNE.Imm(asm.R8, int32(UDP), "allow").WithSymbol("passed"),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapBound),
		asm.LoadMem(asm.R2, asm.R6, sockAddrSk, asm.DWord),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Imm(asm.R4, 1), // BPF_SK_STORAGE_GET_F_CREATE
		asm.FnSkStorageGet.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.StoreMem(asm.R0, 0, asm.R7, asm.Word),
		asm.LoadMem(asm.R1, asm.R10, slotUID, asm.Word),
		asm.StoreMem(asm.R0, 4, asm.R1, asm.Word),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("allow"),
		asm.Return(),
	)
	p = append(p, count(KindBind, "deny")...)
	p = append(p, asm.Return())
	return p
}

// ingressProgram is the cgroup_skb/ingress program. It runs for every
// packet delivered to a socket of the cgroup, after the transport found the
// socket, so it reads the socket, never the packet: no header offsets to
// chase, bounded work. It drops (returns 0) a packet that came from an
// interface other than lo to an enforced UID's
//   - TCP listener on a port that is not the UID's own (established
//     sockets pass: their connection was accepted from an allowed
//     listener, or the account opened it itself);
//   - unconnected UDP or UDP-Lite socket that the UID explicitly bound
//     to a port that is not its own (a bind outside the zone passes the
//     bind program). Sockets that got their port from the kernel (port 0,
//     autobind on sendto) are clients and receive their replies; so do
//     connected sockets, which only hear from the peer they chose.
//
// The UID is the socket's (bpf_get_socket_uid), not the current task's:
// in softirq there is no meaningful current task.
func ingressProgram() asm.Instructions {
	var p asm.Instructions
	p = append(p,
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R1, asm.R6, skbIngressIfindex, asm.Word),
		asm.JEq.Imm(asm.R1, loIfindex, "pass"),
		asm.LoadMem(asm.R1, asm.R6, skbSk, asm.DWord),
		asm.JEq.Imm(asm.R1, 0, "pass"),
		asm.FnSkFullsock.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.LoadMem(asm.R2, asm.R7, sockType, asm.Word),
		asm.LoadMem(asm.R3, asm.R7, sockProtocol, asm.Word),
	)
	p = append(p, protoIndex(asm.R2, asm.R3, "pass", "stream", "udp")...)
	p = append(p,
		asm.LoadMem(asm.R1, asm.R7, sockDstPort, asm.Half).WithSymbol("udp"),
		asm.JNE.Imm(asm.R1, 0, "pass"),
		asm.LoadMapPtr(asm.R1, 0).WithReference(mapBound),
		asm.Mov.Reg(asm.R2, asm.R7),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkStorageGet.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R9, asm.R0, 0, asm.Word),
		asm.LoadMem(asm.R1, asm.R7, sockSrcPort, asm.Word),
		asm.JNE.Reg(asm.R1, asm.R9, "pass"),
		asm.Mov.Imm(asm.R8, int32(UDP)),
		asm.Ja.Label("have"),
		asm.LoadMem(asm.R1, asm.R7, sockState, asm.Word).WithSymbol("stream"),
		asm.JNE.Imm(asm.R1, bpfTCPListen, "pass"),
		asm.LoadMem(asm.R1, asm.R7, sockSrcPort, asm.Word).WithSymbol("have"),
		asm.StoreMem(asm.R10, slotPort, asm.R1, asm.Word),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnGetSocketUid.Call(),
		asm.StoreMem(asm.R10, slotUID, asm.R0, asm.Word),
	)
	p = append(p, enforced("pass")...)
	p = append(p, lookupPort()...)
	p = append(p,
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R1, asm.R0, 4, asm.Word),
		asm.And.Imm(asm.R1, int32(FlagOwned)),
		asm.JEq.Imm(asm.R1, 0, "drop"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.LoadMem(asm.R2, asm.R10, slotUID, asm.Word),
		asm.JNE.Reg(asm.R1, asm.R2, "drop"),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("pass"),
		asm.Return(),
	)
	p = append(p, count(KindIngress, "drop")...)
	p = append(p, asm.Return())
	return p
}
