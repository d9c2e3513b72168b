#!/usr/bin/env bash
# Requests/s through weir with one rate limit kept in this process (the default)
# against the same limit kept in Redis (`store = "redis://..."`): one wrk run each
# (keep-alive HTTP/1.1, 50 connections, 5 s), printed with their ratio.
#
# The limit never refuses (rate 1e9), so what differs is the cost of the check: a
# local bucket against one EVALSHA round trip to Redis. Every request counts against
# one key (`global`), the worst case for Redis (one hot key). weir runs on core 1;
# the backend, redis-server and wrk share core 0.
#
#   benches/ratelimit_redis.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --release --bin weir --example backend
TARGET="${CARGO_TARGET_DIR:-target}/release"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BACKEND_PORT=$(free_port)
REDIS_PORT=$(free_port)
WEIR_PORT=$(free_port)

taskset -c 0 "$TARGET/examples/backend" "127.0.0.1:$BACKEND_PORT" b >/dev/null 2>&1 &
PIDS+=($!)
taskset -c 0 redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
PIDS+=($!)

wait_port() {
  for _ in $(seq 100); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on port $1" >&2
  exit 1
}
wait_port "$BACKEND_PORT"
wait_port "$REDIS_PORT"

# run NAME STORE_LINE: starts weir with the limit, warms up, prints req/s.
run() {
  cat >"$WORK/$1.toml" <<TOML
workers = 1
[[listeners]]
name = "web"
listen = "127.0.0.1:$WEIR_PORT"
[[routes]]
upstream = "app"
rate_limit = "all"
[upstreams.app]
servers = [{ address = "127.0.0.1:$BACKEND_PORT" }]
[rate_limits.all]
key = "global"
rate = 1000000000
burst = 1000000000
$2
TOML
  taskset -c 1 "$TARGET/weir" --config "$WORK/$1.toml" --log-level error &
  local pid=$!
  wait_port "$WEIR_PORT"
  taskset -c 0 wrk -t1 -c50 -d1s "http://127.0.0.1:$WEIR_PORT/" >/dev/null
  taskset -c 0 wrk -t1 -c50 -d5s "http://127.0.0.1:$WEIR_PORT/" >"$WORK/$1.out"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  grep -q "Non-2xx" "$WORK/$1.out" && { echo "$1: some requests were not 200" >&2; cat "$WORK/$1.out" >&2; exit 1; }
  awk '/Requests\/sec/ {print $2}' "$WORK/$1.out"
}

LOCAL=$(run local "")
REDIS=$(run redis "store = \"redis://127.0.0.1:$REDIS_PORT/0\"")
echo "local: $LOCAL req/s"
echo "redis: $REDIS req/s"
python3 -c "print(f'redis / local: {$REDIS / $LOCAL:.2f}')"
