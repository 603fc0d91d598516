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

each_runtime bench/lifecycle.py "$@"
