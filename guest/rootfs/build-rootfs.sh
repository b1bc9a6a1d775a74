#!/usr/bin/env bash
# Builds the guest root filesystem: a read-only, reproducible erofs image holding
#   /init            the agent (static binary)
#   /usr/bin/crun    Debian's crun, plus exactly the shared libraries ldd resolves for it
#                    (with their soname symlinks and the dynamic loader)
#   /etc             passwd, group, hostname, hosts, resolv.conf placeholder, os-release
#   mount points     /proc /sys /dev /tmp /run /mnt /var /root (the agent mounts tmpfs/etc.)
# No shell. Budget: 8 MiB, enforced.
#
#   guest/rootfs/build-rootfs.sh [--agent PATH] [--out FILE] [--crun PATH] [--force]
#
# Defaults: --agent <repo>/build/guest/cloudhv-agent, --out <repo>/build/guest/rootfs.erofs,
# --crun /usr/bin/crun. Cached: skipped when the stamp (<out>.sha256: sha256 of the agent,
# crun, crun's libraries and this script) matches. Needs root for the chroot check and
# the /dev/console node (skipped with a warning otherwise).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
script="$here/$(basename "${BASH_SOURCE[0]}")"
agent="$repo/build/guest/cloudhv-agent"
out="$repo/build/guest/rootfs.erofs"
crun=/usr/bin/crun
force=0
BUDGET=$((8 * 1024 * 1024))
# Fixed so that the same inputs give the same image bytes.
FS_UUID=6c6f7564-6876-4000-8000-726f6f746673
EPOCH=0

say() { echo "rootfs: $*"; }
die() { echo "rootfs: error: $*" >&2; exit 1; }

