#!/usr/bin/env python3
"""Cache objects at scale: what a cache full of small responses costs in memory.

weir (release binary, `workers = 1`) fronts weir's demo backend
(`examples/backend`, `GET /bytes/N` answers N bytes) with one cache of `max_size`.
Distinct URLs (`/bytes/N?n=I`) are fetched over pipelined keep-alive connections
until the cache has evicted, then as many again as it took to start evicting, so
the store is full and has turned over. Then the figures, from `/proc` and
`/metrics`:

- rss_growth / max_size: resident memory gained since before the first object (the
  process was warmed first on an uncached route, so connection buffers are in the
  baseline), against the configured bound; the scale target is <= 1.2.
- rss / max_size: the whole process's resident memory against the bound.
- objects: `weir_cache_entries`; weighed: `weir_cache_size_bytes` / max_size.
- bytes/object: rss_growth / objects.

With `--nginx` the same fill runs through nginx `proxy_cache` (keys_zone and cache
files on tmpfs): its worker's RSS growth, and the cache files' disk use.

    benches/scale_cache.py                      # 64 MiB of 3-byte objects, then of 1 KiB
    benches/scale_cache.py --body 3 --max-size 64 --binary /tmp/weir-before --nginx
"""
import argparse, os, re, shutil, socket, subprocess, sys, tempfile, threading, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release")
BACKEND, WEIR, ADMIN, NGINX = 19301, 19310, 19311, 19312
CONNS, DEPTH = 4, 64


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def fetch(port, paths):
    """Sends `paths` as pipelined GETs on one connection, DEPTH at a time; checks
    every answer is a 200."""
    s = socket.create_connection(("127.0.0.1", port))
    buf = b""
    for i in range(0, len(paths), DEPTH):
        batch = paths[i : i + DEPTH]
        s.sendall(b"".join(b"GET %s HTTP/1.1\r\nhost: bench\r\n\r\n" % p.encode() for p in batch))
        left = len(batch)
        while left:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                buf += s.recv(1 << 16)
                continue
            head = buf[:end]
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected answer: {head[:200]!r}")
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head).group(1))
            while len(buf) < end + 4 + length:
                buf += s.recv(1 << 16)
            buf = buf[end + 4 + length :]
            left -= 1
    s.close()


def fill(port, body, start, count):
    """Fetches `count` distinct URLs, numbered from `start`, over CONNS connections."""
    paths = [f"/bytes/{body}?n={i}" for i in range(start, start + count)]
    threads = [threading.Thread(target=fetch, args=(port, paths[c::CONNS])) for c in range(CONNS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def metric(name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{ADMIN}/metrics").read().decode()
    m = re.search(rf'^{name}\{{cache="objects"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def weir(binary, body, max_mib, tmp):
    conf = os.path.join(tmp, "weir.toml")
    with open(conf, "w") as f:
        f.write(f"""workers = 1
[admin]
listen = "127.0.0.1:{ADMIN}"
[[listeners]]
name = "bench"
listen = "127.0.0.1:{WEIR}"
[[routes]]
path_prefix = "/warm/"
upstream = "b"
[[routes]]
upstream = "b"
cache = "objects"
[upstreams.b]
servers = [{{ address = "127.0.0.1:{BACKEND}" }}]
[caches.objects]
max_size = "{max_mib}MiB"
max_object_size = "1MiB"
default_ttl = "1h"
""")
    proc = subprocess.Popen([binary, "--config", conf, "--log-level", "warn"])
    try:
        wait_port(WEIR)
        wait_port(ADMIN)
        # Connection buffers, pools and the like belong to the baseline.
        for _ in range(3):
            fetch(WEIR, [f"/warm/{i}" for i in range(2000)])
        base = rss_kib(proc.pid)
        sent, step = 0, 20000
        while metric("weir_cache_evictions_total") == 0:
            fill(WEIR, body, sent, step)
            sent += step
        fill(WEIR, body, sent, sent)
        sent *= 2
        rss = rss_kib(proc.pid)
        objects = metric("weir_cache_entries")
        weighed = metric("weir_cache_size_bytes")
    finally:
        proc.terminate()
        proc.wait()
    return base, rss, sent, objects, weighed


def nginx(body, max_mib, tmp, sent):
    """nginx proxy_cache through the same fill (`sent` URLs): worker RSS growth, and
    the cache files on disk."""
    cache = os.path.join(tmp, "nginx-cache")
    os.makedirs(cache)
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  proxy_cache_path {cache} levels=1:2 keys_zone=objects:64m max_size={max_mib}m inactive=1h;
  upstream b {{ server 127.0.0.1:{BACKEND}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{NGINX};
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_cache objects; proxy_cache_valid 200 1h;
    }}
  }}
}}
""")
    os.chmod(tmp, 0o755)
    os.chmod(cache, 0o777)
    proc = subprocess.Popen(["nginx", "-c", conf])
    try:
        wait_port(NGINX)
        worker = int(subprocess.check_output(["pgrep", "-P", str(proc.pid)]).split()[0])
        fetch(NGINX, [f"/warm/{i}" for i in range(2000)])
        base = rss_kib(worker)
        fill(NGINX, body, 0, sent)
        time.sleep(1)
        rss = rss_kib(worker)
        files = sum(len(f) for _, _, f in os.walk(cache))
        disk = int(subprocess.check_output(["du", "-sk", cache]).split()[0])
    finally:
        proc.terminate()
        proc.wait()
    return base, rss, files, disk


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=os.path.join(TARGET, "weir"))
    ap.add_argument("--body", type=int, action="append", help="body bytes (repeatable); default 3 and 1024")
    ap.add_argument("--max-size", type=int, default=64, help="max_size in MiB")
    ap.add_argument("--nginx", action="store_true")
    args = ap.parse_args()
    backend = os.path.join(TARGET, "examples", "backend")
    if not os.path.exists(backend) or args.binary == os.path.join(TARGET, "weir"):
        subprocess.check_call(["cargo", "build", "--release", "--quiet", "--bin", "weir", "--example", "backend"], cwd=ROOT)
    bodies = args.body or [3, 1024]
    b = subprocess.Popen([backend, f"127.0.0.1:{BACKEND}", "b"], stderr=subprocess.DEVNULL)
    try:
        wait_port(BACKEND)
        max_kib = args.max_size * 1024
        print(f"max_size {args.max_size} MiB; {args.binary}")
        print("| proxy | body | URLs sent | objects | weighed / max_size | RSS growth / max_size | RSS / max_size | bytes/object |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for body in bodies:
            tmp = tempfile.mkdtemp(prefix="weir-scale-cache.", dir="/dev/shm")
            try:
                base, rss, sent, objects, weighed = weir(args.binary, body, args.max_size, tmp)
                growth = rss - base
                print(f"| weir | {body} | {sent:,} | {objects:,.0f} | {weighed / 1024 / max_kib:.2f} | "
                      f"{growth / max_kib:.2f} | {rss / max_kib:.2f} | {growth * 1024 / max(objects, 1):,.0f} |", flush=True)
                if args.nginx and shutil.which("nginx"):
                    nbase, nrss, files, disk = nginx(body, args.max_size, tmp, sent)
                    print(f"| nginx (worker RSS; files) | {body} | {sent:,} | {files:,} files | - | "
                          f"{(nrss - nbase) / max_kib:.2f} (+{disk / max_kib:.2f} on disk) | - | "
                          f"{(nrss - nbase) * 1024 / max(files, 1):,.0f} + {disk * 1024 / max(files, 1):,.0f} on disk |", flush=True)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    finally:
        b.terminate()
        b.wait()


if __name__ == "__main__":
    main()
