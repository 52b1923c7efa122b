#!/usr/bin/env bash
# Builds a guest image for sbx-host's microvm runtime from Debian packages
# alone: the cloud kernel (unpacked, never installed) and a few of its
# modules, busybox-static, sbx-agent with the libraries it links, and an init.
#
#   scripts/build-image.sh [--name default] [--out target/images] [--agent PATH]
#                          [--init FILE] [--kernel-deb FILE]
#
# Writes OUT/NAME/{vmlinuz,initrd.img,manifest.json}, replacing an existing
# image of that name only once the new one is complete. Prints the image's
# directory on stdout; progress goes to stderr. Layout, the fw_cfg settings
# and the QEMU command line: packaging/image/README.md.
set -euo pipefail
umask 022
export PATH=$PATH:/usr/sbin:/sbin LC_ALL=C

root=$(cd "$(dirname "$0")/.." && pwd)
# The modules the init loads, in this order (each after its dependencies).
MODULES=(virtio_ring virtio virtio_mmio failover net_failover virtio_net qemu_fw_cfg)
# Measured under TCG (README): the uncompressed initrd boots faster than gzip.
COMPRESS=${SBX_IMAGE_COMPRESS:-none}
CACHE=$root/target/images/.cache

die() { echo "build-image: $*" >&2; exit 1; }
# apt-get download PKG into DIR, as _apt when root (apt's sandbox user).
apt_download() {
  [[ $(id -u) -ne 0 ]] || chown _apt "$1" 2>/dev/null || true
  (cd "$1" && apt-get download -q "$2") >&2
}
step() { echo "build-image: $*" >&2; }
usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }

name=default out=$root/target/images agent='' init=$root/packaging/image/init kernel_deb=''
while [[ $# -gt 0 ]]; do
  case $1 in
    --name | --out | --agent | --init | --kernel-deb)
      [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"
      case $1 in
        --name) name=$2 ;; --out) out=$2 ;; --agent) agent=$2 ;;
        --init) init=$2 ;; --kernel-deb) kernel_deb=$2 ;;
      esac
      shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

[[ $name =~ ^[a-z0-9][a-z0-9._-]{0,62}$ ]] || die "bad --name '$name': use [a-z0-9][a-z0-9._-]{0,62}"
if [[ -z $agent ]]; then
  for agent in "$root/target/ci/sbx-agent" "$root/target/release/sbx-agent"; do
    [[ -f $agent ]] && break
  done
fi
[[ -f $agent && -x $agent ]] || die "no agent binary at $agent (cargo build --profile ci -p sbx-agent, or --agent PATH)"
[[ -f $init && -r $init ]] || die "no init file at $init"
[[ -z $kernel_deb || -f $kernel_deb ]] || die "no kernel package at $kernel_deb"
[[ $COMPRESS == none || $COMPRESS == gzip ]] || die "SBX_IMAGE_COMPRESS must be none or gzip"
for tool in cpio dpkg-deb modinfo ldd sha256sum gzip apt-cache apt-get; do
  command -v "$tool" >/dev/null || die "$tool is missing (apt-get install cpio dpkg kmod libc-bin coreutils gzip apt)"
done
"$agent" --version >/dev/null 2>&1 || die "$agent does not run here (sbx-agent --version failed)"

mkdir -p "$out" "$CACHE"
out=$(cd "$out" && pwd)
work=$(mktemp -d "$out/.$name.new.XXXXXX")
chmod 0755 "$work" # for _apt (apt_download)
dl=''
trap 'rm -rf "$work" ${dl:+"$dl"}' EXIT
rootfs=$work/rootfs image=$work/image
mkdir -p "$rootfs" "$image"

# ---- busybox ----
if [[ $(dpkg-query -W -f '${Status}' busybox-static 2>/dev/null) == "install ok installed" ]]; then
  busybox=/bin/busybox
  busybox_version=$(dpkg-query -W -f '${Version}' busybox-static)
else
  step "busybox-static is not installed: downloading it"
  mkdir "$work/dl"
  apt_download "$work/dl" busybox-static || die "apt-get download busybox-static failed"
  deb=$(echo "$work"/dl/busybox-static_*.deb)
  dpkg-deb -x "$deb" "$work/bb"
  busybox=$work/bb/bin/busybox busybox_version=$(dpkg-deb -f "$deb" Version)
fi
if [[ $(head -c 9 "$init") == '#!/bin/sh' ]] && ! "$busybox" sh -n "$init"; then
  die "$init: busybox sh finds a syntax error"
fi

