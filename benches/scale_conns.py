#!/usr/bin/env python3
"""Memory per active keep-alive client connection, weir against nginx (issue 21's
"Connections" target), with one worker each.

Each client opens a connection, sends one request, reads the answer and stays
connected, idle between requests as a keep-alive client is: it holds no upstream
connection (the proxy's upstream pool stays at a few), so 10,000 clients need about
10,000 descriptors in the proxy and as many here, within an open-file limit of
20,000 each. The clients are opened in steps (1,000, then 5,000, then 10,000 in
all); at each step the proxy's RSS (`VmRSS`, so only the pages its memory really
touches: the kernel's socket buffers are not in it) is read once it has settled, and
the cost per connection is (RSS at the step - RSS before any client) / clients.
Rounds alternate the proxies (a fresh process each round); the tables give medians.

    cargo build --release --bin weir --example backend
    benches/scale_conns.py                                   # weir and nginx, 3 rounds
    WEIR_ALT=/tmp/weir-before benches/scale_conns.py         # adds another weir binary (before/after)
    ROUNDS=1 STEPS=1000,5000,10000 benches/scale_conns.py
    RATE=1000 benches/scale_conns.py                         # clients arrive at 1,000 a second

Needs nginx (installed with apt-get when missing, as benches/e2e.sh does).
"""
import os, re, resource, shutil, socket, statistics, struct, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
WEIR = os.environ.get("WEIR", os.path.join(TARGET, "release", "weir"))
WEIR_ALT = os.environ.get("WEIR_ALT")
BACKEND = os.environ.get("BACKEND", os.path.join(TARGET, "release", "examples", "backend"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
STEPS = [int(s) for s in os.environ.get("STEPS", "1000,5000,10000").split(",")]
# Clients opened per second; 0: as fast as this script can (a few thousand a second).
RATE = float(os.environ.get("RATE", "0"))
# Seconds to wait at each step before reading RSS.
SETTLE = float(os.environ.get("SETTLE", "2.5"))
PORT, BPORT = 19320, 19322
REQ = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
# nginx's `worker_connections`: once fewer than a sixteenth of them are free, nginx
# closes idle keep-alive connections to make room, so the table is a ninth larger
# than the clients.
TABLE = max(STEPS) * 9 // 8 + 100
# Closed with a reset: tens of thousands of client sockets in TIME_WAIT would use up
# the ephemeral ports over a few rounds.
LINGER_RESET = struct.pack("ii", 1, 0)

_, HARD = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (HARD, HARD))
if HARD < max(STEPS) + 100:
    sys.exit(f"open-file limit {HARD} is below {max(STEPS)} clients")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


def settled_rss(pid):
    """RSS once it stops moving (allocator trimming, the last connections' tasks),
    after `SETTLE` seconds: weir parks a connection idle for a second and hands the
    freed heap back a second after that."""
    time.sleep(SETTLE)
    last = rss_kib(pid)
    for _ in range(20):
        time.sleep(0.25)
        now = rss_kib(pid)
        if now == last:
            return now
        last = now
    return last


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def exchange(s):
    s.sendall(REQ)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("closed before the answer")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head[:80])
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        body += s.recv(65536)


def client():
    c = socket.create_connection(("127.0.0.1", PORT))
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    exchange(c)
    return c


def configs(work):
    with open(f"{work}/weir.toml", "w") as f:
        f.write(f"""workers = 1
[[listeners]]
name = "bench"
listen = "127.0.0.1:{PORT}"
header_read_timeout = "600s"
idle_timeout = "600s"
[[routes]]
upstream = "b"
[upstreams.b]
servers = [{{ address = "127.0.0.1:{BPORT}" }}]
""")
    with open(f"{work}/nginx.conf", "w") as f:
        f.write(nginx_conf(work, TABLE))
    with open(f"{work}/nginx-small.conf", "w") as f:
        f.write(nginx_conf(work, 256))


