#!/usr/bin/env bash
# Builds virtiofsd (the vhost-user virtio-fs daemon the shim runs, one per pod with shared
# volumes) from crates.io at a pinned version, with the crate's own Cargo.lock, and copies it
# to <repo>/build/host/virtiofsd.
#
#   host/virtiofsd/build.sh [--out FILE] [--force]
#
# Cached by version: ${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/virtiofsd-<version>/
# holds the binary (and cargo's target dir while building), shared by every clone; a cached
# one costs a copy. Needs libseccomp-dev and libcap-ng-dev (scripts/dev.sh installs them).
set -euo pipefail

version=1.14.0
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/build/host/virtiofsd"
force=0
while (($#)); do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "virtiofsd: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$out" = /* ]] || out="$PWD/$out"

export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "virtiofsd: cargo not found (install Rust)" >&2; exit 1; }

cache="${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/virtiofsd-$version"
cached="$cache/bin/virtiofsd"
install_out() {
  mkdir -p "$(dirname "$out")"
  cp "$cached" "$out.tmp.$$"
  mv -f "$out.tmp.$$" "$out"
}

if ((!force)) && [ -x "$cached" ]; then
  install_out
  echo "virtiofsd: $version cached -> $out"
  exit 0
fi

mkdir -p "$cache"
# One build at a time per version; a waiter finds the result and copies it.
exec 9>"$cache/.lock"
if ! flock -n 9; then
  echo "virtiofsd: waiting for another build of $version ($cache/.lock)…"
  flock 9
fi
if ((!force)) && [ -x "$cached" ]; then
  install_out
  echo "virtiofsd: $version (built by the build we waited for) -> $out"
  exit 0
fi

started=$SECONDS
echo "virtiofsd: cargo install virtiofsd@$version --locked (crates.io; about 70 s on 2 cores the first time)"
# --root puts the binary in a staging dir renamed into place, so a killed build leaves no
# half binary that a later run would take for a cache hit.
stage="$cache/.stage"
rm -rf "$stage"
CARGO_TARGET_DIR="$cache/target" cargo install virtiofsd --version "=$version" --locked \
  --root "$stage" --quiet
[ -x "$stage/bin/virtiofsd" ] || { echo "virtiofsd: cargo install produced no binary" >&2; exit 1; }
rm -rf "${cache:?}/bin"
mv -T "$stage/bin" "$cache/bin"
rm -rf "$stage" "$cache/target"
install_out
echo "virtiofsd: built $version in $((SECONDS - started)) s -> $out"
