#!/usr/bin/env bash
# One command from a fresh Debian or Ubuntu host with a Rust toolchain to a shell inside a
# cubbi session: installs what is missing, builds and installs cubbi, runs `cubbi setup`,
# builds cubbi-base and creates a session. Safe to run twice (every step checks first).
#
# Usage: install/quickstart.sh [--unsafe-runc] [--image NAME] [--no-connect]
#   --unsafe-runc  on a host without Sysbox, run the session under plain runc anyway:
#                  it is then NOT isolated from the host (for trials and CI only)
set -euo pipefail
cd "$(dirname "$0")/.."

unsafe=0 image=base connect=()
while [ $# -gt 0 ]; do
    case $1 in
        --unsafe-runc) unsafe=1 ;;
        --image) image=$2; shift ;;
        --no-connect) connect=(--no-connect) ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "quickstart: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '\n==> %s\n' "$*" >&2; }
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)

if [ ! -r /etc/os-release ] || ! grep -qiE '^(ID|ID_LIKE)=.*(debian|ubuntu)' /etc/os-release; then
    echo "quickstart: this script supports Debian and Ubuntu; elsewhere install docker and run 'cubbi setup' by hand" >&2
    exit 1
fi
command -v cargo >/dev/null || { echo "quickstart: needs a Rust toolchain (cargo): https://rustup.rs" >&2; exit 1; }

missing=()
for pair in dockerd:docker.io git:git ssh:openssh-client ip:iproute2 iptables:iptables python3:python3 npm:npm; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

say "building the web page (web/: npm ci, then esbuild; cargo embeds web/dist)"
npm ci --prefix web --no-audit --no-fund --loglevel=error
npm run build --prefix web --silent
say "building and installing cubbi"
cargo build --release --locked
"${sudo[@]}" install -m 0755 target/release/cubbi /usr/local/bin/cubbi
"${sudo[@]}" install -d -m 0755 /usr/local/share/man/man1
target/release/cubbi man | "${sudo[@]}" tee /usr/local/share/man/man1/cubbi.1 >/dev/null

say "setting up the dedicated Docker endpoint (cubbi setup)"
setup_args=()
# Without Sysbox, images can only build with runc as the engine's default runtime.
[ "$unsafe" = 1 ] && ! command -v sysbox-runc >/dev/null 2>&1 && setup_args=(--unsafe-runc)
"${sudo[@]}" cubbi setup "${setup_args[@]}"

# The socket belongs to group cubbi; a shell started before setup is not in it yet.
run_cubbi() {
    if [ "$(id -u)" = 0 ] || id -nG | grep -qw cubbi; then cubbi "$@"; else sg cubbi -c "$(printf '%q ' cubbi "$@")"; fi
}

runtime=()
if ! run_cubbi --json doctor 2>/dev/null | python3 -c 'import json,sys; sys.exit(0 if any(c["id"]=="sysbox-runc" and c["status"]=="ok" for c in json.load(sys.stdin)["checks"]) else 1)'; then
    if [ "$unsafe" = 0 ]; then
        cat >&2 <<'MSG'

Sysbox is not installed on this host, so cubbi cannot give sessions real isolation
(`cubbi doctor` says why and what to do). To try cubbi anyway with sessions that are NOT
isolated from the host, run: install/quickstart.sh --unsafe-runc
MSG
        exit 1
    fi
    runtime=(--runtime runc --unsafe-runc)
fi

say "building the $image image (Docker's cache makes a rebuild quick)"
run_cubbi image build "$image"

# One session per image; a second run connects to it instead of making another.
name="quickstart-$image"
if run_cubbi session show "$name" >/dev/null 2>&1; then
    say "session $name exists already"
    if ((${#connect[@]})); then
        run_cubbi session show "$name"
    else
        run_cubbi session connect "$name"
    fi
else
    say "creating session $name"
    # Not for a project, so the folder this runs in is not mounted.
    run_cubbi session create --name "$name" --image "$image" --no-mount "${runtime[@]}" "${connect[@]}"
fi
