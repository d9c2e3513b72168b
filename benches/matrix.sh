#!/usr/bin/env bash
# Protocol matrix: weir against nginx, HAProxy and Varnish on HTTP/1.1, h2c, TLS,
# connection churn, cache hits and 1 MiB h2 responses, in one interleaved run.
# Installs what it needs from Debian (idempotent), builds weir and the demo backend
# in release mode, then runs benches/matrix.py, which prints the tables and (except
# with --quick) rewrites the "Protocol matrix" section of BENCHMARKS.md.
#
#   benches/matrix.sh             # 3 interleaved rounds, ~15 minutes
#   benches/matrix.sh --quick     # 1 round, short runs: a smoke check, under 2 minutes
#   ROUNDS=5 DURATION=6 benches/matrix.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:/usr/sbin:$PATH"

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have nginx || need+=(nginx-light)
have haproxy || need+=(haproxy)
have varnishd || need+=(varnish)
have wrk || need+=(wrk)
have h2load || need+=(nghttp2-client)
have strace || need+=(strace)
have perf || need+=(linux-perf)
have openssl || need+=(openssl)
have taskset || need+=(util-linux)
have python3 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian may start the packaged services; the benchmark runs its own.
  for svc in nginx haproxy varnish; do $SUDO systemctl stop "$svc" 2>/dev/null || true; done
fi

cargo build --release --quiet --bin weir --example backend
exec python3 benches/matrix.py "$@"
