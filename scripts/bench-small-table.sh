#!/bin/bash
# The per-packet and memory cost of nftpol's fixed layout on a small host
# (README, "The ruleset"). At the example's size, 3 accounts, it compares
# nftpol's table (8 shards per protocol) with the same table without shards
# (one uid . inet_service set and one output rule per protocol) and with no
# table, and measures the kernel memory of each table.
#
# Root. It works in network namespaces it creates and deletes, with
# addresses in 198.18.0.0/15 only; the host's ruleset is not touched. The
# listeners and the client are nftpol-bench's (serve, client), as in
# `make bench`'s per-packet section: one client cycles through every
# listener in blocks of 500, so the configurations are measured interleaved.
#
#   make build && go build -o bin/nftpol-bench ./bench/cmd/nftpol-bench
#   sudo scripts/bench-small-table.sh
set -euo pipefail

NFTPOL=$(realpath "${NFTPOL:-bin/nftpol}")
BENCH=$(realpath "${BENCH:-bin/nftpol-bench}")
ROUNDS=${ROUNDS:-5}       # client runs
ITERS=${ITERS:-20000}     # operations of each kind per listener and run
CPU=${CPU:-1}             # client and listeners pinned here (-1: anywhere)
TABLES=${TABLES:-100}     # copies of each table for the memory figure
MEMROUNDS=${MEMROUNDS:-3}

work=$(mktemp -d)
tag=nftpol-small-$$
namespaces=()
cleanup() {
	exec 3>&- || true # the listeners exit when their stdin closes
	for ns in "${namespaces[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
	rm -rf "$work"
}
trap cleanup EXIT

newns() { ip netns add "$1"; namespaces+=("$1"); ip -n "$1" link set lo up; }

# The policy nftpol-bench generates for 3 accounts.
cat >"$work/small.yaml" <<'POLICY'
zone: "10000-65000"
min_uid: 1000
protocols: [tcp, udp]
accounts:
  - {name: acct-000000, uid: 100000, ports: ["10000"]}
  - {name: acct-000001, uid: 100001, ports: ["10001"]}
  - {name: acct-000002, uid: 100002, ports: ["10002"]}
POLICY
chmod 644 "$work/small.yaml"
"$NFTPOL" --config "$work/small.yaml" export >"$work/sharded.nft"
# The same table without shards: the elements of the 8 shard sets in one
# set, the 8 shard rules one rule without the mask.
python3 - "$work/sharded.nft" >"$work/flat.nft" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
for p in ("tcp", "udp"):
    elems = re.findall(r"set %s_ports_\d \{[^}]*?elements = \{ (.*?) \}" % p, text, re.S)
    text = re.sub(r"\tset %s_ports_[1-7] \{.*?\n\t\}\n\n" % p, "", text, flags=re.S)
    text = re.sub(r"(set %s_ports)_0 (\{[^}]*?elements = \{ ).*? \}" % p,
                  lambda m: m.group(1) + " " + m.group(2) + ", ".join(elems) + " }", text, flags=re.S)
    text = re.sub(r"\t\tmeta skuid & 7 == [1-7] meta skuid != @%s_moved.*\n" % p, "", text)
    text = re.sub(r"meta skuid & 7 == 0 (meta skuid != @%s_moved meta skuid \. %s sport @%s_ports)_0 accept comment \"([^\"(]*) \(uid & 7 == 0\)\"" % (p, p, p),
                  r'\1 accept comment "\2"', text)
print(text, end="")
PY
ctfile=$work/ct.nft
cat >"$ctfile" <<'NFT'
table inet nftbench_ct {
	chain input {
		type filter hook input priority filter; policy accept;
		ct state established accept
	}
}
NFT
sets() { grep -c $'^\tset ' "$1"; }
rules() { grep -cE $'^\t\t(oif|iif|ct|meta|tcp|udp) ' "$1"; }
echo "nftpol's table: $(sets "$work/sharded.nft") sets, $(rules "$work/sharded.nft") rules;" \
	"without shards: $(sets "$work/flat.nft") sets, $(rules "$work/flat.nft") rules"

