#!/usr/bin/env bash
# Runs every test: unit, property, integration (real sockets on 127.0.0.1), the
# benches' smoke runs and HTTP/2 conformance (scripts/h2spec.sh), and checks the
# Prometheus alert rules. Installs the system tools the tests use when they are
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
need=()
command -v curl >/dev/null 2>&1 || need+=(curl)
# The scale-out test runs a throwaway redis-server on a loopback port.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# `systemd-analyze verify` checks deploy/systemd/weir.service (no running systemd needed).
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# dpkg-deb lists the package's files (scripts/package.sh --check).
command -v dpkg-deb >/dev/null 2>&1 || need+=(dpkg)
updated=0
if ! command -v promtool >/dev/null 2>&1; then
  # promtool ships in Debian's `prometheus` package. Without it the rules check here
  # and `promtool check metrics` in the observability test are skipped, with a note.
  $SUDO apt-get update -qq && updated=1
  if apt-cache policy prometheus 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    need+=(prometheus)
  else
    echo "note: Debian package prometheus not available; skipping promtool checks"
  fi
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  [ "$updated" -eq 1 ] || $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if command -v promtool >/dev/null 2>&1; then
  promtool check rules deploy/prometheus/alerts.yml
  # The alerts' own tests: a route's maintenance 503 pages nobody, an upstream's 5xx does.
  promtool test rules deploy/prometheus/alerts_test.yml
else
  echo "note: promtool not installed; skipping 'promtool check rules' and 'promtool test rules' of deploy/prometheus"
fi

cargo test --all-targets "$@"

# HTTP/2 conformance (h2spec) against weir's h2c and TLS listeners; skipped with a
# note when h2spec is not there.
./scripts/h2spec.sh
# The Debian package, from the debug binary the tests just built (seconds; the release
# package is scripts/package.sh without --check).
scripts/package.sh --check

# A short fuzz run when asked (WEIR_FUZZ_SECONDS=30, opt-in: CI does not install
# cargo-fuzz, whose build takes minutes) and the tools are here; see fuzz/README.md
# for the longer run. A crash fails the test run.
if [ -n "${WEIR_FUZZ_SECONDS:-}" ]; then
  if command -v cargo-fuzz >/dev/null 2>&1 && cargo +nightly --version >/dev/null 2>&1; then
    (
      cd fuzz
      # Its own target folder: sanitizer builds would evict the shared one's artifacts.
      unset CARGO_TARGET_DIR
      for target in config request h1_codec h2_frames; do
        mkdir -p "corpus/$target"
        # The codec's seeds are the differential tests' corpus, read as it is.
        case "$target" in
          h1_codec) seeds=../tests/corpus/h1 options=(-dict=h1.dict) ;;
          *) seeds="seeds/$target" options=() ;;
        esac
        cargo +nightly fuzz run -O "$target" "corpus/$target" "$seeds" -- \
          -max_total_time="$WEIR_FUZZ_SECONDS" "${options[@]}"
      done
    )
  else
    echo "WEIR_FUZZ_SECONDS is set but cargo-fuzz or a nightly toolchain is missing: fuzzing skipped" >&2
  fi
fi
