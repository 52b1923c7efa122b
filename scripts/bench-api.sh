#!/usr/bin/env bash
# Runs the management API benchmark (issue 4 targets): `POST /processes/run`
# of /bin/true (p50 < 5 ms) and file upload/download throughput over
# loopback versus `cat` (>= 50%). Builds the agent, then runs
# bench/api/bench.py, which starts and stops its own agent by PID.
# Extra arguments go to the bench, e.g. --json /tmp/api-bench.json.
# PROFILE=release for the fat-LTO build (default: ci, quicker to build).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-ci}
cargo build --profile "$PROFILE" --bins -p sbx-agent >&2
exec python3 bench/api/bench.py --agent-bin "target/$PROFILE/sbx-agent" "$@"
