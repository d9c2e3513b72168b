#!/usr/bin/env bash
# Instructions per 1 KiB cache hit, weir alone under callgrind (the method of
# benches/callgrind.sh): one worker in front of the demo backend, a cached route;
# after 500 warm-up requests (the first one fills the cache) the counters are zeroed,
# 5,000 keep-alive GETs of the same URL (4 connections, one request at a time each)
# are sent, and the total is divided by 5,000. Prints one line per run.
#
#   benches/callgrind_cache.sh [runs=3] [binary=target/release/weir] [body_bytes=1024]
#   PROTO=h2c benches/callgrind_cache.sh    # h2 with prior knowledge (hyper's server), by h2load
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
target="${CARGO_TARGET_DIR:-target}/release"
WEIR=${2:-$target/weir}
BODY=${3:-1024}
command -v valgrind >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
[ -n "${2:-}" ] || cargo build --release --quiet --bin weir --example backend
work=$(mktemp -d -t weir-callgrind-cache.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$target/examples/backend" 127.0.0.1:19401 b 2>/dev/null &
pids+=($!)

cat > "$work/weir.toml" <<CONF
workers = 1
[[listeners]]
name = "bench"
listen = "127.0.0.1:19410"
[[routes]]
upstream = "b"
cache = "c"
[upstreams.b]
servers = [{ address = "127.0.0.1:19401" }]
[caches.c]
max_size = "64MiB"
default_ttl = "1h"
CONF

# load N: N keep-alive GETs of /bytes/BODY over 4 connections.
load() {
  if [ "${PROTO:-h1}" = h2c ]; then
    command -v h2load >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; }
    h2load -n "$1" -c 4 -m 1 "http://127.0.0.1:19410/bytes/$BODY" >/dev/null
    return
  fi
  python3 - "$1" "$BODY" <<'PY'
import re, socket, sys, threading
n, body = int(sys.argv[1]), sys.argv[2]
req = f"GET /bytes/{body} HTTP/1.1\r\nhost: bench\r\n\r\n".encode()
def run(count):
    s = socket.create_connection(("127.0.0.1", 19410))
    buf = b""
    for _ in range(count):
        s.sendall(req)
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", buf[:end]).group(1))
                if len(buf) >= end + 4 + length:
                    buf = buf[end + 4 + length:]
                    break
            buf += s.recv(65536)
threads = [threading.Thread(target=run, args=(n // 4,)) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
PY
}

for run in $(seq "$RUNS"); do
  valgrind --tool=callgrind --callgrind-out-file="$work/weir.$run.out" "$WEIR" --config "$work/weir.toml" --log-level warn >"$work/weir.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/19410) 2>/dev/null && break; sleep 0.1; done
  load 500
  callgrind_control -z "$pid" >/dev/null 2>&1
  load 5000
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  total=$(cat "$work/weir.$run.out".* | awk '/^summary:/ {s += $2} END {print s}')
  echo "run $run: $((total / 5000)) instructions per hit"
done