# Per packet.
cli=$tag-cli
newns "$cli"
ip netns exec "$cli" sysctl -qw net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="1024 65535"
mkfifo "$work/stdin"
exec 3<>"$work/stdin"
configs=(none ct sharded flat)
targets=()
i=0
for cfg in "${configs[@]}"; do
	i=$((i + 1))
	ns=$tag-$cfg
	newns "$ns"
	ip link add "bs$$-$i" netns "$ns" type veth peer name "bc$$-$i" netns "$cli"
	ip -n "$ns" addr add "198.18.$i.1/24" dev "bs$$-$i"
	ip -n "$cli" addr add "198.18.$i.2/24" dev "bc$$-$i"
	ip -n "$ns" link set "bs$$-$i" up
	ip -n "$cli" link set "bc$$-$i" up
	case $cfg in
	ct) ip netns exec "$ns" nft -f "$ctfile" ;;
	flat) ip netns exec "$ns" nft -f "$work/flat.nft" ;;
	sharded) "$NFTPOL" --config "$work/small.yaml" --netns "$ns" --state-dir "$work/state-$cfg" --run-dir "$work/run-$cfg" apply >/dev/null ;;
	esac
	[ "$cfg" = none ] || ip netns exec "$ns" sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_time_wait=1 2>/dev/null || true
	for acc in 0 2; do # the first and the last account
		out=$work/serve-$cfg-$acc
		"$BENCH" serve -netns "$ns" -addr "198.18.$i.1" -uid $((100000 + acc)) -port $((10000 + acc)) \
			-max 2h -cpu "$CPU" -nice -10 <"$work/stdin" >"$out" &
		for _ in $(seq 100); do grep -q ready "$out" 2>/dev/null && break; sleep 0.1; done
		grep -q ready "$out"
		targets+=("$cfg/$acc=198.18.$i.1:$((10000 + acc))")
	done
done
for r in $(seq "$ROUNDS"); do
	echo "per-packet run $r/$ROUNDS" >&2
	ip netns exec "$cli" nice -n -10 "$BENCH" client -targets "${targets[*]}" -n "$ITERS" -block 500 -cpu "$CPU" >"$work/run$r.json"
done

# Kernel memory: TABLES copies of each table loaded by an nft that runs in
# a memory cgroup of its own (created here, removed at the end), which the
# kernel charges for the tables' sets, elements and rules; alternating,
# MEMROUNDS times.
mem=$tag-mem
newns "$mem"
if [ -f /sys/fs/cgroup/memory/memory.kmem.usage_in_bytes ]; then # cgroup v1
	cg=/sys/fs/cgroup/memory/$tag
	kmem() { cat "$cg/memory.kmem.usage_in_bytes"; }
else # cgroup v2, with the memory controller enabled at the root
	cg=/sys/fs/cgroup/$tag
	kmem() { awk '$1 == "kernel" {print $2}' "$cg/memory.stat"; }
fi
mkdir "$cg"
trap 'cleanup; rmdir "$cg"' EXIT
incg() { sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cg" "$@"; }
for layout in sharded flat; do
	for t in $(seq "$TABLES"); do sed "s/^table inet nftpol /table inet nftpol_$t /" "$work/$layout.nft"; done >"$work/many-$layout.nft"
done
for r in $(seq "$MEMROUNDS"); do
	for layout in sharded flat; do
		before=$(kmem)
		incg ip netns exec "$mem" nft -f "$work/many-$layout.nft"
		after=$(kmem)
		echo "mem $layout $(((after - before) / TABLES / 1024))" >>"$work/mem.txt"
		incg ip netns exec "$mem" nft flush ruleset
		sleep 1 # the kernel frees the tables after an RCU grace period
	done
done

python3 - "$work" "$ROUNDS" <<'PY'
import json, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
runs = [json.load(open(f"{work}/run{r}.json")) for r in range(1, rounds + 1)]
print("median over %d runs of each run's median, µs (ratio to no table)" % rounds)
print("%-9s %-5s %16s %16s" % ("table", "uid", "connect+close", "round trip"))
for acc in ("0", "2"):
    base = {k: statistics.median(run["none/" + acc][k]["median_ns"] for run in runs) for k in ("connect", "rr")}
    for cfg in ("none", "ct", "sharded", "flat"):
        m = {k: statistics.median(run[cfg + "/" + acc][k]["median_ns"] for run in runs) for k in ("connect", "rr")}
        print("%-9s %-5s %8.1f (%.3f) %8.1f (%.3f)" % (cfg, "first" if acc == "0" else "last",
              m["connect"] / 1e3, m["connect"] / base["connect"], m["rr"] / 1e3, m["rr"] / base["rr"]))
# sharded against flat, run by run
for acc in ("0", "2"):
    for k in ("connect", "rr"):
        rs = [run["sharded/" + acc][k]["median_ns"] / run["flat/" + acc][k]["median_ns"] for run in runs]
        print("sharded/flat %s %s: %s" % ("first" if acc == "0" else "last", k, " ".join("%.3f" % x for x in rs)))
mem = {}
for line in open(f"{work}/mem.txt"):
    _, layout, kib = line.split()
    mem.setdefault(layout, []).append(int(kib))
for layout, v in mem.items():
    print("kernel memory per table, %s: %s KiB (median %d)" % (layout, " ".join(map(str, v)), statistics.median(v)))
PY
