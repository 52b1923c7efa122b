#!/usr/bin/env bash
# Runs the sandbox proxy benchmark: sbx-proxy (proxy -> agent raw tunnel ->
# service) beside the same service direct, nginx as a one-hop reverse proxy,
# and nginx in front of a plain TCP forwarder (sbx-proxy's hop count without
# its tunnel), all in one run: requests/s (wrk, HTTP/1.1; h2load, h2c),
# latency, WebSocket echo, upstream connects, RSS idle and with 10,000 idle
# client connections, with the issue's targets as PASS/MISS. Then the
# control plane: a PATCH of exposed_ports through the sandbox API until it is
# in force on the data plane (the admin socket beside it), the wait of a
# request for a suspended sandbox beyond a fake control plane's resume time
# (and one hook call for 50 waiting requests), and a PATCH on one of two
# proxies sharing a Redis registry until it is in force on the other.
#
#   scripts/bench-proxy.sh                 # full run, about 3 minutes after the build
#   scripts/bench-proxy.sh --quick         # smoke run, under a minute
#   scripts/bench-proxy.sh --json /tmp/proxy-bench.json --keep-logs
#   PROFILE=ci scripts/bench-proxy.sh --only api,resume,fleet   # the control-plane rows, ~30 s
#
# PROFILE=ci for the quicker build (default: release, fat LTO: several
# minutes on 2 cores the first time). Installs wrk, h2load, nginx-light and
# redis-server from Debian when missing (as root). Everything runs on
# 127.0.0.1; the bench starts and stops its own agents, proxies, nginx,
# forwarder and redis-server (by PID; redis on a unix socket only) and
# runs nginx as the current user from a scratch directory. Extra arguments
# go to target/$PROFILE/proxy-bench (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}

step() { printf '\n==> %s\n' "$*" >&2; }

step "build $PROFILE binaries (sbx-proxy, sbx-agent, proxy-bench)"
cargo build --profile "$PROFILE" --bins -p sbx-proxy -p sbx-agent -p proxy-bench

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v redis-server >/dev/null 2>&1 || [[ -x /usr/bin/redis-server ]] || missing+=(redis-server)
if ((${#missing[@]})); then
  if [[ $EUID -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    step "install ${missing[*]} (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "NOTE: ${missing[*]} missing and not root: the rows or columns needing them are left out." >&2
  fi
fi

# 10,000 idle client connections: as many descriptors in the bench and in
# the proxy (and nginx), which inherit the limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

step "run proxy-bench"
exec "target/$PROFILE/proxy-bench" \
  --proxy-bin "target/$PROFILE/sbx-proxy" \
  --agent-bin "target/$PROFILE/sbx-agent" \
  "$@"
