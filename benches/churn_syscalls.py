#!/usr/bin/env python3
"""System calls per connection when each request has a connection of its own
(HTTP/1.1 with `Connection: close`), counted by `strace -c -f` attached to every
thread of one weir (`workers = 1`, one demo backend).

The client opens N connections one after another; each sends one request, reads the
answer to the end, and closes. strace slows weir down, so this gives counts, not
times (benches/matrix.py's h1_new row gives the times).

    cargo build --release --bin weir --example backend
    benches/churn_syscalls.py [path/to/weir ...]     # default target/release/weir; N=2000
"""
import os, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BACKEND = os.environ.get("BACKEND", os.path.join(TARGET, "release", "examples", "backend"))
N = int(os.environ.get("N", "2000"))
PORT, BPORT = 19340, 19342
REQ = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def wait_port(port):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def churn(n):
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", PORT))
        s.sendall(REQ)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        if not data.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(data[:80])


def count(weir, work):
    proc = subprocess.Popen([weir, "--config", f"{work}/weir.toml", "--log-level", "warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(PORT)
        churn(200)
        tids = os.listdir(f"/proc/{proc.pid}/task")
        out = f"{work}/strace.txt"
        st = subprocess.Popen(["strace", "-c", "-f", "-o", out] + [a for t in tids for a in ("-p", t)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        churn(N)
        time.sleep(0.5)  # the last connections' closes
        st.send_signal(signal.SIGINT)
        st.wait(30)
        calls = {}
        for line in open(out).read().splitlines():
            f = line.split()
            if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
                calls[f[-1]] = int(f[3])
        return calls
    finally:
        proc.kill()
        proc.wait()


def main():
    weirs = sys.argv[1:] or [os.path.join(TARGET, "release", "weir")]
    work = tempfile.mkdtemp(prefix="weir-churn-")
    with open(f"{work}/weir.toml", "w") as f:
        f.write(f"""workers = 1
[[listeners]]
name = "bench"
listen = "127.0.0.1:{PORT}"
[[routes]]
upstream = "b"
[upstreams.b]
servers = [{{ address = "127.0.0.1:{BPORT}" }}]
""")
    backend = subprocess.Popen([BACKEND, f"127.0.0.1:{BPORT}", "b"], stderr=subprocess.DEVNULL)
    try:
        wait_port(BPORT)
        results = {w: count(w, work) for w in weirs}
    finally:
        backend.kill()
    names = sorted({c for r in results.values() for c in r}, key=lambda c: -max(r.get(c, 0) for r in results.values()))
    print(f"system calls per connection ({N:,} connections, `Connection: close`, strace -c -f):")
    print()
    print("| call | " + " | ".join(weirs) + " |")
    print("|---|" + "---:|" * len(weirs))
    for c in names:
        print(f"| `{c}` | " + " | ".join(f"{results[w].get(c, 0) / N:.2f}" for w in weirs) + " |")
    print("| total | " + " | ".join(f"{sum(results[w].values()) / N:.2f}" for w in weirs) + " |")


main()
