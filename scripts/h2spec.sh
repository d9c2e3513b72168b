#!/usr/bin/env bash
# HTTP/2 conformance: runs h2spec (every test) against weir's h2c listener (prior
# knowledge) and its TLS listener (ALPN h2, a self-signed certificate made here), with
# weir in front of the demo backend on default settings (passive health included).
# Fails when any h2spec test fails.
#
# h2spec is looked for in $H2SPEC, then ../shared/tools/h2spec next to the repository,
# then PATH; without it this script says so and exits 0 (skipped).
#
#   scripts/h2spec.sh            debug build
#   WEIR_PROFILE=release scripts/h2spec.sh
#   H2SPEC_RUNS=3 scripts/h2spec.sh      repeat both runs (flaky failures show up)
#   H2SPEC_TIMEOUT=5 scripts/h2spec.sh   h2spec's per-test timeout in seconds (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

h2spec="${H2SPEC:-}"
if [ -z "$h2spec" ] && [ -x "$repo/../shared/tools/h2spec" ]; then
  h2spec="$repo/../shared/tools/h2spec"
fi
if [ -z "$h2spec" ]; then
  h2spec="$(command -v h2spec 2>/dev/null || true)"
fi
if [ -z "$h2spec" ] || [ ! -x "$h2spec" ]; then
  echo "note: h2spec not found (set H2SPEC, or put it at ../shared/tools/h2spec or on PATH): HTTP/2 conformance run skipped"
  exit 0
fi
command -v openssl >/dev/null 2>&1 || {
  echo "h2spec.sh: openssl is needed to make the test certificate" >&2
  exit 1
}

profile="${WEIR_PROFILE:-debug}"
if [ "$profile" = release ]; then
  cargo build --release --quiet --bin weir --example backend
else
  cargo build --quiet --bin weir --example backend
fi
target="${CARGO_TARGET_DIR:-target}/$profile"

work="$(mktemp -d -t weir-h2spec.XXXXXX)"
pids=()
cleanup() {
  if [ ${#pids[@]} -gt 0 ]; then
    kill "${pids[@]}" 2>/dev/null || true
    wait "${pids[@]}" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# A port nothing listens on now (the window until weir binds it is short).
used=" "
free_port() {
  local port
  while :; do
    port=$((10000 + RANDOM % 22000))
    case "$used" in *" $port "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      used="$used$port "
      echo "$port"
      return
    fi
  done
}
# A port found free can still be taken before weir binds it (another test, an
# outgoing connection): on "Address already in use" start again on other ports.
start_weir() {
  backend_port="$(free_port)"
  h2c_port="$(free_port)"
  tls_port="$(free_port)"

  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

  cat >"$work/weir.toml" <<EOF
[[listeners]]
name = "h2c"
listen = "127.0.0.1:$h2c_port"

[[listeners]]
name = "tls"
listen = "127.0.0.1:$tls_port"
[listeners.tls]
certificates = [{ cert = "$work/cert.pem", key = "$work/key.pem" }]

[[routes]]
upstream = "app"

# Passive health stays at its defaults: a client's protocol errors must never eject
# the server.
[upstreams.app]
servers = [{ address = "127.0.0.1:$backend_port" }]
EOF

  "$target/examples/backend" "127.0.0.1:$backend_port" app 2>"$work/backend.log" &
  pids+=($!)
  NO_COLOR=1 "$target/weir" --config "$work/weir.toml" 2>"$work/weir.log" &
  weir_pid=$!
  pids+=("$weir_pid")

  ready=0
  for _ in $(seq 1 300); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$backend_port") 2>/dev/null &&
      (exec 3<>"/dev/tcp/127.0.0.1/$h2c_port") 2>/dev/null &&
      (exec 3<>"/dev/tcp/127.0.0.1/$tls_port") 2>/dev/null; then
      ready=1
      break
    fi
    if ! kill -0 "$weir_pid" 2>/dev/null; then break; fi
    sleep 0.1
  done
}
for attempt in 1 2 3; do
  start_weir
  if [ "$ready" -eq 1 ] || ! grep -q "Address already in use" "$work/weir.log" 2>/dev/null; then break; fi
  kill "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
done
if [ "$ready" -ne 1 ]; then
  echo "h2spec.sh: weir did not come up; its log:" >&2
  cat "$work/weir.log" >&2
  exit 1
fi

failed=0
run() {
  local name="$1"
  shift
  local out="$work/h2spec-$name.txt"
  # h2spec exits non-zero when a test fails; its summary line says how many.
  if "$h2spec" -h 127.0.0.1 -o "${H2SPEC_TIMEOUT:-2}" "$@" >"$out" 2>&1; then
    echo "h2spec $name: $(grep -E '^[0-9]+ tests, ' "$out" | tail -1)"
  else
    echo "h2spec $name: FAILED: $(grep -E '^[0-9]+ tests, ' "$out" | tail -1)"
    sed -n '/^Failures:/,$p' "$out"
    failed=1
  fi
}
for i in $(seq 1 "${H2SPEC_RUNS:-1}"); do
  [ "${H2SPEC_RUNS:-1}" -eq 1 ] || echo "run $i:"
  run h2c -p "$h2c_port"
  run tls -p "$tls_port" -t -k
done
if ! kill -0 "$weir_pid" 2>/dev/null; then
  echo "h2spec.sh: weir exited during the run; its log:" >&2
  cat "$work/weir.log" >&2
  exit 1
fi
if [ "$failed" -ne 0 ]; then
  echo "h2spec.sh: HTTP/2 conformance failures; the end of weir's log:" >&2
  grep -v "no healthy server" "$work/weir.log" | tail -n 40 >&2
  exit 1
fi
