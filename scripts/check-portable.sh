#!/usr/bin/env bash
# `cargo check` for the targets weir is meant to build on besides x86_64 Linux:
# macOS (x86_64-apple-darwin) and 64-bit ARM Linux. Installs the targets' std with
# rustup when missing. No C cross-compiler is needed: ring's C parts are replaced by
# empty objects (scripts/tools/fake-cc), which a check never links.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=(x86_64-apple-darwin aarch64-unknown-linux-gnu)
fake="$PWD/scripts/tools/fake-cc"
for target in "${targets[@]}"; do
  rustup target list --installed | grep -qx "$target" || rustup target add "$target"
  var=${target//-/_}
  env "CC_$var=$fake" "AR_$var=ar" cargo check --target "$target" --target-dir target/portable
  echo "ok: $target"
done
