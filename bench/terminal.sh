#!/usr/bin/env bash
# Runs bench/terminal.py (keystroke round trip and `cat` throughput through the WebSocket
# terminal and the SSH tunnel, against plain SSH) on a throwaway dockerd:
#
#   sudo bench/terminal.sh [--keys 1000] [--mb 100] [--repeat 3]
#   (Sysbox as in bench/private-engine.sh; without it only runc is measured, and the run says so.)
#
# Needs Python's `websockets` (pip install websockets) and OpenSSH besides what
# bench/private-engine.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import websockets' 2>/dev/null || { echo "no websockets: pip install websockets" >&2; exit 2; }
# shellcheck source=bench/private-engine.sh
. bench/private-engine.sh

each_runtime bench/terminal.py "$@"
