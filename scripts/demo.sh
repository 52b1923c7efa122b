#!/usr/bin/env bash
# The whole system on this machine (as root), step by step:
#
#   "internet" namespace: dnsmasq (allowed.demo, denied.demo) and a web server
#        │ veth (the host's only uplink)
#   "host" namespace: netctl daemon, sbx-proxy (public URLs), sbx tunnel
#        │ veth made by netctl (rtnetlink), masqueraded toward the uplink
#   sandbox namespace made by netctl: sbx-agent, redis-server, egress policy
#
# The machine's own network namespace is never touched: no forwarding, no
# NAT, no rules there. Everything the demo makes is removed on exit, also on
# Ctrl-C or failure.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh
[[ $EUID -eq 0 ]] || { echo "demo.sh: run as root (it creates network namespaces)" >&2; exit 1; }

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
ok() { printf '  \033[32m✔\033[0m %s\n' "$*"; }
info() { printf '    %s\n' "$*"; }
fail() { printf '  \033[31m✘\033[0m %s\n' "$*"; exit 1; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }

ID=$$
HOST_NS="sbxdemo-host-$ID"
NET_NS="sbxdemo-inet-$ID"
PREFIX="sbxdemo-$ID-"      # netctl names sandbox namespaces <prefix><id>
SANDBOX=demo
SANDBOX_NS="$PREFIX$SANDBOX"
UPLINK="dup$ID"           # host end of the uplink veth
WORK=$(mktemp -d /tmp/sbx-demo.XXXXXX)
SOCK="$WORK/netctl.sock"
PIDS=()
NETCTL_PID=
HOST_SOCK="$WORK/sbx-host.sock"
# sbx-host's cgroup for this demo, under the cgroup v2 mount.
CG="$(awk '$3 == "cgroup2" {print length($2), $2}' /proc/self/mounts | sort -n | head -1 | cut -d' ' -f2)/sbxdemo-$ID"

