#!/usr/bin/env bash
# Runs bench/swarm.py (sessions on a 3-node Docker Swarm vs the local backend on one node, same
# run; 30 Swarm sessions 10 at a time, with where the time goes) on throwaway dockerds:
#
#   sudo bench/swarm.sh [-n 7] [--total 30] [--batch 10]
#   (runc only, with the unsafe settings node-wide: Swarm gives a service no per-task privileges.)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/private-engine.sh
. bench/private-engine.sh

python3 bench/swarm.py --cubbi "$cubbi" --image-from "$sock" "$@"
