#!/usr/bin/env python3
"""Protocol matrix: weir against nginx and HAProxy (and Varnish on cache hits).

One command, one run: every proxy is started once with one worker, pinned to the
same core (taskset), with every workload's listener; the load generators and two
backends (weir's examples/backend) run on the other core. Rounds are interleaved
at the finest grain: in each round every workload runs against every proxy in turn
(the order rotates each round), so drift in a shared machine hits them alike. The
tables report medians over rounds and weir's ratio to each peer.

Workloads (small responses from the backends unless said):

- h1:        HTTP/1.1 keep-alive (wrk -c50)
- h1_new:    HTTP/1.1, a new connection per request (wrk -c50, Connection: close)
- h2c:       HTTP/2 with prior knowledge (h2load, 10 connections x 10 streams)
- tls_h1:    TLS HTTP/1.1 keep-alive (wrk -c50, no ALPN)
- tls_h2:    TLS HTTP/2 (h2load, ALPN h2, 10 x 10)
- tls_new:   TLS, a new connection and full handshake per request (ECDSA P-256
             certificate made by openssl at run time; this script's own client)
- tls_resume: the same with session resumption, as each proxy offers it (the
             client always presents the last ticket it was given)
- cache:     1 KiB cache hits over HTTP/1.1 keep-alive: weir's [caches], nginx
             proxy_cache, HAProxy's cache, Varnish (default storage, malloc)
- h2_1m:     1 MiB responses over h2c (h2load, 4 connections x 4 streams)

Figures per workload and proxy:

- CPU per request: user and system time of the proxy's processes (from
  /proc/PID/stat, every process of its tree) over a saturating run, divided by
  the requests that run completed;
- req/s (or MiB/s for h2_1m) in that run (bounded by the load generator's core
  for several rows: read CPU per request, not req/s, as the proxy's cost);
- p99 latency at a fixed rate well below saturation (h2load --rps with its
  per-request log for keep-alive rows; this script's client, paced, for the
  new-connection rows);
- system calls per request, in a separate, shorter pass: counted by the kernel's
  tracepoints (`perf stat -e raw_syscalls:sys_enter -p PID`), which leave the proxy
  at full speed; without perf, by `strace -c -f`, which slows the proxy many times
  over and so changes its races (under strace a new connection's request has
  always arrived by the time it is accepted). The table names which counted.

    benches/matrix.sh              # installs what it needs, builds, runs, rewrites BENCHMARKS.md
    benches/matrix.sh --quick      # 1 round, short runs: a smoke check (< 2 minutes), prints only
    ROUNDS=5 DURATION=6 benches/matrix.sh
    WEIR_ALT=/path/to/other/weir benches/matrix.sh   # adds a "weir-alt" column (before/after)
    PEER_DEFER=1 ONLY=h1_new benches/matrix.sh   # nginx `deferred`, HAProxy `defer-accept` (weir defers by default)
    ONLY=h2c,tls_h2 PORT_BASE=23100 benches/matrix.sh  # a subset (prints only), on other ports
"""
import datetime, json, os, platform, re, shutil, signal, socket, ssl, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release")
PROXY_CORE, LOAD_CORE = "1", "0"
# PORT_BASE moves every port (default 18100: proxies from it, backends at +1101, +1102),
# so that two runs can share a machine.
PORT_BASE = int(os.environ.get("PORT_BASE", "18100"))
BACKENDS = [PORT_BASE + 1101, PORT_BASE + 1102]
QUICK = "--quick" in sys.argv
ROUNDS = 1 if QUICK else int(os.environ.get("ROUNDS", "3"))
DURATION = 1.0 if QUICK else float(os.environ.get("DURATION", "5"))  # seconds per saturating run
LAT_DURATION = 1.0 if QUICK else float(os.environ.get("LAT_DURATION", "3"))  # seconds per fixed-rate run
PEER_DEFER = os.environ.get("PEER_DEFER") == "1"
COUNTED_BY = set()  # how the syscall pass counted: perf's tracepoints, or strace
STRACE_DURATION = 0.5 if QUICK else float(os.environ.get("STRACE_DURATION", "2"))
RATE = int(os.environ.get("RATE", "2000"))  # req/s for p99 on keep-alive rows
RATE_NEW = int(os.environ.get("RATE_NEW", "200"))  # req/s for p99 on new-connection rows
WORKLOADS = ["h1", "h1_new", "h2c", "tls_h1", "tls_h2", "tls_new", "tls_resume", "cache", "h2_1m"]
ONLY = os.environ.get("ONLY")  # comma-separated workloads, to run a subset
if ONLY:
    WORKLOADS = [w for w in WORKLOADS if w in ONLY.split(",")]
