#!/usr/bin/env bash
# Builds the cloudhv guest kernel: an uncompressed, PVH-bootable vmlinux for Cloud Hypervisor
# and QEMU, from Debian's linux-source-6.1, with tinyconfig + cloudhv.config. Fails if
# olddefconfig dropped any option cloudhv.config asks for. Cached by a hash of its inputs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out="$repo/build/guest"
extra=""
config_only=0
jobs=$(nproc)
cache_root=${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}
fragment="$here/cloudhv.config"
src_tar=/usr/src/linux-source-6.1.tar.xz

usage() {
  cat <<USAGE
usage: build-kernel.sh [--out DIR] [--config-only] [--extra-config FILE] [--jobs N]

  --out DIR            where vmlinux and vmlinux.config go (default: build/guest)
  --config-only        configure and verify the options, do not build
  --extra-config FILE  a fragment merged after cloudhv.config (tests use it to break things)
  --jobs N             parallel make jobs (default: nproc = $jobs)

Cache: \$CLOUDHV_BUILD_CACHE (default /var/cache/cloudhv-build)/kernel/<input hash>/
USAGE
}

while (($#)); do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --config-only) config_only=1; shift ;;
    --extra-config) extra=$(realpath "$2"); shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "build-kernel: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
done

say() { echo "kernel: $*"; }
die() { echo "build-kernel: $*" >&2; exit 1; }

[ -f "$src_tar" ] || die "$src_tar not found: apt-get install linux-source-6.1"
src_version=$(dpkg-query -W -f='${Version}' linux-source-6.1)
# Bump when a change to this script changes what it builds (not for messages or caching).
build_format=1
key=$( { echo "$src_version $build_format $config_only"; cat "$fragment"; if [ -n "$extra" ]; then cat "$extra"; fi; } | sha256sum | cut -c1-16)
entry="$cache_root/kernel/$key"
mkdir -p "$cache_root/kernel" "$out"

if [ "$config_only" = 0 ] && [ -f "$entry/vmlinux" ]; then
  cp "$entry/vmlinux" "$out/vmlinux.tmp" && mv "$out/vmlinux.tmp" "$out/vmlinux"
  cp "$entry/config" "$out/vmlinux.config"
  say "cache hit $key ($(du -m "$out/vmlinux" | cut -f1) MiB)"
  exit 0
fi

# One build at a time per cache: the source tree and object dirs are shared.
exec 9>"$cache_root/kernel/.lock"
flock 9

started=$(date +%s)
src="$cache_root/kernel/src-$src_version/linux-source-6.1"
if [ ! -f "$src/.extracted" ]; then
  say "extracting linux-source-6.1 ($src_version)…"
  rm -rf "$(dirname "$src")"
  mkdir -p "$(dirname "$src")"
  tar -xf "$src_tar" -C "$(dirname "$src")"
  touch "$src/.extracted"
fi

obj="$cache_root/kernel/obj-$key"
rm -rf "$obj"
mkdir -p "$obj"
# The object dir is scratch space: gone however this script ends.
trap 'rm -rf "$obj"' EXIT
log="$obj/build.log"

say "configuring (tinyconfig + cloudhv.config${extra:+ + $(basename "$extra")})"
make -C "$src" O="$obj" ARCH=x86_64 tinyconfig >"$log" 2>&1
cat "$fragment" ${extra:+"$extra"} >"$obj/fragment.config"
"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$obj/fragment.config" >>"$log" 2>&1
make -C "$src" O="$obj" ARCH=x86_64 olddefconfig >>"$log" 2>&1

# Every option the fragments set must be in the final config, with the same value.
missing=()
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*)
      opt=${line%%=*}
      grep -qx "$line" "$obj/.config" || missing+=("$opt=${line#*=} (now: $(grep -E "^$opt=|^# $opt is not set" "$obj/.config" || echo absent))")
      ;;
    "# CONFIG_"*" is not set")
      opt=${line#\# }; opt=${opt%% *}
      grep -q "^$opt=" "$obj/.config" && missing+=("$opt unset (now: $(grep "^$opt=" "$obj/.config"))")
      ;;
  esac
done < <(
  # The last assignment of an option wins, as in merge_config.sh.
  tac "$obj/fragment.config" | awk '
    /^CONFIG_[A-Za-z0-9_]+=/ { split($0, a, "="); if (!seen[a[1]]++) print; next }
    /^# CONFIG_[A-Za-z0-9_]+ is not set/ { if (!seen[$2]++) print }'
)
if ((${#missing[@]})); then
  {
    echo "build-kernel: olddefconfig dropped options the config asks for (a dependency is missing):"
    printf '  %s\n' "${missing[@]}"
  } >&2
  exit 1
fi
say "config verified: every requested option is set"

if [ "$config_only" = 1 ]; then
  cp "$obj/.config" "$out/vmlinux.config"
  say "config only: done in $(($(date +%s) - started)) s"
  exit 0
fi

say "building vmlinux with make -j$jobs (about 5 min on 2 cores)…"
if ! make -C "$src" O="$obj" ARCH=x86_64 -j"$jobs" vmlinux >>"$log" 2>&1; then
  tail -n 40 "$log" >&2
  cp "$log" "$cache_root/kernel/last-failed-build.log"
  die "make vmlinux failed; full log: $cache_root/kernel/last-failed-build.log"
fi
grep -q 'Xen' <(readelf -n "$obj/vmlinux" 2>/dev/null) || die "vmlinux has no PVH (Xen ELF) note: CONFIG_PVH did not take"

tmp="$entry.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
cp "$obj/vmlinux" "$tmp/vmlinux"
cp "$obj/.config" "$tmp/config"
rm -rf "$entry"
mv "$tmp" "$entry"
cp "$entry/vmlinux" "$out/vmlinux.tmp" && mv "$out/vmlinux.tmp" "$out/vmlinux"
cp "$entry/config" "$out/vmlinux.config"
say "built vmlinux ($(du -m "$out/vmlinux" | cut -f1) MiB) in $(($(date +%s) - started)) s"
