#!/usr/bin/env bash
# Builds the Debian package with cargo-deb and checks what it holds:
#
#   scripts/package.sh           release build (fat LTO: about 7 minutes on 2 cores),
#                                target/debian/weir_<version>-1_<arch>.deb (stripped
#                                binary) and weir-dbgsym_<version>-1_<arch>.ddeb
#   scripts/package.sh --check   packages the debug binary `cargo test` already built,
#                                into a temporary folder, and checks it: seconds. This is
#                                what scripts/test.sh (and so CI) runs, so every change to
#                                the metadata, the unit or the file list is checked
#                                without paying for a release build.
#
# Both check with `dpkg-deb` that the package lists the binary, the systemd unit, the
# config (marked as a conffile) and the docs. Installs cargo-deb (crates.io) when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

check_only=0
case "${1:-}" in
  --check) check_only=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

# Pinned, so a new cargo-deb cannot change the package under a CI run.
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q " $CARGO_DEB_VERSION\$"; then
  echo "installing cargo-deb $CARGO_DEB_VERSION..."
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
fi

target="${CARGO_TARGET_DIR:-target}"
if [ "$check_only" -eq 1 ]; then
  # cargo-deb packs `<target dir>/release/weir`. A scratch target dir holding a link to
  # the debug binary stands in for it, so nothing is built and target/release is left
  # alone.
  [ -x "$target/debug/weir" ] || cargo build --quiet --bin weir
  scratch="$(mktemp -d -t weir-deb.XXXXXX)"
  trap 'rm -rf "$scratch"' EXIT
  mkdir -p "$scratch/release"
  ln "$target/debug/weir" "$scratch/release/weir" 2>/dev/null || cp "$target/debug/weir" "$scratch/release/weir"
  deb="$scratch/weir.deb"
  CARGO_TARGET_DIR="$scratch" cargo deb --no-build --no-strip --no-dbgsym --fast --quiet --output "$deb" >/dev/null
else
  # Prints the .deb and, beside it, the weir-dbgsym .ddeb with the debug symbols.
  deb="$(cargo deb --quiet | grep '\.deb$' | head -n 1)"
fi

paths="$(dpkg-deb --contents "$deb" | awk '{print $NF}')"
missing=0
for path in ./usr/bin/weir ./lib/systemd/system/weir.service ./etc/weir/weir.toml \
  ./usr/share/doc/weir/README.md ./usr/share/doc/weir/LICENSE ./usr/share/doc/weir/CHANGELOG.md \
  ./usr/share/doc/weir/copyright; do
  # Debian 12 and later merge /lib into /usr/lib: cargo-deb may put the unit in either.
  if ! grep -qxF -e "$path" -e "${path/#.\/lib\//./usr/lib/}" <<<"$paths"; then
    echo "package: $path is missing from $deb" >&2
    missing=1
  fi
done
conffiles="$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)"
if ! grep -qx /etc/weir/weir.toml <<<"$conffiles"; then
  echo "package: /etc/weir/weir.toml is not a conffile (conffiles: $conffiles)" >&2
  missing=1
fi
# The unit in the package is the one in the tree, byte for byte.
packed_unit="$(dpkg-deb --fsys-tarfile "$deb" | tar -xO --wildcards '*/systemd/system/weir.service')"
if [ "$packed_unit" != "$(cat deploy/systemd/weir.service)" ]; then
  echo "package: its weir.service differs from deploy/systemd/weir.service" >&2
  missing=1
fi
[ "$missing" -eq 0 ] || exit 1
echo "package ok: $deb"
dpkg-deb --field "$deb" Package Version Architecture Depends | sed 's/^/  /'