cleanup() {
  local pid d
  set +e
  if [[ -S $HOST_SOCK ]]; then
    target/ci/sbx-host --socket "$HOST_SOCK" sandbox rm demo-vm >/dev/null 2>&1
  fi
  if [[ -n $NETCTL_PID ]] && kill -0 "$NETCTL_PID" 2>/dev/null; then
    target/ci/netctl --socket "$SOCK" netns delete "$SANDBOX" >/dev/null 2>&1
  fi
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  # Whatever netctl could not remove (it was killed, say) goes here.
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^(sbxdemo-(host|inet)-$ID|$PREFIX)"); do
    ip netns del "$ns" 2>/dev/null
  done
  # Guests sbx-host could not remove (it was killed, say) end with their cgroup.
  for d in "$CG"/*/; do
    [[ -d $d ]] || continue
    echo 1 >"$d/cgroup.kill" 2>/dev/null
    for _ in $(seq 50); do rmdir "$d" 2>/dev/null && break; sleep 0.1; done
  done
  rmdir "$CG" 2>/dev/null
  rm -rf "/etc/netns/$SANDBOX_NS" "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a long-running process and records its PID. The in_* helpers are
# spelled out here because a backgrounded shell function runs in a subshell
# whose PID is not the process's; `ip netns exec` and `nsenter` exec the
# command, so $! is the process itself.
spawn() { # out err [in_net|in_host|in_sandbox] command...
  local out=$1 err=$2; shift 2
  case $1 in
    in_net) set -- ip netns exec "$NET_NS" "${@:2}" ;;
    in_host) set -- nsenter --net="/run/netns/$HOST_NS" "${@:2}" ;;
    in_sandbox) set -- ip netns exec "$SANDBOX_NS" "${@:2}" ;;
  esac
  "$@" >"$out" 2>"$err" &
  PIDS+=($!)
}
wait_for() { # file pattern what
  for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  fail "$3 did not start: $(tail -3 "$1" "${1%.*}.log" 2>/dev/null)"
}
in_host() { nsenter --net="/run/netns/$HOST_NS" "$@"; }
in_net() { ip netns exec "$NET_NS" "$@"; }
in_sandbox() { ip netns exec "$SANDBOX_NS" "$@"; }
netctl() { target/ci/netctl --socket "$SOCK" "$@"; }

bold "1. Build (cargo build --profile ci)"
cargo build --profile ci --bins -p sbx-agent -p sbx -p netctl -p sbx-proxy -p sbx-host --quiet
BIN=target/ci
ok "sbx-agent, sbx, netctl, sbx-proxy and sbx-host built"

bold "2. A host namespace and an \"internet\" namespace with DNS and a web server"
ip netns add "$HOST_NS"
ip netns add "$NET_NS"
ip -n "$HOST_NS" link set lo up
ip -n "$NET_NS" link set lo up
ip link add "$UPLINK" netns "$HOST_NS" type veth peer name "dnet$ID" netns "$NET_NS"
ip -n "$HOST_NS" addr add 192.0.2.2/24 dev "$UPLINK"
ip -n "$NET_NS" addr add 192.0.2.1/24 dev "dnet$ID"
ip -n "$HOST_NS" link set "$UPLINK" up
ip -n "$NET_NS" link set "dnet$ID" up
ip -n "$HOST_NS" route add default via 192.0.2.1
for addr in 203.0.113.10 203.0.113.30 203.0.113.53 198.51.100.20; do ip -n "$NET_NS" addr add "$addr/32" dev lo; done
cat > "$WORK/hosts" <<EOF
203.0.113.10 allowed.demo
198.51.100.20 denied.demo
EOF
spawn /dev/null "$WORK/dnsmasq.log" in_net /usr/sbin/dnsmasq --keep-in-foreground --conf-file=/dev/null \
  --no-resolv --no-hosts --bind-interfaces --listen-address=203.0.113.53 --port=53 \
  --addn-hosts="$WORK/hosts" --local-ttl=30 --user=root --group=root --pid-file
mkdir -p "$WORK/www"
echo "hello from the internet" > "$WORK/www/index.html"
spawn /dev/null "$WORK/web.log" in_net python3 -m http.server 80 --bind 0.0.0.0 --directory "$WORK/www"
ok "internet $NET_NS: dnsmasq on 203.0.113.53 (allowed.demo → 203.0.113.10, denied.demo → 198.51.100.20),
     HTTP on port 80 of those and of 203.0.113.30"
ok "host $HOST_NS: uplink $UPLINK 192.0.2.2 → internet (the machine's own namespace is not involved)"

bold "3. netctl daemon in the host namespace"
cat > "$WORK/netctl.toml" <<EOF
[dns]
upstreams = ["203.0.113.53"]
min_ttl = 5

[setup]
netns_prefix = "$PREFIX"
host_iface_prefix = "dsb"
ipv4_pool = "10.200.0.0/24"
ipv6_pool = "fd00:5b::/48"
uplink = "$UPLINK"
EOF
spawn "$WORK/netctl.out" "$WORK/netctl.log" in_host "$BIN/netctl" --socket "$SOCK" serve \
  --config "$WORK/netctl.toml" --state-dir "$WORK/netctl-state"
NETCTL_PID=${PIDS[-1]}
wait_for "$WORK/netctl.out" listening "netctl"
ok "$(cat "$WORK/netctl.out")"

bold "4. netctl creates the sandbox network and applies its policy"
POLICY='{"allow_internet_access": true, "allow_out": ["allowed.demo"], "deny_out": ["denied.demo", "203.0.113.0/24"]}'
info "policy: $POLICY"
info "(203.0.113.0/24 is denied, but allow_out is evaluated first, so allowed.demo still works)"
START=$(date +%s%N)
netctl netns create "$SANDBOX" --policy - --json <<<"$POLICY" > "$WORK/view.json"
ok "netctl netns create $SANDBOX: $(ms_since "$START") ms"
SANDBOX_IP=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["setup"]["ipv4"].split("/")[0])' < "$WORK/view.json")
python3 - "$WORK/view.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))["setup"]
print(f"    namespace {s['netns']}, host end {s['host_iface']} ({s['gateway4']}), "
      f"eth0 {s['ipv4']} {s.get('ipv6') or ''}")
EOF
in_sandbox ip -br addr show eth0 | sed 's/^/    inside: /'
in_sandbox ip route show default | sed 's/^/    inside: /'
mkdir -p "/etc/netns/$SANDBOX_NS"
echo "nameserver 203.0.113.53" > "/etc/netns/$SANDBOX_NS/resolv.conf"

bold "5. Inside the sandbox: redis-server on loopback, and the agent on port 9501"
spawn /dev/null "$WORK/redis.log" in_sandbox redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no
python3 -c 'import secrets; print(secrets.token_hex(32))' > "$WORK/forwarded-auth.key"
chmod 600 "$WORK/forwarded-auth.key"
spawn "$WORK/agent.out" "$WORK/agent.log" in_sandbox "$BIN/sbx-agent" --listen 0.0.0.0:9501 \
  --sandbox-id "$SANDBOX" --forwarded-auth-key-file "$WORK/forwarded-auth.key"
wait_for "$WORK/agent.out" listening "sbx-agent"
ok "$(cat "$WORK/agent.out")"
AUTH=(--key-file "$WORK/forwarded-auth.key" --sandbox-id "$SANDBOX")
AGENT="http://$SANDBOX_IP:9501"
ok "GET /api/v1/health from the host: $(in_host curl -s "$AGENT/api/v1/health")"

bold "6. sbx tunnel from the host to redis inside the sandbox"
spawn "$WORK/tunnel.out" "$WORK/tunnel.log" in_host "$BIN/sbx" tunnel "$AGENT" 6379 -l 16379 "${AUTH[@]}"
TUNNEL_PID=${PIDS[-1]}
wait_for "$WORK/tunnel.out" Forwarding "sbx tunnel"
ok "$(head -1 "$WORK/tunnel.out")"
ok "redis-cli PING → $(in_host redis-cli -p 16379 ping)"
in_host redis-cli -p 16379 set demo:greeting "hello through the tunnel" >/dev/null
ok "SET then GET → $(in_host redis-cli -p 16379 get demo:greeting)"
info "redis-benchmark through the tunnel (20,000 requests, 16 clients):"
in_host redis-benchmark -p 16379 -n 20000 -c 16 -t set,get -q 2>&1 | tr '\r' '\n' \
  | grep "requests per second" | sed 's/^ */      /'

bold "7. sbx-proxy: public URLs into the sandbox (https://<port>-<id>.sbx.demo)"
# A private CA and a wildcard certificate, as an operator's ACME client would give.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj "/CN=sbx demo CA" \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=*.sbx.demo" \
  -keyout "$WORK/tls.key" -out "$WORK/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:*.sbx.demo,DNS:sbx.demo\nextendedKeyUsage=serverAuth\n' > "$WORK/tls.ext"
openssl x509 -req -in "$WORK/tls.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 2 \
  -extfile "$WORK/tls.ext" -out "$WORK/tls.pem" 2>/dev/null
cat > "$WORK/proxy.toml" <<EOF
domains = ["sbx.demo", "local"]
listen_https = "127.0.0.1:8443"
listen_http = "127.0.0.1:8080"
listen_api = "127.0.0.1:8900"
tls_cert = "$WORK/tls.pem"
tls_key = "$WORK/tls.key"
admin_socket = "$WORK/proxy-admin.sock"
state_dir = "$WORK/proxy-state"
[auth]
credentials_file = "$WORK/credentials.toml"
[api]
netctl_socket = "$SOCK"
EOF
sbx_proxy() { "$BIN/sbx-proxy" "$@"; }
API_KEY=$(sbx_proxy credentials --file "$WORK/credentials.toml" add-api-key --org demo-org --project demo-project 2>/dev/null)
ok "API key for project demo-org/demo-project (only its SHA-256 is stored): ${API_KEY:0:14}…"
spawn "$WORK/proxy.out" "$WORK/proxy.log" in_host "$BIN/sbx-proxy" serve --config "$WORK/proxy.toml"
wait_for "$WORK/proxy.out" "sbx-proxy ready" "sbx-proxy"
sed 's/^/    /' "$WORK/proxy.out"
mkdir -p "$WORK/app"
echo "hello from a web app bound to 127.0.0.1:8080 inside the sandbox" > "$WORK/app/index.html"
spawn /dev/null "$WORK/app.log" in_sandbox python3 -m http.server 8080 --bind 127.0.0.1 --directory "$WORK/app"
for _ in $(seq 100); do in_sandbox bash -c 'exec 3<>/dev/tcp/127.0.0.1/8080' 2>/dev/null && break; sleep 0.05; done
# The control plane registers the sandbox with the proxy (admin socket).
sbx_proxy sandbox --admin-socket "$WORK/proxy-admin.sock" put "$SANDBOX" --json - >/dev/null <<EOF
{"organization_id": "demo-org", "project_id": "demo-project", "agent": "$SANDBOX_IP:9501",
 "forwarded_auth_key_file": "$WORK/forwarded-auth.key", "network_policy": $POLICY}
EOF
ok "sandbox $SANDBOX registered with the proxy (agent $SANDBOX_IP:9501, no port exposed)"
pcurl() { in_host curl -sS --cacert "$WORK/ca.pem" --resolve "8080-$SANDBOX.sbx.demo:8443:127.0.0.1" \
  --resolve "$SANDBOX.sbx.demo:8443:127.0.0.1" "$@"; }
APP="https://8080-$SANDBOX.sbx.demo:8443/"
MGMT="https://$SANDBOX.sbx.demo:8443/api/v1"
show() { printf '    %s\n      → %s\n' "$1" "$2"; }
code() { pcurl -o /dev/null -w '%{http_code}' "$@"; }
body_code() { pcurl -w ' (%{http_code})' "$@" | tr -d '\n'; }
sbx_port() { in_host "$BIN/sbx" port "$@" --api-url http://127.0.0.1:8900 --api-key "$API_KEY"; }
show "curl $APP" "$(body_code "$APP")"
info "sbx port expose $SANDBOX 8080   (public, as \`tl sbx port expose\`)"
sbx_port expose "$SANDBOX" 8080 | sed 's/^/      /'
show "curl --http2 $APP" "$(pcurl --http2 -w ' (HTTP/%{http_version} %{http_code})' "$APP" | tr -d '\n')"
info "sbx port rm $SANDBOX 8080"
sbx_port rm "$SANDBOX" 8080 | sed 's/^/      /'
show "curl $APP" "$(code "$APP")"

info "the Tensorlake SDK against the proxy's sandbox API: expose 8080 to API-key holders only"
SDK_PY="$PWD/target/sdk-venv/bin/python"
if ! "$SDK_PY" -c 'import tensorlake' 2>/dev/null; then
  python3 -m venv target/sdk-venv && "$SDK_PY" -m pip install --quiet --disable-pip-version-check tensorlake==0.5.163
fi
sdk() { in_host env API_KEY="$API_KEY" "$SDK_PY" -W ignore -c "
import os, sys
from tensorlake.sandbox import SandboxClient
from tensorlake.sandbox.models import NetworkConfig
c = SandboxClient(api_url='http://127.0.0.1:8900', api_key=os.environ['API_KEY'])
$1"; }
sdk "i = c.expose_ports('$SANDBOX', [8080], allow_unauthenticated_access=False)
print(f'      expose_ports → exposed_ports={i.exposed_ports} allow_unauthenticated_access={i.allow_unauthenticated_access}')"
show "curl $APP" "$(code "$APP") (no credential)"
show "curl -H 'Authorization: Bearer <key>' $APP" "$(body_code -H "Authorization: Bearer $API_KEY" "$APP")"
show "curl $MGMT/info (the agent, port 9501)" "$(code "$MGMT/info") without a credential; with the key: $(pcurl -H "Authorization: Bearer $API_KEY" "$MGMT/info")"
info "a process run through the proxy, its output streamed as Server-Sent Events:"
pcurl -N -H "Authorization: Bearer $API_KEY" -H 'Accept: text/event-stream' -H 'Content-Type: application/json' \
  -d '{"command": "sh", "args": ["-c", "echo hello from inside; echo bye"]}' \
  "$MGMT/processes/run" | grep '^data:' | sed 's/^/      /'
spawn "$WORK/ptunnel.out" "$WORK/ptunnel.log" in_host "$BIN/sbx" tunnel http://127.0.0.1:8080 6379 -l 16380 \
  --token "$API_KEY" --via-proxy "$SANDBOX"
wait_for "$WORK/ptunnel.out" Forwarding "sbx tunnel through the proxy"
ok "sbx tunnel through the proxy (--via-proxy $SANDBOX): redis-cli GET → $(in_host redis-cli -p 16380 get demo:greeting)"
info "the proxy's access log (one line per request):"
grep 'sbx_proxy::access' "$WORK/proxy.log" | tail -3 | sed 's/^.*request /      /'

bold "8. Egress policy, seen from a process in the sandbox (run through the agent)"
sandbox_sh() { in_host "$BIN/sbx" exec "$AGENT" "${AUTH[@]}" -- bash -c "$1"; }
info "the sandbox's DNS (port 53, whatever server it asks) is answered by netctl's forwarder:"
OUT=$(sandbox_sh "getent ahostsv4 allowed.demo | awk 'NR==1{print \$1}'" 2>&1) \
  && ok "getent ahostsv4 allowed.demo → $OUT (the address is in the sandbox's allow set before the answer arrives)" \
  || fail "allowed.demo did not resolve: $OUT"
OUT=$(sandbox_sh 'getent hosts denied.demo; echo "exit $?"' 2>&1)
[[ $OUT == "exit 2" ]] && ok "getent hosts denied.demo → not found (NXDOMAIN for a denied name)" \
  || fail "denied.demo resolved: $OUT"
OUT=$(sandbox_sh 'curl -sS -m 5 http://allowed.demo/' 2>&1) \
  && ok "curl http://allowed.demo/ → $OUT" || fail "allowed.demo: $OUT"
# Timed inside the sandbox, so the figure is the refusal alone.
TIMED='s=$(date +%s%N); out=$(curl -sS -m 5 -o /dev/null "$0" 2>&1); rc=$?; echo "$out (curl exit $rc) after $(( ($(date +%s%N)-s)/1000000 )) ms"; exit $rc'
OUT=$(in_host "$BIN/sbx" exec "$AGENT" "${AUTH[@]}" -- bash -c "$TIMED" http://denied.demo/ 2>&1) \
  && fail "denied.demo was reachable" || ok "curl http://denied.demo/ refused at once: $OUT"
OUT=$(in_host "$BIN/sbx" exec "$AGENT" "${AUTH[@]}" -- bash -c "$TIMED" http://203.0.113.30/ 2>&1) \
  && fail "203.0.113.30 was reachable" || ok "curl http://203.0.113.30/ (in the denied /24) refused: $OUT"

bold "9. netctl show: the policy, the resolved addresses and the counters"
netctl show "$SANDBOX" | sed 's/^/    /'

bold "10. A policy change through the SDK (sandbox API → netctl): allow_internet_access=false"
START=$(date +%s%N)
sdk "i = c.update_sandbox('$SANDBOX', network=NetworkConfig(allow_internet_access=False))
print(f'      update_sandbox(network=...) → network_policy={i.network_policy}')"
ok "applied in $(ms_since "$START") ms (SDK → sbx-proxy → netctl → nftables)"
SANDBOX_NETNS_ID=$(ip netns exec "$SANDBOX_NS" readlink /proc/self/ns/net)
NFT_SESSION=$(for p in $(pgrep -x nft); do
  [ "$(readlink "/proc/$p/ns/net" 2>/dev/null)" = "$SANDBOX_NETNS_ID" ] && echo "$p"; done | head -1)
[ -n "$NFT_SESSION" ] || fail "no nft session in the sandbox's namespace"
info "netctl changes rules through one nft kept open in the sandbox's namespace (pid $NFT_SESSION): no process start, no wait for the kernel at exit"
OUT=$(in_host "$BIN/sbx" exec "$AGENT" "${AUTH[@]}" -- bash -c "$TIMED" http://203.0.113.10/ 2>&1) \
  && fail "still reachable" || ok "curl http://203.0.113.10/ now refused: $OUT"
info "a policy naming a domain that does not resolve is refused, and nothing changes:"
sdk "
try:
    c.update_sandbox('$SANDBOX', network=NetworkConfig(allow_internet_access=False, allow_out=['allowed.demo', 'nowhere.demo']))
    sys.exit('accepted?')
except Exception as e:
    print('      ' + str(e)[:160])"
OUT=$(in_host "$BIN/sbx" exec "$AGENT" "${AUTH[@]}" -- bash -c "$TIMED" http://203.0.113.10/ 2>&1) \
  && fail "the refused policy took effect" || ok "allowed.demo is still refused: the previous policy is in force"
ok "the tunnel still works (it is inbound): redis-cli GET → $(in_host redis-cli -p 16379 get demo:greeting)"

bold "11. netctl removes the sandbox network"
kill "$TUNNEL_PID" 2>/dev/null || true
START=$(date +%s%N)
netctl netns delete "$SANDBOX" >/dev/null
ok "netctl netns delete $SANDBOX: $(ms_since "$START") ms"
for _ in $(seq 20); do kill -0 "$NFT_SESSION" 2>/dev/null || break; sleep 0.1; done
kill -0 "$NFT_SESSION" 2>/dev/null && fail "nft session $NFT_SESSION outlived its sandbox" || ok "its nft session ended with it"
ip netns list | grep -q "^$SANDBOX_NS" && fail "namespace still there" || ok "namespace $SANDBOX_NS is gone"
in_host ip -br link | grep -q "^dsb" && fail "host link left behind" || ok "no sandbox link left on the host"
in_host nft list tables | grep -q sbx_netctl_host && fail "host table left behind" || ok "no netctl table left on the host"

bold "12. sbx-host: a sandbox on a real microVM (QEMU -M microvm), network from netctl"
if [[ ! -e target/images/default/manifest.json ]]; then
  info "building the guest image (Debian's cloud kernel, busybox, sbx-agent): scripts/build-image.sh"
  scripts/build-image.sh --name default --out target/images --agent "$BIN/sbx-agent" >"$WORK/image.log" 2>&1 \
    || fail "build-image.sh: $(tail -3 "$WORK/image.log")"
fi
ok "image target/images/default: $(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print("kernel", m["kernel"])' target/images/default/manifest.json), busybox, sbx-agent"
cat > "$WORK/sbx-host.toml" <<EOF
socket = "$HOST_SOCK"
state_dir = "$WORK/sbx-host"
netctl_socket = "$SOCK"
images_dir = "$PWD/target/images"
cgroup_dir = "$CG"
guest_dns = ["203.0.113.53"]
[microvm]
user = "nobody"     # QEMU drops to it once its files, tap and sockets are open
EOF
spawn "$WORK/sbx-host.out" "$WORK/sbx-host.log" in_host "$BIN/sbx-host" serve --config "$WORK/sbx-host.toml"
for _ in $(seq 300); do grep -q listening "$WORK/sbx-host.out" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$WORK/sbx-host.out" || fail "sbx-host did not start: $(tail -3 "$WORK/sbx-host.log")"
# It decides KVM or TCG beside serving (a probe guest, up to 3 s).
for _ in $(seq 100); do grep -q 'accelerator:' "$WORK/sbx-host.log" 2>/dev/null && break; sleep 0.1; done
ok "sbx-host serving on its socket; $(grep -o 'accelerator: .*' "$WORK/sbx-host.log" | head -1 | cut -c1-120)"
sbx_host() { "$BIN/sbx-host" --socket "$HOST_SOCK" sandbox "$@"; }
echo '{"allow_internet_access": true, "deny_out": ["denied.demo"]}' > "$WORK/vm-policy.json"
START=$(date +%s%N)
sbx_host create demo-vm --memory-mb 256 --policy "$WORK/vm-policy.json" --show-key > "$WORK/vm.json" \
  || fail "create: $(tail -5 "$WORK/sbx-host.log")"
VM_MS=$(ms_since "$START")
vm() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$WORK/vm.json" "$1"; }
VM_AGENT=$(vm agent)
(umask 077; vm forwarded_auth_key > "$WORK/vm.key")
ok "sbx-host sandbox create demo-vm: agent healthy at $VM_AGENT in $VM_MS ms on $(vm accel) (QEMU pid $(vm vmm_pid), running as $(ps -o user= -p "$(vm vmm_pid)"))"
vm_sh() { in_host "$BIN/sbx" exec "http://$VM_AGENT" --key-file "$WORK/vm.key" --sandbox-id demo-vm -- sh -c "$1"; }
show "uname -r in the guest (the host runs $(uname -r))" "$(vm_sh 'uname -r')"
show "wget -qO- http://allowed.demo/ in the guest" "$(vm_sh 'wget -qO- http://allowed.demo/ 2>&1')"
show "nslookup denied.demo in the guest (deny_out)" "$(vm_sh 'nslookup denied.demo 2>&1 | grep -m1 NXDOMAIN')"
vm_sh 'echo "written before the suspend" > /home/note; sleep 3600 >/dev/null 2>&1 & echo $! > /tmp/sleeper' >/dev/null
START=$(date +%s%N)
sbx_host suspend demo-vm > "$WORK/vm-suspended.json"
SNAP=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["snapshot_bytes"])' "$WORK/vm-suspended.json")
ok "suspended in $(ms_since "$START") ms: memory in a $((SNAP / 1048576)) MiB snapshot, QEMU exited ($(wc -l < "$CG/demo-vm/cgroup.procs") processes left)"
START=$(date +%s%N)
sbx_host resume demo-vm >/dev/null
ok "resumed in $(ms_since "$START") ms: $(vm_sh 'cat /home/note; kill -0 $(cat /tmp/sleeper) && echo "the sleep started before the suspend still runs"' | tr '\n' ';' | sed 's/;$//; s/;/; /')"
NETNS=$(vm netns)
sbx_host rm demo-vm
ip netns list | grep -q "^$NETNS" && fail "namespace still there" || ok "sbx-host sandbox rm: guest, namespace $NETNS, link, tap, files: nothing left"

bold "Done: cleaning up namespaces and processes."
