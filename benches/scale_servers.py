#!/usr/bin/env python3
"""What servers cost weir as an upstream grows: 100, 1,000 and 5,000 servers.

For each size, against the release binary with one worker thread:
  - idle RSS per server, with active health checks off and on (interval 60 s, so
    the checks exist but stay idle), from /proc/PID/status against a 1-server run;
  - reload: wall time from SIGHUP until the new config answers (a route it adds is
    polled every ms; until then a route weir answers itself takes the polls), process CPU (utime + stime from /proc/PID/stat) over the reload and, of
    it, the serving thread's (/proc/PID/task/TID/stat; the thread 3,000 requests
    keep busy), and the slowest request sent meanwhile; each reload moves half the
    servers to new ports. CPU figures come in clock ticks (10 ms);
  - RSS after 5 such reloads, against the RSS before them;
  - /metrics: bytes of one scrape, CPU per scrape over 20 scrapes, and p50/p99/max of
    requests sent one after another (1 ms apart, from another process) while 20
    scrapes run back to back.
Requests go to a route that answers by itself (`respond`), so the client sees only
weir's own serving thread. Optionally nginx 1.22 (one worker, `upstream` with the
same servers and `keepalive 64`): idle RSS of master + worker per server.

Run (after `cargo build --release`):
    python3 benches/scale_servers.py [--weir target/release/weir] [--label after]
        [--sizes 100,1000,5000] [--nginx]
Prints one line per point, and a Markdown table at the end.
"""

import argparse
import http.client
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based) of the whole line.
    return (int(fields[11]) + int(fields[12])) / TICK


def thread_cpu(pid):
    """CPU seconds of each thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[tid] = (int(fields[11]) + int(fields[12])) / TICK
        except OSError:
            pass
    return out


def weir_config(port, admin, servers, offset, checks, generation):
    addresses = ", ".join(
        f'{{ address = "127.0.0.2:{10000 + (offset + i) % 50000}" }}' for i in range(servers)
    )
    text = f"""workers = 1
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "web"
listen = "127.0.0.1:{port}"
[[routes]]
path_prefix = "/ping"
respond = {{ status = 200, body = "pong" }}
[[routes]]
path_prefix = "/gen"
respond = {{ status = 204 }}
[[routes]]
path_prefix = "/gen{generation}/"
respond = {{ status = 200, body = "gen" }}
[[routes]]
path_prefix = "/"
upstream = "big"
[upstreams.big]
servers = [{addresses}]
"""
    if checks:
        text += '[upstreams.big.health_check]\ninterval = "60s"\n'
    return text


class Weir:
    def __init__(self, binary, servers, checks):
        self.binary, self.servers, self.checks = binary, servers, checks
        self.port, self.admin = free_port(), free_port()
        self.dir = tempfile.mkdtemp(prefix="weir-scale-")
        self.path = os.path.join(self.dir, "weir.toml")
        self.offset, self.generation = 0, 0
        self.write()
        self.proc = subprocess.Popen(
            [binary, "--config", self.path, "--log-level", "error"],
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: get(self.port, "/ping")[0] == 200, 60)
        time.sleep(1.0)
        self.worker = self.serving_thread()

    def serving_thread(self):
        """The thread that serves requests (`workers = 1`): the one 3,000 requests
        keep busy."""
        before = thread_cpu(self.proc.pid)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        for _ in range(3000):
            request(conn, "/ping")
        conn.close()
        after = thread_cpu(self.proc.pid)
        return max(after, key=lambda t: after[t] - before.get(t, 0))

    def write(self):
        with open(self.path, "w") as f:
            f.write(weir_config(self.port, self.admin, self.servers, self.offset, self.checks, self.generation))

    def reload(self):
        """Moves half the servers; returns (wall s, CPU s, slowest request s, CPU s
        of the serving thread)."""
        self.offset += max(1, self.servers // 2)
        self.generation += 1
        self.write()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        cpu0 = cpu_seconds(self.proc.pid)
        serving0 = thread_cpu(self.proc.pid).get(self.worker, 0)
        t0 = time.perf_counter()
        os.kill(self.proc.pid, signal.SIGHUP)
        slowest = 0.0
        while True:
            sent = time.perf_counter()
            status = request(conn, f"/gen{self.generation}/")
            slowest = max(slowest, time.perf_counter() - sent)
            if status == 200:
                break
            time.sleep(0.001)
            if time.perf_counter() - t0 > 60:
                raise RuntimeError("reload never took effect")
        wall = time.perf_counter() - t0
        time.sleep(0.2)
        cpu = cpu_seconds(self.proc.pid) - cpu0
        serving = thread_cpu(self.proc.pid).get(self.worker, 0) - serving0
        conn.close()
        return wall, cpu, slowest, serving

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def request(conn, path):
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.status


def get(port, path):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response.status, body
    except OSError:
        return 0, b""


def wait_for(check, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise RuntimeError("timed out")


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def load(port, running, out):
    """Requests one after another (1 ms apart) until `running` clears; in a process
    of its own, so the scraping client's parsing does not delay them."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies = []
    while running.is_set():
        sent = time.perf_counter()
        request(conn, "/ping")
        latencies.append(time.perf_counter() - sent)
        time.sleep(0.001)
    conn.close()
    out.put(latencies)


