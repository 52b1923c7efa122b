#!/usr/bin/env bash
# Runs the sbx-host benchmark (host-bench): create to healthy for each
# runtime (microvm: QEMU -M microvm; process: the agent as a process),
# suspend and resume, and host memory per idle and per suspended sandbox,
# each beside a floor measured in the same run (a bare QEMU boot of the same
# image with sbx-host's command line, a bare netctl namespace + agent start,
# a bare cgroup freeze, a plain write+fsync and cold read of the snapshot's
# bytes), with the issue's targets as PASS/MISS and one line per target.
#
#   scripts/bench-host.sh                               # full run: ~10 minutes under TCG on 2 cores
#   scripts/bench-host.sh --only process,microvm --runs 5
#   PROFILE=ci scripts/bench-host.sh --json /tmp/host-bench.json --keep-logs
#
# Options: --only process,microvm,suspend,memory   --runs N (every repeated
# figure); the rest go to target/$PROFILE/host-bench (see --help).
# PROFILE=ci for the quicker build (default: release, fat LTO: several
# minutes on 2 cores the first time). Builds the guest image into
# target/images/default when it is missing (scripts/build-image.sh, with the
# agent of this profile). Needs root and qemu-system-x86_64; uses KVM where
# a guest runs on it, else TCG (the table says which). Everything runs in
# network namespaces the bench makes; it removes every namespace, process
# (by PID or through its own cgroups) and cgroup it made when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
IMAGE=default
IMAGES=target/images

step() { printf '\n==> %s\n' "$*" >&2; }
die() { echo "bench-host: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root (namespaces, taps, cgroups)"
command -v qemu-system-x86_64 >/dev/null 2>&1 ||
  die "qemu-system-x86_64 missing (apt-get install qemu-system-x86)"
command -v nsenter >/dev/null 2>&1 || die "nsenter missing (util-linux)"

step "build $PROFILE binaries (sbx-host, netctl, sbx-agent, host-bench)"
cargo build --profile "$PROFILE" --bins -p sbx-host -p netctl -p sbx-agent -p host-bench

if [[ ! -e $IMAGES/$IMAGE/manifest.json ]]; then
  step "build the guest image $IMAGES/$IMAGE (agent: target/$PROFILE/sbx-agent)"
  scripts/build-image.sh --name "$IMAGE" --out "$IMAGES" --agent "target/$PROFILE/sbx-agent" >/dev/null
fi

step "run host-bench"
exec "target/$PROFILE/host-bench" \
  --bin-dir "target/$PROFILE" \
  --images-dir "$IMAGES" \
  --image "$IMAGE" \
  "$@"
