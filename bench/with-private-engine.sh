#!/usr/bin/env bash
# Runs bench/sessions.py under both runtimes on a throwaway dockerd that registers sysbox-runc,
# so the figures under Sysbox and runc come from one engine in one run:
#
#   sudo SYSBOX_KIT/with-sysbox.sh bench/with-private-engine.sh [-n 7] [--list-sessions 0]
#   (or directly on a host with Sysbox installed; see bench/private-engine.sh for what it needs)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/private-engine.sh
. bench/private-engine.sh

for runtime in sysbox-runc runc; do
    echo "=== --runtime $runtime"
    python3 bench/sessions.py --endpoint "$sock" --cubbi "$cubbi" --runtime "$runtime" "$@"
done
