#!/usr/bin/env bash
# Builds the guest agent (static x86_64 binary, glibc + crt-static, see .cargo/config.toml)
# and copies it to <repo>/build/guest/cloudhv-agent; the crate's host helpers (static too) go to
# <repo>/build/host/: cloudhv-portfwd (port-forward) and cloudhv-net (pod networks by netlink).
#
#   guest/agent/build.sh [--out FILE] [--force]
#
# Cached: when the sha256 of the agent's inputs (Cargo.toml, Cargo.lock, build.rs, src/**,
# .cargo/config.toml, shim/proto/agent.proto, this script, the rustc version) matches the
# stamp next to the output, cargo is not run at all. Compiled dependencies live in
# ${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/agent-target/<clone>, one target dir per
# clone (named by a hash of its path): cargo's fingerprints of this crate name source paths
# and the build script's output dir does not, so clones sharing one could package each
# other's agent or generated protocol.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/build/guest/cloudhv-agent"
force=0
while (($#)); do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "agent: unknown argument $1" >&2; exit 2 ;;
  esac
done
[[ "$out" = /* ]] || out="$PWD/$out"
stamp="$out.sha256"

export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "agent: cargo not found (install Rust)" >&2; exit 1; }

cd "$here"
inputs_hash() {
  {
    # Paths relative to guest/agent, sorted, so the hash does not depend on the clone's path.
    find Cargo.toml Cargo.lock build.rs build.sh .cargo/config.toml src -type f -print0 | LC_ALL=C sort -z |
      xargs -0 sha256sum
    (cd "$repo" && sha256sum shim/proto/agent.proto)
    rustc -V
  } | sha256sum | cut -d' ' -f1
}
want=$(inputs_hash)
host_out="$(dirname "$(dirname "$out")")/host"
if ((!force)) && [ -x "$out" ] && [ -x "$host_out/cloudhv-portfwd" ] && [ -x "$host_out/cloudhv-net" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "agent: up to date ($out, $(stat -c %s "$out") bytes)"
  exit 0
fi

clone=$(printf '%s' "$repo" | sha256sum | cut -c1-12)
export CARGO_TARGET_DIR="${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/agent-target/$clone"
mkdir -p "$CARGO_TARGET_DIR"
echo "agent: cargo build --release --locked (target dir $CARGO_TARGET_DIR)"
cargo build --release --locked
bin="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/cloudhv-agent"

# /init must not need a dynamic loader: the erofs root has only crun's libraries.
if command -v file >/dev/null; then
  info=$(file -b "$bin")
  case "$info" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) echo "agent: $bin is not statically linked: $info" >&2; exit 1 ;;
  esac
fi

mkdir -p "$(dirname "$out")" "$host_out"
for helper in cloudhv-portfwd cloudhv-net; do
  cp "$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/$helper" "$host_out/$helper.tmp.$$"
  mv -f "$host_out/$helper.tmp.$$" "$host_out/$helper"
done
cp "$bin" "$out.tmp.$$"
mv -f "$out.tmp.$$" "$out"
echo "$want" >"$stamp"
echo "agent: built $out ($(stat -c %s "$out") bytes)"
