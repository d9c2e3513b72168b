#!/usr/bin/env python3
"""Memory per silent client connection: clients that connect and send nothing yet
(issue 21's "Connections"; the lobby, src/listener/lobby.rs).

For each weir binary given (default target/release/weir), a fresh weir with one
worker and one plain listener is started; N clients connect and stay silent; the
cost per connection is weir's RSS growth (`VmRSS`) once they are in, over N. The
connections are closed by the client before `header_read_timeout` (10 s) cuts them.

    cargo build --release --bin weir
    benches/silent_conns.py [path/to/weir ...]       # N=3000 by default
"""
import os, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
N = int(os.environ.get("N", "3000"))
PORT = int(os.environ.get("PORT", "19360"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS")).split()[1])


def measure(binary, key=True):
    with tempfile.TemporaryDirectory() as work:
        conf = os.path.join(work, "weir.toml")
        with open(conf, "w") as f:
            # `defer_accept = false`: silent clients held by weir from the start (with the
            # default they spend their first second in the kernel, then cost the same).
            # A weir older than the key refuses it, and is run without.
            f.write(f'workers = 1\n[[listeners]]\nname = "a"\nlisten = "127.0.0.1:{PORT}"\n'
                    + ('defer_accept = false\n' if key else '') +
                    '[[routes]]\nupstream = "b"\n[upstreams.b]\n'
                    'servers = [{ address = "127.0.0.1:9" }]\n')
        weir = subprocess.Popen([binary, "--config", conf, "--log-level", "warn"])
        try:
            for _ in range(200):
                if key and weir.poll() is not None:
                    return measure(binary, key=False)
                try:
                    socket.create_connection(("127.0.0.1", PORT)).close()
                    break
                except OSError:
                    time.sleep(0.05)
            time.sleep(0.5)
            before = rss_kib(weir.pid)
            clients = [socket.create_connection(("127.0.0.1", PORT)) for _ in range(N)]
            time.sleep(1.5)
            after = rss_kib(weir.pid)
            for client in clients:
                client.close()
            return before, after
        finally:
            weir.kill()
            weir.wait()


def main():
    binaries = sys.argv[1:] or [os.path.join(TARGET, "release", "weir")]
    print(f"| weir | RSS before, KiB | with {N:,} silent clients, KiB | bytes per connection |")
    print("|---|---:|---:|---:|")
    for binary in binaries:
        before, after = measure(binary)
        print(f"| {binary} | {before:,} | {after:,} | {(after - before) * 1024 // N:,} |")


if __name__ == "__main__":
    main()