LABELS = {
    "h1": "HTTP/1.1 keep-alive", "h1_new": "HTTP/1.1, new connection per request", "h2c": "h2c (10 conns x 10 streams)",
    "tls_h1": "TLS HTTP/1.1 keep-alive", "tls_h2": "TLS h2 (10 x 10)",
    "tls_new": "TLS, new connection per request (full handshake)", "tls_resume": "TLS, new connection, resumed session",
    "cache": "cache hit, 1 KiB (HTTP/1.1 keep-alive)", "h2_1m": "1 MiB responses over h2c (4 x 4)",
}
# Each proxy's ports: plain HTTP/1.1, h2c, TLS (h1 + h2 by ALPN), cached route.
BASE = {"weir": PORT_BASE, "nginx": PORT_BASE + 10, "haproxy": PORT_BASE + 20, "varnish": PORT_BASE + 30, "weir-alt": PORT_BASE + 40}


def ports(name):
    b = BASE[name]
    if name.startswith("weir"):  # weir serves HTTP/1.1 and h2c on one port
        return {"plain": b, "h2c": b, "tls": b + 2, "cache": b + 3}
    if name == "varnish":
        return {"cache": b + 3}
    return {"plain": b, "h2c": b + 1, "tls": b + 2, "cache": b + 3}


# ---------------------------------------------------------------------------
# The client for the new-connection rows: `matrix.py --client ...` runs it on
# the load core. One connection at a time (a fresh TCP connection, and a fresh
# TLS handshake, per request), optionally paced at a fixed rate.

def client_main(argv):
    port, use_tls, resume, duration, rate = int(argv[0]), argv[1] == "1", argv[2] == "1", float(argv[3]), float(argv[4])
    ctx = None
    if use_tls:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    session, done, reused, failed, lat = None, 0, 0, 0, []
    start = time.monotonic()
    end = start + duration
    next_at = start
    while True:
        now = time.monotonic()
        if now >= end:
            break
        if rate:
            if now < next_at:
                time.sleep(next_at - now)
            t0 = next_at  # latency counted from when the request was due
            next_at += 1 / rate
        else:
            t0 = now
        try:
            raw = socket.create_connection(("127.0.0.1", port))
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s = ctx.wrap_socket(raw, server_hostname="localhost", session=session if resume else None) if ctx else raw
            s.sendall(request)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            if ctx:
                reused += s.session_reused
                if resume:
                    session = s.session  # the newest ticket: TLS 1.3 tickets may be single-use
            s.close()
            if data[8:13] != b" 200 ":
                failed += 1
                continue
        except OSError:
            failed += 1
            continue
        lat.append(time.monotonic() - t0)
        done += 1
    print(json.dumps({"requests": done, "reused": reused, "failed": failed, "p99": pct(lat, 99) * 1e3 if lat else 0}))


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


# ---------------------------------------------------------------------------

