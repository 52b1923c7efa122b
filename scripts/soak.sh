#!/usr/bin/env bash
# Soak: the agent and netctl under load at the same time for [minutes]
# (default 20): tunnels, processes, files and PTYs through the agent, policy
# churn and DNS changes through netctl. Samples both daemons' RSS and open
# file descriptors; fails on any failed operation, on more than 10% growth
# after the warm-up, or on descriptors left open. Prints the samples.
# CI runs the 2-minute version as part of `cargo test` (tests/tests/soak.rs).
# Needs root (network namespaces, nftables).
set -euo pipefail
cd "$(dirname "$0")/.."

minutes="${1:-20}"
if ! [[ "$minutes" =~ ^[0-9]+$ ]] || (( minutes < 1 )); then
  echo "usage: scripts/soak.sh [minutes]   (a whole number, at least 1)" >&2
  exit 2
fi
if [[ $EUID -ne 0 ]]; then
  echo "soak.sh: run as root (the soak creates network namespaces)" >&2
  exit 1
fi
source scripts/install-deps.sh

cargo build --profile ci --bins --locked
SBX_SOAK_SECS=$(( minutes * 60 )) CI="${CI:-true}" \
  cargo test --profile ci --locked -p sbx-tests --test soak -- --nocapture