# ---- kernel ----
# Resolves linux-image-cloud-amd64 to its versioned package and downloads it
# into the cache (kept until a newer one replaces it).
fetch_kernel() {
  local pkg ver deb
  pkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
  [[ -n $pkg ]] || return 1
  ver=$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | awk '$1 == "Version:" { print $2; exit }')
  [[ -n $ver ]] || return 1
  deb=$CACHE/${pkg}_${ver//:/%3a}_amd64.deb
  if [[ ! -s $deb ]]; then
    step "downloading $pkg $ver"
    dl=$(mktemp -d "$CACHE/.dl.XXXXXX")
    apt_download "$dl" "$pkg=$ver" || return 1
    find "$CACHE" -maxdepth 1 -name 'linux-image-*.deb' -delete
    mv "$dl"/*.deb "$deb" && rm -rf "$dl" && dl=''
    [[ $(id -u) -ne 0 ]] || chown 0:0 "$deb"
  fi
  kernel_deb=$deb
}
if [[ -z $kernel_deb ]] && ! fetch_kernel; then
  step "cannot resolve or download the kernel package: apt-get update, then retrying"
  apt-get update -q >&2 || die "apt-get update failed (root needed; or pass --kernel-deb FILE)"
  fetch_kernel || die "cannot download linux-image-cloud-amd64's kernel package (apt-cache depends linux-image-cloud-amd64)"
fi
kpkg=$(dpkg-deb -f "$kernel_deb" Package 2>/dev/null) || die "$kernel_deb is not a Debian package"
kpkg_version=$(dpkg-deb -f "$kernel_deb" Version)
[[ $kpkg =~ ^linux-image-[0-9].*-amd64$ ]] || die "$kernel_deb is $kpkg, not a versioned linux-image-*-amd64 package"
kver=${kpkg#linux-image-}
step "kernel $kver ($kpkg_version)"
dpkg-deb -x "$kernel_deb" "$work/kernel"
kdir=$work/kernel/lib/modules/$kver
[[ -f $work/kernel/boot/vmlinuz-$kver && -d $kdir ]] || die "$kernel_deb has no boot/vmlinuz-$kver or lib/modules/$kver"
cp "$work/kernel/boot/vmlinuz-$kver" "$image/vmlinuz"

# ---- modules, each after what it depends on ----
mkdir -p "$rootfs/etc/sbx-init"
have=' '
for m in "${MODULES[@]}"; do
  if grep -Eq "/${m//_/[_-]}\.ko" "$kdir/modules.builtin"; then
    have+="$m " && continue # built into this kernel
  fi
  rel=$(grep -E "/${m//_/[_-]}\.ko" "$kdir/modules.order" | head -n1) ||
    die "kernel $kver has no module $m (neither in modules.order nor modules.builtin)"
  [[ -f $kdir/$rel ]] || die "kernel $kver: modules.order names $rel, which the package lacks"
  [[ $rel == *.ko ]] || die "kernel $kver: $rel is compressed; teach build-image.sh to decompress modules"
  for dep in $(modinfo -F depends "$kdir/$rel" | tr ',' ' '); do
    [[ $have == *" ${dep//-/_} "* ]] ||
      die "kernel $kver: module $m now depends on $dep, which is not loaded before it; add it to MODULES in scripts/build-image.sh"
  done
  install -D -m 0644 "$kdir/$rel" "$rootfs/lib/modules/$kver/$rel"
  echo "/lib/modules/$kver/$rel" >>"$rootfs/etc/sbx-init/modules"
  have+="$m "
done

# ---- root file system ----
mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,tmp,run,home,mnt,var/tmp}
install -d -m 0700 "$rootfs/root"
chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
install -m 0755 "$busybox" "$rootfs/bin/busybox"
"$busybox" --list-full | while read -r applet; do
  [[ -e $rootfs/$applet || -L $rootfs/$applet ]] || ln -s /bin/busybox "$rootfs/$applet"
done
install -m 0755 "$init" "$rootfs/init"
install -m 0755 "$agent" "$rootfs/usr/sbin/sbx-agent"
# The libraries the agent links (libc6, libgcc-s1 of this host) and the loader.
for lib in $(ldd "$rootfs/usr/sbin/sbx-agent" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }'); do
  install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done
[[ -x $rootfs/lib64/ld-linux-x86-64.so.2 ]] || die "ldd $agent named no /lib64/ld-linux-x86-64.so.2"
cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
printf 'root:x:0:\ntty:x:5:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
printf 'passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
printf '127.0.0.1\tlocalhost\n' >"$rootfs/etc/hosts"
: >"$rootfs/etc/resolv.conf"

# ---- initrd: /dev/console first (the kernel opens it for init's stdio), as
# a hand-made newc archive so that no mknod (root) is needed, then the tree.
newc() { # name mode rdevmajor rdevminor inode
  local pad=$(((4 - (110 + ${#1} + 1) % 4) % 4))
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%s\0' \
    "$5" "$2" 0 0 1 0 0 0 0 "$3" "$4" $((${#1} + 1)) 0 "$1"
  head -c "$pad" /dev/zero
}
{
  newc dev 040755 0 0 1
  newc dev/console 020600 5 1 2
  newc TRAILER!!! 0 0 0 0
  (cd "$rootfs" && find . -mindepth 1 | sort | cpio --quiet -o -H newc -R 0:0 --reproducible)
} | if [[ $COMPRESS == gzip ]]; then gzip -9n; else cat; fi >"$image/initrd.img"

agent_sha256=$(sha256sum "$rootfs/usr/sbin/sbx-agent" | cut -d' ' -f1)
cat >"$image/manifest.json" <<EOF
{
  "name": "$name",
  "kernel": "$kver",
  "kernel_package_version": "$kpkg_version",
  "agent_sha256": "$agent_sha256",
  "busybox_version": "$busybox_version",
  "created": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "format": 1
}
EOF
chmod 0644 "$image"/*
chmod 0755 "$image"

# ---- replace the old image only now that the new one is complete ----
dest=$out/$name
if [[ -e $dest || -L $dest ]]; then
  mv -T "$dest" "$work/old"
fi
if ! mv -T "$image" "$dest"; then
  [[ ! -e $work/old ]] || mv -T "$work/old" "$dest"
  die "cannot move the new image to $dest"
fi
step "image $name: $(du -sh "$dest/initrd.img" | cut -f1) initrd ($COMPRESS), kernel $kver"
echo "$dest"
