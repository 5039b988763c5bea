#!/usr/bin/env bash
# nftpol demo: applies examples/nftpol.yaml inside a throwaway network
# namespace, shows plan -> apply -> empty plan, then proves with real
# connections from a second namespace who gets through and who does not.
# Touches nothing outside the two namespaces it creates; cleans up on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) != 0 ]]; then
	echo "demo: needs root (network namespaces, nftables)" >&2
	exit 1
fi
need=()
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
	apt-get update -qq && apt-get install -y -qq "${need[@]}"
fi

tmp=$(mktemp -d)
chmod 0755 "$tmp" # the probe runs as the accounts' UIDs
SRV=nftpol-demo-srv-$$
CLI=nftpol-demo-cli-$$
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	ip netns del "$SRV" 2>/dev/null || true
	ip netns del "$CLI" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

echo "== building nftpol"
go build -o "$tmp/nftpol" ./cmd/nftpol
go build -o "$tmp/probe" ./integration/probe

echo "== two namespaces joined by a veth pair: $SRV (server) and $CLI (client)"
ip netns add "$SRV"
ip netns add "$CLI"
ip -n "$SRV" link set lo up
ip -n "$CLI" link set lo up
ip -n "$SRV" link add veth0 type veth peer name veth1 netns "$CLI"
ip -n "$SRV" addr add 198.18.0.1/24 dev veth0
ip -n "$CLI" addr add 198.18.0.2/24 dev veth1
ip -n "$SRV" addr add 2001:db8::1/64 dev veth0 nodad
ip -n "$CLI" addr add 2001:db8::2/64 dev veth1 nodad
ip -n "$SRV" link set veth0 up
ip -n "$CLI" link set veth1 up

# A root-owned copy of examples/: nftpol refuses policy files that others
# could change, and a checkout may belong to the user who ran sudo.
cp -R examples "$tmp/examples"
chown -R 0:0 "$tmp/examples"
chmod -R go-w "$tmp/examples"
nftpol() { "$tmp/nftpol" --config "$tmp/examples/nftpol.yaml" --netns "$SRV" --state-dir "$tmp/state" --run-dir "$tmp/run" "$@"; }

echo
echo "== nftpol validate"
nftpol validate
echo
echo "== nftpol plan"
nftpol plan
echo
echo "== nftpol apply"
nftpol apply
echo
echo "== nftpol plan (again)"
nftpol plan
echo
echo "== nft list table inet nftpol (in $SRV)"
ip netns exec "$SRV" nft list table inet nftpol

listen() { # uid proto port
	local out="$tmp/listen-$1-$2-$3"
	"$tmp/probe" listen -netns "$SRV" -uid "$1" -gid "$1" -proto "$2" -addr :: -port "$3" -timeout 60s \
		< <(sleep 60) > "$out" 2>&1 &
	pids+=($!)
	for _ in $(seq 50); do grep -q ready "$out" 2>/dev/null && return; sleep 0.1; done
	echo "listener $1 $2/$3 did not start: $(cat "$out")" >&2
	exit 1
}

# who, uid, proto, port, address, expected
cases=(
	"site12 (uid 1012) on its own port|1012|tcp|40010|198.18.0.1|ok"
	"site12 (uid 1012) on its own port, IPv6|1012|tcp|40011|2001:db8::1|ok"
	"site12 (uid 1012) on its own port, UDP|1012|udp|40012|198.18.0.1|ok"
	"site12 (uid 1012) on site13's port|1012|tcp|40025|198.18.0.1|blocked"
	"site12 (uid 1012) outside the zone|1012|tcp|8080|198.18.0.1|blocked"
	"site13 (uid 1013) UDP, only TCP assigned|1013|udp|40021|198.18.0.1|blocked"
	"root on an unassigned zone port|0|tcp|45000|198.18.0.1|blocked"
	"root outside the zone (untouched)|0|tcp|8081|198.18.0.1|ok"
	"uid 999, below min_uid (untouched)|999|tcp|8082|2001:db8::1|ok"
)
for c in "${cases[@]}"; do
	IFS='|' read -r _ uid proto port _ _ <<<"$c"
	listen "$uid" "$proto" "$port"
done

echo
echo "== connections from $CLI"
fail=0
for c in "${cases[@]}"; do
	IFS='|' read -r who uid proto port addr want <<<"$c"
	got=$("$tmp/probe" connect -netns "$CLI" -proto "$proto" -addr "$addr" -port "$port" -timeout 1500ms)
	verdict=reachable
	[[ $got == ok ]] || verdict="blocked ($got)"
	mark=ok
	if [[ $want == ok && $got != ok ]] || [[ $want == blocked && $got == ok ]]; then mark=UNEXPECTED; fail=1; fi
	printf '  %-45s %-4s %-6s -> %-22s [%s]\n' "$who" "$proto" "$port" "$verdict" "$mark"
done
echo
echo "== nftpol status (the blocked serving above, counted per uid and port)"
nftpol status
echo
if ((fail)); then
	echo "demo: some connections did not behave as the policy says" >&2
	exit 1
fi
echo "All connections behaved as the policy says. Cleaning up."
