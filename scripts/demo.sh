#!/usr/bin/env bash
# The README's demo: builds weir and the demo backend, starts three backends on
# 127.0.0.1:9001-9003 and, once each answers, weir on :8080 in front of them
# (config/demo.toml, weights 2:1:1, admin on :9901), shows a few requests spreading
# across them, then keeps running until Ctrl-C and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

ports=(8080 9001 9002 9003 9901)
for port in "${ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "demo: port $port is already in use; stop whatever holds it and try again" >&2
    exit 1
  fi
done

echo "building weir and the demo backend (release; the first build takes a few minutes)..."
cargo build --release --quiet --bin weir --example backend
target="${CARGO_TARGET_DIR:-target}/release"
logs="$(mktemp -d -t weir-demo.XXXXXX)"

pids=()
cleanup() {
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    echo
    echo "stopping weir and the backends..."
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  echo "logs kept in $logs"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

names=(one two three)
for i in 0 1 2; do
  "$target/examples/backend" "127.0.0.1:900$((i + 1))" "${names[$i]}" 2>"$logs/backend-${names[$i]}.log" &
  pids+=($!)
done
# Each backend answers before weir starts: a slow start would otherwise give the first
# requests a 502 (or get a backend marked down).
for i in 0 1 2; do
  port=$((9001 + i))
  for _ in $(seq 1 100); do
    if curl -sS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then break; fi
    if ! kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "demo: backend ${names[$i]} exited; its log:" >&2
      cat "$logs/backend-${names[$i]}.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  curl -sS -o /dev/null "http://127.0.0.1:$port/" ||
    { echo "demo: backend ${names[$i]} never answered on :$port" >&2; exit 1; }
done
NO_COLOR=1 "$target/weir" --config config/demo.toml 2>"$logs/weir.log" &
weir_pid=$!
pids+=("$weir_pid")

for _ in $(seq 1 100); do
  if curl -fsS -o /dev/null http://127.0.0.1:9901/readyz 2>/dev/null; then break; fi
  if ! kill -0 "$weir_pid" 2>/dev/null; then
    echo "demo: weir exited; its log:" >&2
    cat "$logs/weir.log" >&2
    exit 1
  fi
  sleep 0.1
done
curl -fsS -o /dev/null http://127.0.0.1:9901/readyz || { echo "demo: weir never became ready" >&2; exit 1; }

echo
echo "weir listens on http://127.0.0.1:8080 in front of backends one (weight 2), two and three:"
echo
for i in $(seq 1 8); do
  printf '  $ curl -s http://127.0.0.1:8080/   ->  %s\n' "$(curl -fsS http://127.0.0.1:8080/)"
done
echo
echo "eight requests went 4:2:2 (smooth weighted round-robin: weights 2:1:1, interleaved)."
echo "per-server counts from http://127.0.0.1:9901/metrics:"
echo
curl -fsS http://127.0.0.1:9901/metrics | grep '^weir_upstream_requests_total' | sed 's/^/  /'
echo
echo "try: curl http://127.0.0.1:8080/   curl http://127.0.0.1:9901/metrics   (logs in $logs)"
echo "press Ctrl-C to stop."
wait
