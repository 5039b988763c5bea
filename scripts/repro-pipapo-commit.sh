#!/usr/bin/env bash
# repro-pipapo-commit.sh: what a packet sees while the kernel commits a
# transaction that touches a concatenated-interval (pipapo) set.
#
# Not nftpol: one table, one set, one rule, and a client that connects in a
# loop. Two throwaway network namespaces joined by a veth pair (198.18.0.0/15
# only); the server's output chain has nftpol's shape:
#
#	chain output { policy accept; oif lo accept; ct direction original accept;
#	               jump check;
#	               meta l4proto tcp ct direction reply meta skuid 2000 counter drop }
#	chain check  { meta skuid . tcp sport @SET accept }
#
# A listener runs as UID 2000 on 198.18.0.1:40000 and its port is in SET in
# every generation, so every connection should succeed: a SYN-ACK that the
# drop rule counts is a packet that saw the new rule but not the new set's
# elements. While a client connects in a loop (short timeout), a loop of
# `nft -f` transactions runs one variant:
#
#	idle           no transactions (baseline)
#	pipapo-1tx     create the set again under a new name with the same
#	               elements, point the rule at it, delete the old set: one
#	               transaction (what a shard rebuild does)
#	pipapo-2tx     the same in two: first the new set, filled and read by no
#	               rule; then the rule switch and the old set's deletion
#	pipapo-elems   add one unrelated element to the live set, delete the one
#	               added before
#	rule-only      replace the rule, same set
#	first-install  delete the table, then install it whole (set, chains,
#	               rules) in one transaction; the table's absence lets every
#	               packet through, so only the install can drop
#	first-install-2tx
#	               the same in two: first the table with its set filled and
#	               no chain, then the chains and rules
#	rbtree-1tx     as pipapo-1tx with a single-field interval set
#	               (tcp sport @SET: the kernel's rbtree backend)
#	hash-1tx       as pipapo-1tx with a uid . inet_service set without
#	               intervals (a hash set)
#
# It prints, per variant: transactions, connections, failed connections (and
# why) and the SYN-ACKs the drop rule counted.
#
#	sudo scripts/repro-pipapo-commit.sh            # all variants, 18 s each
#	DURATION=10 ELEMENTS=500 sudo scripts/repro-pipapo-commit.sh pipapo-1tx idle
#
# Needs root, nft, ip, python3, setpriv (PYTHON= picks the interpreter). Touches nothing outside the two
# namespaces it creates, and removes them on exit.
set -euo pipefail

DURATION=${DURATION:-18}          # seconds per variant (9 variants: about 3 minutes)
ELEMENTS=${ELEMENTS:-2000}        # other accounts' elements in the set
CONCURRENCY=${CONCURRENCY:-32}    # connections in flight
TIMEOUT=${TIMEOUT:-0.5}           # per connection; the SYN-ACK is retransmitted after 1 s
UID_TEST=2000
PORT=40000
ALL=(idle pipapo-1tx pipapo-2tx pipapo-elems rule-only first-install first-install-2tx rbtree-1tx hash-1tx)

self=$(readlink -f "$0")

# ---- inside the server namespace: one variant's transaction loop ----------

# elements VARIANT: the set's type, flags and elements, the test account's
# first. Each type gets ELEMENTS others, so every transaction of every variant
# carries the same amount.
set_body() {
	case $1 in
	rbtree-*)
		printf 'type inet_service; flags interval; elements = { %s-%s' $PORT $((PORT + 9))
		for ((i = 0; i < ELEMENTS; i++)); do printf ', %d-%d' $((41000 + i * 10)) $((41009 + i * 10)); done
		;;
	hash-*)
		printf 'type uid . inet_service; elements = { %d . %d' $UID_TEST $PORT
		for ((i = 0; i < ELEMENTS; i++)); do printf ', %d . %d' $((3000 + i)) $((50000 + i % 100)); done
		;;
	*)
		printf 'type uid . inet_service; flags interval; elements = { %d . %d-%d' $UID_TEST $PORT $((PORT + 9))
		for ((i = 0; i < ELEMENTS; i++)); do printf ', %d . %d-%d' $((3000 + i)) $((50000 + i % 100 * 10)) $((50009 + i % 100 * 10)); done
		;;
	esac
	printf ' }'
}

rule_for() { # VARIANT SETNAME
	case $1 in
	rbtree-*) echo "tcp sport @$2 accept" ;;
	*) echo "meta skuid . tcp sport @$2 accept" ;;
	esac
}

