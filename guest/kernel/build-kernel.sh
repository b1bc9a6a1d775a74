#!/usr/bin/env bash
# Builds the cloudhv guest kernel: an uncompressed, PVH-bootable vmlinux for Cloud Hypervisor
# and QEMU, from Debian's linux-source-6.1 with `make tinyconfig` + cloudhv.config. Fails,
# naming them, if olddefconfig dropped options the fragments ask for. Cached by input hash.
# The shipped file is packed (pack-vmlinux.mjs) and must fit the 16 MiB budget.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
self="$here/$(basename "${BASH_SOURCE[0]}")"
fragment="$here/cloudhv.config"
pkg=linux-source-6.1
src_tar=/usr/src/$pkg.tar.xz
arch=x86_64
packer="$here/pack-vmlinux.mjs"
# The guest kernel's size budget (issue 16), checked on the packed file.
budget=$((16 * 1048576))

out="$repo/build/guest"
extra=""
config_only=0
jobs=$(nproc)
cache_root=${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}

usage() {
  cat <<USAGE
usage: build-kernel.sh [--out DIR] [--config-only] [--extra-config FILE] [--jobs N]

Builds DIR/vmlinux (uncompressed ELF, PVH entry note) and DIR/vmlinux.config from
$src_tar: make tinyconfig + cloudhv.config (+ FILE), make olddefconfig,
then checks that every option the fragments set (or unset) survived. DIR/vmlinux is
packed by pack-vmlinux.mjs (segments without the 2 MiB file padding, verified to load the
same bytes at the same addresses) and must be at most $budget bytes (16 MiB).

  --out DIR            output directory (default: <repo>/build/guest)
  --config-only        configure and check the options only; writes DIR/vmlinux.config
  --extra-config FILE  a fragment merged after cloudhv.config (tests use it to break things)
  --jobs N             parallel make jobs (default: nproc = $(nproc))
  -h, --help           this text

Cache: \${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/kernel/<key>/{vmlinux,config},
key = sha256(package version, cloudhv.config, extra fragment, this script). Entries hold the
stripped, unpacked vmlinux: it is packed on every install, so a packer change needs no rebuild.
USAGE
}

say() { echo "kernel: $*"; }
die() {
  echo "build-kernel: $*" >&2
  exit 1
}

while (($#)); do
  case "$1" in
    --out | --extra-config | --jobs)
      (($# >= 2)) || die "$1 needs a value"
      case "$1" in
        --out) out=$2 ;;
        --extra-config)
          [ -f "$2" ] || die "--extra-config: no such file: $2"
          extra=$(realpath "$2")
          ;;
        --jobs)
          [[ $2 =~ ^[1-9][0-9]*$ ]] || die "--jobs needs a positive number, got '$2'"
          jobs=$2
          ;;
      esac
      shift 2
      ;;
    --config-only) config_only=1 && shift ;;
    -h | --help) usage && exit 0 ;;
    *)
      usage >&2
      die "unknown argument '$1'"
      ;;
  esac
done

started=$SECONDS
[ -f "$src_tar" ] || die "$src_tar not found: apt-get install $pkg"
src_version=$(dpkg-query -W -f='${Version}' "$pkg" 2>/dev/null) || die "dpkg does not know $pkg"
[ -n "$src_version" ] || die "dpkg does not know $pkg"
[ "$config_only" = 1 ] || command -v node >/dev/null ||
  die "node (Node.js >= 20) is needed to pack vmlinux ($packer): install it or put it on PATH"

key=$(
  {
    printf '%s\n' "$pkg $src_version" "--- cloudhv.config"
    cat "$fragment"
    printf '%s\n' "--- extra"
    if [ -n "$extra" ]; then cat "$extra"; fi
    printf '%s\n' "--- build-kernel.sh"
    cat "$self"
  } | sha256sum | cut -c1-16
)
kcache="$cache_root/kernel"
entry="$kcache/$key"
mkdir -p "$kcache" "$out"

# Packs the entry's vmlinux into $out (the packer writes through a temp file, verifies it
# loads exactly as the entry's and enforces the budget), then copies the config.
install_entry() {
  node "$packer" "$entry/vmlinux" "$out/vmlinux" --max-bytes "$budget" ||
    die "packing $entry/vmlinux into $out/vmlinux failed (message above)"
  cp "$entry/config" "$out/.vmlinux.config.tmp.$$"
  mv -f "$out/.vmlinux.config.tmp.$$" "$out/vmlinux.config"
}

# Entries appear complete or not at all (rename), so a hit needs no lock.
if [ "$config_only" = 0 ] && [ -f "$entry/vmlinux" ]; then
  install_entry
  say "cache hit $key ($(stat -c %s "$out/vmlinux") bytes packed) -> $out/vmlinux"
  exit 0
