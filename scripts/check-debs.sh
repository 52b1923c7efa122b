#!/usr/bin/env bash
# Checks the Debian packages end to end on this machine (as root): builds
# them (scripts/build-debs.sh, PROFILE as there), runs lintian (no errors
# allowed), installs all four (netctl, sbx-agent, sbx-proxy, sbx-host) with
# dpkg -i, checks files, modes, owners, conffiles, the sbx-proxy and
# sbx-vmm users and unit enablement, runs the binaries' --version, runs
# each daemon briefly with its packaged config (sbx-proxy as its own user,
# sbx-host with its unit's capabilities, without netctl running and
# without an image) until READY=1, verifies the units with systemd-analyze,
# installs the agent into a scratch image root with
# packaging/image/install-agent.sh, and purges the packages, checking that
# nothing of theirs is left (the sbx-proxy and sbx-vmm system users stay,
# as Debian leaves system users) and that the sbx-host purge ended a guest
# left in its cgroup tree.
#
# No unit is started. Where systemd runs, the postinst would start
# netctl.service, sbx-proxy.service and sbx-host.service, so the check
# skips (fails with CI=true) instead. It refuses when any of the packages is installed already
# or their paths exist, since it purges what it installs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh

[[ $EUID -eq 0 ]] || { echo "check-debs: run as root (dpkg -i)" >&2; exit 1; }

step() { printf '\n==> %s\n' "$*"; }
ok() { printf '  ok: %s\n' "$*"; }
fail() { printf 'check-debs: FAIL: %s\n' "$*" >&2; exit 1; }

PACKAGES=(netctl sbx-agent sbx-proxy sbx-host)
# Everything the packages or their maintainer scripts own or make.
OWNED_PATHS=(
  /usr/sbin/netctl /usr/sbin/sbx-agent /usr/sbin/sbx-proxy /usr/sbin/sbx-host
  /etc/netctl /etc/sbx-agent /etc/sbx-proxy /etc/sbx-host
  /var/lib/netctl /run/netctl /var/lib/sbx-proxy /run/sbx-proxy /var/lib/sbx-host /run/sbx-host
  /usr/lib/systemd/system/netctl.service /usr/lib/systemd/system/sbx-agent.service
  /usr/lib/systemd/system/sbx-proxy.service /usr/lib/sysusers.d/sbx-proxy.conf
  /usr/lib/systemd/system/sbx-host.service /usr/lib/sysusers.d/sbx-host.conf
  /etc/systemd/system/multi-user.target.wants/netctl.service
  /etc/systemd/system/multi-user.target.wants/sbx-agent.service
  /etc/systemd/system/multi-user.target.wants/sbx-proxy.service
  /etc/systemd/system/multi-user.target.wants/sbx-host.service
  /var/lib/systemd/deb-systemd-helper-enabled/netctl.service.dsh-also
  /var/lib/systemd/deb-systemd-helper-enabled/sbx-agent.service.dsh-also
  /var/lib/systemd/deb-systemd-helper-enabled/sbx-proxy.service.dsh-also
  /var/lib/systemd/deb-systemd-helper-enabled/sbx-host.service.dsh-also
  /var/lib/systemd/deb-systemd-helper-masked/netctl.service
  /var/lib/systemd/deb-systemd-helper-masked/sbx-agent.service
  /var/lib/systemd/deb-systemd-helper-masked/sbx-proxy.service
  /var/lib/systemd/deb-systemd-helper-masked/sbx-host.service
  /usr/share/doc/netctl /usr/share/doc/sbx-agent /usr/share/doc/sbx-proxy /usr/share/doc/sbx-host
  /usr/share/man/man8/netctl.8.gz /usr/share/man/man8/sbx-agent.8.gz /usr/share/man/man8/sbx-proxy.8.gz
  /usr/share/man/man8/sbx-host.8.gz
  # sbx-host's cgroup tree (made by the daemon, removed by the purge).
  /sys/fs/cgroup/sbx-host /sys/fs/cgroup/unified/sbx-host
)

installed() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qv '^not-installed$'; }