def scrape_costs(w, scrapes=20):
    """(bytes, CPU ms per scrape, p50, p99, max request ms during scrapes). CPU is
    measured over scrapes alone, latency over scrapes again with requests alongside."""
    size = len(get(w.admin, "/metrics")[1])
    admin = http.client.HTTPConnection("127.0.0.1", w.admin, timeout=60)
    cpu0 = cpu_seconds(w.proc.pid)
    for _ in range(scrapes):
        request(admin, "/metrics")
    cpu = cpu_seconds(w.proc.pid) - cpu0
    running, out = multiprocessing.Event(), multiprocessing.Queue()
    running.set()
    loader = multiprocessing.Process(target=load, args=(w.port, running, out))
    loader.start()
    time.sleep(0.2)
    for _ in range(scrapes):
        request(admin, "/metrics")
    running.clear()
    latencies = out.get()
    loader.join()
    admin.close()
    ms = [x * 1000 for x in latencies]
    return size, cpu * 1000 / scrapes, percentile(ms, 0.5), percentile(ms, 0.99), max(ms)


def nginx_rss(servers):
    """Idle RSS (KiB) of nginx master + one worker with `servers` upstream servers."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    d = tempfile.mkdtemp(prefix="nginx-scale-")
    port = free_port()
    lines = "\n".join(f"server 127.0.0.2:{10000 + i};" for i in range(servers))
    conf = f"""worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream big {{
    {lines}
    keepalive 64;
  }}
  server {{
    listen 127.0.0.1:{port};
    location /ping {{ return 200 "pong"; }}
    location / {{ proxy_pass http://big; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
"""
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    proc = subprocess.Popen([nginx, "-c", path, "-p", d], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: get(port, "/ping")[0] == 200, 30)
        time.sleep(1.0)
        kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        return rss_kib(proc.pid) + sum(rss_kib(int(k)) for k in kids)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", default="target/release/weir")
    ap.add_argument("--label", default="weir")
    ap.add_argument("--sizes", default="100,1000,5000")
    ap.add_argument("--nginx", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for checks in (False, True):
        w = Weir(args.weir, 1, checks)
        base = rss_kib(w.proc.pid)
        w.stop()
        for n in sizes:
            w = Weir(args.weir, n, checks)
            try:
                idle = rss_kib(w.proc.pid)
                per_server = (idle - base) * 1024 / n
                row = {"label": args.label, "servers": n, "checks": checks, "rss_mib": idle / 1024,
                       "per_server_b": per_server}
                if not checks:
                    size, cpu, p50, p99, worst = scrape_costs(w)
                    row.update(scrape_bytes=size, scrape_cpu_ms=cpu, req_p50_ms=p50, req_p99_ms=p99,
                               req_max_ms=worst)
                    before = rss_kib(w.proc.pid)
                    reloads = [w.reload() for _ in range(5)]
                    time.sleep(1.0)
                    row["rss_before_reloads_mib"] = before / 1024
                    row["rss_after_reloads_mib"] = rss_kib(w.proc.pid) / 1024
                    row["scrape_bytes_after_reloads"] = len(get(w.admin, "/metrics")[1])
                    row["reload_ms"] = [r[0] * 1000 for r in reloads]
                    row["reload_cpu_ms"] = [r[1] * 1000 for r in reloads]
                    row["reload_stall_ms"] = max(r[2] for r in reloads) * 1000
                    row["reload_serving_cpu_ms"] = [r[3] * 1000 for r in reloads]
                print(row, flush=True)
                rows.append(row)
            finally:
                w.stop()
    nginx = {}
    if args.nginx:
        base = nginx_rss(1)
        for n in sizes:
            nginx[n] = (nginx_rss(n) - base) * 1024 / n
            print({"label": "nginx 1.22", "servers": n, "per_server_b": nginx[n]}, flush=True)

    print()
    print("| servers | health checks | idle RSS | per server | nginx per server |")
    print("|---|---|---|---|---|")
    for r in rows:
        ng = f"{nginx[r['servers']]:,.0f} B" if r["servers"] in nginx else ""
        print(f"| {r['servers']:,} | {'on' if r['checks'] else 'off'} | {r['rss_mib']:.1f} MiB | "
              f"{r['per_server_b']:,.0f} B | {ng} |")
    print()
    print("| servers | reload wall ms (min–max of 5) | reload CPU ms (of it, serving thread) | "
          "slowest request during reloads | "
          "RSS before → after 5 reloads | scrape bytes (after the reloads) | scrape CPU ms | "
          "requests during scrapes p50 / p99 / max ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r["checks"]:
            continue
        print(f"| {r['servers']:,} | {min(r['reload_ms']):.0f}–{max(r['reload_ms']):.0f} | "
              f"{min(r['reload_cpu_ms']):.0f}–{max(r['reload_cpu_ms']):.0f} "
              f"({min(r['reload_serving_cpu_ms']):.0f}–{max(r['reload_serving_cpu_ms']):.0f}) | "
              f"{r['reload_stall_ms']:.1f} ms | "
              f"{r['rss_before_reloads_mib']:.1f} → {r['rss_after_reloads_mib']:.1f} MiB | "
              f"{r['scrape_bytes']:,} ({r['scrape_bytes_after_reloads']:,}) | "
              f"{r['scrape_cpu_ms']:.1f} | {r['req_p50_ms']:.2f} / {r['req_p99_ms']:.2f} / {r['req_max_ms']:.1f} |")


if __name__ == "__main__":
    main()
