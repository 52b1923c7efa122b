#!/usr/bin/env bash
# End-to-end demo on this machine (as root): a sandbox network namespace with
# the agent and two services inside, a client namespace outside, and
# `sbx tunnel` reaching the services. Everything it creates is removed on
# exit, also on Ctrl-C or failure. Traffic stays inside the two namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install-deps.sh
[[ $EUID -eq 0 ]] || { echo "demo.sh: run as root (it creates network namespaces)" >&2; exit 1; }

bold() { printf '\n\033[1m%s\033[0m\n' "$*"; }
ok() { printf '  \033[32m✔\033[0m %s\n' "$*"; }
fail() { printf '  \033[31m✘\033[0m %s\n' "$*"; exit 1; }

ID=$$
SANDBOX_NS="sbxdemo-sbx-$ID"
CLIENT_NS="sbxdemo-cli-$ID"
WORK=$(mktemp -d /tmp/sbx-demo.XXXXXX)
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  ip netns del "$SANDBOX_NS" 2>/dev/null || true
  ip netns del "$CLIENT_NS" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bold "1. Build (cargo build --profile ci)"
cargo build --profile ci --bins -p sbx-agent -p sbx --quiet
BIN=target/ci
ok "sbx-agent and sbx built"

bold "2. A sandbox namespace and a client namespace, linked by a veth pair"
ip netns add "$SANDBOX_NS"
ip netns add "$CLIENT_NS"
ip -n "$SANDBOX_NS" link set lo up
ip -n "$CLIENT_NS" link set lo up
ip link add "dsb$ID" netns "$SANDBOX_NS" type veth peer name "dcl$ID" netns "$CLIENT_NS"
ip -n "$SANDBOX_NS" addr add 198.51.100.2/24 dev "dsb$ID"
ip -n "$CLIENT_NS" addr add 198.51.100.1/24 dev "dcl$ID"
ip -n "$SANDBOX_NS" link set "dsb$ID" up
ip -n "$CLIENT_NS" link set "dcl$ID" up
ok "sandbox $SANDBOX_NS at 198.51.100.2, client $CLIENT_NS at 198.51.100.1"
sb() { ip netns exec "$SANDBOX_NS" "$@"; }
cl() { ip netns exec "$CLIENT_NS" "$@"; }
# Starts a long-running process in a namespace and records its PID. `ip netns
# exec` execs the command, so $! is the process itself and cleanup ends it.
spawn() { # namespace out err command...
  local ns=$1 out=$2 err=$3; shift 3
  ip netns exec "$ns" "$@" >"$out" 2>"$err" &
  PIDS+=($!)
}

bold "3. Services inside the sandbox, on its loopback only"
spawn "$SANDBOX_NS" /dev/null "$WORK/redis.log" redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no
mkdir -p "$WORK/www"
head -c 5000000 /dev/urandom > "$WORK/www/blob.bin"
spawn "$SANDBOX_NS" /dev/null "$WORK/http.log" python3 -m http.server 8080 --bind 127.0.0.1 --directory "$WORK/www"
for _ in $(seq 100); do sb redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.05; done
ok "redis-server on 127.0.0.1:6379, an HTTP server on 127.0.0.1:8080"

bold "4. The agent in the sandbox, with a forwarded-auth key as an operator would install it"
python3 -c 'import secrets; print(secrets.token_hex(32))' > "$WORK/forwarded-auth.key"
chmod 600 "$WORK/forwarded-auth.key"
spawn "$SANDBOX_NS" "$WORK/agent.out" "$WORK/agent.log" "$BIN/sbx-agent" --listen 198.51.100.2:9501 \
  --sandbox-id "sbx-demo" --forwarded-auth-key-file "$WORK/forwarded-auth.key"
for _ in $(seq 100); do grep -q "listening" "$WORK/agent.out" && break; sleep 0.05; done
ok "$(cat "$WORK/agent.out")"
HEALTH=$(cl curl -s http://198.51.100.2:9501/api/v1/health)
ok "GET /api/v1/health from the client: $HEALTH"
cl redis-cli -h 198.51.100.2 -p 6379 ping >/dev/null 2>&1 && fail "redis reachable without a tunnel" \
  || ok "redis is not reachable from the client directly"

bold "5. sbx tunnel from the client namespace (minting tokens as the sandbox proxy would)"
tunnel() { # remote-port local-port
  spawn "$CLIENT_NS" "$WORK/tunnel-$1.out" "$WORK/tunnel-$1.err" "$BIN/sbx" tunnel http://198.51.100.2:9501 "$1" -l "$2" \
    --key-file "$WORK/forwarded-auth.key" --sandbox-id sbx-demo
  for _ in $(seq 100); do grep -q Forwarding "$WORK/tunnel-$1.out" && break; sleep 0.05; done
  ok "$(head -1 "$WORK/tunnel-$1.out")"
}
tunnel 6379 16379
tunnel 8080 18080

bold "6. Real clients through the tunnels"
ok "redis-cli PING -> $(cl redis-cli -p 16379 ping)"
cl redis-cli -p 16379 set demo:greeting "hello through the tunnel" >/dev/null
ok "SET then GET -> $(cl redis-cli -p 16379 get demo:greeting)"
ok "the value lives in the sandbox: $(sb redis-cli -p 6379 get demo:greeting)"
cl curl -s -o "$WORK/downloaded.bin" http://127.0.0.1:18080/blob.bin
A=$(sha256sum < "$WORK/www/blob.bin" | cut -c1-16); B=$(sha256sum < "$WORK/downloaded.bin" | cut -c1-16)
[[ "$A" == "$B" ]] && ok "5 MB over HTTP through the tunnel, sha256 $B… matches" || fail "download differs"
echo "  redis-benchmark through the tunnel (20,000 requests, 16 clients):"
cl redis-benchmark -p 16379 -n 20000 -c 16 -t set,get -q 2>&1 | tr '\r' '\n' | grep "requests per second" | sed 's/^ */    /'

bold "7. Refusals are clear and immediate"
spawn "$CLIENT_NS" /dev/null "$WORK/err1" "$BIN/sbx" tunnel http://198.51.100.2:9501 6380 -l 16380 \
  --key-file "$WORK/forwarded-auth.key" --sandbox-id sbx-demo
sleep 0.3
cl bash -c 'exec 3<>/dev/tcp/127.0.0.1/16380; cat <&3' >/dev/null 2>&1 || true
sleep 0.2
ok "tunnel to a closed port: $(grep -m1 sbx: "$WORK/err1")"
cl "$BIN/sbx" tunnel http://198.51.100.2:9501 6379 -l 0 --token wrong-token-0123456789 2>&1 | sed 's/^/  ✔ wrong credentials: /' || true

bold "8. What the agent logged (one line per tunnel)"
grep -E "tunnel (open|closed).*port=8080" "$WORK/agent.log" | tail -2 | sed 's/^/  /'

bold "Done: cleaning up namespaces and processes."
