# Sourced by the bench wrappers: starts a throwaway dockerd (registering sysbox-runc where it is), on a
# bridge and data root of its own, imports debian:bookworm and builds cubbi-base, and removes
# it all at exit. Sets `sock` (the endpoint) and `cubbi` (the binary).
#
# Needs root, docker.io, a release build of cubbi (CUBBI_BIN, else
# $CARGO_TARGET_DIR/release/cubbi, else target/release/cubbi; built when missing) and
# debian:bookworm as a rootfs tarball (the test suite caches one in
# ~/.cache/cubbi-test/debian-bookworm.tar; BENCH_BASE_TAR overrides).
#
# Sysbox is used the way install/test.sh uses it: where sysbox-runc is on PATH, or under the
# command prefix CUBBI_TEST_SYSBOX_WRAPPER (the bench re-runs itself under it once). Sets
# `sysbox_runc` to its path, or empty on a host without Sysbox (then only runc is measured).
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
if [ -n "${CUBBI_TEST_SYSBOX_WRAPPER:-}" ] && [ -z "${CUBBI_BENCH_WRAPPED:-}" ]; then
    read -r -a bench_wrapper <<<"$CUBBI_TEST_SYSBOX_WRAPPER"
    exec env CUBBI_BENCH_WRAPPED=1 "${bench_wrapper[@]}" "$0" "$@"
fi
sysbox_runc=$(command -v sysbox-runc || true)
base_tar=${BENCH_BASE_TAR:-${XDG_CACHE_HOME:-$HOME/.cache}/cubbi-test/debian-bookworm.tar}
[ -f "$base_tar" ] || { echo "no $base_tar: run the test suite once, or set BENCH_BASE_TAR" >&2; exit 2; }
cubbi=${CUBBI_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/release/cubbi}
[ -x "$cubbi" ] || cargo build --release --locked

root=$(mktemp -d /tmp/cubbi-bench-XXXXXX)
bridge=cbb$$
sock=unix://$root/docker.sock
cleanup() {
    if [ -f "$root/docker.pid" ]; then
        docker -H "$sock" ps -aq | xargs -r docker -H "$sock" rm -fv >/dev/null 2>&1 || true
        docker -H "$sock" network prune -f >/dev/null 2>&1 || true
        kill "$(cat "$root/docker.pid")" 2>/dev/null || true
        for _ in $(seq 1 100); do [ -e "$root/docker.pid" ] || break; sleep 0.2; done
    fi
    ip link delete "$bridge" 2>/dev/null || true
    rm -rf "$root"
}
trap cleanup EXIT

# A /24 no route covers yet, in 10.212.0.0/16.
subnet=$(for i in $(seq 10 250); do
    ip -4 route show table all | grep -q "10\.212\.$i\." || { echo "10.212.$i"; break; }
done)
ip link add "$bridge" type bridge
ip addr add "$subnet.1/24" dev "$bridge"
ip link set "$bridge" up
dockerd --host="$sock" --data-root="$root/data" --exec-root="$root/exec" \
    --pidfile="$root/docker.pid" --bridge="$bridge" \
    ${sysbox_runc:+--add-runtime "sysbox-runc=$sysbox_runc"} >"$root/dockerd.log" 2>&1 &
for _ in $(seq 1 150); do docker -H "$sock" version >/dev/null 2>&1 && break; sleep 0.2; done
docker -H "$sock" import "$base_tar" debian:bookworm >/dev/null
"$cubbi" --endpoint "$sock" image build base >/dev/null

# Runs the Python bench `$1` with the rest of the arguments once per runtime this host has:
# sysbox-runc and runc where Sysbox is installed, else runc alone (and says so).
each_runtime() {
    local script=$1 runtime
    shift
    local runtimes=(runc)
    if [ -n "$sysbox_runc" ]; then
        runtimes=(sysbox-runc runc)
    else
        echo "not run (needs Sysbox, this host has no sysbox-runc): the sysbox-runc bench" >&2
    fi
    for runtime in "${runtimes[@]}"; do
        echo "=== --runtime $runtime"
        python3 "$script" --endpoint "$sock" --cubbi "$cubbi" --runtime "$runtime" "$@"
    done
}
