#!/usr/bin/env python3
"""End-to-end benchmark: weir vs nginx vs HAProxy, one worker each, same core.

Two cheap backends (weir's examples/backend) run on core 0 with the load
generator; each proxy runs alone on core 1 (taskset). Proxies are measured in
interleaved rounds so drift in the machine hits them alike; the table reports
medians and weir's ratio to each peer. Figures:

- rps: requests/s at saturation (wrk, keep-alive HTTP/1.1, small response)
- cpu_us: proxy CPU time (user+sys from /proc) per request during that run, and
  its two parts: user_us (the proxy's own code) and sys_us (the kernel's work for
  its system calls: the TCP stack, which is the same for every proxy)
- p50/p99/p99.9: latency at a fixed rate well below saturation (oha -q)
- mib_s: throughput of 1 MiB responses (wrk)
- rss_idle / rss_5k: resident memory idle and holding 5,000 idle client connections
  (measured first, on the fresh process), and the cost per idle connection;
  anon_idle: the anonymous part of rss_idle (heap, stacks: memory the process owns,
  where the rest is pages of mapped files such as its binary and libc)
"""
import json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time, platform, datetime

ROUNDS = int(os.environ.get("ROUNDS", "3"))
DURATION = os.environ.get("DURATION", "8s")
RATE = int(os.environ.get("RATE", "2000"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release")
BACKENDS = [19001, 19002]
PORTS = {"weir": 18080, "nginx": 18081, "haproxy": 18082}
PROXY_CORE, LOAD_CORE = "1", "0"


def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def configs(tmp):
    weir = f"""workers = 1
[[listeners]]
name = "bench"
listen = "127.0.0.1:{PORTS['weir']}"
# The idle connections below are held by weir from their first moment, as nginx and
# HAProxy hold theirs; with the default they would spend their first second in the
# kernel (TCP_DEFER_ACCEPT) and the figure would depend on when it is read.
defer_accept = false
[[routes]]
upstream = "b"
[upstreams.b]
servers = [{", ".join('{ address = "127.0.0.1:%d" }' % p for p in BACKENDS)}]
"""
    nginx = f"""worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx.err warn;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};
  upstream b {{ {" ".join("server 127.0.0.1:%d;" % p for p in BACKENDS)} keepalive 64; }}
  server {{
    listen 127.0.0.1:{PORTS['nginx']};
    keepalive_requests 1000000;
    location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }}
  }}
}}
"""
    haproxy_servers = "".join("  server s%d 127.0.0.1:%d\n" % (i, p) for i, p in enumerate(BACKENDS))
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
frontend f
  bind 127.0.0.1:{PORTS['haproxy']}
  default_backend b
backend b
  balance roundrobin
{haproxy_servers}"""
    paths = {}
    for name, text in [("weir", weir), ("nginx", nginx), ("haproxy", haproxy)]:
        path = os.path.join(tmp, f"{name}.conf")
        with open(path, "w") as f:
            f.write(text)
        paths[name] = path
    return paths


def start(name, conf):
    cmd = {
        "weir": [os.path.join(TARGET, "weir"), "--config", conf, "--log-level", "warn"],
        "nginx": ["nginx", "-c", conf],
        "haproxy": ["haproxy", "-f", conf],
    }[name]
    proc = subprocess.Popen(["taskset", "-c", PROXY_CORE] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(PORTS[name])
    return proc


def workers(proc, name):
    """PIDs doing the proxy work: nginx's worker is a child of its master."""
    if name != "nginx":
        return [proc.pid]
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    return [int(p) for p in out] or [proc.pid]


def cpu_seconds(pids):
    """(user, system) CPU seconds of `pids` so far."""
    user = system = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        user += int(fields[11])
        system += int(fields[12])
    tick = os.sysconf("SC_CLK_TCK")
    return user / tick, system / tick


def rss_kib(pids, field="VmRSS"):
    """Resident memory of `pids` in KiB: all of it (`VmRSS`), or only the anonymous
    pages the process owns (`RssAnon`: heap, stacks, no mapped files)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += int(re.search(field + r":\s+(\d+)", f.read()).group(1))
    return total


def wrk(port, path, connections, duration):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "wrk", "-t1", f"-c{connections}", f"-d{duration}", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True,
    ).stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    scale = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1, "GB": 1024}[transfer.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{port}: {errors.group(1)} error responses")
    return requests, rps, float(transfer.group(1)) * scale


def oha(port):
    out = subprocess.run(
        ["taskset", "-c", LOAD_CORE, "oha", "--no-tui", "--output-format", "json", "-z", DURATION, "-q", str(RATE),
         "-c", "32", "--latency-correction", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True,
    ).stdout
    pct = json.loads(out)["latencyPercentiles"]
    return pct["p50"] * 1e3, pct["p99"] * 1e3, pct["p99.9"] * 1e3


def idle_connections(port, count):
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def measure(name, proc):
    pids = workers(proc, name)
    time.sleep(0.3)
    r = {"rss_idle": rss_kib(pids) / 1024, "anon_idle": rss_kib(pids, "RssAnon") / 1024}
    # Idle connections first, on a fresh process, so the figure is what they cost and
    # not what earlier load runs left in the allocator.
    socks = idle_connections(PORTS[name], 5000)
    time.sleep(1.0)
    r["rss_5k"] = rss_kib(pids) / 1024
    r["kib_per_conn"] = (r["rss_5k"] - r["rss_idle"]) * 1024 / 5000
    for s in socks:
        s.close()
    time.sleep(0.5)
    wrk(PORTS[name], "/", 50, "2s")  # warm up pools
    before = cpu_seconds(pids)
    requests, r["rps"], _ = wrk(PORTS[name], "/", 50, DURATION)
    after = cpu_seconds(pids)
    r["user_us"] = (after[0] - before[0]) / requests * 1e6
    r["sys_us"] = (after[1] - before[1]) / requests * 1e6
    r["cpu_us"] = r["user_us"] + r["sys_us"]
    r["p50"], r["p99"], r["p99.9"] = oha(PORTS[name])
    _, _, r["mib_s"] = wrk(PORTS[name], "/bytes/1048576", 8, "4s")
    return r


def main():
    tmp = tempfile.mkdtemp(prefix="weir-bench-")
    paths = configs(tmp)
    backends = [
        subprocess.Popen(["taskset", "-c", LOAD_CORE, os.path.join(TARGET, "examples", "backend"), f"127.0.0.1:{p}", f"b{p}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for p in BACKENDS
    ]
    for p in BACKENDS:
        wait_port(p)
    results = {n: [] for n in PORTS}
    try:
        for round_ in range(ROUNDS):
            for name in PORTS:
                proc = start(name, paths[name])
                try:
                    results[name].append(measure(name, proc))
                    print(f"round {round_ + 1} {name}: {results[name][-1]}", file=sys.stderr)
                finally:
                    proc.terminate()
                    proc.wait(10)
    finally:
        for b in backends:
            b.terminate()
        shutil.rmtree(tmp, ignore_errors=True)
    report(results)


FIELDS = [("rps", "req/s", "higher"), ("cpu_us", "CPU µs/req", "lower"), ("user_us", "of it user µs/req", "lower"),
          ("sys_us", "of it system µs/req", "lower"), ("p50", "p50 ms", "lower"),
          ("p99", "p99 ms", "lower"), ("p99.9", "p99.9 ms", "lower"), ("mib_s", "1 MiB MiB/s", "higher"),
          ("rss_idle", "RSS idle MiB", "lower"), ("anon_idle", "of it anonymous MiB", "lower"),
          ("rss_5k", "RSS 5k idle conns MiB", "lower"), ("kib_per_conn", "KiB per idle conn", "lower")]


def report(results):
    med = {n: {k: statistics.median(r[k] for r in rs) for k, _, _ in FIELDS} for n, rs in results.items()}
    lines = [f"| figure | weir | nginx | HAProxy | weir / nginx | weir / HAProxy | better |", "|---|---:|---:|---:|---:|---:|---|"]
    for key, label, better in FIELDS:
        w, n, h = med["weir"][key], med["nginx"][key], med["haproxy"][key]
        ratio = lambda a, b: f"{a / b:.2f}" if b else "-"
        lines.append(f"| {label} | {w:.2f} | {n:.2f} | {h:.2f} | {ratio(w, n)} | {ratio(w, h)} | {better} |")
    table = "\n".join(lines)
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
    header = (f"Measured {datetime.date.today()} on {platform.node() or 'this machine'} ({os.cpu_count()} cores, {cpu}), "
              f"medians of {ROUNDS} interleaved rounds, {DURATION} per load run, fixed rate {RATE} req/s for latency. "
              f"nginx {version(['nginx', '-v'])}, HAProxy {version(['haproxy', '-v'])}, one worker each, proxy pinned to core "
              f"{PROXY_CORE}, backends and load generator on core {LOAD_CORE}.")
    print(header)
    print(table)
    section = f"## End-to-end (benches/e2e.sh)\n\n{header}\n\n{table}\n"
    path = os.path.join(ROOT, "BENCHMARKS.md")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    start, end = "<!-- e2e:start -->", "<!-- e2e:end -->"
    block = f"{start}\n{section}{end}"
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
    main()