def nginx_conf(work, connections):
    return (f"""worker_processes 1;
master_process off;
daemon off;
worker_rlimit_nofile 20000;
pid {work}/nginx.pid;
error_log {work}/nginx.err warn;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  client_body_temp_path {work}; proxy_temp_path {work}; fastcgi_temp_path {work}; uwsgi_temp_path {work}; scgi_temp_path {work};
  keepalive_timeout 600s;
  keepalive_requests 1000000;
  upstream b {{ server 127.0.0.1:{BPORT}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{PORT} backlog=4096;
    location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")


def command(name, work):
    if name == "nginx":
        return [NGINX, "-c", f"{work}/nginx.conf"]
    if name == "nginx-small":
        return [NGINX, "-c", f"{work}/nginx-small.conf"]
    binary = WEIR_ALT if name == "weir-alt" else WEIR
    return [binary, "--config", f"{work}/weir.toml", "--log-level", "warn"]


def idle_rss(name, work):
    """RSS after the warm-up, with no client."""
    proc = subprocess.Popen(command(name, work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(PORT)
        warm = socket.create_connection(("127.0.0.1", PORT))
        for _ in range(200):
            exchange(warm)
        warm.close()
        return settled_rss(proc.pid)
    finally:
        proc.kill()
        proc.wait()
        time.sleep(1)


def measure(name, work):
    """KiB per connection at each step, for one fresh process."""
    proc = subprocess.Popen(command(name, work), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    socks = []
    try:
        wait_port(PORT)
        warm = socket.create_connection(("127.0.0.1", PORT))
        for _ in range(200):
            exchange(warm)
        warm.close()
        before = settled_rss(proc.pid)
        points = {}
        start = time.monotonic()
        for step in STEPS:
            while len(socks) < step:
                if RATE:
                    time.sleep(max(0.0, start + len(socks) / RATE - time.monotonic()))
                socks.append(client())
            after = settled_rss(proc.pid)
            points[step] = (after - before) / step
        # Every client is still served after the wait (no idle one was dropped).
        for c in socks[:: max(1, len(socks) // 50)]:
            exchange(c)
        return before, points
    finally:
        for c in socks:
            c.close()
        proc.kill()
        proc.wait()
        time.sleep(1)


def main():
    global NGINX
    NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(NGINX):
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True)
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "nginx-light"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    work = tempfile.mkdtemp(prefix="weir-scale-conns-")
    configs(work)
    names = ["weir"] + (["weir-alt"] if WEIR_ALT else []) + ["nginx"]
    backend = subprocess.Popen([BACKEND, f"127.0.0.1:{BPORT}", "b"], stderr=subprocess.DEVNULL)
    results = {n: {s: [] for s in STEPS} for n in names}
    bases = {n: [] for n in names}
    # nginx allocates (and touches) its whole connection table at start, sized by
    # `worker_connections`: a cost per connection it may serve that RSS before the
    # first client already holds. Counted apart: the RSS difference from the same
    # nginx with a table of 256, per connection of the table.
    tables = []
    try:
        wait_port(BPORT)
        for r in range(ROUNDS):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                if name == "nginx":
                    tables.append((idle_rss("nginx", work) - idle_rss("nginx-small", work)) / (TABLE - 256))
                base, points = measure(name, work)
                bases[name].append(base)
                for s, v in points.items():
                    results[name][s].append(v)
                print(f"round {r + 1} {name}: RSS before {base / 1024:.1f} MiB; KiB per connection "
                      + ", ".join(f"{s}: {v:.2f}" for s, v in points.items()), flush=True)
    finally:
        backend.kill()
    med = {n: {s: statistics.median(v) for s, v in results[n].items()} for n in names}
    table = statistics.median(tables)
    names.append("nginx+table")
    med["nginx+table"] = {s: v + table for s, v in med["nginx"].items()}
    bases["nginx+table"] = bases["nginx"]
    print()
    print(f"nginx's connection table: {table:.2f} KiB per connection of `worker_connections` "
          f"({TABLE} here), in its RSS before any client; nginx+table adds it.")
    print(f"KiB per active keep-alive connection (median of {ROUNDS} rounds; RSS before any client in MiB):")
    print()
    weirs = [n for n in names if n.startswith("weir")]
    heads = [f"{w} / {n}" for w in weirs for n in ("nginx", "nginx+table")]
    print("| clients | " + " | ".join(names) + " | " + " | ".join(heads) + " |")
    print("|---:|" + "---:|" * (len(names) + len(heads)))
    for s in STEPS:
        cells = [f"{med[n][s]:.2f}" for n in names]
        ratios = [f"{med[w][s] / med[n][s]:.2f}×" for w in weirs for n in ("nginx", "nginx+table")]
        print(f"| {s:,} | " + " | ".join(cells + ratios) + " |")
    print("| RSS before, MiB | " + " | ".join(f"{statistics.median(bases[n]) / 1024:.1f}" for n in names) + " |"
          + " |" * len(heads))


main()
