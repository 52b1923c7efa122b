#!/usr/bin/env bash
# Builds the Debian packages `netctl`, `sbx-agent`, `sbx-proxy` and
# `sbx-host` into target/debian/:
#
#   scripts/build-debs.sh                 # release profile (fat LTO)
#   PROFILE=ci scripts/build-debs.sh      # reuse the ci build (what CI does)
#
# Installs cargo-deb (pinned, from crates.io) under target/tools if it is not
# there, builds the four binaries with cargo, writes their man pages with
# help2man, then packages. Prints the paths of the four .deb files
# (netctl, sbx-agent, sbx-proxy, sbx-host, in that order), one a line, on
# stdout; everything else goes to stderr. Layout, units and maintainer
# scripts: packaging/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh >&2

PROFILE=${PROFILE:-release}
CARGO_DEB_VERSION=3.8.0
TOOLS_ROOT=target/tools
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUT_DIR=target/debian

step() { printf '\n==> %s\n' "$*" >&2; }

cargo_deb=$TOOLS_ROOT/bin/cargo-deb
if ! [[ -x $cargo_deb ]] || [[ $("$cargo_deb" --version 2>/dev/null) != *" $CARGO_DEB_VERSION" ]]; then
  step "install cargo-deb $CARGO_DEB_VERSION into $TOOLS_ROOT"
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --root "$TOOLS_ROOT" >&2
fi

PACKAGES=(netctl sbx-agent sbx-proxy sbx-host)

step "build ${PACKAGES[*]} (profile $PROFILE)"
cargo build --profile "$PROFILE" --locked --bins -p netctl -p sbx-agent -p sbx-proxy -p sbx-host >&2

# cargo-deb maps the assets' target/release/ prefix to $TARGET_DIR/$PROFILE.
bin_dir=$TARGET_DIR/$PROFILE
step "man pages (help2man)"
mkdir -p "$bin_dir/man"
manpage() { # binary one-line-description
  help2man --no-info --section=8 --name="$2" --output="$bin_dir/man/$1.8" "$bin_dir/$1"
  gzip -9nf "$bin_dir/man/$1.8"
}
manpage netctl "sandbox egress policy daemon and its command line"
manpage sbx-agent "sandbox agent: management API and TCP tunnel"
manpage sbx-proxy "sandbox proxy: public URLs into sandboxes through their agents"
manpage sbx-host "sandbox host daemon: network from netctl, guests on QEMU microVMs"

version=$(cargo metadata --format-version 1 --no-deps --locked \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "netctl"))')
# Debian wants a changelog in every package. The project's history is git;
# the entry records the version and the commit the package was built from,
# dated by that commit so rebuilding the same commit gives the same file.
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
if [[ -n $(git status --porcelain --untracked-files=no 2>/dev/null) ]]; then commit="$commit (with local changes)"; fi
date=$(git log -1 --format=%cD 2>/dev/null || date -R)
maintainer=$(sed -n 's/^maintainer = "\(.*\)"$/\1/p' netctl/Cargo.toml)
mkdir -p target/packaging
for pkg in "${PACKAGES[@]}"; do
  cat > "target/packaging/$pkg.changelog" <<CHANGELOG
$pkg ($version) unstable; urgency=medium

  * Built from the sbx workspace at commit $commit.
  * The changes are the repository's history.

 -- $maintainer  $date
CHANGELOG
  gzip -9nf "target/packaging/$pkg.changelog"
done

mkdir -p "$OUT_DIR"
for pkg in "${PACKAGES[@]}"; do
  step "cargo deb -p $pkg"
  "$cargo_deb" -p "$pkg" --profile "$PROFILE" --no-build --locked --output "$OUT_DIR" >&2
done

arch=$(dpkg --print-architecture)
for pkg in "${PACKAGES[@]}"; do
  deb=$OUT_DIR/${pkg}_${version}_${arch}.deb
  [[ -f $deb ]] || { echo "build-debs: $deb was not made" >&2; exit 1; }
done
# sbx-host needs netctl of its own version (the API between them is the
# workspace's). cargo-deb has no variable for the version in `depends`, so
# host/Cargo.toml spells it out; a version bump must update it there.
host_depends=$(dpkg-deb --field "$OUT_DIR/sbx-host_${version}_${arch}.deb" Depends)
if [[ ", $host_depends," != *", netctl (= $version),"* ]]; then
  echo "build-debs: sbx-host's Depends ($host_depends) does not pin netctl (= $version): update depends in host/Cargo.toml" >&2
  exit 1
fi
for pkg in "${PACKAGES[@]}"; do
  echo "$OUT_DIR/${pkg}_${version}_${arch}.deb"
done