table_text() { # VARIANT [sets|chains]: the whole table, or only its set, or only its chains
	if [[ ${2:-sets} == sets ]]; then
		printf 'table inet repro {\n\tset s_0 { %s; }\n}\n' "$(set_body "$1")"
		[[ -z ${2:-} ]] || return 0
	fi
	cat <<EOF
table inet repro {
	chain check {
		$(rule_for "$1" s_0)
	}
	chain output {
		type filter hook output priority filter; policy accept;
		oif "lo" accept
		ct direction original accept
		jump check
		meta l4proto tcp ct direction reply meta skuid $UID_TEST counter drop
	}
}
EOF
}

listen_drops() { # SYNs the listener's full accept queue refused, this namespace
	awk '/^TcpExt:/ { if (!h) { for (i = 1; i <= NF; i++) n[$i] = i; h = 1 } else print $n["ListenDrops"] }' /proc/net/netstat
}

drops() { # the drop rule's packet count
	nft list chain inet repro output | sed -n 's/.*meta skuid '$UID_TEST' counter packets \([0-9]*\) .*/\1/p'
}

txnloop() { # VARIANT STOPFILE: runs until STOPFILE exists, prints "TXNS DROPS"
	local v=$1 stop=$2 g=0 n=0 dropped=0 body f
	f=$(mktemp)
	body=$(set_body "$v")
	while [[ ! -e $stop ]]; do
		case $v in
		idle) sleep 0.1; continue ;;
		pipapo-1tx | rbtree-1tx | hash-1tx)
			{
				echo "add set inet repro s_$((g + 1)) { $body; }"
				echo "flush chain inet repro check"
				echo "add rule inet repro check $(rule_for "$v" s_$((g + 1)))"
				echo "delete set inet repro s_$g"
			} >"$f"
			nft -f "$f"
			g=$((g + 1)) n=$((n + 1))
			;;
		pipapo-2tx)
			echo "add set inet repro s_$((g + 1)) { $body; }" >"$f"
			nft -f "$f"
			{
				echo "flush chain inet repro check"
				echo "add rule inet repro check $(rule_for "$v" s_$((g + 1)))"
				echo "delete set inet repro s_$g"
			} >"$f"
			nft -f "$f"
			g=$((g + 1)) n=$((n + 2))
			;;
		pipapo-elems)
			{
				echo "add element inet repro s_0 { $((4000 + n)) . 60000-60009 }"
				((n == 0)) || echo "delete element inet repro s_0 { $((4000 + n - 1)) . 60000-60009 }"
			} >"$f"
			nft -f "$f"
			n=$((n + 1))
			;;
		rule-only)
			{
				echo "flush chain inet repro check"
				echo "add rule inet repro check $(rule_for "$v" s_0)"
			} >"$f"
			nft -f "$f"
			n=$((n + 1))
			;;
		first-install)
			dropped=$((dropped + $(drops)))
			nft delete table inet repro
			table_text "$v" >"$f"
			nft -f "$f"
			n=$((n + 1)) # the install; the deletion cannot drop
			;;
		first-install-2tx)
			dropped=$((dropped + $(drops)))
			nft delete table inet repro
			table_text "$v" sets >"$f"
			nft -f "$f"
			table_text "$v" chains >"$f"
			nft -f "$f"
			n=$((n + 2))
			;;
		esac
	done
	rm -f "$f"
	echo "$n $((dropped + $(drops)))"
}

setup() { # VARIANT: a fresh table for the variant, counter at 0
	nft delete table inet repro 2>/dev/null || true
	local f
	f=$(mktemp)
	table_text "$1" >"$f"
	nft -f "$f"
	rm -f "$f"
	# The test account's element must be there (nft 1.0.6 can store an
	# element of a large concatenated set wrongly, see README).
	case $1 in
	rbtree-*) nft get element inet repro s_0 "{ $PORT-$((PORT + 9)) }" >/dev/null ;;
	hash-*) nft get element inet repro s_0 "{ $UID_TEST . $PORT }" >/dev/null ;;
	*) nft get element inet repro s_0 "{ $UID_TEST . $PORT-$((PORT + 9)) }" >/dev/null ;;
	esac
}

# ---- client and server (python, run in their namespaces) -------------------

server_py='
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("198.18.0.1", '$PORT'))
s.listen(65535)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
'

client_py='
import errno, selectors, socket, struct, sys, time
dur, conc, tmo = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
sel = selectors.DefaultSelector()
linger = struct.pack("ii", 1, 0)  # close with a reset: no TIME_WAIT, ports last
attempts = 0
fails = {}
end = time.monotonic() + dur
while True:
    now = time.monotonic()
    while now < end and len(sel.get_map()) < conc:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        s.connect_ex(("198.18.0.1", '$PORT'))
        sel.register(s, selectors.EVENT_WRITE, now + tmo)
        attempts += 1
    if not sel.get_map():
        break
    for key, _ in sel.select(0.01):
        s = key.fileobj
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            k = errno.errorcode.get(err, str(err))
            fails[k] = fails.get(k, 0) + 1
        sel.unregister(s)
        s.close()
    now = time.monotonic()
    for key in list(sel.get_map().values()):
        if key.data <= now:
            fails["timeout"] = fails.get("timeout", 0) + 1
            sel.unregister(key.fileobj)
            key.fileobj.close()
