#!/usr/bin/env bash
# Runs every check and test: formatting, clippy, unit tests, and integration
# tests with real agents, network namespaces, nftables, DNS and real clients.
# Needs root (namespaces, nftables). Set CI=true to make missing
# prerequisites fail instead of skipping the tests that need them.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh

if [[ $EUID -ne 0 ]]; then
  echo "test.sh: run as root (the integration tests create network namespaces)" >&2
  exit 1
fi

# Thousands of sockets in the concurrency tests.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
# What the fuzz targets reach through the `fuzzing` features (fuzz/README.md).
cargo clippy -p sbx-agent -p sbx-relay --features fuzzing --all-targets --locked -- -D warnings

step "build (profile ci: optimised, no LTO)"
cargo build --profile ci --workspace --bins --locked

step "guest image: scripts/build-image.sh (Debian's cloud kernel, busybox, the agent)"
scripts/build-image.sh --name default --out target/images --agent target/ci/sbx-agent

step "Debian packages: build, lintian, install, verify, purge (scripts/check-debs.sh)"
PROFILE=ci scripts/check-debs.sh

step "tests"
cargo test --profile ci --workspace --locked

# A short run of every fuzz target (fuzz/README.md): nightly, cargo-fuzz.
# Costs the fuzz crate's nightly build plus 10 s per target, two at a time.
FUZZ_SMOKE_SECONDS=${FUZZ_SMOKE_SECONDS:-10}
if ((FUZZ_SMOKE_SECONDS > 0)); then
  step "fuzz smoke: every target for ${FUZZ_SMOKE_SECONDS} s (scripts/fuzz.sh)"
  FUZZ_JOBS=2 scripts/fuzz.sh "$FUZZ_SMOKE_SECONDS"
fi
