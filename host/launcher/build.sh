#!/usr/bin/env bash
# Builds the shim launcher (containerd-shim-cloudhv-v1, compiled: the hot path of `start` and
# `delete`; the Node.js shim does everything else) and copies it to
# <repo>/build/host/containerd-shim-cloudhv-v1. `npm run build` puts it into shim/dist/.
#
#   host/launcher/build.sh [--out FILE] [--force]
#
# Cached: when the sha256 of its inputs (Cargo.toml, Cargo.lock, src/**, .cargo/config.toml,
# this script, the rustc version) matches the stamp next to the output, cargo is not run.
# Compiled dependencies live in ${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/launcher-target.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/build/host/containerd-shim-cloudhv-v1"
force=0
while (($#)); do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h | --help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "launcher: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$out" = /* ]] || out="$PWD/$out"
stamp="$out.sha256"

export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "launcher: cargo not found (install Rust)" >&2; exit 1; }

cd "$here"
inputs_hash() {
  {
    find Cargo.toml Cargo.lock build.sh .cargo/config.toml src -type f -print0 | LC_ALL=C sort -z |
      xargs -0 sha256sum
    rustc -V
  } | sha256sum | cut -d' ' -f1
}
want=$(inputs_hash)
if ((!force)) && [ -x "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "launcher: up to date ($out, $(stat -c %s "$out") bytes)"
  exit 0
fi

export CARGO_TARGET_DIR="${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/launcher-target"
mkdir -p "$CARGO_TARGET_DIR"
echo "launcher: cargo build --release --locked (target dir $CARGO_TARGET_DIR)"
cargo build --release --locked
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/containerd-shim-cloudhv-v1"

mkdir -p "$(dirname "$out")"
cp "$bin" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
echo "$want" >"$stamp"
echo "launcher: built $out ($(stat -c %s "$out") bytes)"