def wait_port(port, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def tree(pid):
    """`pid` and every process descended from it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        kids = subprocess.run(["pgrep", "-P", str(p)], capture_output=True, text=True).stdout.split()
        todo += [int(k) for k in kids]
    return out


def cpu_seconds(pids):
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        user += int(fields[11])
        system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def load(cmd):
    return subprocess.run(["taskset", "-c", LOAD_CORE] + cmd, capture_output=True, text=True)


def run_wrk(url, duration, connections=50, close=False):
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s"] + (["-H", "Connection: close"] if close else []) + [url]
    out = load(cmd).stdout
    m = re.search(r"(\d+) requests in", out)
    if not m:
        raise RuntimeError(f"wrk failed on {url}: {out}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} error responses")
    return {"requests": int(m.group(1))}


def run_h2load(url, duration, clients=10, streams=10, h1=False, rps=None, log=None):
    cmd = ["h2load", f"-c{clients}", f"-m{streams}", f"-D{int(duration * 1000)}ms"]
    if h1:
        cmd.append("--h1")
    if rps:
        cmd.append(f"--rps={rps}")
    if log:
        cmd.append(f"--log-file={log}")
    out = load(cmd + [url]).stdout
    m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not m or not status:
        raise RuntimeError(f"h2load failed on {url}: {out}")
    if int(m.group(2)) or int(m.group(3)) or int(status.group(3)) or int(status.group(4)):
        raise RuntimeError(f"h2load on {url}: failures: {m.group(0)}; {status.group(0)}")
    traffic = re.search(r"traffic: [\d.]+\w* \((\d+)\) total", out)
    return {"requests": int(m.group(1)), "bytes": int(traffic.group(1)) if traffic else 0}


def run_client(port, tls, resume, duration, rate=0):
    out = load([sys.executable, os.path.abspath(__file__), "--client", str(port), "1" if tls else "0",
                "1" if resume else "0", str(duration), str(rate)])
    r = json.loads(out.stdout)
    if r["failed"]:
        raise RuntimeError(f"client on {port}: {r['failed']} failed requests")
    return r


def drive(workload, name, duration, rate=None, tmp=None):
    """Run one workload against proxy `name`: saturating if `rate` is None, else at
    `rate` req/s, returning p99 too."""
    p = ports(name)
    plain, h2c, tls, cache = (f"http://127.0.0.1:{p.get('plain')}/", f"http://127.0.0.1:{p.get('h2c')}/",
                              f"https://127.0.0.1:{p.get('tls')}/", f"http://127.0.0.1:{p['cache']}/bytes/1024")
    if workload in ("tls_new", "tls_resume", "h1_new") and rate is not None:
        r = run_client(p["tls"] if workload != "h1_new" else p["plain"], workload != "h1_new",
                       workload == "tls_resume", duration, rate)
        return r
    if workload in ("tls_new", "tls_resume"):
        return run_client(p["tls"], True, workload == "tls_resume", duration)
    if rate is not None:  # keep-alive rows at a fixed rate: h2load's per-request log
        log = os.path.join(tmp, "h2load.log")
        url = {"h1": plain, "tls_h1": tls, "cache": cache, "h2c": h2c, "tls_h2": tls,
               "h2_1m": h2c + "bytes/1048576"}[workload]
        h1 = workload in ("h1", "tls_h1", "cache")
        if workload == "h2_1m":
            r = run_h2load(url, duration, clients=4, streams=4, rps=max(1, rate // 4), log=log)
        else:
            r = run_h2load(url, duration, clients=10, streams=1 if h1 else 10, h1=h1, rps=max(1, rate // 10), log=log)
        with open(log) as f:
            lat = [int(line.split("\t")[2]) for line in f if line.strip()]
        r["p99"] = pct(lat, 99) / 1e3 if lat else 0
        return r
    if workload == "h1":
        return run_wrk(plain, duration)
    if workload == "h1_new":
        return run_wrk(plain, duration, close=True)
    if workload == "tls_h1":
        return run_wrk(tls, duration)
    if workload == "cache":
        return run_wrk(cache, duration)
    if workload == "h2c":
        return run_h2load(h2c, duration)
    if workload == "tls_h2":
        return run_h2load(tls, duration)
    if workload == "h2_1m":
        return run_h2load(h2c + "bytes/1048576", duration, clients=4, streams=4)
    raise ValueError(workload)


def runs_on(workload, name):
    if name == "varnish":
        return workload == "cache"
    return True


# ---------------------------------------------------------------------------

def make_cert(tmp):
    key, cert = os.path.join(tmp, "key.pem"), os.path.join(tmp, "cert.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    both = os.path.join(tmp, "both.pem")
    with open(both, "w") as f:
        f.write(open(cert).read() + open(key).read())
    return cert, key, both


def configs(tmp, cert, key, both):
    servers = ", ".join('{ address = "127.0.0.1:%d" }' % b for b in BACKENDS)

    def weir(name):
        p = ports(name)
        return f"""workers = 1
[[listeners]]
name = "plain"
listen = "127.0.0.1:{p['plain']}"
[[listeners]]
name = "tls"
listen = "127.0.0.1:{p['tls']}"
[listeners.tls]
certificates = [{{ cert = "{cert}", key = "{key}" }}]
[[listeners]]
name = "cached"
listen = "127.0.0.1:{p['cache']}"
[[routes]]
upstream = "b"
listeners = ["plain", "tls"]
[[routes]]
name = "cached"
upstream = "b"
listeners = ["cached"]
cache = "pages"
[upstreams.b]
servers = [{servers}]
[caches.pages]
max_size = "64MiB"
default_ttl = "1h"
"""

    # PEER_DEFER=1: nginx and HAProxy also wait for a new connection's first bytes
    # before accepting it, as weir's `defer_accept` (on by default) does.
    nd, hd = (" deferred", " defer-accept") if PEER_DEFER else ("", "")
    p = ports("nginx")
    nginx_upstream = " ".join("server 127.0.0.1:%d;" % b for b in BACKENDS)
    nginx = f"""worker_processes 1;
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  proxy_cache_path {tmp}/nginx-cache levels=1:2 keys_zone=pages:10m max_size=64m;
  upstream b {{ {nginx_upstream} keepalive 64; }}
  keepalive_requests 1000000;
  ssl_certificate {cert};
  ssl_certificate_key {key};
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  server {{
    listen 127.0.0.1:{p['plain']}{nd};
    listen 127.0.0.1:{p['h2c']} http2;
    listen 127.0.0.1:{p['tls']} ssl http2{nd};
    location / {{ proxy_pass http://b; proxy_buffering off; }}
  }}
  server {{
    listen 127.0.0.1:{p['cache']};
    location / {{ proxy_pass http://b; proxy_cache pages; proxy_cache_valid 200 1h;
                 add_header X-Cache $upstream_cache_status; }}
  }}
}}
"""
    p = ports("haproxy")
    hservers = "".join("  server s%d 127.0.0.1:%d\n" % (i, b) for i, b in enumerate(BACKENDS))
    haproxy = f"""global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
cache pages
  total-max-size 64
  max-object-size 65536
  max-age 3600
frontend f
  bind 127.0.0.1:{p['plain']}{hd}
  bind 127.0.0.1:{p['h2c']} proto h2
  bind 127.0.0.1:{p['tls']} ssl crt {both} alpn h2,http/1.1{hd}
  default_backend b
frontend c
  bind 127.0.0.1:{p['cache']}
  default_backend bc
backend b
  balance roundrobin
{hservers}backend bc
  balance roundrobin
  http-request cache-use pages
  # The backends send no Cache-Control; HAProxy stores only what says it may.
  http-response set-header Cache-Control max-age=3600
  http-response cache-store pages
{hservers}"""
    paths = {"nginx": os.path.join(tmp, "nginx.conf"), "haproxy": os.path.join(tmp, "haproxy.cfg")}
    texts = {"nginx": nginx, "haproxy": haproxy}
    for name in BASE:
        if name.startswith("weir"):
            paths[name] = os.path.join(tmp, f"{name}.toml")
            texts[name] = weir(name)
    for name, path in paths.items():
        with open(path, "w") as f:
            f.write(texts[name])
    return paths


def start(name, conf, tmp):
    if name == "weir":
        cmd = [os.environ.get("WEIR_BIN") or os.path.join(TARGET, "weir"), "--config", conf, "--log-level", "warn"]
    elif name == "weir-alt":
        cmd = [os.environ["WEIR_ALT"], "--config", conf, "--log-level", "warn"]
    elif name == "nginx":
        cmd = ["nginx", "-g", "daemon off;", "-c", conf]
    elif name == "haproxy":
        cmd = ["haproxy", "-f", conf]
    else:  # Varnish: its defaults (two thread pools, malloc storage), one listener
        cmd = ["varnishd", "-F", "-n", os.path.join(tmp, "varnish"), "-a", f"127.0.0.1:{ports('varnish')['cache']}",
               "-b", f"127.0.0.1:{BACKENDS[0]}", "-s", "malloc,64m", "-t", "3600", "-T", "none"]
    proc = subprocess.Popen(["taskset", "-c", PROXY_CORE] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    for port in ports(name).values():
        wait_port(port)
    return proc


def cache_headers(port):
    """A cached response's headers that tell a hit (Age), fetched twice."""
    for _ in range(2):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /bytes/1024 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        s.close()
    head = data.split(b"\r\n\r\n")[0].decode().split("\r\n")
    return [head[0]] + [h for h in head[1:] if h.lower().split(":")[0] in ("age", "x-varnish", "x-cache", "cache-status")]


# The system calls broken out by name in the syscall pass (the total counts them all).
NAMED_CALLS = ["accept4", "recvfrom", "sendto", "read", "write", "readv", "writev", "recvmsg", "sendmsg",
               "close", "shutdown", "epoll_wait", "epoll_ctl", "getsockopt", "setsockopt", "futex", "openat"]


def perf_calls(pids, fn):
    """System calls made by every thread of `pids` while `fn` runs, counted by the
    kernel's tracepoints (`perf stat`): the proxy runs at full speed, so the count is
    of the same races as in the timed runs. None when perf or its tracepoints are
    missing."""
    events = ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{c}" for c in NAMED_CALLS]
    out = tempfile.mktemp(prefix="weir-perf-")
    live = [str(p) for p in pids if os.path.exists(f"/proc/{p}")]
    try:
        st = subprocess.Popen(["perf", "stat", "-x,", "-o", out, "-e", ",".join(events), "-p", ",".join(live)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        return None
    time.sleep(0.3)  # attach
    try:
        result = fn()
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(30)
    counts = {}
    if os.path.exists(out):
        for line in open(out):
            f = line.strip().split(",")
            if len(f) >= 3 and f[0].isdigit():
                counts[f[2]] = int(f[0])
        os.unlink(out)
    if "raw_syscalls:sys_enter" not in counts:
        return None
    by_call = {k.removeprefix("syscalls:sys_enter_"): v for k, v in counts.items() if k.startswith("syscalls:") and v}
    return counts["raw_syscalls:sys_enter"], by_call, result


def strace_calls(pids, fn):
    """System calls made by every thread of `pids` while `fn` runs, and fn's result,
    as `strace -c -f` counts them: the fallback without perf. strace slows the proxy
    many times over, which changes its races (a request that would not have arrived
    yet at accept has, under strace), so its counts differ from an unhindered run's."""
    tids = [t for pid in pids if os.path.exists(f"/proc/{pid}") for t in os.listdir(f"/proc/{pid}/task")]
    out = tempfile.mktemp(prefix="weir-strace-")
    cmd = ["strace", "-c", "-f", "-o", out] + [a for t in tids for a in ("-p", t)]
    st = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3 if QUICK else 0.5)  # attach
    try:
        result = fn()
    finally:
        st.send_signal(signal.SIGINT)
        st.wait(30)
    text = open(out).read()
    os.unlink(out)
    calls, by_call = 0, {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 5 and f[0][0].isdigit():
            n = int(f[3])
            if f[-1] == "total":
                calls = n
            else:
                by_call[f[-1]] = n
    return calls, by_call, result


def syscall_counts(pids, fn):
    """(calls, by name, fn's result, how counted): perf's tracepoints where they work,
    else strace."""
    counted = perf_calls(pids, fn)
    if counted is not None:
        return counted + ("perf stat, tracepoints",)
    return strace_calls(pids, fn) + ("strace -c -f",)


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def main():
    tmp = tempfile.mkdtemp(prefix="weir-matrix-")
    os.chmod(tmp, 0o755)
    cert, key, both = make_cert(tmp)
    paths = configs(tmp, cert, key, both)
    names = ["weir", "nginx", "haproxy", "varnish"] + (["weir-alt"] if os.environ.get("WEIR_ALT") else [])
    backends = [subprocess.Popen(["taskset", "-c", LOAD_CORE, os.path.join(TARGET, "examples", "backend"),
                                  f"127.0.0.1:{b}", f"b{b}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for b in BACKENDS]
    procs = {}
    results = {w: {n: [] for n in names if runs_on(w, n)} for w in WORKLOADS}
    loads = [loadavg()]
    started = time.time()
    try:
        for b in BACKENDS:
            wait_port(b)
        for n in names:
            procs[n] = start(n, paths.get(n), tmp)
        time.sleep(1)
        pids = {n: tree(p.pid) for n, p in procs.items()}
        # Fill the caches and warm every pool before anything is counted.
        for n in names:
            print(f"cache check {n}: {cache_headers(ports(n)['cache'])}", file=sys.stderr, flush=True)
        for w in WORKLOADS if not QUICK else []:
            for n in results[w]:
                drive(w, n, 1)
        for round_ in range(ROUNDS):
            for w in WORKLOADS:
                order = list(results[w])
                order = order[round_ % len(order):] + order[:round_ % len(order)]
                for n in order:
                    before = cpu_seconds(pids[n])
                    t0 = time.monotonic()
                    r = drive(w, n, DURATION)
                    elapsed = time.monotonic() - t0
                    after = cpu_seconds(pids[n])
                    reqs = max(r["requests"], 1)
                    m = {"user_us": (after[0] - before[0]) / reqs * 1e6, "sys_us": (after[1] - before[1]) / reqs * 1e6,
                         "rps": r["requests"] / min(elapsed, max(1, round(DURATION)))}
                    m["cpu_us"] = m["user_us"] + m["sys_us"]
                    if w == "h2_1m":
                        m["mib_s"] = m["rps"]
                    if "reused" in r:
                        m["reused"] = r["reused"] / reqs
                    lat = drive(w, n, LAT_DURATION, rate=RATE_NEW if w in ("h1_new", "tls_new", "tls_resume") else
                                (64 if w == "h2_1m" else RATE), tmp=tmp)
                    m["p99"] = lat["p99"]
                    results[w][n].append(m)
                    print(f"round {round_ + 1} {w} {n}: " + ", ".join(f"{k} {v:.2f}" for k, v in m.items()),
                          file=sys.stderr, flush=True)
                loads.append(loadavg())
        # System calls: a separate, shorter pass, counted by perf (or strace).
        syscalls = {w: {} for w in WORKLOADS}
        for w in WORKLOADS:
            for n in results[w]:
                calls, by_call, r, counted_by = syscall_counts(pids[n], lambda: drive(w, n, STRACE_DURATION))
                COUNTED_BY.add(counted_by)
                reqs = max(r["requests"], 1)
                top = sorted(by_call.items(), key=lambda kv: -kv[1])[:5]
                syscalls[w][n] = {"per_req": calls / reqs, "top": {k: v / reqs for k, v in top}}
                print(f"syscalls ({counted_by}) {w} {n}: {calls / reqs:.2f} per request; " +
                      ", ".join(f"{k} {v / reqs:.2f}" for k, v in top), file=sys.stderr, flush=True)
        loads.append(loadavg())
    finally:
        for p in list(procs.values()) + backends:
            try:
                os.killpg(p.pid, signal.SIGTERM) if p in procs.values() else p.terminate()
            except ProcessLookupError:
                pass
        for p in list(procs.values()) + backends:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, syscalls, loads, time.time() - started, names)


def report(results, syscalls, loads, elapsed, names):
    peers = [n for n in names if n != "weir"]
    pretty = {"weir": "weir", "nginx": "nginx", "haproxy": "HAProxy", "varnish": "Varnish", "weir-alt": "weir-alt"}

    def med(w, n, k):
        rs = results[w].get(n)
        return statistics.median(r[k] for r in rs) if rs and k in rs[0] else None

    def cell(v, fmt="{:.1f}"):
        return "-" if v is None else fmt.format(v)

    def ratio(a, b):
        return "-" if a is None or not b else f"{a / b:.2f}"

    head = "| workload | " + " | ".join(pretty[n] for n in names) + " | " + " | ".join(
        f"weir / {pretty[p]}" for p in peers) + " |"
    rule = "|---|" + "---:|" * (len(names) + len(peers))
    tables = []
    # CPU per request, user + system.
    lines = ["CPU µs per request, user + system (median of rounds):", "", head, rule]
    for w in WORKLOADS:
        cells = []
        for n in names:
            c = med(w, n, "cpu_us")
            cells.append("-" if c is None else f"{c:.1f} ({med(w, n, 'user_us'):.1f} + {med(w, n, 'sys_us'):.1f})")
        lines.append(f"| {LABELS[w]} | " + " | ".join(cells) + " | " +
                     " | ".join(ratio(med(w, 'weir', 'cpu_us'), med(w, p, 'cpu_us')) for p in peers) + " |")
    tables.append("\n".join(lines))
    lines = ["User time alone, µs per request (the proxy's own code):", "", head, rule]
    for w in WORKLOADS:
        lines.append(f"| {LABELS[w]} | " + " | ".join(cell(med(w, n, "user_us")) for n in names) + " | " +
                     " | ".join(ratio(med(w, 'weir', 'user_us'), med(w, p, 'user_us')) for p in peers) + " |")
    tables.append("\n".join(lines))
    lines = ["Requests/s at saturation (MiB/s for 1 MiB responses; bounded by the load generator's core on most rows):",
             "", head, rule]
    for w in WORKLOADS:
        k = "mib_s" if w == "h2_1m" else "rps"
        lines.append(f"| {LABELS[w]} | " + " | ".join(cell(med(w, n, k), "{:,.0f}") for n in names) + " | " +
                     " | ".join(ratio(med(w, 'weir', k), med(w, p, k)) for p in peers) + " |")
    tables.append("\n".join(lines))
    lines = [f"p99 latency in ms at a fixed rate ({RATE} req/s keep-alive, {RATE_NEW} req/s new connections, 64 "
             "req/s of 1 MiB):", "", head, rule]
    for w in WORKLOADS:
        lines.append(f"| {LABELS[w]} | " + " | ".join(cell(med(w, n, "p99"), "{:.2f}") for n in names) + " | " +
                     " | ".join(ratio(med(w, 'weir', 'p99'), med(w, p, 'p99')) for p in peers) + " |")
    tables.append("\n".join(lines))
    lines = [f"System calls per request ({' and '.join(sorted(COUNTED_BY)) or 'not counted'}, separate pass):",
             "", head, rule]
    for w in WORKLOADS:
        s = lambda n: syscalls[w].get(n, {}).get("per_req")
        lines.append(f"| {LABELS[w]} | " + " | ".join(cell(s(n)) for n in names) + " | " +
                     " | ".join(ratio(s("weir"), s(p)) for p in peers) + " |")
    tables.append("\n".join(lines))
    if any("reused" in r for w in ("tls_resume",) if w in results for rs in results[w].values() for r in rs):
        tables.append("Share of resumed handshakes on the resumption row: " + ", ".join(
            f"{pretty[n]} {med('tls_resume', n, 'reused'):.2f}" for n in results["tls_resume"]) + ".")
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True,
                         text=True).stdout.strip()
    header = (f"Measured {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC on {platform.node() or 'this machine'} "
              f"({os.cpu_count()} cores, {cpu}); {ROUNDS} interleaved round(s), {DURATION:g} s per saturating run, "
              f"{LAT_DURATION:g} s per fixed-rate run, {elapsed / 60:.1f} minutes in all. Load average (1 min) during "
              f"the run: min {min(loads):.1f}, median {statistics.median(loads):.1f}, max {max(loads):.1f}. "
              f"nginx {version(['nginx', '-v'])}, HAProxy {version(['haproxy', '-v'])}, Varnish "
              f"{version(['varnishd', '-V'])}, h2load {version(['h2load', '--version'])}; one worker each "
              f"(Varnish: its default thread pools), all pinned to core {PROXY_CORE}; backends and load generators on "
              f"core {LOAD_CORE}." + (" nginx listens with `deferred` and HAProxy binds with `defer-accept` "
                                     "(PEER_DEFER=1)." if PEER_DEFER else ""))
    body = header + "\n\n" + "\n\n".join(tables) + "\n"
    print(body)
    print(json.dumps({"results": results, "syscalls": syscalls, "loads": loads}), file=open(
        os.path.join(tempfile.gettempdir(), "weir-matrix-last.json"), "w"))
    if QUICK or ONLY:
        return
    path = os.path.join(ROOT, "BENCHMARKS.md")
    text = open(path).read()
    start, end = "<!-- matrix:start -->", "<!-- matrix:end -->"
    block = f"{start}\n{body}{end}"
    if start in text:
        text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def version(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"(\d+\.\d+\.\d+)", out.stdout + out.stderr)
    return m.group(1) if m else "?"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        client_main(sys.argv[2:])
    else:
        main()
