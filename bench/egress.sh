#!/usr/bin/env bash
# Runs bench/egress.py (the latency cubbi's egress resolver adds to a lookup, cached and not,
# and to connection setup, against an open session in the same run) on a throwaway dockerd:
#
#   sudo bench/egress.sh [-n 1000]
#
# A network namespace plays the internet (dnsmasq for *.allowed.test, python3 -m http.server),
# as in tests/integration/egress.rs; `cubbi egress resolver` runs on the bench's bridge. Needs
# dnsmasq and nft besides what bench/private-engine.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/private-engine.sh
. bench/private-engine.sh

ns=cbbeg$$
veth=cbbeg$$h
peer=cbbeg$$n
web=$(mktemp -d)
echo "hello" >"$web/hello.txt"
pids=()
egress_cleanup() {
    if [ -n "${BENCH_DEBUG:-}" ]; then
        nft list table ip "cubbi_egress_$bridge" || true
        tail -20 "$root/resolver.log" || true
        ls -l "$root/egress" 2>/dev/null || true
        ip -br addr | grep "$bridge" || true
        conntrack -L 2>/dev/null | grep 198.18.95 | head -5 || true
    fi
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    ip link del "$veth" 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    nft delete table ip "cubbi_egress_$bridge" 2>/dev/null || true
    rm -rf "$web"
    cleanup
}
trap egress_cleanup EXIT

ip netns add "$ns"
ip link add "$veth" type veth peer name "$peer"
ip link set "$peer" netns "$ns"
ip addr add 198.18.95.1/24 dev "$veth"
ip link set "$veth" up
for address in 198.18.95.2 198.18.95.10; do
    ip netns exec "$ns" ip addr add "$address/24" dev "$peer"
done
ip netns exec "$ns" ip link set "$peer" up
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" ip route add default via 198.18.95.1
# u0.allowed.test ... u4999.allowed.test each have an address of their own (198.19.0.0/16),
# so a lookup of a new name makes cubbi's resolver tell the kernel a new address.
for i in $(seq 0 4999); do
    echo "198.19.$((i / 250)).$((i % 250 + 1)) u$i.allowed.test"
done >"$web/hosts"
ip netns exec "$ns" dnsmasq --no-daemon --no-resolv --no-hosts --bind-interfaces --user=root \
    --listen-address=198.18.95.2 --address=/allowed.test/198.18.95.10 --cache-size=10000 \
    --addn-hosts="$web/hosts" \
    >/dev/null 2>&1 &
pids+=($!)
# A listener that accepts and closes at once, with a deep backlog: connection setup is what is
# measured, not a web server's accept loop.
ip netns exec "$ns" python3 -c '
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen(4096)
while True:
    c, _ = s.accept()
    c.close()
' >/dev/null 2>&1 &
pids+=($!)
CUBBI_EGRESS_DIR="$root/egress" "$cubbi" --endpoint "$sock" egress resolver \
    --listen 198.18.95.1:5301 --bridge "$bridge" --upstream 198.18.95.2 \
    >"$root/resolver.log" 2>&1 &
export CUBBI_EGRESS_DIR="$root/egress"
pids+=($!)

python3 bench/egress.py --endpoint "$sock" --cubbi "$cubbi" --runtime runc \
    --upstream 198.18.95.2 --target 198.18.95.10 --table "cubbi_egress_$bridge" "$@"