fi

scratch=()
cleanup() { if ((${#scratch[@]})); then rm -rf "${scratch[@]}"; fi; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Locks: .build.lock (exclusive) serialises full builds, which share one object dir and write
# cache entries; .src.lock is shared while the source tree is read and exclusive while it is
# extracted. --config-only takes only the shared one, so it never waits for a 5 min build.
if [ "$config_only" = 0 ]; then
  exec 9>"$kcache/.build.lock"
  if ! flock -n 9; then
    say "waiting for another kernel build to finish ($kcache/.build.lock)…"
    flock 9
  fi
  if [ -f "$entry/vmlinux" ]; then
    install_entry
    say "cache hit $key (built by the build we waited for) -> $out/vmlinux"
    exit 0
  fi
  # Leftovers of builds killed before their EXIT trap ran.
  rm -rf "$kcache"/.entry-tmp.*
  find "$kcache" -maxdepth 1 -name '.config-only.*' -mmin +60 -exec rm -rf {} +
fi

exec 8>"$kcache/.src.lock"
flock -s 8
srcdir="$kcache/src-$src_version"
src="$srcdir/$pkg"
if [ ! -f "$src/Makefile" ]; then
  flock -x 8
  if [ ! -f "$src/Makefile" ]; then
    say "extracting $pkg ($src_version)… (~11 s)"
    for old in "$kcache"/src-*; do
      if [ -e "$old" ] && [ "$old" != "$srcdir" ]; then rm -rf "$old"; fi
    done
    tmp="$kcache/.src-tmp.$$"
    scratch+=("$tmp")
    rm -rf "$kcache"/.src-tmp.* "$srcdir"
    mkdir -p "$tmp"
    tar -xf "$src_tar" -C "$tmp"
    [ -f "$tmp/$pkg/Makefile" ] || die "$src_tar has no $pkg/Makefile"
    mv -T "$tmp" "$srcdir"
  fi
  flock -s 8
fi

if [ "$config_only" = 1 ]; then
  obj=$(mktemp -d "$kcache/.config-only.XXXXXX")
  scratch+=("$obj")
  log="$obj/config.log"
else
  # One object dir per source version, kept between builds: kbuild rebuilds only what a
  # config change touches. Interrupted builds are safe to resume (kbuild deletes half targets).
  obj="$kcache/obj-$src_version"
  for old in "$kcache"/obj-*; do
    if [ -e "$old" ] && [ "$old" != "$obj" ]; then rm -rf "$old"; fi
  done
  mkdir -p "$obj" "$kcache/logs"
  log="$kcache/logs/$key.log"
fi
: >"$log"

kmake() { make -C "$src" O="$obj" ARCH="$arch" "$@"; }

fragments=("$fragment")
[ -n "$extra" ] && fragments+=("$extra")
say "configuring (tinyconfig + cloudhv.config${extra:+ + $(basename "$extra")})"
if ! {
  kmake tinyconfig &&
    "$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "${fragments[@]}" &&
    kmake olddefconfig
} >>"$log" 2>&1; then
  tail -n 40 "$log" >&2
  die "configuring failed (log above; full log: $log)"
fi

# Compare what the fragments ask for (last fragment wins, as in merge_config.sh) with the
# final .config. Output, tab-separated: option, wanted value, value now, fragment that set it.
# "n" stands for "# CONFIG_X is not set", "absent" for an option missing from .config (its
# dependencies are not met, or it does not exist).
check_config() {
  awk -v OFS='\t' '
    function parse(line) {
      if (match(line, /^CONFIG_[A-Za-z0-9_]+=/)) {
        name = substr(line, 1, RLENGTH - 1); value = substr(line, RLENGTH + 1); return 1
      }
      if (line ~ /^# CONFIG_[A-Za-z0-9_]+ is not set/) {
        split(line, w, " "); name = w[2]; value = "n"; return 1
      }
      return 0
    }
    is_config { if (parse($0)) have[name] = value; next }
    parse($0) {
      n = split(FILENAME, p, "/"); file = p[n]
      if ((name in want) && want[name] != value && from[name] != file)
        print name, want[name], value, from[name], file > "/dev/stderr"
      if (!(name in want)) order[++count] = name
      want[name] = value; from[name] = file
    }
    END {
      for (i = 1; i <= count; i++) {
        name = order[i]; now = (name in have) ? have[name] : "absent"
        ok = (want[name] == "n") ? (now == "n" || now == "absent") : (now == want[name])
        if (!ok) print name, want[name], now, from[name]
      }
    }' is_config=1 "$obj/.config" is_config=0 "$@"
}

# Kconfig "depends on" lines of the given options (a hint for the error message; enclosing
# menus and if-blocks also count).
kconfig_deps() {
  # shellcheck disable=SC2016 # $2 and $0 are awk fields
  find "$src" -name 'Kconfig*' -type f -print0 | xargs -0 awk -v names="$*" -v OFS='\t' '
    BEGIN { split(names, a, " "); for (i in a) wanted[a[i]] = 1 }
    /^[ \t]*(menu)?config[ \t]+[A-Za-z0-9_]+[ \t]*$/ {
      cur = ("CONFIG_" $2 in wanted) ? "CONFIG_" $2 : ""; if (cur != "") print cur, ""; next
    }
    /^[ \t]*(choice|endchoice|menu|endmenu|if|endif|comment|source)([ \t]|$)/ { cur = ""; next }
    cur != "" && /^[ \t]*depends on[ \t]/ { sub(/^[ \t]*depends on[ \t]+/, ""); print cur, $0 }'
}

show() { if [ "$2" = n ]; then echo "$1 is not set"; else echo "$1=$2"; fi; }
dropped=$(check_config "${fragments[@]}" 2>"$obj/overrides.tsv")
while IFS=$'\t' read -r name was now by by2; do
  say "note: $by2 overrides $by: $(show "$name" "$was") -> $(show "$name" "$now")"
done <"$obj/overrides.tsv"

if [ -n "$dropped" ]; then
  names=$(cut -f1 <<<"$dropped" | tr '\n' ' ')
  # shellcheck disable=SC2086 # word splitting intended: one argument per option
  deps=$(kconfig_deps $names)
  {
    echo "build-kernel: olddefconfig dropped options the config asks for (a dependency is missing):"
    while IFS=$'\t' read -r name want now by; do
      if [ "$want" = n ]; then
        echo "build-kernel: $name unset was requested by $by but olddefconfig set it (now: $name=$now)"
        continue
      fi
      [ "$now" = n ] && now="is not set"
      echo "build-kernel: $name=$want (now: $now) was requested by $by but olddefconfig dropped it"
      if ! grep -q "^$name"$'\t' <<<"$deps"; then
        echo "                no such option in $pkg $src_version (typo, or removed upstream)"
      else
        grep "^$name"$'\t'. <<<"$deps" | cut -f2 | sort -u | sed 's/^/                depends on /' || true
      fi
    done <<<"$dropped"
    echo "build-kernel: $(wc -l <<<"$dropped") option(s) dropped (enclosing menus and if-blocks count too); add the missing dependency to cloudhv.config or drop the option"
  } >&2
  exit 1
fi
say "config verified: all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set)' "$fragment") options of cloudhv.config${extra:+ (+ $(basename "$extra"))} survived olddefconfig"

if [ "$config_only" = 1 ]; then
  cp "$obj/.config" "$out/.vmlinux.config.tmp.$$"
  mv -f "$out/.vmlinux.config.tmp.$$" "$out/vmlinux.config"
  say "config only: $out/vmlinux.config ($((SECONDS - started)) s)"
  exit 0
fi

say "building vmlinux with make -j$jobs (≈5 min on 2 cores from scratch)… log: $log"
build_started=$SECONDS
if ! kmake -j"$jobs" vmlinux >>"$log" 2>&1; then
  tail -n 40 "$log" >&2
  die "make vmlinux failed after $((SECONDS - build_started)) s (last 40 lines above; full log: $log)"
fi
notes=$(readelf -n "$obj/vmlinux")
grep -q 'Xen .*(0x00000012)' <<<"$notes" ||
  die "$obj/vmlinux has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY): is CONFIG_PVH set?"

# Publish the cache entry atomically: a temp dir renamed into place.
tmp="$kcache/.entry-tmp.$$"
scratch+=("$tmp")
rm -rf "$tmp"
mkdir -p "$tmp"
# The ELF symbol table is for debuggers, not for booting (kallsyms is inside the image): the
# shipped vmlinux goes without it (about 0.8 MiB). The PVH note is an allocated section and stays.
strip --strip-all -o "$tmp/vmlinux" "$obj/vmlinux"
grep -q 'Xen .*(0x00000012)' <<<"$(readelf -n "$tmp/vmlinux")" ||
  die "the stripped vmlinux lost its PVH entry note"
cp "$obj/.config" "$tmp/config"
rm -rf "$entry"
mv -T "$tmp" "$entry"
install_entry
say "built $out/vmlinux ($(stat -c %s "$out/vmlinux") bytes packed), cache $key, in $((SECONDS - started)) s"
