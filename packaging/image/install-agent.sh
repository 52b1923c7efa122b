#!/usr/bin/env bash
# Installs sbx-agent into a VM image's root file system directory, as an
# image build does: the files of the sbx-agent .deb, sbx-agent.service
# enabled for the image's boot, and optionally the forwarded-auth key and
# the sandbox id. Nothing runs or starts on the build host.
#
#   packaging/image/install-agent.sh --rootfs DIR [--deb FILE]
#       [--key-file FILE | --generate-key] [--sandbox-id ID] [--listen ADDR]
#
# See packaging/image/README.md.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: install-agent.sh --rootfs DIR [options]

  --rootfs DIR      the image's root file system (not /)
  --deb FILE        the sbx-agent .deb (default: the newest
                    target/debian/sbx-agent_*_<host arch>.deb)
  --key-file FILE   install FILE (64 hex characters) as
                    /etc/sbx-agent/forwarded-auth.key, mode 0600
  --generate-key    write a new random key there instead
  --sandbox-id ID   set sandbox_id in /etc/sbx-agent/config.toml
  --listen ADDR     set listen (default 0.0.0.0:9501)
  -h, --help        this text
USAGE
}

die() { echo "install-agent: $*" >&2; exit 1; }
note() { echo "install-agent: $*" >&2; }

rootfs="" deb="" key_file="" generate_key=false sandbox_id="" listen=""
while (($#)); do
  case $1 in
    --rootfs) rootfs=${2:?--rootfs needs a directory}; shift 2 ;;
    --deb) deb=${2:?--deb needs a file}; shift 2 ;;
    --key-file) key_file=${2:?--key-file needs a file}; shift 2 ;;
    --generate-key) generate_key=true; shift ;;
    --sandbox-id) sandbox_id=${2:?--sandbox-id needs a value}; shift 2 ;;
    --listen) listen=${2:?--listen needs an address}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

[[ -n $rootfs ]] || { usage >&2; die "--rootfs is required"; }
[[ -d $rootfs ]] || die "$rootfs is not a directory"
rootfs=$(cd "$rootfs" && pwd -P)
# Installing into the running system is the package's job (dpkg -i), and
# this script would enable an agent on the build host.
[[ $rootfs != / ]] || die "--rootfs / is the build host itself; use dpkg -i there"
[[ -z $key_file || $generate_key == false ]] || die "give --key-file or --generate-key, not both"
if [[ -n $sandbox_id && ! $sandbox_id =~ ^[A-Za-z0-9._-]{1,128}$ ]]; then
  die "--sandbox-id: use 1-128 characters from [A-Za-z0-9._-]"
fi
if [[ -n $listen && ! $listen =~ ^([0-9.]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}$ ]]; then
  die "--listen: expected IPv4:port or [IPv6]:port"
fi

if [[ -z $deb ]]; then
  repo=$(cd "$(dirname "$0")/../.." && pwd -P)
  arch=$(dpkg --print-architecture)
  # shellcheck disable=SC2012 # our own file names; newest first
  deb=$(ls -t "$repo"/target/debian/sbx-agent_*_"$arch".deb 2>/dev/null | head -1 || true)
  [[ -n $deb ]] || die "no target/debian/sbx-agent_*_$arch.deb: run scripts/build-debs.sh or pass --deb"
fi
[[ -f $deb ]] || die "$deb: no such file"
[[ $(dpkg-deb -f "$deb" Package) == sbx-agent ]] || die "$deb is not the sbx-agent package"

if [[ $EUID -ne 0 ]]; then
  note "not root: files will belong to $(id -un), not root (run as root or under fakeroot)"
fi

# Everything is checked before the image is touched.
key=""
if [[ -n $key_file ]]; then
  [[ -r $key_file ]] || die "$key_file: cannot read"
  key=$(tr -d '\n' <"$key_file")
  [[ $key =~ ^[0-9a-fA-F]{64}$ ]] || die "$key_file: the key must be 64 hex characters (32 bytes)"
elif [[ $generate_key == true ]]; then
  key=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
  [[ $key =~ ^[0-9a-f]{64}$ ]] || die "could not read 32 random bytes"
fi

# 1. The package's files (binary, unit, config, docs), with their modes. A
# config.toml already in the image is kept, as dpkg keeps a changed
# conffile. The image's dpkg database does not learn about the files; see
# README.md for installing the .deb inside a Debian-based image instead.
config=$rootfs/etc/sbx-agent/config.toml
kept_config=""
if [[ -f $config ]]; then
  kept_config=$(mktemp)
  trap 'rm -f "$kept_config"' EXIT
  cp -p "$config" "$kept_config"
fi
note "extracting $(basename "$deb") into $rootfs"
dpkg-deb --extract "$deb" "$rootfs"
if [[ -n $kept_config ]]; then
  cp -p "$kept_config" "$config"
  note "kept the image's existing /etc/sbx-agent/config.toml"
fi

# 2. Enabled for the image's boot: the symlink systemctl would make.
unit=sbx-agent.service
if command -v systemctl >/dev/null 2>&1; then
  systemctl --root="$rootfs" --quiet enable "$unit"
else
  mkdir -p "$rootfs/etc/systemd/system/multi-user.target.wants"
  ln -sfn "/usr/lib/systemd/system/$unit" "$rootfs/etc/systemd/system/multi-user.target.wants/$unit"
fi
note "enabled $unit (multi-user.target)"

# 3. The forwarded-auth key: root-only, written through a 0600 temp file,
# never printed.
key_dest=$rootfs/etc/sbx-agent/forwarded-auth.key
if [[ -n $key ]]; then
  (umask 077 && printf '%s\n' "$key" >"$key_dest.tmp")
  chmod 0600 "$key_dest.tmp"
  [[ $EUID -ne 0 ]] || chown 0:0 "$key_dest.tmp"
  mv -f "$key_dest.tmp" "$key_dest"
  if [[ $generate_key == true ]]; then
    note "generated a forwarded-auth key (mode 0600); the sandbox proxy needs the same key"
  else
    note "installed the forwarded-auth key (mode 0600)"
  fi
elif [[ ! -e $key_dest ]]; then
  note "no forwarded-auth key: provision /etc/sbx-agent/forwarded-auth.key (mode 0600) before the agent can start"
fi

# 4. Settings in the config (a conffile: edited in place).
set_key() { # key value
  # Replaces the commented default or an earlier value of a top-level key.
  if grep -Eq "^#?$1 = " "$config"; then
    sed -i -E "0,/^#?$1 = .*/s//$1 = \"$2\"/" "$config"
  else
    die "$config has no '$1' line to set"
  fi
}
if [[ -n $sandbox_id ]]; then
  set_key sandbox_id "$sandbox_id"
  note "sandbox_id = \"$sandbox_id\""
elif ! grep -q '^sandbox_id = ' "$config"; then
  note "no sandbox_id: set it in /etc/sbx-agent/config.toml (or SBX_AGENT_SANDBOX_ID) before the agent can start"
fi
if [[ -n $listen ]]; then
  set_key listen "$listen"
  note "listen = \"$listen\""
fi

note "done: $rootfs/usr/sbin/sbx-agent, $unit enabled"
