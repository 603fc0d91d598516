#!/usr/bin/env bash
# Runs bench/pool.py (warm pool vs cold: serial creates, 20 concurrent creates against a pool of
# 20, the idle members' memory and CPU, a tool image) on a throwaway dockerd:
#
#   sudo bench/pool.sh [-n 7] [--concurrent 20] [--idle-secs 30] [--tool claude-code] [--ports 24300-24399]
#   (Sysbox as in bench/private-engine.sh; without it only runc is measured, and the run says so.)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/private-engine.sh
. bench/private-engine.sh

each_runtime bench/pool.py "$@"
