#!/usr/bin/env bash
# Cache hits: weir's response cache against nginx's proxy_cache, in one run.
#
# Both proxies get one worker pinned to CPU 1; wrk runs on CPU 0. The origin is
# python's http.server, hit once per proxy (then every request is a cache hit).
# Reports requests/s and CPU time per request (utime+stime of the proxy process
# over the run, from /proc, divided by the requests wrk completed).
#
#   benches/cache.sh [duration_s=10] [connections=50] [body_bytes=1024]
set -euo pipefail
DURATION=${1:-10}
CONNS=${2:-50}
BODY=${3:-1024}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /dev/shm/weir-cache-bench.XXXX)
# nginx workers run as an unprivileged user when started as root.
chmod 755 "$WORK"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build --release --quiet)
WEIR=$CARGO_TARGET_DIR/release/weir

mkdir -p "$WORK/www"
head -c "$BODY" /dev/zero | tr '\0' 'x' > "$WORK/www/page"
(cd "$WORK/www" && exec python3 -m http.server 18090 --bind 127.0.0.1 >/dev/null 2>&1) &
PIDS+=($!)

cat > "$WORK/weir.toml" <<EOF
workers = 1
[[listeners]]
name = "web"
listen = "127.0.0.1:18080"
[[routes]]
upstream = "origin"
cache = "pages"
[upstreams.origin]
servers = [{ address = "127.0.0.1:18090" }]
[caches.pages]
max_size = "64MiB"
default_ttl = "10m"
EOF

cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  proxy_cache_path $WORK/nginx-cache levels=1:2 keys_zone=pages:10m max_size=64m;
  upstream origin { server 127.0.0.1:18090; keepalive 16; }
  server {
    listen 127.0.0.1:18081;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache pages;
      proxy_cache_valid 200 10m;
      proxy_cache_lock on;
      add_header Cache-Status \$upstream_cache_status;
    }
  }
}
EOF

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run NAME PORT PID: warm the cache, then wrk; prints one table row.
run() {
  local name=$1 port=$2 pid=$3
  for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$port/page" && break; sleep 0.1; done
  echo "$name: $(curl -s -o /dev/null -D - "http://127.0.0.1:$port/page" | grep -i "^cache-status" | tr -d "\r")" >&2
  local before after out reqs rps
  before=$(cpu_ticks "$pid")
  out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/page")
  after=$(cpu_ticks "$pid")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  local tick; tick=$(getconf CLK_TCK)
  local us; us=$(awk -v t=$((after - before)) -v r="$reqs" -v hz="$tick" 'BEGIN { printf "%.1f", t / hz / r * 1e6 }')
  local p99; p99=$(echo "$out" | awk '/Latency/ {print $2}')
  echo "| $name | $rps | $us | $p99 |"
}

echo "| proxy (1 worker, CPU 1) | requests/s | CPU µs / request | mean latency |"
echo "| --- | ---: | ---: | ---: |"
taskset -c 1 "$WEIR" --config "$WORK/weir.toml" 2>"$WORK/weir.err" &
WEIR_PID=$!; PIDS+=($WEIR_PID)
run "weir" 18080 "$WEIR_PID"
kill "$WEIR_PID"

if command -v nginx >/dev/null; then
  taskset -c 1 nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
  NGINX_PID=$!; PIDS+=($NGINX_PID)
  sleep 0.5
  # The worker does the serving; count the worker's CPU.
  WORKER=$(pgrep -P "$NGINX_PID" | head -1)
  run "nginx proxy_cache" 18081 "$WORKER"
  kill "$NGINX_PID"
else
  echo "(nginx not installed: apt-get install -y nginx-light)" >&2
fi
