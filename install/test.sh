#!/usr/bin/env bash
# The one test command (README.md, .ci/run): installs what the tests need on a fresh Debian or
# Ubuntu host when it is missing, then checks formatting and lints and runs the whole suite
# against a real dockerd that the test harness starts on a private socket.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v ssh >/dev/null 2>&1 || missing+=(openssh-client)
# The project host-key scan test runs a throwaway sshd on 127.0.0.1.
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v git >/dev/null 2>&1 || missing+=(git)
# The HTTPS test makes its CA and certificate with the openssl command.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
if ((${#missing[@]})); then
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    echo "install/test.sh: installing ${missing[*]}" >&2
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# Sessions under runc (no Sysbox here) all count against root's inotify instances, since there
# are no user namespaces; at Debian's default of 128 only ~25 systemd containers boot at once.
if [ "$(cat /proc/sys/fs/inotify/max_user_instances)" -lt 8192 ]; then
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" sysctl -qw fs.inotify.max_user_instances=8192
fi
# Under Sysbox every session's root is one host user, sharing its kernel key quota; at the
# kernel's default (200 keys) creates fail past ~24 sessions (what `cubbi setup` raises too).
if [ "$(cat /proc/sys/kernel/keys/maxkeys)" -lt 20000 ] || [ "$(cat /proc/sys/kernel/keys/maxbytes)" -lt 1400000 ]; then
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" sysctl -qw kernel.keys.maxkeys=20000 kernel.keys.maxbytes=1400000
fi

# cubbi's firewall isolates the engine's networks with iptables' physdev match. The kernel
# loads its module on first use from the host, but not from inside a system container, where
# the setup_systemd test applies the rules: use it once here, in a throwaway namespace.
if command -v iptables >/dev/null 2>&1; then
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    probe_ns="cubbi-physdev-$$"
    if "${sudo[@]}" ip netns add "$probe_ns" 2>/dev/null; then
        "${sudo[@]}" ip netns exec "$probe_ns" iptables -w -A FORWARD -m physdev \
            --physdev-is-bridged -j ACCEPT 2>/dev/null || true
        "${sudo[@]}" ip netns delete "$probe_ns" 2>/dev/null || true
    fi
fi

# Sysbox: sessions run under the default runtime, sysbox-runc, so the integration suite runs
# where it exists. A host with Sysbox installed for real (sysbox-runc on PATH, sysbox-mgr
# running) is used as it is; otherwise the test kit (a Sysbox built from source that runs
# inside a private mount namespace, see its README) is looked for in CUBBI_SYSBOX_KIT, beside
# this checkout, beside the repository it was cloned from, and in /work/shared. Under CI=true a run without
# Sysbox is a failure; elsewhere the suite runs with only the runc fallback, and says so.
sysbox_kit() {
    local origin candidate
    origin=$(git config --get remote.origin.url 2>/dev/null || true)
    # Last, where this project's development machines keep it.
    for candidate in "${CUBBI_SYSBOX_KIT:-}" "$PWD/../shared/sysbox/with-sysbox.sh" \
        "${origin:+$origin/../shared/sysbox/with-sysbox.sh}" /work/shared/sysbox/with-sysbox.sh; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}
sysbox_run=()
if command -v sysbox-runc >/dev/null 2>&1 && pgrep -x sysbox-mgr >/dev/null 2>&1; then
    echo "install/test.sh: Sysbox is installed and running; the suite uses it" >&2
    export CUBBI_TEST_SYSBOX=required
elif kit=$(sysbox_kit); then
    echo "install/test.sh: the integration suite runs under the Sysbox test kit $kit" >&2
    # One kit per host (its Sysbox daemons are host-wide): concurrent runs take turns.
    sysbox_run=(flock /tmp/sysbox-kit.lock "$kit")
    [ "$(id -u)" = 0 ] || sysbox_run=(sudo --preserve-env flock /tmp/sysbox-kit.lock "$kit")
    export CUBBI_TEST_SYSBOX=required
elif [ "${CI:-}" = true ]; then
    echo "install/test.sh: CI=true and no Sysbox: neither sysbox-runc with a running sysbox-mgr \
nor the test kit (set CUBBI_SYSBOX_KIT=/path/to/with-sysbox.sh) was found" >&2
    exit 1
else
    echo "install/test.sh: WARNING: no Sysbox here; the tests that need it will fail (set CUBBI_SYSBOX_KIT)" >&2
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --lib --bins
cargo test --locked --test integration --no-run
# Tests named *without_sysbox cover a host without Sysbox (setup --unsafe-runc, doctor's
# refusals): they run outside the kit; everything else runs inside it.
if ((${#sysbox_run[@]})) || [ "${CUBBI_TEST_SYSBOX:-}" != required ]; then
    cargo test --locked --test integration -- without_sysbox
else
    echo "install/test.sh: not run here: the *without_sysbox tests (Sysbox is installed on this host)" >&2
fi
"${sysbox_run[@]}" cargo test --locked --test integration -- --skip without_sysbox
