#!/usr/bin/env bash
# Boots a guest image under QEMU -M microvm the way sbx-host does, in a
# throwaway network namespace with a tap, and waits for the agent's health
# answer. Needs root (netns, tap); never touches the root namespace's network.
#
#   packaging/image/boot-test.sh [--image DIR] [--runs N] [--accel tcg|kvm]
#       [--append ARGS] [--config FILE --expect TEXT]
#
# Default: generates a config (random key), boots --runs times and prints, per
# boot, the wall time from QEMU's start to the first {"healthy":true} and the
# guest's own "sbx-init: ready in" figure. With --config FILE (a fw_cfg file of
# your own, e.g. a bad one) it instead waits for TEXT on the console.
set -euo pipefail

image=target/images/default runs=1 accel=tcg append='' config='' expect=''
die() { echo "boot-test: $*" >&2; exit 1; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --image | --runs | --accel | --append | --config | --expect)
      [[ $# -ge 2 ]] || die "$1 needs a value"
      declare "${1#--}=$2"
      shift 2 ;;
    -h | --help) sed -n '2,13s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
done
[[ -f $image/vmlinuz && -f $image/initrd.img ]] || die "no image at $image (scripts/build-image.sh)"
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive number"
[[ $accel == tcg || $accel == kvm ]] || die "--accel must be tcg or kvm"
[[ -z $config || -n $expect ]] || die "--config needs --expect TEXT"
[[ $(id -u) -eq 0 ]] || die "run as root (network namespace and tap)"

# Under TCG the guest's TSC runs at the host's rate, and calibrating it
# against the PIT fails on a busy host (the guest then hangs early in boot):
# tell the kernel the frequency.
if [[ $accel == tcg ]]; then
  khz=$(dmesg 2>/dev/null | sed -nE 's/.*tsc: (Refined TSC clocksource calibration:|Detected) ([0-9]+)\.([0-9]{3}) MHz.*/\2\3/p' | tail -n1)
  [[ -n $khz ]] || die "cannot find the host's TSC frequency in dmesg; pass --append tsc_early_khz=N"
  append="tsc_early_khz=$khz $append"
fi

ns=sbximg-$$ tmp=$(mktemp -d) qemu=''
# shellcheck disable=SC2317 # called by the trap
cleanup() {
  if [[ -n $qemu ]]; then kill "$qemu" 2>/dev/null || true; wait "$qemu" 2>/dev/null || true; fi
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" tuntap add tap0 mode tap
ip -n "$ns" addr add 10.0.2.1/30 dev tap0
ip -n "$ns" link set tap0 up

if [[ -z $config ]]; then
  config=$tmp/guest.cfg
  (umask 077 && printf 'sandbox_id=sbx-boot-test\nipv4=10.0.2.2/30\ngateway4=10.0.2.1\ndns=10.0.2.1\nhostname=sbx-boot-test\nkey=%s\n' \
    "$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" >"$config")
fi

status=0
for run in $(seq 1 "$runs"); do
  console=$tmp/console.log
  : >"$console"
  start=$(date +%s%N)
  ip netns exec "$ns" qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=on -accel "$accel" -cpu max \
    -m 256 -smp 1 -nodefaults -no-user-config -nographic -no-reboot \
    -serial "file:$console" -display none -monitor none \
    -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
    -append "console=ttyS0 reboot=k panic=-1 quiet cryptomgr.notests $append" \
    -fw_cfg "name=opt/sbx/guest,file=$config" \
    -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-device,netdev=n0 \
    2>"$tmp/qemu.err" &
  qemu=$!
  result=''
  while [[ -z $result ]] && (($(date +%s%N) - start < 60000000000)); do
    alive=yes
    kill -0 "$qemu" 2>/dev/null || alive=no
    if [[ -n $expect ]]; then
      grep -qF -- "$expect" "$console" && result=ok
    elif ip netns exec "$ns" curl -s --connect-timeout 0.2 -m 1 http://10.0.2.2:9501/api/v1/health 2>/dev/null |
      grep -q '"healthy":true'; then
      result=ok
    fi
    [[ -n $result || $alive == yes ]] || result="QEMU exited"
    [[ -n $result ]] || sleep 0.02
  done
  ms=$((($(date +%s%N) - start) / 1000000))
  ready=$(sed -n 's/.*sbx-init: ready in \([0-9.]*\) s.*/\1/p' "$console" | head -n1)
  if [[ $result == ok ]]; then
    what=healthy
    [[ -z $expect ]] || what="console: '$(grep -F -m1 -- "$expect" "$console" | tr -d '\r')'"
    echo "boot $run: $what after $((ms / 1000)).$(printf %03d $((ms % 1000))) s (guest: ready in ${ready:-?} s)"
  else
    echo "boot $run: FAILED (${result:-timeout}) after $ms ms; console:" >&2
    tail -n 20 "$console" "$tmp/qemu.err" >&2
    status=1
  fi
  kill "$qemu" 2>/dev/null || true
  wait "$qemu" 2>/dev/null || true
  qemu=''
done
exit $status
