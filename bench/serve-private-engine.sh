#!/usr/bin/env bash
# Runs bench/serve.py once on a throwaway dockerd that registers sysbox-runc; arguments go to
# serve.py:
#
#   sudo bench/serve-private-engine.sh [--runtime runc]
#   (as root, on a host with Sysbox installed or with CUBBI_TEST_SYSBOX_WRAPPER naming the
#   command that provides it; without Sysbox, pass --runtime runc)
#
# Needs wrk besides what bench/private-engine.sh needs.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "no wrk: apt-get install -y wrk" >&2; exit 2; }
# shellcheck source=bench/private-engine.sh
. bench/private-engine.sh

python3 bench/serve.py --endpoint "$sock" --cubbi "$cubbi" "$@"
