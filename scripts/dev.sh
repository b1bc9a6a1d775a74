#!/usr/bin/env bash
# The newcomer's entry point: installs everything this repository needs on a Debian bookworm
# machine (as root), builds the host side and the guest, then runs the demo or the tests.
#
#   scripts/dev.sh demo     boot a microVM and talk to its agent (the main job)
#   scripts/dev.sh test     lint, then the whole test suite (what CI runs)
#   scripts/dev.sh setup    install and build only
#
# Every step is cached by its inputs, so a second run only does what changed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
export CLOUDHV_BUILD_CACHE=${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'dev.sh: %s\n' "$*" >&2; exit 1; }

# Debian packages: the VMM, the guest's container runtime and image tools, the kernel source
# and its build tools, containerd and the tools the shim drives, shellcheck for the lint, and
# for the Kubernetes level: s6 (supervises the node's containerd), openssl (certificates),
# iptables (kube-proxy); virtiofsd's build dependencies (seccomp, capabilities).
APT_PACKAGES=(
  qemu-system-x86 crun erofs-utils e2fsprogs util-linux iproute2 kmod
  linux-source-6.1 bc bison flex libelf-dev libssl-dev cpio xz-utils make gcc
  protobuf-compiler containerd runc containernetworking-plugins file busybox-static
  shellcheck s6 openssl iptables libseccomp-dev libcap-ng-dev
)

install_apt() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    say "apt: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
  else
    say "apt: all ${#APT_PACKAGES[@]} packages present"
  fi
}

check_toolchains() {
  command -v node >/dev/null || die "Node.js >= 20 is required (not found on PATH)"
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  ((major >= 20)) || die "Node.js >= 20 is required, found $(node --version)"
  command -v cargo >/dev/null || [ -x "$HOME/.cargo/bin/cargo" ] || die "Rust (cargo) is required to build the guest agent"
  export PATH="$HOME/.cargo/bin:$PATH"
}

install_npm() {
  local stamp=node_modules/.cloudhv-lock.sha256 want
  want=$(sha256sum package-lock.json | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "npm: dependencies up to date"
  else
    say "npm: installing dependencies (npm ci)"
    npm ci --no-audit --no-fund
    echo "$want" >"$stamp"
  fi
}

build_all() {
  [ "$(id -u)" = 0 ] || die "run as root: the guest build and the VM tests need it"
  install_apt
  check_toolchains
  install_npm
  say "guest: agent"
  guest/agent/build.sh
  say "host: virtiofsd (shared volumes)"
  host/virtiofsd/build.sh
  say "host: shim launcher (compiled start/delete; npm run build puts it in shim/dist)"
  host/launcher/build.sh
  say "guest: kernel"
  guest/kernel/build-kernel.sh
  say "guest: rootfs"
  guest/rootfs/build-rootfs.sh
  say "host: TypeScript build"
  npm run --silent build
}

# rustfmt and clippy for the lint: added through rustup when missing; a cargo without rustup
# (Debian's) must bring them itself.
install_rust_lint() {
  if command -v rustup >/dev/null; then
    local installed missing=()
    installed=$(rustup component list --installed)
    for c in rustfmt clippy; do
      grep -q "^$c-" <<<"$installed" || missing+=("$c")
    done
    if ((${#missing[@]})); then
      say "rust: adding ${missing[*]} (rustup component add)"
      rustup component add "${missing[@]}"
    else
      say "rust: rustfmt and clippy present"
    fi
  else
    cargo fmt --version >/dev/null 2>&1 || die "cargo fmt is missing and there is no rustup to add rustfmt"
    cargo clippy --version >/dev/null 2>&1 || die "cargo clippy is missing and there is no rustup to add clippy"
  fi
}

# Every shell script in the tree (not dependencies or build outputs), and CI's entry point.
shell_scripts() {
  find . \( -name node_modules -o -name target -o -name .git -o -path ./build \) -prune -o \
    -type f -name '*.sh' -print | LC_ALL=C sort
  if [ -f .ci/run ]; then echo .ci/run; fi
}

lint() {
  local scripts
  mapfile -t scripts < <(shell_scripts)
  say "lint: shellcheck (${#scripts[@]} scripts)"
  shellcheck "${scripts[@]}"
  say "lint: guest agent: cargo fmt --check"
  (cd guest/agent && cargo fmt --check)
  say "lint: guest agent: cargo clippy --all-targets -- -D warnings"
  (cd guest/agent && cargo clippy --all-targets -- -D warnings)
  say "lint: shim launcher: cargo fmt --check, clippy, unit tests"
  (cd host/launcher && cargo fmt --check && cargo clippy --all-targets -- -D warnings && cargo test --quiet)
  say "lint: guest kernel loader check: cargo fmt --check, clippy"
  (cd guest/kernel/loader-check && export CARGO_TARGET_DIR="$CLOUDHV_BUILD_CACHE/kernel-loader-check-target" &&
    cargo fmt --check && cargo clippy --all-targets -- -D warnings)
}

# helm (the chart tests), containerd 2.x (the installer's version 3 test), Kubernetes with
# etcd (the Kubernetes level, e2e/test/k8s) and critest with crane (e2e/test/critest), built
# from the Go module proxy and cached by version under $CLOUDHV_BUILD_CACHE; a cached one
# costs a second.
build_go_tools() {
  export PATH="$PATH:/usr/local/go/bin"
  command -v go >/dev/null || die "Go >= 1.24 is required to build helm, containerd 2 and Kubernetes (from the Go module proxy): install it to /usr/local/go or put it on PATH (Kubernetes 1.34 needs Go 1.24)"
  say "tools: helm (pinned, Go module proxy; ~3 min the first time)"
  installer/scripts/build-helm.sh >/dev/null
  say "tools: containerd 2 (pinned, Go module proxy; ~2 min the first time)"
  installer/scripts/build-containerd2.sh >/dev/null
  say "tools: Kubernetes and etcd (pinned, Go module proxy; ~6 min on 2 idle cores the first time)"
  e2e/k8s/build-k8s.sh >/dev/null
  say "tools: critest and crane (pinned, Go module proxy; ~8 min on 2 busy cores the first time)"
  e2e/critest/build-critest.sh >/dev/null
}

# One step per line: a function called in an `&&` list runs with `set -e` off, so a failed
# step inside it would not stop the script.
case "${1:-}" in
  setup)
    build_all
    install_rust_lint
    build_go_tools
    ;;
  # The demo needs neither helm nor containerd 2: it does not wait for their builds.
  demo)
    build_all
    say "demo"
    node e2e/dist/src/demo.js "${@:2}"
    ;;
  test)
    build_all
    install_rust_lint
    build_go_tools
    lint
    say "tests"
    npm test
    say "guest agent: cargo test (unit tests and the agent run as a process)"
    (cd guest/agent && cargo test)
    ;;
  *)
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
