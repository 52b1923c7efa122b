#!/usr/bin/env bash
# Installs what the build, the tests and the demo need on Debian (as root).
# Safe to run repeatedly: packages already present are left alone.
set -euo pipefail

APT_PACKAGES=(
  nftables          # netctl applies rulesets with nft
  conntrack         # netctl clears connection marks when policy generations wrap
  iproute2          # tests and the demo build namespaces with ip
  dnsmasq-base      # the DNS server of the test "internet"
  redis-server      # a real service inside a test sandbox
  redis-tools       # redis-cli and redis-benchmark on the client side
  python3-websockets # a WebSocket client that is not ours
  python3-venv      # the Tensorlake SDK conformance test's virtualenv
  python3-pip
  curl
  openssl           # the demo's wildcard certificate for sbx-proxy
  procps
  psmisc
  ca-certificates
  util-linux        # nsenter: tests run netctl in a test host namespace
  strace            # api_hardening sees the agent fsync an upload
  dpkg-dev          # .deb packages: dpkg-shlibdeps for Depends
  help2man          # .deb packages: man pages from --help
  lintian           # .deb packages: policy checks (scripts/check-debs.sh)
  man-db            # systemd-analyze verify checks the units' man: links
  systemd           # systemd-analyze; installing it starts nothing where PID 1 is not systemd
  qemu-system-x86   # sbx-host's microvm runtime (QEMU -M microvm), and the VM tests
  busybox-static    # guest images (scripts/build-image.sh): the guest's userland
  cpio              # guest images: the initramfs
  kmod              # guest images: modinfo checks the kernel modules' dependencies
)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [[ $EUID -ne 0 ]]; then
    echo "install-deps: missing packages ${missing[*]}; run as root" >&2
    exit 1
  fi
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PyPI tools the tests run, pinned, each in a virtualenv under target/ (a
# test makes its own when it is missing, so `cargo test` works without this).
install_venv() { # <name> <requirements file>
  local venv="target/$1" req="$2"
  cmp -s "$req" "$venv/.requirements" 2>/dev/null && return 0
  echo "install-deps: $venv from $req"
  if python3 -m venv "$venv" \
    && "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"; then
    cp "$req" "$venv/.requirements"
  else
    echo "install-deps: could not make $venv (no PyPI?); the tests that need it will say so" >&2
  fi
}
(cd "$(dirname "${BASH_SOURCE[0]}")/.." && install_venv schemathesis-venv tests/py/schemathesis-requirements.txt)

if ! command -v cargo >/dev/null 2>&1; then
  for dir in "$HOME/.cargo/bin" /root/.cargo/bin /usr/local/cargo/bin; do
    [[ -x "$dir/cargo" ]] && export PATH="$dir:$PATH" && break
  done
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: Rust 1.89 or newer is required: https://rustup.rs (Debian's cargo is too old)" >&2
  exit 1
fi