step "preconditions"
if [[ -d /run/systemd/system ]]; then
  # dpkg -i would start netctl.service, sbx-proxy.service and
  # sbx-host.service for real on this machine.
  msg="systemd is running here, so dpkg -i would start netctl.service, sbx-proxy.service and sbx-host.service; run this check where it is not (a container or CI)"
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
((${#DEBS[@]} == 4)) || fail "build-debs.sh printed ${#DEBS[@]} packages, expected 4"
NETCTL_DEB=${DEBS[0]}
AGENT_DEB=${DEBS[1]}
PROXY_DEB=${DEBS[2]}
HOST_DEB=${DEBS[3]}
ok "$NETCTL_DEB"
ok "$AGENT_DEB"
ok "$PROXY_DEB"
ok "$HOST_DEB"

step "lintian --fail-on error"
# Every tag is shown (info and up); only errors fail. Root is fine here:
# lintian only reads the files.
lintian_rc=0
lintian_out=$(lintian --fail-on error --display-level '>=info' "$NETCTL_DEB" "$AGENT_DEB" "$PROXY_DEB" "$HOST_DEB" 2>&1) || lintian_rc=$?
grep -v 'running with root privileges' <<<"$lintian_out" || true
((lintian_rc == 0)) || fail "lintian reported errors (above)"
ok "no lintian errors"

WORK=$(mktemp -d /tmp/check-debs.XXXXXX)
purged=false
guest_pid=''
cleanup() {
  if [[ $purged == false ]]; then
    dpkg --purge "${PACKAGES[@]}" >/dev/null 2>&1 || true
  fi
  # The stand-in guest of the purge check, if the purge did not end it.
  if [[ -n $guest_pid ]]; then kill -KILL "$guest_pid" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

step "dpkg -i"
dpkg -i "$NETCTL_DEB" "$AGENT_DEB" "$PROXY_DEB" "$HOST_DEB"
for pkg in "${PACKAGES[@]}"; do
  installed "$pkg" || fail "$pkg is not installed after dpkg -i"
done
ok "all four installed"

mode_is() { # path mode [owner:group, default root:root]
  local actual want="$2 ${3:-root:root}"
  actual=$(stat -c '%a %U:%G' "$1")
  [[ $actual == "$want" ]] || fail "$1 is $actual, expected $want"
  ok "$1 $want"
}
mode_is /usr/sbin/netctl 755
mode_is /usr/sbin/sbx-agent 755
mode_is /usr/sbin/sbx-proxy 755
mode_is /usr/sbin/sbx-host 755
mode_is /etc/netctl/config.toml 644
mode_is /etc/sbx-agent/config.toml 644
mode_is /etc/sbx-proxy 755
mode_is /etc/sbx-proxy/config.toml 644
mode_is /etc/sbx-host/config.toml 644
mode_is /usr/lib/systemd/system/netctl.service 644
mode_is /usr/lib/systemd/system/sbx-agent.service 644
mode_is /usr/lib/systemd/system/sbx-proxy.service 644
mode_is /usr/lib/sysusers.d/sbx-proxy.conf 644
mode_is /usr/lib/systemd/system/sbx-host.service 644
mode_is /usr/lib/sysusers.d/sbx-host.conf 644
# The proxy's user and the one sbx-host's QEMU drops to, made by the
# postinsts (systemd-sysusers): system accounts without a login shell or a
# home.
system_user() { # name
  local uid home shell
  IFS=: read -r _ _ uid _ _ home shell < <(getent passwd "$1") || fail "no $1 user after dpkg -i"
  ((uid > 0 && uid < 1000)) || fail "$1 has uid $uid, not a system uid"
  [[ $shell == /usr/sbin/nologin && $home == /nonexistent ]] || fail "$1 has home $home and shell $shell"
  getent group "$1" >/dev/null || fail "no $1 group after dpkg -i"
  ok "system user $1 (uid $uid, $home, $shell) and its group"
}
system_user sbx-proxy
system_user sbx-vmm
# Made by the postinst, owned by the daemon's user (see packaging/README.md).
mode_is /etc/sbx-proxy/credentials.toml 600 sbx-proxy:sbx-proxy
[[ ! -e /etc/sbx-agent/forwarded-auth.key ]] || fail "the package must not ship the forwarded-auth key"
ok "no forwarded-auth key shipped"
[[ $(dpkg-query -W -f='${Conffiles}' netctl) == *"/etc/netctl/config.toml"* ]] || fail "netctl: config.toml is not a conffile"
[[ $(dpkg-query -W -f='${Conffiles}' sbx-agent) == *"/etc/sbx-agent/config.toml"* ]] || fail "sbx-agent: config.toml is not a conffile"
[[ $(dpkg-query -W -f='${Conffiles}' sbx-proxy) == *"/etc/sbx-proxy/config.toml"* ]] || fail "sbx-proxy: config.toml is not a conffile"
[[ $(dpkg-query -W -f='${Conffiles}' sbx-host) == *"/etc/sbx-host/config.toml"* ]] || fail "sbx-host: config.toml is not a conffile"
ok "the four config.toml are conffiles"
! dpkg -S /etc/sbx-proxy/credentials.toml >/dev/null 2>&1 || fail "credentials.toml must not be a package file"
ok "credentials.toml is not a package file (upgrades never replace it)"
[[ $(dpkg-query -W -f='${Depends}' netctl) == *nftables* ]] || fail "netctl does not depend on nftables"
[[ $(dpkg-query -W -f='${Depends}' netctl) == *conntrack* ]] || fail "netctl does not depend on conntrack"
ok "netctl Depends: $(dpkg-query -W -f='${Depends}' netctl)"
[[ $(dpkg-query -W -f='${Depends}' sbx-proxy) == *systemd-sysusers* ]] || fail "sbx-proxy does not depend on systemd-sysusers"
ok "sbx-proxy Depends: $(dpkg-query -W -f='${Depends}' sbx-proxy)"
host_depends=$(dpkg-query -W -f='${Depends}' sbx-host)
netctl_pkg_version=$(dpkg-query -W -f='${Version}' netctl)
[[ $host_depends == *qemu-system-x86* ]] || fail "sbx-host does not depend on qemu-system-x86"
[[ $host_depends == *"netctl (= $netctl_pkg_version)"* ]] || fail "sbx-host does not depend on netctl (= $netctl_pkg_version)"
[[ $host_depends == *systemd-sysusers* ]] || fail "sbx-host does not depend on systemd-sysusers"
ok "sbx-host Depends: $host_depends"
for unit in netctl.service sbx-agent.service sbx-proxy.service sbx-host.service; do
  [[ -L /etc/systemd/system/multi-user.target.wants/$unit ]] || fail "$unit is not enabled"
done
ok "the four units enabled for multi-user.target (symlinks; nothing started without systemd)"
[[ ! -e /run/netctl/netctl.sock ]] || fail "netctl was started by the install"
[[ ! -e /run/sbx-proxy/admin.sock ]] || fail "sbx-proxy was started by the install"
[[ ! -e /run/sbx-host/sbx-host.sock ]] || fail "sbx-host was started by the install"
ok "netctl, sbx-proxy and sbx-host not started"

step "--version"
netctl_version=$(/usr/sbin/netctl --version)
agent_version=$(/usr/sbin/sbx-agent --version)
proxy_version=$(/usr/sbin/sbx-proxy --version)
host_version=$(/usr/sbin/sbx-host --version)
[[ $netctl_version == "netctl "* ]] || fail "netctl --version printed: $netctl_version"
[[ $agent_version == "sbx-agent "* ]] || fail "sbx-agent --version printed: $agent_version"
[[ $proxy_version == "sbx-proxy "* ]] || fail "sbx-proxy --version printed: $proxy_version"
[[ $host_version == "sbx-host "* ]] || fail "sbx-host --version printed: $host_version"
ok "$netctl_version"
ok "$agent_version"
ok "$proxy_version"
ok "$host_version"
for page in netctl sbx-agent sbx-proxy sbx-host; do
  man -w "$page" >/dev/null || fail "no man page for $page"
done
ok "man netctl, man sbx-agent, man sbx-proxy, man sbx-host"

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
  ok "$name (${CHECK_CONFIG_LABEL:-packaged config}): $got"
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

# sbx-host with its packaged config, the way its unit runs it: root with
# the unit's capability bounding set only, no new privileges, umask 0077,
# its state and runtime directories made as StateDirectory=/
# RuntimeDirectory= would. It must start where netctl is not running (it
# needs netctl only to create and delete sandboxes) and no image exists yet
# (a warning). Once ready its API answers on the 0600 socket.
[[ ! -S /run/netctl/netctl.sock ]] || fail "netctl's socket exists; sbx-host must be checked without netctl"
[[ ! -e /var/lib/sbx-host/images ]] || fail "an image directory exists before sbx-host's first start"
install -d -m 0700 /var/lib/sbx-host
install -d -m 0755 /run/sbx-host
HOST_CAPS=$(sed -n 's/^CapabilityBoundingSet=//p' /usr/lib/systemd/system/sbx-host.service)
[[ -n $HOST_CAPS ]] || fail "no CapabilityBoundingSet= in sbx-host.service"
# CAP_SYS_ADMIN CAP_NET_ADMIN ... -> -all,+sys_admin,+net_admin,...
host_bounding=-all$(for cap in $HOST_CAPS; do cap=${cap#CAP_}; printf ',+%s' "${cap,,}"; done)
export CHECK_PROBE='
  set -e
  sock=/run/sbx-host/sbx-host.sock
  [ "$(stat -c "%a %U" "$sock")" = "600 root" ] || { echo "$sock: $(stat -c "%a %U" "$sock"), expected 600 root" >&2; exit 1; }
  list=$(/usr/sbin/sbx-host sandbox list | tr -d " \n")
  [ "$list" = "{\"sandboxes\":[]}" ] || { echo "sbx-host sandbox list: $list, expected no sandboxes" >&2; exit 1; }
  curl -sf --unix-socket "$sock" http://sbx-host/v1/host >"$CHECK_HOST_VIEW"'
run_host() { # name config [what the config is]
  CHECK_HOST_VIEW=$WORK/$1.host.json CHECK_CONFIG_LABEL=${3:-} notified "$1" sh -c 'umask 077 && exec "$@"' sh \
    /usr/bin/setpriv --bounding-set="$host_bounding" --no-new-privs \
    /usr/sbin/sbx-host serve --config "$2"
  grep -q 'no default image yet' "$WORK/$1.log" || {
    cat "$WORK/$1.log" >&2
    fail "$1 did not warn that there is no image"
  }
}
export CHECK_HOST_VIEW CHECK_CONFIG_LABEL
run_host sbx-host /etc/sbx-host/config.toml
ok "sbx-host: listening on its 0600 socket, no sandboxes, GET /v1/host answered, warned of the missing image, without netctl"
# The shipped config documents every key commented out at its default:
# with all of them uncommented the daemon must still start (an unknown key
# is refused) and describe the same host.
sed -E 's/^#(\[[a-z_]+\]$|[a-z_]+ = )/\1/' /etc/sbx-host/config.toml >"$WORK/all-keys.toml"
keys=$(grep -cE '^[a-z_]+ = ' "$WORK/all-keys.toml")
run_host sbx-host-all-keys "$WORK/all-keys.toml" "packaged config, all $keys keys uncommented"
cmp -s "$WORK/sbx-host.host.json" "$WORK/sbx-host-all-keys.host.json" || {
  cat "$WORK/sbx-host.host.json" "$WORK/sbx-host-all-keys.host.json" >&2
  fail "sbx-host describes another host with the documented defaults uncommented"
}
ok "sbx-host with every documented key uncommented: the same host"
unset CHECK_PROBE CHECK_HOST_VIEW CHECK_CONFIG_LABEL
mode_is /var/lib/sbx-host 700
mode_is /var/lib/sbx-host/sandboxes 700
HOST_CGROUP=''
for dir in /sys/fs/cgroup/sbx-host /sys/fs/cgroup/unified/sbx-host; do
  [[ -d $dir ]] && HOST_CGROUP=$dir
done
[[ -n $HOST_CGROUP ]] || fail "sbx-host made no cgroup directory"
ok "sbx-host's cgroup tree: $HOST_CGROUP"
# The daemon leaves its socket when it stops (the next start replaces
# it); the reinstall below checks that nothing started sbx-host again.
rm -f /run/sbx-host/sbx-host.sock

step "systemd-analyze verify"
# Verifies the units as installed (ExecStart binaries, man: links,
# directives). Works without systemd as PID 1; any output is a finding.
verify_out=$(systemd-analyze verify /usr/lib/systemd/system/netctl.service \
  /usr/lib/systemd/system/sbx-agent.service /usr/lib/systemd/system/sbx-proxy.service \
  /usr/lib/systemd/system/sbx-host.service 2>&1) || {
  echo "$verify_out"
  fail "systemd-analyze verify failed"
}
if [[ -n $verify_out ]]; then
  echo "$verify_out"
  fail "systemd-analyze verify reported problems"
fi
ok "netctl.service, sbx-agent.service, sbx-proxy.service and sbx-host.service verify clean"
step "systemd-analyze security --offline (exposure, for information)"
for unit in netctl.service sbx-proxy.service sbx-host.service; do
  printf '  %s: ' "$unit"
  systemd-analyze security --offline=yes --no-pager "/usr/lib/systemd/system/$unit" 2>&1 | tail -1 || true
done

step "reinstall (upgrade path: conffiles kept, nothing started)"
credentials_before=$(sha256sum </etc/sbx-proxy/credentials.toml)
dpkg -i "$NETCTL_DEB" "$AGENT_DEB" "$PROXY_DEB" "$HOST_DEB" >/dev/null
ok "dpkg -i again"
[[ $(sha256sum </etc/sbx-proxy/credentials.toml) == "$credentials_before" ]] || fail "the reinstall changed credentials.toml"
mode_is /etc/sbx-proxy/credentials.toml 600 sbx-proxy:sbx-proxy
[[ ! -e /run/sbx-proxy/admin.sock ]] || fail "sbx-proxy was started by the reinstall"
[[ ! -e /run/sbx-host/sbx-host.sock ]] || fail "sbx-host was started by the reinstall"
[[ -d /var/lib/sbx-host/sandboxes ]] || fail "the reinstall removed sbx-host's state"
ok "credentials.toml kept as it was; sbx-proxy and sbx-host not started; sbx-host's state kept"

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
# sbx-host: a guest the daemon left running (removal stops only the
# daemon), stood in for by a sleep in a sandbox cgroup of sbx-host's tree,
# with a cgroup below it as a guest's agent may make; and an image.
mkdir "$HOST_CGROUP/check-debs" "$HOST_CGROUP/check-debs/inner"
# Not a child of this shell (no job notice when it is killed): ended, it
# is reaped by init.
guest_pid=$(sh -c 'sleep 300 </dev/null >/dev/null 2>&1 & echo $!')
echo "$guest_pid" >"$HOST_CGROUP/check-debs/inner/cgroup.procs"
mkdir -p /var/lib/sbx-host/images/default /var/lib/sbx-host/sandboxes/check-debs
touch /var/lib/sbx-host/images/default/vmlinuz /var/lib/sbx-host/sandboxes/check-debs/record.json
dpkg --purge "${PACKAGES[@]}"
purged=true
for pkg in "${PACKAGES[@]}"; do
  ! installed "$pkg" || fail "$pkg still known to dpkg after purge"
done
# Killed, it may be a zombie until init reaps it.
guest_state=$(sed 's/.*) //' "/proc/$guest_pid/stat" 2>/dev/null | cut -d' ' -f1) || true
[[ -z $guest_state || $guest_state == Z ]] || fail "the sbx-host purge left the process in its cgroup tree running ($guest_state)"
guest_pid=''
ok "the sbx-host purge ended the process left in its cgroup tree"
left=()
for path in "${OWNED_PATHS[@]}"; do
  [[ ! -e $path && ! -L $path ]] || left+=("$path")
done
((${#left[@]} == 0)) || fail "left after purge: ${left[*]}"
ok "purged; nothing left (${#OWNED_PATHS[@]} paths checked)"

printf '\ncheck-debs: all checks passed\n'
