#!/usr/bin/env bash
# Instructions per request for weir, nginx and HAProxy, counted by valgrind's
# callgrind: a noise-free complement to benches/e2e.sh's timings (a busy machine
# changes seconds, not instruction counts). Each proxy runs alone under callgrind
# with one worker in front of the two demo backends; after 500 warm-up requests the
# counters are zeroed, 5,000 keep-alive requests (4 connections) are sent with oha,
# and the total is divided by 5,000.
#
# Without oha, a small Python client does the same (4 keep-alive connections, each
# sending its next request once its answer is read).
#
# CHURN=1 counts instructions per *connection* instead: after 200 warm-up
# connections, 2,000 connections one after another, each opened, sent one GET with
# `Connection: close`, read to its end and closed (a small Python client, the row
# "HTTP/1.1, a new connection per request" of benches/matrix.py).
#
# Ports: PORT_BASE+1 and +2 for the backends, +10, +11, +12 for weir, nginx and
# HAProxy (PORT_BASE defaults to 19100), so two runs can share a machine.
#
#   benches/callgrind.sh        # needs valgrind, nginx, haproxy, oha (benches/e2e.sh installs them)
#   ONLY=weir WEIR=/tmp/weir-before benches/callgrind.sh   # one proxy; another weir binary
#   CLIENT=python benches/callgrind.sh                     # the Python client even with oha
#   CHURN=1 ONLY=weir PORT_BASE=22000 benches/callgrind.sh  # a new connection per request
#   OUT=/tmp/cg benches/callgrind.sh      # keep the profiles, for callgrind_annotate
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq valgrind >/dev/null; }
export PATH="$HOME/.cargo/bin:/usr/sbin:$PATH"
target="${CARGO_TARGET_DIR:-target}/release"
if [ -z "${WEIR:-}" ]; then
  cargo build --release --quiet --bin weir --example backend
fi
weir_bin="${WEIR:-$target/weir}"
backend_bin="${BACKEND:-$target/examples/backend}"
only="${ONLY:-weir,nginx,haproxy}"
base="${PORT_BASE:-19100}"
b1=$((base + 1)) b2=$((base + 2)) pw=$((base + 10)) pn=$((base + 11)) ph=$((base + 12))
churn="${CHURN:-}"
work=$(mktemp -d -t weir-callgrind.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

for port in $b1 $b2; do
  "$backend_bin" "127.0.0.1:$port" "b$port" 2>/dev/null &
  pids+=($!)
done

cat > "$work/weir.toml" <<CONF
workers = 1
[[listeners]]
name = "bench"
listen = "127.0.0.1:$pw"
[[routes]]
upstream = "b"
[upstreams.b]
servers = [{ address = "127.0.0.1:$b1" }, { address = "127.0.0.1:$b2" }]
CONF
cat > "$work/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work; uwsgi_temp_path $work; scgi_temp_path $work;
  upstream b { server 127.0.0.1:$b1; server 127.0.0.1:$b2; keepalive 64; }
  server {
    listen 127.0.0.1:$pn;
    keepalive_requests 1000000;
    location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
CONF
cat > "$work/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 1000
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend f
  bind 127.0.0.1:$ph
  default_backend b
backend b
  balance roundrobin
  server s0 127.0.0.1:$b1
  server s1 127.0.0.1:$b2
CONF

load() { # requests port: keep-alive GETs on 4 connections (CHURN: one connection each)
  if [ -n "$churn" ]; then
    python3 - "$1" "$2" <<'PY'
import socket, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
req = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(req)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    if not data.startswith(b"HTTP/1.1 200"):
        sys.exit(f"bad answer: {data[:80]!r}")
PY
    return
  fi
  if [ "${CLIENT:-}" != python ] && command -v oha >/dev/null 2>&1; then
    oha --no-tui -n "$1" -c 4 "http://127.0.0.1:$2/" >/dev/null
    return
  fi
  python3 - "$1" "$2" <<'PY'
import re, socket, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(4)]
req = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
def answer(s):
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        body += s.recv(65536)
sent = 0
while sent < n:
    batch = conns[: min(4, n - sent)]
    for s in batch:
        s.sendall(req)
    for s in batch:
        answer(s)
    sent += len(batch)
PY
}

measure() { # name port command...
  local name=$1 port=$2; shift 2
  valgrind --tool=callgrind --callgrind-out-file="$work/$name.out" "$@" >"$work/$name.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  load "$warm" "$port"
  callgrind_control -z "$pid" >/dev/null 2>&1
  load "$n" "$port"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && cp "$work/$name.out".* "$OUT/"; fi
  local total
  total=$(cat "$work/$name.out".* | awk '/^summary:/ {s += $2} END {print s}')
  echo "$name $((total / n))"
}

if [ -n "$churn" ]; then
  warm=200 n=${N:-2000}
  echo "instructions per connection (callgrind, $n connections of one request each):"
else
  warm=500 n=5000
  echo "instructions per request (callgrind, 5,000 keep-alive requests):"
fi
case ",$only," in *,weir,*) measure weir $pw "$weir_bin" --config "$work/weir.toml" --log-level warn ;; esac
case ",$only," in *,nginx,*) measure nginx $pn nginx -c "$work/nginx.conf" ;; esac
case ",$only," in *,haproxy,*) measure haproxy $ph haproxy -f "$work/haproxy.cfg" ;; esac
