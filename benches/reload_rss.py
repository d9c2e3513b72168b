#!/usr/bin/env python3
"""RSS of weir across reloads of a large upstream: at start, then after each reload
(each moving half the servers to new ports, as in `scale_servers.py`), with where the
resident memory is (from /proc/PID/smaps): anonymous memory in the main heap
(`[heap]`), in other mappings (the arenas glibc gives other threads, thread stacks),
and file-backed pages of the binary's own text.

Run (after `cargo build --release`):
    python3 benches/reload_rss.py [--weir target/release/weir] [--servers 5000]
        [--reloads 10] [--move SERVERS] [--workers 1] [--port-base 23000] [--malloc-stats]
Environment variables (MALLOC_ARENA_MAX=1, ...) pass through to weir.
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scale_servers  # noqa: E402
from scale_servers import Weir, get, rss_kib  # noqa: E402


def breakdown(pid, binary):
    """KiB resident: (heap, other anonymous, binary file-backed, other file-backed)."""
    heap = anon = text = files = 0
    name = None
    binary = os.path.realpath(binary)
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            if "-" in parts[0] and len(parts) >= 5 and not parts[0].endswith(":"):
                name = parts[5] if len(parts) > 5 else ""
                continue
            if parts[0] == "Rss:":
                kib = int(parts[1])
                if name == "[heap]":
                    heap += kib
                elif name == binary:
                    text += kib
                elif name.startswith("/"):
                    files += kib
                else:
                    anon += kib
    return heap, anon, text, files


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weir", default="target/release/weir")
    ap.add_argument("--servers", type=int, default=5000)
    ap.add_argument("--reloads", type=int, default=10)
    ap.add_argument("--move", type=int, default=None,
                    help="servers each reload moves to new ports (default: half of them; 0: none)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--malloc-stats", action="store_true",
                    help="at each point, have gdb call glibc's malloc_stats (printed on weir's stderr)")
    ap.add_argument("--port-base", type=int, default=0, help="listener port; the admin gets the next")
    args = ap.parse_args()
    if args.port_base:
        ports = iter([args.port_base, args.port_base + 1] * 100)
        scale_servers.free_port = lambda: next(ports)
    if args.workers != 1:
        config = scale_servers.weir_config
        scale_servers.weir_config = lambda *a: config(*a).replace("workers = 1\n", f"workers = {args.workers}\n", 1)
    w = Weir(args.weir, args.servers, False)
    rows = []
    try:
        def point(label):
            # After the reload's clean-up, and with the serving path run again (its
            # code faulted back in), as an idle weir that still serves would be.
            time.sleep(1.0)
            for _ in range(100):
                get(w.port, "/ping")
            pid = w.proc.pid
            if args.malloc_stats:
                subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "call (void)malloc_stats()"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rows.append((label, rss_kib(pid)) + breakdown(pid, args.weir))
            r = rows[-1]
            print(f"{r[0]:>8}  RSS {r[1] / 1024:6.1f} MiB  heap {r[2] / 1024:5.1f}  other anon {r[3] / 1024:5.1f}"
                  f"  binary {r[4] / 1024:4.1f}  other files {r[5] / 1024:4.1f}", flush=True)

        point("start")
        half = max(1, args.servers // 2)
        move = half if args.move is None else args.move
        for i in range(args.reloads):
            # `Weir.reload` shifts the servers' ports by half of them.
            w.offset += move - half
            w.reload()
            point(f"reload {i + 1}")
    finally:
        w.stop()
    start, last = rows[0][1], rows[-1][1]
    print(f"after {args.reloads} reloads / start: {last / start:.2f}")


if __name__ == "__main__":
    main()
