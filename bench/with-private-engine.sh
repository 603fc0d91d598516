#!/usr/bin/env bash
# Runs bench/sessions.py under both runtimes on a throwaway dockerd that registers sysbox-runc,
# so the figures under Sysbox and runc come from one engine in one run:
#
#   sudo bench/with-private-engine.sh [-n 7] [--list-sessions 0]
#   (on a host with Sysbox installed, or with CUBBI_TEST_SYSBOX_WRAPPER naming the command that
#   provides it; without Sysbox only runc is measured, and the run says so. See
#   bench/private-engine.sh for what it needs.)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/private-engine.sh
. bench/private-engine.sh

each_runtime bench/sessions.py "$@"