while (($#)); do
  case "$1" in
    --agent) agent=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --crun) crun=$2; shift 2 ;;
    --force) force=1; shift ;;
    -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ "$out" = /* ]] || out="$PWD/$out"

for tool in mkfs.erofs ldd sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found (apt-get install erofs-utils libc-bin coreutils)"
done
[ -x "$agent" ] || die "agent binary $agent not found: run guest/agent/build.sh first"
[ -x "$crun" ] || die "crun not found at $crun (apt-get install crun)"

mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

# crun's shared libraries as ldd resolves them: absolute paths, loader included.
ldd_out=$(ldd "$crun" 2>&1) || die "ldd $crun failed: $ldd_out"
if grep -q "not found" <<<"$ldd_out"; then
  die "crun needs libraries that are missing on this machine:
$(grep "not found" <<<"$ldd_out")"
fi
mapfile -t libs < <(awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' <<<"$ldd_out" | LC_ALL=C sort -u)
((${#libs[@]})) || die "ldd found no libraries for $crun (static crun?): $ldd_out"

stamp="$out.sha256"
want=$({
  sha256sum "$agent" "$crun" "${libs[@]}" | awk '{ print $1 }' # content, not host paths of inputs
  printf '%s\n' "${libs[@]}"
  sha256sum <"$script"
} | sha256sum | cut -d' ' -f1)
if ((!force)) && [ -f "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  say "up to date: $out, $(mib "$(stat -c %s "$out")") (budget $(mib $BUDGET))"
  exit 0
fi

# The agent is /init: it must run without a loader or libraries of its own.
if command -v file >/dev/null; then
  case "$(file -b "$agent")" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) die "$agent is not statically linked: $(file -b "$agent")" ;;
  esac
fi

mkdir -p "$(dirname "$out")"
staging=$(mktemp -d "$(dirname "$out")/.rootfs-staging.XXXXXX")
tmp_img="$out.tmp.$$"
trap 'rm -rf "$staging" "$tmp_img"' EXIT

say "staging"
# Mirror the host's usr-merge (bin, sbin, lib, lib64 as links into usr/ or real dirs), so that
# the paths ldd reports and the loader's search paths mean the same thing in the image.
mkdir -p "$staging/usr/bin" "$staging/usr/sbin" "$staging/usr/lib" "$staging/usr/lib64"
for d in bin sbin lib lib64; do
  if [ -L "/$d" ]; then
    ln -s "$(readlink "/$d")" "$staging/$d"
  else
    mkdir -p "$staging/$d"
  fi
done

# Copies a host path into the staging tree, recreating each symlink on the way to the file.
copy_path() {
  local p=$1 depth=${2:-0} t next
  ((depth < 16)) || die "symlink loop at $p"
  mkdir -p "$staging$(dirname "$p")"
  if [ -L "$p" ]; then
    t=$(readlink "$p")
    [ -e "$staging$p" ] || [ -L "$staging$p" ] || ln -s "$t" "$staging$p"
    case "$t" in
      /*) next=$t ;;
      *) next="$(dirname "$p")/$t" ;;
    esac
    copy_path "$next" $((depth + 1))
  elif [ -f "$p" ]; then
    [ -e "$staging$p" ] || cp --preserve=mode "$p" "$staging$p"
  else
    die "$p is not a file"
  fi
}

install -m 0755 "$agent" "$staging/init"
copy_path "$crun"
[ "$crun" = /usr/bin/crun ] || ln -sf "$crun" "$staging/usr/bin/crun"
for lib in "${libs[@]}"; do
  copy_path "$lib"
done

for d in proc sys dev tmp run mnt var root etc; do
  mkdir -p "$staging/$d"
done
chmod 1777 "$staging/tmp"
chmod 0700 "$staging/root"

cat >"$staging/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
EOF
cat >"$staging/etc/group" <<'EOF'
root:x:0:
tty:x:5:
nogroup:x:65534:
EOF
echo cloudhv >"$staging/etc/hostname"
cat >"$staging/etc/hosts" <<'EOF'
127.0.0.1	localhost cloudhv
::1	localhost ip6-localhost ip6-loopback
EOF
cat >"$staging/etc/resolv.conf" <<'EOF'
# cloudhv guest: placeholder. Containers get their resolv.conf from the pod's OCI spec;
# the agent overmounts this file when the guest itself needs DNS.
EOF
cat >"$staging/etc/os-release" <<'EOF'
NAME="cloudhv guest"
ID=cloudhv
PRETTY_NAME="cloudhv guest (cloudhv-agent + crun)"
HOME_URL="https://github.com/cloudhv/cloudhv"
EOF
ln -s ../proc/self/mounts "$staging/etc/mtab"
# The kernel opens /dev/console for init before the agent mounts devtmpfs over /dev (needed
# when the kernel has no CONFIG_DEVTMPFS_MOUNT); without it init starts with no stdio.
if [ "$(id -u)" = 0 ]; then
  mknod -m 0600 "$staging/dev/console" c 5 1
  mknod -m 0666 "$staging/dev/null" c 1 3
else
  echo "rootfs: warning: not root, image has no /dev/console node" >&2
fi

# Everything crun needs is in the staging tree: run it there (crun re-executes itself through
# /proc/self/exe, so give it a private /proc in a throwaway mount+pid namespace).
# /init is checked in a plain chroot: never as PID 1 of a namespace, where it would act as
# the guest's init (mounts, hostname).
if [ "$(id -u)" = 0 ]; then
  unpriv=()
elif unshare -r true 2>/dev/null; then
  unpriv=(unshare -r)
else
  unpriv=(none)
  echo "rootfs: warning: cannot chroot (not root, no user namespaces): crun check skipped" >&2
fi
if [ "${unpriv[*]}" != none ]; then
  run_in() { env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "${unpriv[@]}" "$@"; }
  v=$(run_in unshare --pid --fork --mount-proc="$staging/proc" chroot "$staging" /usr/bin/crun --version 2>&1) ||
    die "crun does not run in the image: $v"
  say "check: $(head -n1 <<<"$v") runs in the image"
  v=$(run_in chroot "$staging" /init --version 2>&1) || die "/init does not run in the image: $v"
  say "check: $v"
  # crun --version created its state dir; the image ships empty mount points only.
  find "$staging/run" "$staging/tmp" -mindepth 1 -delete
fi

say "mkfs.erofs"
# Reproducible: fixed UUID and timestamps, root ownership; erofs sorts directory entries.
find "$staging" -exec touch -h -d "@$EPOCH" {} +
mkfs.erofs --quiet -zlz4hc,12 -C65536 -T"$EPOCH" -U"$FS_UUID" --all-root "$tmp_img" "$staging" ||
  die "mkfs.erofs failed"

size=$(stat -c %s "$tmp_img")
if ((size > BUDGET)); then
  die "image is $(mib "$size") ($size bytes), over the $(mib $BUDGET) budget"
fi
mv -f "$tmp_img" "$out"
echo "$want" >"$stamp"
say "$(mib "$size") (budget $(mib $BUDGET)): $out"
