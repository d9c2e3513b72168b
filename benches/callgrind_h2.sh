#!/usr/bin/env bash
# Instructions per h2c request through weir alone, counted by valgrind's callgrind:
# h2load with 10 connections x 10 streams (as benches/matrix.py's h2c row), 1,000
# warm-up requests, then the counters are zeroed and 10,000 requests are counted.
# A noise-free figure for changes on the HTTP/2 path; pass another weir binary to
# compare (e.g. one built before a change).
#
#   benches/callgrind_h2.sh [path/to/weir]      # needs valgrind and h2load (nghttp2-client)
#   ANNOTATE=1 benches/callgrind_h2.sh          # also print callgrind_annotate's inclusive top
#   PROTO=tls-h2 benches/callgrind_h2.sh        # h2 over TLS; PROTO=tls-h1: TLS HTTP/1.1 keep-alive
#   PORT_BASE=23000 benches/callgrind_h2.sh     # weir on PORT_BASE+20, backends +21, +22 (default 19100)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
command -v h2load >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; }
export PATH="$HOME/.cargo/bin:/usr/sbin:$PATH"
target="${CARGO_TARGET_DIR:-target}/release"
weir=${1:-}
if [ -z "$weir" ]; then cargo build --release --quiet --bin weir --example backend; weir="$target/weir"; fi
[ -x "$target/examples/backend" ] || cargo build --release --quiet --example backend
work=$(mktemp -d -t weir-callgrind-h2.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT
base="${PORT_BASE:-19100}"
port_weir=$((base + 20))
port_b1=$((base + 21))
port_b2=$((base + 22))
for port in "$port_b1" "$port_b2"; do
  "$target/examples/backend" "127.0.0.1:$port" "b$port" 2>/dev/null &
  pids+=($!)
done
proto=${PROTO:-h2c}
url=http://127.0.0.1:$port_weir/
tls=""
h2load_args=(-c10 -m10)
if [ "$proto" != h2c ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/key.pem" \
    -out "$work/cert.pem" -days 2 -subj /CN=localhost 2>/dev/null
  tls="[listeners.tls]
certificates = [{ cert = \"$work/cert.pem\", key = \"$work/key.pem\" }]"
  url=https://127.0.0.1:$port_weir/
  [ "$proto" = tls-h1 ] && h2load_args=(-c10 -m1 --h1)
fi
cat > "$work/weir.toml" <<CONF
workers = 1
[[listeners]]
name = "bench"
listen = "127.0.0.1:$port_weir"
$tls
[[routes]]
upstream = "b"
[upstreams.b]
servers = [{ address = "127.0.0.1:$port_b1" }, { address = "127.0.0.1:$port_b2" }]
CONF
valgrind --tool=callgrind --callgrind-out-file="$work/weir.out" "$weir" --config "$work/weir.toml" --log-level warn \
  >"$work/weir.log" 2>&1 &
pid=$!
pids+=($pid)
for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$port_weir) 2>/dev/null && break; sleep 0.1; done
h2load "${h2load_args[@]}" -n1000 "$url" >/dev/null
callgrind_control -z "$pid" >/dev/null 2>&1
h2load "${h2load_args[@]}" -n10000 "$url" | grep -E "^requests:"
callgrind_control -d "$pid" >/dev/null 2>&1
kill "$pid"; wait "$pid" 2>/dev/null || true
total=$(cat "$work/weir.out".* | awk '/^summary:/ {s += $2} END {print s}')
echo "instructions per $proto request: $((total / 10000))"
if [ -n "${ANNOTATE:-}" ]; then
  callgrind_annotate --inclusive=yes "$(ls "$work"/weir.out.* | tail -1)" 2>/dev/null | head -80
fi
