#!/usr/bin/env bash
# Checks the Debian packages end to end on this machine (as root): builds
# them (scripts/build-debs.sh, PROFILE as there), runs lintian (no errors
# allowed), installs all three (netctl, sbx-agent, sbx-proxy) with dpkg -i,
# checks files, modes, owners, conffiles, the sbx-proxy user and unit
# enablement, runs the binaries' --version, runs each daemon briefly with
# its packaged config (sbx-proxy as its own user, as its unit would) until
# READY=1, verifies the units with systemd-analyze, installs the agent into
# a scratch image root with packaging/image/install-agent.sh, and purges the
# packages, checking that nothing of theirs is left (the sbx-proxy system
# user stays, as Debian leaves system users).
#
# No unit is started. Where systemd runs, the postinst would start
# netctl.service and sbx-proxy.service, so the check skips (fails with
# CI=true) instead. It refuses when any of the packages is installed already
# or their paths exist, since it purges what it installs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh

[[ $EUID -eq 0 ]] || { echo "check-debs: run as root (dpkg -i)" >&2; exit 1; }

step() { printf '\n==> %s\n' "$*"; }
ok() { printf '  ok: %s\n' "$*"; }
fail() { printf 'check-debs: FAIL: %s\n' "$*" >&2; exit 1; }

PACKAGES=(netctl sbx-agent sbx-proxy)
# Everything the packages or their maintainer scripts own or make.
OWNED_PATHS=(
  /usr/sbin/netctl /usr/sbin/sbx-agent /usr/sbin/sbx-proxy
  /etc/netctl /etc/sbx-agent /etc/sbx-proxy
  /var/lib/netctl /run/netctl /var/lib/sbx-proxy /run/sbx-proxy
  /usr/lib/systemd/system/netctl.service /usr/lib/systemd/system/sbx-agent.service
  /usr/lib/systemd/system/sbx-proxy.service /usr/lib/sysusers.d/sbx-proxy.conf
  /etc/systemd/system/multi-user.target.wants/netctl.service
  /etc/systemd/system/multi-user.target.wants/sbx-agent.service
  /etc/systemd/system/multi-user.target.wants/sbx-proxy.service
  /var/lib/systemd/deb-systemd-helper-enabled/netctl.service.dsh-also
  /var/lib/systemd/deb-systemd-helper-enabled/sbx-agent.service.dsh-also
  /var/lib/systemd/deb-systemd-helper-enabled/sbx-proxy.service.dsh-also
  /var/lib/systemd/deb-systemd-helper-masked/netctl.service
  /var/lib/systemd/deb-systemd-helper-masked/sbx-agent.service
  /var/lib/systemd/deb-systemd-helper-masked/sbx-proxy.service
  /usr/share/doc/netctl /usr/share/doc/sbx-agent /usr/share/doc/sbx-proxy
  /usr/share/man/man8/netctl.8.gz /usr/share/man/man8/sbx-agent.8.gz /usr/share/man/man8/sbx-proxy.8.gz
)

installed() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qv '^not-installed$'; }

step "preconditions"
if [[ -d /run/systemd/system ]]; then
  # dpkg -i would start netctl.service and sbx-proxy.service for real on
  # this machine.
  msg="systemd is running here, so dpkg -i would start netctl.service and sbx-proxy.service; run this check where it is not (a container or CI)"
  [[ ${CI:-} != true ]] || fail "$msg"
  echo "check-debs: SKIP: $msg"
  exit 0
fi
for pkg in "${PACKAGES[@]}"; do
  ! installed "$pkg" || fail "$pkg is installed already; this check purges what it installs, so remove it first"
done
for path in "${OWNED_PATHS[@]}"; do
  [[ ! -e $path && ! -L $path ]] || fail "$path exists and would be purged; move it away first"
done
ok "no systemd running, packages and their paths absent"

