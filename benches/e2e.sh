#!/usr/bin/env bash
# End-to-end comparison of weir against nginx and HAProxy on this machine.
# Installs what it needs (nginx, haproxy, wrk from Debian; oha from crates.io),
# builds weir in release mode, then runs benches/e2e.py, which prints a table and
# rewrites the "End-to-end" section of BENCHMARKS.md.
#
#   benches/e2e.sh            # default: 3 interleaved rounds
#   ROUNDS=5 benches/e2e.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian starts the packaged services; the benchmark runs its own.
  $SUDO pkill -x nginx 2>/dev/null || true
  $SUDO pkill -x haproxy 2>/dev/null || true
fi
command -v oha >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/oha" ] || cargo install oha --locked
export PATH="$HOME/.cargo/bin:/usr/sbin:$PATH"

cargo build --release --bin weir --example backend
exec python3 benches/e2e.py "$@"
