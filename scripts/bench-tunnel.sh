#!/usr/bin/env bash
# Runs the TCP tunnel benchmark (issue 2, item 6): builds the release
# binaries, installs the peer tool (websocat, from crates.io) if missing, and
# runs target/release/tunnel-bench. Extra arguments go to the bench, e.g.
#   scripts/bench-tunnel.sh --json /tmp/tunnel-bench.json
# Everything runs on 127.0.0.1; the bench starts and stops its own agent,
# `sbx tunnel` and websocat processes (by PID). Takes about 2 minutes after
# the build (fat LTO: several minutes on 2 cores the first time).
set -euo pipefail
cd "$(dirname "$0")/.."

# The peer tool lives under target/ so it never touches ~/.cargo or PATH.
PEER_ROOT=target/peer-tools
WEBSOCAT_VERSION=1.14.1

step() { printf '\n==> %s\n' "$*" >&2; }

step "build release binaries (sbx-agent, sbx, tunnel-bench)"
cargo build --profile release --bins -p sbx-agent -p sbx -p sbx-bench-tunnel

peer_args=()
if [[ -x $PEER_ROOT/bin/websocat ]]; then
  peer_args=(--peer-bin "$PEER_ROOT/bin/websocat")
elif command -v websocat >/dev/null 2>&1; then
  peer_args=(--peer-bin "$(command -v websocat)")
else
  step "install websocat $WEBSOCAT_VERSION into $PEER_ROOT (peer tool)"
  # Without TLS: the bench only speaks ws:// on loopback, and this avoids
  # needing OpenSSL headers.
  if cargo install websocat --version "$WEBSOCAT_VERSION" --locked \
      --no-default-features --root "$PEER_ROOT"; then
    peer_args=(--peer-bin "$PEER_ROOT/bin/websocat")
  else
    echo "NOTE: websocat could not be installed; the peer column will be skipped." >&2
    peer_args=(--peer-bin "$PEER_ROOT/bin/websocat-not-installed")
  fi
fi

# 1,000 idle tunnels need a few thousand descriptors in the bench and the agent.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

step "run tunnel-bench"
exec target/release/tunnel-bench "${peer_args[@]}" "$@"