step "build (scripts/build-debs.sh, profile ${PROFILE:-release})"
mapfile -t DEBS < <(scripts/build-debs.sh)
((${#DEBS[@]} == 3)) || fail "build-debs.sh printed ${#DEBS[@]} packages, expected 3"
NETCTL_DEB=${DEBS[0]}
AGENT_DEB=${DEBS[1]}
PROXY_DEB=${DEBS[2]}
ok "$NETCTL_DEB"
ok "$AGENT_DEB"
ok "$PROXY_DEB"

step "lintian --fail-on error"
# Every tag is shown (info and up); only errors fail. Root is fine here:
# lintian only reads the files.
lintian_rc=0
lintian_out=$(lintian --fail-on error --display-level '>=info' "$NETCTL_DEB" "$AGENT_DEB" "$PROXY_DEB" 2>&1) || lintian_rc=$?
grep -v 'running with root privileges' <<<"$lintian_out" || true
((lintian_rc == 0)) || fail "lintian reported errors (above)"
ok "no lintian errors"

WORK=$(mktemp -d /tmp/check-debs.XXXXXX)
purged=false
cleanup() {
  if [[ $purged == false ]]; then
    dpkg --purge "${PACKAGES[@]}" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

step "dpkg -i"
dpkg -i "$NETCTL_DEB" "$AGENT_DEB" "$PROXY_DEB"
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || fail "$pkg is not installed after dpkg -i"
done
ok "all three installed"

mode_is() { # path mode [owner:group, default root:root]
  local actual want="$2 ${3:-root:root}"
  actual=$(stat -c '%a %U:%G' "$1")
  [[ $actual == "$want" ]] || fail "$1 is $actual, expected $want"
  ok "$1 $want"
}
mode_is /usr/sbin/netctl 755
mode_is /usr/sbin/sbx-agent 755
mode_is /usr/sbin/sbx-proxy 755
mode_is /etc/netctl/config.toml 644
mode_is /etc/sbx-agent/config.toml 644
mode_is /etc/sbx-proxy 755
mode_is /etc/sbx-proxy/config.toml 644
mode_is /usr/lib/systemd/system/netctl.service 644
mode_is /usr/lib/systemd/system/sbx-agent.service 644
mode_is /usr/lib/systemd/system/sbx-proxy.service 644
mode_is /usr/lib/sysusers.d/sbx-proxy.conf 644
# The proxy's user, made by the postinst (systemd-sysusers): a system
# account without a login shell or a home.
IFS=: read -r _ _ proxy_uid _ _ proxy_home proxy_shell < <(getent passwd sbx-proxy) \
  || fail "no sbx-proxy user after dpkg -i"
((proxy_uid > 0 && proxy_uid < 1000)) || fail "sbx-proxy has uid $proxy_uid, not a system uid"
[[ $proxy_shell == /usr/sbin/nologin && $proxy_home == /nonexistent ]] \
  || fail "sbx-proxy has home $proxy_home and shell $proxy_shell"
getent group sbx-proxy >/dev/null || fail "no sbx-proxy group after dpkg -i"
ok "system user sbx-proxy (uid $proxy_uid, $proxy_home, $proxy_shell) and its group"
# Made by the postinst, owned by the daemon's user (see packaging/README.md).
mode_is /etc/sbx-proxy/credentials.toml 600 sbx-proxy:sbx-proxy
[[ ! -e /etc/sbx-agent/forwarded-auth.key ]] || fail "the package must not ship the forwarded-auth key"
ok "no forwarded-auth key shipped"
[[ $(dpkg-query -W -f='${Conffiles}' netctl) == *"/etc/netctl/config.toml"* ]] || fail "netctl: config.toml is not a conffile"
[[ $(dpkg-query -W -f='${Conffiles}' sbx-agent) == *"/etc/sbx-agent/config.toml"* ]] || fail "sbx-agent: config.toml is not a conffile"
[[ $(dpkg-query -W -f='${Conffiles}' sbx-proxy) == *"/etc/sbx-proxy/config.toml"* ]] || fail "sbx-proxy: config.toml is not a conffile"
ok "the three config.toml are conffiles"
! dpkg -S /etc/sbx-proxy/credentials.toml >/dev/null 2>&1 || fail "credentials.toml must not be a package file"
ok "credentials.toml is not a package file (upgrades never replace it)"
[[ $(dpkg-query -W -f='${Depends}' netctl) == *nftables* ]] || fail "netctl does not depend on nftables"
[[ $(dpkg-query -W -f='${Depends}' netctl) == *conntrack* ]] || fail "netctl does not depend on conntrack"
ok "netctl Depends: $(dpkg-query -W -f='${Depends}' netctl)"
[[ $(dpkg-query -W -f='${Depends}' sbx-proxy) == *systemd-sysusers* ]] || fail "sbx-proxy does not depend on systemd-sysusers"
ok "sbx-proxy Depends: $(dpkg-query -W -f='${Depends}' sbx-proxy)"
for unit in netctl.service sbx-agent.service sbx-proxy.service; do
  [[ -L /etc/systemd/system/multi-user.target.wants/$unit ]] || fail "$unit is not enabled"
done
ok "the three units enabled for multi-user.target (symlinks; nothing started without systemd)"
[[ ! -e /run/netctl/netctl.sock ]] || fail "netctl was started by the install"
[[ ! -e /run/sbx-proxy/admin.sock ]] || fail "sbx-proxy was started by the install"
ok "netctl and sbx-proxy not started"

step "--version"
netctl_version=$(/usr/sbin/netctl --version)
agent_version=$(/usr/sbin/sbx-agent --version)
proxy_version=$(/usr/sbin/sbx-proxy --version)
[[ $netctl_version == "netctl "* ]] || fail "netctl --version printed: $netctl_version"
[[ $agent_version == "sbx-agent "* ]] || fail "sbx-agent --version printed: $agent_version"
[[ $proxy_version == "sbx-proxy "* ]] || fail "sbx-proxy --version printed: $proxy_version"
ok "$netctl_version"
ok "$agent_version"
ok "$proxy_version"
for page in netctl sbx-agent sbx-proxy; do
  man -w "$page" >/dev/null || fail "no man page for $page"
done
ok "man netctl, man sbx-agent, man sbx-proxy"

step "readiness (Type=notify): READY=1 once serving, STOPPING=1 on SIGTERM"
# Runs a binary with NOTIFY_SOCKET pointing at an abstract socket of ours,
# as systemd would, in a network namespace of its own. With CHECK_PROBE set,
# runs that shell command once READY=1 came, before the SIGTERM; it must
# succeed.
NOTIFY_PY='
import os, signal, socket, subprocess, sys, time
name = "check-debs-notify-%d" % os.getpid()
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("\0" + name)
sock.settimeout(30)
env = dict(os.environ, NOTIFY_SOCKET="@" + name)
proc = subprocess.Popen(sys.argv[1:], env=env, stdout=subprocess.DEVNULL)
got = []
try:
    got.append(sock.recv(4096).decode())
    probe = os.environ.get("CHECK_PROBE")
    if probe and subprocess.run(probe, shell=True).returncode != 0:
        got.append("probe failed: " + probe)
    # The daemons install their SIGTERM handler just after READY=1; a
    # SIGTERM in those few milliseconds ends them by the default action
    # (which systemd also counts as a clean stop), without STOPPING=1.
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    got.append(sock.recv(4096).decode())
    proc.wait(timeout=30)
except Exception as err:
    got.append("error: %s" % err)
finally:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
print(" ".join(got))
sys.exit(0 if got == ["READY=1", "STOPPING=1"] else 1)
'
notified() { # name command...
  local name=$1 got
  shift
  if ! got=$(unshare --net python3 -c "$NOTIFY_PY" "$@" 2>"$WORK/$name.log"); then
    cat "$WORK/$name.log" >&2
    fail "$name notified: $got"
  fi
  ok "$name (packaged config): $got"
}
notified netctl /usr/sbin/netctl --socket "$WORK/netctl.sock" serve --config /etc/netctl/config.toml \
  --state-dir "$WORK/netctl-state"
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$WORK/agent.key"
chmod 600 "$WORK/agent.key"
notified sbx-agent /usr/sbin/sbx-agent --sandbox-id check-debs --forwarded-auth-key-file "$WORK/agent.key" \
  --listen 127.0.0.1:0

# sbx-proxy with the packaged config and credentials file, the way its unit
# runs it: as the sbx-proxy user with CAP_NET_BIND_SERVICE only and no new
# privileges, with memory-deny-write-execute (the kernel's PR_SET_MDWE,
# which MemoryDenyWriteExecute= amounts to; jemalloc must cope), its state
# and runtime directories made as StateDirectory=/RuntimeDirectory= would.
# First root adds an API key with the command line: the file must keep its
# owner, or the daemon could not read it.
/usr/sbin/sbx-proxy credentials add-api-key --org check-debs --project debs --label check >/dev/null \
  || fail "sbx-proxy credentials add-api-key failed"
mode_is /etc/sbx-proxy/credentials.toml 600 sbx-proxy:sbx-proxy
install -d -m 0700 -o sbx-proxy -g sbx-proxy /var/lib/sbx-proxy
install -d -m 0755 -o sbx-proxy -g sbx-proxy /run/sbx-proxy
MDWE_PY='
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE: %s" % os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
'
# Once ready: an unknown sandbox under the "local" domain is a 404 from the
# proxy itself, the sandbox API refuses a bad key, and root reaches the
# admin socket.
export CHECK_PROBE='
  set -e
  expect() { # status curl-arguments...
    want=$1; shift
    got=$(curl -s -o /dev/null -w "%{http_code}" "$@")
    [ "$got" = "$want" ] || { echo "curl $*: $got, expected $want" >&2; exit 1; }
  }
  expect 404 -H "Host: check-debs.local" http://127.0.0.1:8080/
  expect 401 -H "Authorization: Bearer bogus" http://127.0.0.1:8900/sandboxes
  /usr/sbin/sbx-proxy sandbox list >/dev/null'
notified sbx-proxy sh -c 'ip link set lo up && exec "$@"' sh \
  python3 -c "$MDWE_PY" /usr/bin/setpriv --reuid=sbx-proxy --regid=sbx-proxy --clear-groups \
  --bounding-set=-all,+net_bind_service --inh-caps=-all,+net_bind_service --ambient-caps=+net_bind_service \
  --no-new-privs /usr/sbin/sbx-proxy serve --config /etc/sbx-proxy/config.toml
unset CHECK_PROBE
[[ ! -e /run/sbx-proxy/admin.sock ]] || fail "sbx-proxy left its admin socket after SIGTERM"
mode_is /var/lib/sbx-proxy 700 sbx-proxy:sbx-proxy

step "systemd-analyze verify"
# Verifies the units as installed (ExecStart binaries, man: links,
# directives). Works without systemd as PID 1; any output is a finding.
verify_out=$(systemd-analyze verify /usr/lib/systemd/system/netctl.service \
  /usr/lib/systemd/system/sbx-agent.service /usr/lib/systemd/system/sbx-proxy.service 2>&1) || {
  echo "$verify_out"
  fail "systemd-analyze verify failed"
}
if [[ -n $verify_out ]]; then
  echo "$verify_out"
  fail "systemd-analyze verify reported problems"
fi
ok "netctl.service, sbx-agent.service and sbx-proxy.service verify clean"
step "systemd-analyze security --offline (exposure, for information)"
for unit in netctl.service sbx-proxy.service; do
  printf '  %s: ' "$unit"
  systemd-analyze security --offline=yes --no-pager "/usr/lib/systemd/system/$unit" 2>&1 | tail -1 || true
done

step "reinstall (upgrade path: conffiles kept, nothing started)"
credentials_before=$(sha256sum </etc/sbx-proxy/credentials.toml)
dpkg -i "$NETCTL_DEB" "$AGENT_DEB" "$PROXY_DEB" >/dev/null
ok "dpkg -i again"
[[ $(sha256sum </etc/sbx-proxy/credentials.toml) == "$credentials_before" ]] || fail "the reinstall changed credentials.toml"
mode_is /etc/sbx-proxy/credentials.toml 600 sbx-proxy:sbx-proxy
[[ ! -e /run/sbx-proxy/admin.sock ]] || fail "sbx-proxy was started by the reinstall"
ok "credentials.toml kept as it was; sbx-proxy not started"

step "image install (packaging/image/install-agent.sh into a scratch root)"
ROOTFS=$WORK/rootfs
mkdir -p "$ROOTFS"
packaging/image/install-agent.sh --rootfs "$ROOTFS" --deb "$AGENT_DEB" \
  --generate-key --sandbox-id check-debs --listen 0.0.0.0:9501
mode_is "$ROOTFS/usr/sbin/sbx-agent" 755
mode_is "$ROOTFS/etc/sbx-agent/config.toml" 644
mode_is "$ROOTFS/etc/sbx-agent/forwarded-auth.key" 600
grep -Eq '^[0-9a-f]{64}$' "$ROOTFS/etc/sbx-agent/forwarded-auth.key" || fail "generated key is not 64 hex characters"
grep -q '^sandbox_id = "check-debs"$' "$ROOTFS/etc/sbx-agent/config.toml" || fail "sandbox_id not set"
[[ $(systemctl --root="$ROOTFS" is-enabled sbx-agent.service) == enabled ]] || fail "sbx-agent.service not enabled in the image"
ok "sbx-agent.service enabled in the image"
# The image's agent accepts its own config and key: it gets as far as
# listening, on loopback in a network namespace of its own, until timeout
# ends it. (The key path in the image's config is the image's /etc.)
# shellcheck disable=SC2016 # $1.. expand in the inner shell
unshare --net sh -c 'ip link set lo up && exec timeout 2 "$1" --config "$2" --forwarded-auth-key-file "$3" --listen 127.0.0.1:9501' \
  sh "$ROOTFS/usr/sbin/sbx-agent" "$ROOTFS/etc/sbx-agent/config.toml" "$ROOTFS/etc/sbx-agent/forwarded-auth.key" \
  >"$WORK/agent.out" 2>"$WORK/agent.err" || true
grep -q "sbx-agent listening on 127.0.0.1:9501" "$WORK/agent.out" || {
  cat "$WORK/agent.err" >&2
  fail "the image's agent did not start with the image's config and key"
}
ok "the image's agent starts with the image's config and key"
key_before=$(sha256sum <"$ROOTFS/etc/sbx-agent/forwarded-auth.key")
packaging/image/install-agent.sh --rootfs "$ROOTFS" --deb "$AGENT_DEB" 2>/dev/null
[[ $(sha256sum <"$ROOTFS/etc/sbx-agent/forwarded-auth.key") == "$key_before" ]] || fail "a re-run changed the key"
grep -q '^sandbox_id = "check-debs"$' "$ROOTFS/etc/sbx-agent/config.toml" || fail "a re-run lost the image's config"
ok "a re-run keeps the image's key and config"
if packaging/image/install-agent.sh --rootfs "$ROOTFS" --deb "$AGENT_DEB" --key-file /etc/hostname 2>/dev/null; then
  fail "install-agent accepted a key that is not 64 hex characters"
fi
ok "install-agent refuses a malformed key"

step "dpkg --purge"
# State as a running daemon and an operator would leave it.
mkdir -p /var/lib/netctl/sandboxes /run/netctl
echo '{}' >/var/lib/netctl/sandboxes/check.json
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >/etc/sbx-agent/forwarded-auth.key
chmod 600 /etc/sbx-agent/forwarded-auth.key
# sbx-proxy's registry (/var/lib/sbx-proxy, from the run above), its runtime
# directory, and a temporary file a crashed `sbx-proxy credentials` leaves.
[[ -d /var/lib/sbx-proxy && -d /run/sbx-proxy ]] || fail "sbx-proxy's state or runtime directory is missing before the purge"
touch /etc/sbx-proxy/.credentials.toml.0123456789abcdef.tmp
dpkg --purge "${PACKAGES[@]}"
purged=true
for pkg in "${PACKAGES[@]}"; do
  ! installed "$pkg" || fail "$pkg still known to dpkg after purge"
done
left=()
for path in "${OWNED_PATHS[@]}"; do
  [[ ! -e $path && ! -L $path ]] || left+=("$path")
done
((${#left[@]} == 0)) || fail "left after purge: ${left[*]}"
ok "purged; nothing left (${#OWNED_PATHS[@]} paths checked)"

printf '\ncheck-debs: all checks passed\n'
