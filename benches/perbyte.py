#!/usr/bin/env python3
"""Per-byte costs a client controls (issue 17, item 5): the CPU time weir spends,
beside nginx in the same role, on

  - a 2 MiB request body sent as 1-byte chunks (2,097,152 chunks, written by the
    client in large writes), proxied to an origin;
  - a request head of 8 KiB and of 32 KiB sent one byte per write, the writes
    paced (PACE seconds apart, 50 µs by default) so each byte is read on its own.

Both proxies run alone in front of the same origin (this script in `--origin`
mode, which reads each request body whole before it answers, so neither proxy can
skip the end of an upload); the CPU time of the proxy process is read from /proc
(the run time of its threads in /proc/PID/task/*/schedstat, which counts
nanoseconds where /proc/PID/stat's utime + stime count 10 ms ticks) before and
after each request. Each figure is the median of
ROUNDS rounds; the ratio is weir's median over nginx's.

    cargo build --release --bin weir && benches/perbyte.py [ROUNDS]

WEIR=path picks another weir binary; ONLY=text runs only the cases whose label
contains it (e.g. ONLY=head); BIG=1 adds a 256 KiB head (slow).

Needs nginx (installed with apt-get when missing).
"""

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIR = os.environ.get("WEIR", os.path.join(ROOT, "target", "release", "weir"))
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 5
ORIGIN, NGINX, WEIR_PORT = 19301, 19302, 19303
# Pause between the one-byte writes of a head, in seconds.
PACE = float(os.environ.get("PACE", "0.00005"))


def nginx_binary():
    for path in ("/usr/sbin/nginx", shutil.which("nginx")):
        if path and os.path.exists(path):
            return path
    subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not os.path.exists("/usr/sbin/nginx"):
        subprocess.run(["apt-get", "update", "-qq"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=True,
                       stdout=subprocess.DEVNULL)
    return "/usr/sbin/nginx"


def origin(port):
    """A keep-alive origin that reads each request's body whole, then answers 200."""
    import socketserver

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            buf = b""
            sock = self.request

            def fill():
                nonlocal buf
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise EOFError
                buf += chunk

            try:
                while True:
                    while b"\r\n\r\n" not in buf:
                        fill()
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    lines = [l.lower() for l in head.split(b"\r\n")[1:]]
                    length = next((int(l.split(b":")[1]) for l in lines if l.startswith(b"content-length:")), 0)
                    if any(l.startswith(b"transfer-encoding:") for l in lines):
                        while True:
                            while b"\r\n" not in buf:
                                fill()
                            line, _, buf = buf.partition(b"\r\n")
                            size = int(line.split(b";")[0], 16)
                            while len(buf) < size + 2:
                                fill()
                            buf = buf[size + 2:]
                            if size == 0:
                                break
                    else:
                        while len(buf) < length:
                            fill()
                        buf = buf[length:]
                    sock.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            except (EOFError, OSError):
                return

    socketserver.ThreadingTCPServer.allow_reuse_address = True
    with socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler) as server:
        server.serve_forever()


def cpu(pid):
    """CPU time of all of `pid`'s threads so far, in seconds: the sum of their
    schedstat run times (nanoseconds, where utime + stime in /proc/PID/stat count
    10 ms ticks, too coarse for a head)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e9


def wait_port(port):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def read_response(sock):
    """Reads until a whole response with a Content-Length has arrived; the status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head.split(b"\r\n", 1)[0].decode(errors="replace")


def upload(port, chunks):
    body = b"1\r\nx\r\n" * chunks + b"0\r\n\r\n"
    request = (b"POST /upload HTTP/1.1\r\nHost: bench\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        return read_response(sock)


def bytewise_head(port, size):
    pad = size - len(b"GET /head HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nX-Pad: \r\n\r\n")
    request = (b"GET /head HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nX-Pad: "
               + b"a" * pad + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(request)):
            sock.send(request[i:i + 1])
            # Paced, so that each byte arrives (and is read) on its own, as from a
            # slow client: unpaced, the bytes pile up and a read takes many.
            time.sleep(PACE)
        return read_response(sock)


def measure(pid, run):
    samples = []
    for _ in range(ROUNDS):
        before = cpu(pid)
        status = run()
        # Let the proxy finish its side (closing, logging) before reading its clock.
        time.sleep(0.2)
        samples.append(cpu(pid) - before)
        if " 200 " not in status + " ":
            raise SystemExit(f"unexpected answer: {status}")
    return statistics.median(samples)


def main():
    if not os.path.exists(WEIR):
        raise SystemExit(f"{WEIR} is missing: cargo build --release --bin weir")
    nginx = nginx_binary()
    work = tempfile.mkdtemp(prefix="weir-perbyte.")
    temp = " ".join(f"{d}_temp_path {work};" for d in
                    ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    proxy_conf = f"""daemon off; master_process off; worker_processes 1; pid {work}/proxy.pid;
error_log {work}/proxy.err warn; events {{ worker_connections 1024; }}
http {{
  access_log off; {temp} client_max_body_size 0;
  large_client_header_buffers 4 1m; client_header_buffer_size 1k;
  client_header_timeout 120s;
  upstream o {{ server 127.0.0.1:{ORIGIN}; keepalive 8; }}
  server {{
    listen 127.0.0.1:{NGINX};
    location / {{
      proxy_pass http://o; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_request_buffering off;
    }}
  }}
}}
"""
    weir_conf = f"""
workers = 1
[[listeners]]
name = "bench"
listen = "127.0.0.1:{WEIR_PORT}"
max_header_size = 1048576
header_read_timeout = "120s"
[[routes]]
upstream = "o"
[upstreams.o]
servers = [{{ address = "127.0.0.1:{ORIGIN}" }}]
"""
    for name, text in (("proxy.conf", proxy_conf), ("weir.toml", weir_conf)):
        with open(os.path.join(work, name), "w") as f:
            f.write(text)
    procs = []
    try:
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--origin", str(ORIGIN)]))
        wait_port(ORIGIN)
        proxy = subprocess.Popen([nginx, "-c", f"{work}/proxy.conf"])
        procs.append(proxy)
        weir = subprocess.Popen([WEIR, "--config", f"{work}/weir.toml", "--log-level", "warn"])
        procs.append(weir)
        wait_port(NGINX)
        wait_port(WEIR_PORT)
        chunks = 2 * 1024 * 1024
        cases = [
            ("2 MiB upload, 1-byte chunks", lambda port: upload(port, chunks)),
            ("8 KiB head, 1 byte per write", lambda port: bytewise_head(port, 8 * 1024)),
            ("32 KiB head, 1 byte per write", lambda port: bytewise_head(port, 32 * 1024)),
        ]
        if os.environ.get("BIG"):
            # Slow (about 20 s a request): shows the cost per byte stays flat.
            cases.append(("256 KiB head, 1 byte per write", lambda port: bytewise_head(port, 256 * 1024)))
        print(f"CPU seconds of the proxy process, median of {ROUNDS} rounds")
        print("| case | weir | nginx | weir / nginx |")
        print("| --- | ---: | ---: | ---: |")
        only = os.environ.get("ONLY", "")
        for label, run in cases:
            if only not in label:
                continue
            # One warm-up each, so connection pools and buffers exist.
            run(WEIR_PORT)
            run(NGINX)
            w = measure(weir.pid, lambda: run(WEIR_PORT))
            n = measure(proxy.pid, lambda: run(NGINX))
            print(f"| {label} | {w:.4f} s | {n:.4f} s | {w / n:.2f} |", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--origin":
        origin(int(sys.argv[2]))
    else:
        main()
