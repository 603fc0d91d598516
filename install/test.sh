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
# The SSH-proxy test copies a folder with rsync through `cubbi ssh-proxy`.
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
# The project host-key scan test runs a throwaway sshd on 127.0.0.1.
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)
command -v git >/dev/null 2>&1 || missing+=(git)
# The HTTPS test makes its CA and certificate with the openssl command.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# The disk-limit test gives a private dockerd a btrfs data root (the btrfs storage driver).
command -v mkfs.btrfs >/dev/null 2>&1 || missing+=(btrfs-progs)
# The token store's conformance suite and the two-service test start their own PostgreSQL
# server (initdb + postgres in a temp folder; Debian keeps them in /usr/lib/postgresql/*/bin).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# The keyring tests start a real Secret Service (gnome-keyring) on a private session bus
# (dbus-daemon), and read what it holds with secret-tool and dbus-send.
command -v gnome-keyring-daemon >/dev/null 2>&1 || missing+=(gnome-keyring)
command -v dbus-daemon >/dev/null 2>&1 || missing+=(dbus-daemon)
command -v dbus-send >/dev/null 2>&1 || missing+=(dbus-bin)
command -v secret-tool >/dev/null 2>&1 || missing+=(libsecret-tools)
# The egress test: cubbi's resolver drives nftables; dnsmasq plays the internet's resolver.
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v dnsmasq >/dev/null 2>&1 || missing+=(dnsmasq-base)
# The SSH-through-the-service test drops the session's port for OpenSSH run in a group of its
# own (setpriv) with an iptables owner rule.
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
command -v setpriv >/dev/null 2>&1 || missing+=(util-linux)
# The browser test drives the web page in Debian's headless Chromium (through playwright-core,
# which downloads no browser of its own); DejaVu gives the terminal a monospace font.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf ] || missing+=(fonts-dejavu-core)
if ((${#missing[@]})); then
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    echo "install/test.sh: installing ${missing[*]}" >&2
    "${sudo[@]}" apt-get -o Acquire::Retries=5 update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o Acquire::Retries=5 install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

# The OpenAPI test reads the served document with a real validator and a real client generator,
# from PyPI into a venv of their own (pinned; kept between runs).
openapi_tools=${CUBBI_TEST_OPENAPI_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/cubbi-test/openapi/bin}
if [ ! -x "$openapi_tools/openapi-python-client" ] || [ ! -x "$openapi_tools/openapi-spec-validator" ]; then
    if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
        sudo=()
        [ "$(id -u)" = 0 ] || sudo=(sudo)
        "${sudo[@]}" apt-get -o Acquire::Retries=5 update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o Acquire::Retries=5 install -y -qq --no-install-recommends \
            python3-venv >/dev/null
    fi
    echo "install/test.sh: installing the OpenAPI validator and client generator into $(dirname "$openapi_tools")" >&2
    python3 -m venv "$(dirname "$openapi_tools")"
    "$openapi_tools/pip" install -q --disable-pip-version-check \
        "openapi-spec-validator==0.9.0" "openapi-python-client==0.29.1"
fi
export CUBBI_TEST_OPENAPI_TOOLS="$openapi_tools"

# The MCP tests run a real MCP server (tests/fixtures/mcp-server/server.py) on the `mcp` SDK
# from PyPI, in a venv of its own (pinned; kept between runs). python3-venv is there by now.
mcp_python=${CUBBI_TEST_MCP_PYTHON:-${XDG_CACHE_HOME:-$HOME/.cache}/cubbi-test/mcp/bin/python}
if ! "$mcp_python" -c 'import mcp.server.mcpserver' 2>/dev/null; then
    echo "install/test.sh: installing the MCP SDK into $(dirname "$(dirname "$mcp_python")")" >&2
    python3 -m venv "$(dirname "$(dirname "$mcp_python")")"
    "$(dirname "$mcp_python")/pip" install -q --disable-pip-version-check "mcp==2.3.0"
fi
export CUBBI_TEST_MCP_PYTHON="$mcp_python"

# The OpenID Connect tests run a real provider (panva's oidc-provider) with Node, from the
# fixture's committed package-lock.json.
if ! command -v npm >/dev/null 2>&1; then
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    "${sudo[@]}" apt-get -o Acquire::Retries=5 update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -o Acquire::Retries=5 install -y -qq --no-install-recommends \
        nodejs npm >/dev/null
fi
npm ci --prefix tests/fixtures/oidc-provider --no-audit --no-fund --loglevel=error
# The browser test's driver: playwright-core alone, pinned in the fixture's package-lock.json.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix tests/fixtures/browser --no-audit --no-fund --loglevel=error

# The web page (web/) is bundled before cargo builds, so the cubbi the tests build embeds it
# (build.rs).
npm ci --prefix web --no-audit --no-fund --loglevel=error
npm run build --prefix web --silent

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

# Sysbox. Where the host has it the way a user's host does (sysbox-runc on PATH, sysbox-mgr and
# sysbox-fs answering on /run/sysbox/*.sock or running as units), sessions run under it, the
# default runtime. CUBBI_TEST_SYSBOX_WRAPPER is a command prefix for hosts where Sysbox has to be
# brought up in a special way: the integration suite then runs as `$CUBBI_TEST_SYSBOX_WRAPPER
# cargo test ...`. Without Sysbox every session test runs the same scenario under
# `--runtime runc --unsafe-runc`; only the Sysbox group (tests of Sysbox itself) does not run,
# and the suite ends with a line naming it. CUBBI_TEST_REQUIRE_SYSBOX=1 makes that a failure.
sysbox_daemon_up() { # NAME SOCKET
    [ -S "$2" ] || return 1
    pgrep -x "$1" >/dev/null 2>&1 && return 0
    command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$1" 2>/dev/null
}
sysbox_on_host() {
    command -v sysbox-runc >/dev/null 2>&1 &&
        sysbox_daemon_up sysbox-mgr /run/sysbox/sysmgr.sock &&
        sysbox_daemon_up sysbox-fs /run/sysbox/sysfs.sock
}
suite=(cargo test --locked --test integration)
wrapper=()
if [ -n "${CUBBI_TEST_SYSBOX_WRAPPER:-}" ]; then
    # A command prefix, split on whitespace like a command line without quotes.
    read -r -a wrapper <<<"$CUBBI_TEST_SYSBOX_WRAPPER"
    echo "install/test.sh: the integration suite runs under CUBBI_TEST_SYSBOX_WRAPPER (${wrapper[*]})" >&2
elif sysbox_on_host; then
    echo "install/test.sh: Sysbox is installed and running; sessions run under it" >&2
else
    echo "install/test.sh: no Sysbox on this host: sessions run under --runtime runc --unsafe-runc, \
and the Sysbox group is reported as not run" >&2
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --lib --bins
"${suite[@]}" --no-run
if ((${#wrapper[@]})); then
    # Tests named *without_sysbox cover a host without Sysbox (setup --unsafe-runc, doctor's
    # refusals): they run outside the wrapper, which may make Sysbox visible to all inside it.
    "${suite[@]}" -- without_sysbox
    "${wrapper[@]}" "${suite[@]}" -- --skip without_sysbox
elif sysbox_on_host; then
    echo "install/test.sh: not run here: the *without_sysbox tests (Sysbox is installed on this host)" >&2
    "${suite[@]}" -- --skip without_sysbox
else
    "${suite[@]}"
fi
