#!/usr/bin/env bash
# Runs bench/runs.py (agent runs: first model request and result, warm, direct, cold and over
# the service) on a throwaway dockerd with the tool image built there:
#
#   sudo bench/runs.sh [-n 5] [--image claude-code]
#   (Sysbox as in bench/private-engine.sh; without it only runc is measured, and the run says so.)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/private-engine.sh
. bench/private-engine.sh

image=claude-code
for ((i = 1; i <= $#; i++)); do
    [ "${!i}" = --image ] && { j=$((i + 1)); image=${!j}; }
done
"$cubbi" --endpoint "$sock" image build "$image" >/dev/null
each_runtime bench/runs.py "$@"
