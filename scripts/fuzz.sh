#!/usr/bin/env bash
# Builds the fuzz targets in fuzz/ (nightly, cargo-fuzz) and runs each for
# a fixed time: scripts/fuzz.sh [seconds-per-target] [target...]
# (default 60 s, every target). Prints executions per second per target and
# a summary; exits non-zero if any target crashed, naming the reproducer.
# FUZZ_JOBS=2 runs two targets at a time. See fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.1
SECONDS_PER_TARGET=${1:-60}
shift || true
JOBS=${FUZZ_JOBS:-1}
# Safe-Rust parsers: no sanitizer (2-3x the executions), but overflow checks
# and debug assertions on.
BUILD_FLAGS=(--release --debug-assertions --sanitizer none)
TRIPLE=x86_64-unknown-linux-gnu

if ! [[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] || ((SECONDS_PER_TARGET < 1)); then
  echo "usage: scripts/fuzz.sh [seconds-per-target] [target...]" >&2
  exit 2
fi

for dir in "$HOME/.cargo/bin" /root/.cargo/bin; do
  [[ -d $dir ]] && PATH="$dir:$PATH"
done
if ! cargo +nightly --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
  else
    echo "fuzz.sh: the nightly toolchain is required (rustup toolchain install nightly)" >&2
    exit 1
  fi
fi
installed=$(cargo fuzz --version 2>/dev/null | awk '{print $2}' || true)
if [[ $installed != "$CARGO_FUZZ_VERSION" ]]; then
  echo "fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION (found: ${installed:-none})"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

cd fuzz
mapfile -t ALL < <(cargo fuzz list)
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=("${ALL[@]}")
for t in "${TARGETS[@]}"; do
  printf '%s\n' "${ALL[@]}" | grep -qx "$t" || { echo "fuzz.sh: no target $t (have: ${ALL[*]})" >&2; exit 2; }
done

echo "==> building ${#TARGETS[@]} fuzz targets"
build_start=$(date +%s)
cargo +nightly fuzz build "${BUILD_FLAGS[@]}"
echo "build took $(($(date +%s) - build_start)) s"

LOGS=target/fuzz-logs
mkdir -p "$LOGS"

# Runs one target; its libFuzzer output goes to $LOGS/<target>.log.
run_one() {
  local t=$1
  mkdir -p "corpus/$t" "artifacts/$t"
  local seeds=()
  [[ -d seeds/$t ]] && seeds=("seeds/$t")
  "target/$TRIPLE/release/$t" "corpus/$t" "${seeds[@]}" \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
    -max_len=4096 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
    >"$LOGS/$t.log" 2>&1
}

echo "==> running each target for ${SECONDS_PER_TARGET} s (${JOBS} at a time)"
declare -A STATUS
pids=()
names=()
wait_first() {
  local pid=${pids[0]} name=${names[0]}
  if wait "$pid"; then STATUS[$name]=ok; else STATUS[$name]=CRASH; fi
  pids=("${pids[@]:1}")
  names=("${names[@]:1}")
  stat_line "$name"
}
stat_line() {
  local t=$1 log="$LOGS/$1.log"
  local execs rate units
  execs=$(awk '/stat::number_of_executed_units/ {print $NF}' "$log" | tail -1)
  rate=$(awk '/stat::average_exec_per_sec/ {print $NF}' "$log" | tail -1)
  units=$(find "corpus/$t" -type f | wc -l)
  printf '%-18s %-6s %12s execs %9s exec/s %7s corpus\n' "$t" "${STATUS[$t]}" "${execs:-?}" "${rate:-?}" "$units"
  SUMMARY+=("$(printf '%-18s %-6s %12s %9s %7s' "$t" "${STATUS[$t]}" "${execs:-?}" "${rate:-?}" "$units")")
}
SUMMARY=()
for t in "${TARGETS[@]}"; do
  ((${#pids[@]} >= JOBS)) && wait_first
  run_one "$t" &
  pids+=($!)
  names+=("$t")
done
while ((${#pids[@]})); do wait_first; done

echo
printf '%-18s %-6s %12s %9s %7s\n' target result execs exec/s corpus
printf '%s\n' "${SUMMARY[@]}"

failed=0
for t in "${TARGETS[@]}"; do
  [[ ${STATUS[$t]} == ok ]] && continue
  failed=1
  echo
  echo "==> $t crashed; last lines of fuzz/$LOGS/$t.log:"
  grep -E "panicked at|ERROR: libFuzzer|SUMMARY" "$LOGS/$t.log" | head -5 || true
  reproducer=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$LOGS/$t.log" | tail -1)
  if [[ -n $reproducer ]]; then
    echo "reproducer: fuzz/$reproducer"
    echo "reproduce:  cd fuzz && cargo +nightly fuzz run ${BUILD_FLAGS[*]} $t $reproducer"
  fi
done
exit "$failed"
