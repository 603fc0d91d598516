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
command -v git >/dev/null 2>&1 || missing+=(git)
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

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
