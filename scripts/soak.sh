#!/usr/bin/env bash
# Soak test (not part of the default test run): steady load through a release weir
# while backends are killed and restarted and the config is reloaded with SIGHUP.
# At the end: requests, failures (every request is an idempotent GET: none may
# fail), and weir's open file descriptors and RSS at the start and the end.
#
#   scripts/soak.sh                      # 120 s
#   SOAK_SECONDS=600 scripts/soak.sh     # longer
#
# Needs wrk. Ports: SOAK_PORT (weir, default 28080), SOAK_PORT+1 (admin), and
# SOAK_PORT+11.. +13 (three backends). Exit status 1 if any request failed or the
# fd count grew past what the upstream pools may hold (3 servers x keepalive 16).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${SOAK_SECONDS:-120}
port=${SOAK_PORT:-28080}
admin=$((port + 1))
backends=($((port + 11)) $((port + 12)) $((port + 13)))
command -v wrk >/dev/null || { echo "soak: wrk is required (apt-get install wrk)" >&2; exit 2; }

cargo build --release --quiet --bin weir --example backend
target=${CARGO_TARGET_DIR:-target}/release
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -n "${weir_pid:-}" ] && kill "$weir_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Two configs that differ in weights; each SIGHUP swaps between them.
write_config() {
  cat >"$work/weir.toml" <<TOML
[admin]
listen = "127.0.0.1:$admin"

[[listeners]]
name = "web"
listen = "127.0.0.1:$port"

[[routes]]
upstream = "soak"

[upstreams.soak]
connect_timeout = "500ms"
request_timeout = "5s"
retry_budget = 1.0
keepalive = 16
servers = [
  { address = "127.0.0.1:${backends[0]}", weight = $1 },
  { address = "127.0.0.1:${backends[1]}" },
  { address = "127.0.0.1:${backends[2]}" },
]

# Passive ejection takes a killed server out at its first failure; the active check
# brings it back once it answers again (without one, repeated ejections double
# until every server is out at once, which is a different test).
[upstreams.soak.passive_health]
consecutive_failures = 1

[upstreams.soak.health_check]
path = "/"
interval = "500ms"
timeout = "250ms"
healthy_threshold = 1
unhealthy_threshold = 1
TOML
}

declare -A backend_pid
start_backend() {
  "$target/examples/backend" "127.0.0.1:$1" "b$1" 2>/dev/null &
  backend_pid[$1]=$!
  pids+=($!)
}
for b in "${backends[@]}"; do start_backend "$b"; done
write_config 1
RUST_LOG=warn "$target/weir" --config "$work/weir.toml" 2>"$work/weir.log" &
weir_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done

fds() { ls "/proc/$weir_pid/fd" | wc -l; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$weir_pid/status"; }

# Warm up (pools, allocator), then take the baseline.
wrk -t2 -c32 -d3s "http://127.0.0.1:$port/" >/dev/null
sleep 1
fd_start=$(fds); rss_start=$(rss)

wrk -t2 -c32 -d"${seconds}s" --latency "http://127.0.0.1:$port/" >"$work/wrk.txt" &
wrk_pid=$!
kills=0; reloads=0; weight=1
end=$((SECONDS + seconds - 2))
while [ $SECONDS -lt $end ]; do
  sleep 4
  victim=${backends[$((kills % 3))]}
  kill -9 "${backend_pid[$victim]}" 2>/dev/null || true
  wait "${backend_pid[$victim]}" 2>/dev/null || true
  kills=$((kills + 1))
  sleep 2
  start_backend "$victim"
  weight=$((weight % 3 + 1))
  write_config "$weight"
  kill -HUP "$weir_pid"
  reloads=$((reloads + 1))
done
wait "$wrk_pid"
sleep 1
fd_end=$(fds); rss_end=$(rss)

requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.txt"); non2xx=${non2xx:-0}
socket_errors=$(awk -F'[ ,]+' '/Socket errors/ {print $4 + $6 + $8 + $10}' "$work/wrk.txt"); socket_errors=${socket_errors:-0}
reload_ok=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^weir_config_reloads_total\{result="success"\}/ {print $2}')
failures=$((non2xx + socket_errors))

echo "== soak: ${seconds}s, wrk -t2 -c32, ${kills} backend kills, ${reloads} SIGHUP reloads (${reload_ok:-?} succeeded)"
grep -E "Requests/sec|Latency|99%" "$work/wrk.txt" | sed 's/^/   /'
echo "requests: $requests"
echo "failures: $failures (non-2xx $non2xx, socket errors $socket_errors)"
echo "fds:      $fd_start -> $fd_end"
echo "rss:      ${rss_start} KiB -> ${rss_end} KiB"
echo "weir's answers by status:"
curl -s "http://127.0.0.1:$admin/metrics" | grep -E '^weir_requests_total' | sed 's/^/   /'
if [ "$failures" -gt 0 ]; then echo "weir's log (last lines):"; tail -5 "$work/weir.log" | sed 's/^/   /'; fi
status=0
[ "$failures" -eq 0 ] || { echo "FAIL: idempotent GETs failed"; status=1; }
[ "$fd_end" -le $((fd_start + 48)) ] || { echo "FAIL: file descriptors grew"; status=1; }
exit $status
