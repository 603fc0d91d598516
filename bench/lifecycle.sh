#!/usr/bin/env bash
# Runs bench/lifecycle.py (start vs cold create, fork, snapshot of a 500 MB inner image) on a
# throwaway dockerd:
#
#   sudo bench/lifecycle.sh [-n 5] [--inner-mb 500]
#   (Sysbox as in bench/private-engine.sh; without it only runc is measured, and the run says so.)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/private-engine.sh
. bench/private-engine.sh

"$cubbi" --endpoint "$sock" image build base >/dev/null
runtimes=(runc)
if [ -n "$sysbox_runc" ]; then
    runtimes=(sysbox-runc runc)
else
    echo "not run (needs Sysbox, this host has no sysbox-runc): the sysbox-runc bench" >&2
fi
for runtime in "${runtimes[@]}"; do
    echo "=== --runtime $runtime"
    python3 bench/lifecycle.py --endpoint "$sock" --cubbi "$cubbi" --runtime "$runtime" "$@"
done