print(attempts, sum(fails.values()), ",".join(f"{k}:{v}" for k, v in sorted(fails.items())) or "-")
'

# ---- internal entry points (the script runs itself inside the namespace) ---

case ${1:-} in
__txnloop) shift; txnloop "$@"; exit ;;
__setup) shift; setup "$@"; exit ;;
__listen_drops) listen_drops; exit ;;
esac

# ---- driver ------------------------------------------------------------------

if [[ $(id -u) != 0 ]]; then
	echo "repro-pipapo-commit: needs root (network namespaces, nftables)" >&2
	exit 1
fi
for c in nft ip setpriv; do
	command -v $c >/dev/null || { echo "repro-pipapo-commit: needs $c" >&2; exit 1; }
done
# The server runs as the test UID: a python3 it may execute (not a shim under
# /root).
PYTHON=${PYTHON:-$( [[ -x /usr/bin/python3 ]] && echo /usr/bin/python3 || command -v python3 )}
[[ -n $PYTHON ]] || { echo "repro-pipapo-commit: needs python3" >&2; exit 1; }
variants=("$@")
((${#variants[@]})) || variants=("${ALL[@]}")
for v in "${variants[@]}"; do
	[[ " ${ALL[*]} " == *" $v "* ]] || { echo "repro-pipapo-commit: unknown variant $v (want: ${ALL[*]})" >&2; exit 2; }
done

SRV=rp-pipapo-srv-$$
CLI=rp-pipapo-cli-$$
tmp=$(mktemp -d)
server_pid=
txn_pid=
cleanup() {
	set +e
	[[ -n $txn_pid ]] && kill "$txn_pid" 2>/dev/null
	[[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null
	wait 2>/dev/null
	ip netns del "$SRV" 2>/dev/null
	ip netns del "$CLI" 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$SRV"
ip netns add "$CLI"
ip link add rp-s-$$ netns "$SRV" type veth peer name rp-c-$$ netns "$CLI"
ip -n "$SRV" link set lo up
ip -n "$CLI" link set lo up
ip -n "$SRV" addr add 198.18.0.1/24 dev rp-s-$$
ip -n "$CLI" addr add 198.18.0.2/24 dev rp-c-$$
ip -n "$SRV" link set rp-s-$$ up
ip -n "$CLI" link set rp-c-$$ up
ip netns exec "$CLI" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
ip netns exec "$SRV" sysctl -qw net.core.somaxconn=65535

ip netns exec "$SRV" setpriv --reuid $UID_TEST --regid $UID_TEST --clear-groups \
	"$PYTHON" -c "$server_py" >"$tmp/server.out" 2>&1 &
server_pid=$!
for _ in $(seq 50); do grep -q ready "$tmp/server.out" 2>/dev/null && break; sleep 0.1; done
grep -q ready "$tmp/server.out" || { echo "repro-pipapo-commit: server did not start" >&2; cat "$tmp/server.out" >&2; exit 1; }

echo "kernel $(uname -r), $(nft --version); $ELEMENTS other elements per set, ${DURATION}s per variant, $CONCURRENCY in flight, ${TIMEOUT}s timeout"
printf '%-17s %6s %9s %7s %-22s %13s %s\n' variant txns connects failed kinds "listen-drops" "rule-drops"
total_fail=0
for v in "${variants[@]}"; do
	DURATION=$DURATION ELEMENTS=$ELEMENTS ip netns exec "$SRV" bash "$self" __setup "$v"
	sleep 0.5
	rm -f "$tmp/stop"
	ld0=$(ip netns exec "$SRV" bash "$self" __listen_drops)
	ELEMENTS=$ELEMENTS ip netns exec "$SRV" bash "$self" __txnloop "$v" "$tmp/stop" >"$tmp/txn.out" &
	txn_pid=$!
	read -r attempts failed kinds < <(ip netns exec "$CLI" "$PYTHON" -c "$client_py" "$DURATION" "$CONCURRENCY" "$TIMEOUT")
	touch "$tmp/stop"
	wait "$txn_pid"
	txn_pid=
	read -r txns dropped <"$tmp/txn.out"
	ld=$(($(ip netns exec "$SRV" bash "$self" __listen_drops) - ld0))
	printf '%-17s %6s %9s %7s %-22s %13s %s\n' "$v" "$txns" "$attempts" "$failed" "$kinds" "$ld" "$dropped"
	total_fail=$((total_fail + failed))
done
