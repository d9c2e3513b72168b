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
#   benches/callgrind.sh        # needs valgrind, nginx, haproxy, oha (benches/e2e.sh installs them)
#   ONLY=weir WEIR=/tmp/weir-before benches/callgrind.sh   # one proxy; another weir binary
#   CLIENT=python benches/callgrind.sh                     # the Python client even with oha
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
work=$(mktemp -d -t weir-callgrind.XXXXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

for port in 19101 19102; do
  "$backend_bin" "127.0.0.1:$port" "b$port" 2>/dev/null &
  pids+=($!)
done

cat > "$work/weir.toml" <<CONF
workers = 1
[[listeners]]
name = "bench"
listen = "127.0.0.1:19110"
[[routes]]
upstream = "b"
[upstreams.b]
servers = [{ address = "127.0.0.1:19101" }, { address = "127.0.0.1:19102" }]
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
  upstream b { server 127.0.0.1:19101; server 127.0.0.1:19102; keepalive 64; }
  server {
    listen 127.0.0.1:19111;
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
  bind 127.0.0.1:19112
  default_backend b
backend b
  balance roundrobin
  server s0 127.0.0.1:19101
  server s1 127.0.0.1:19102
CONF

load() { # requests port: keep-alive GETs on 4 connections
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
  load 500 "$port"
  callgrind_control -z "$pid" >/dev/null 2>&1
  load 5000 "$port"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  local total
  total=$(cat "$work/$name.out".* | awk '/^summary:/ {s += $2} END {print s}')
  echo "$name $((total / 5000))"
}

echo "instructions per request (callgrind, 5,000 keep-alive requests):"
case ",$only," in *,weir,*) measure weir 19110 "$weir_bin" --config "$work/weir.toml" --log-level warn ;; esac
case ",$only," in *,nginx,*) measure nginx 19111 nginx -c "$work/nginx.conf" ;; esac
case ",$only," in *,haproxy,*) measure haproxy 19112 haproxy -f "$work/haproxy.cfg" ;; esac
