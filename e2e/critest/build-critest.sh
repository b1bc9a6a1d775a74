#!/usr/bin/env bash
# Builds upstream `critest` (sigs.k8s.io/cri-tools) and `crane` (go-containerregistry: serves the
# local registry critest pulls from and pushes our images into it) from the Go module proxy (no
# web downloads), cached by version:
#   ${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/critest-<version>/critest
#   ${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/crane-<version>/crane
# Prints the two binaries on stdout (critest first); progress goes to stderr. A second run only
# checks the cached binaries. Override with CRITEST_VERSION (v1.x.y) and CRANE_VERSION.
# `--check`: print the binaries when both are cached, else exit 3 without building.
#
# critest is a Ginkgo test binary (cmd/critest holds only a _test.go file), so `go install
# sigs.k8s.io/cri-tools/cmd/critest@v` has nothing to install: the module is downloaded, copied
# out of the read-only module cache and compiled with `go test -c`.
set -euo pipefail

critest_version=${CRITEST_VERSION:-v1.37.0}
crane_version=${CRANE_VERSION:-v0.20.6}
root=${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}
critest=$root/critest-$critest_version/critest
crane=$root/crane-$crane_version/crane
export PATH=/usr/local/go/bin:$PATH

say() { echo "build-critest.sh: $*" >&2; }

# Output captured before grep: `cmd | grep -q` under pipefail fails when grep's early exit
# kills the writer with SIGPIPE.
critest_cached() {
  [ -x "$critest" ] || return 1
  local out
  out=$("$critest" --version 2>/dev/null) || return 1
  grep -q "critest version: ${critest_version#v}$" <<<"$out"
}

crane_cached() {
  [ -x "$crane" ] || return 1
  local out
  out=$("$crane" version 2>/dev/null) || return 1
  grep -qx "$crane_version" <<<"$out"
}

if critest_cached && crane_cached; then
  echo "$critest"
  echo "$crane"
  exit 0
fi
if [ "${1:-}" = --check ]; then
  say "critest $critest_version or crane $crane_version is not built yet (run e2e/critest/build-critest.sh)"
  exit 3
fi

command -v go >/dev/null || { say "Go is required (not in PATH or /usr/local/go/bin)"; exit 1; }
mkdir -p "$root"
work=$(mktemp -d "$root/.build-critest-XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

if ! critest_cached; then
  start=$(date +%s)
  say "building critest $critest_version from the Go module proxy (once per version, 7.5 min on 2 busy cores)"
  dir=$(go mod download -json "sigs.k8s.io/cri-tools@$critest_version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -d "$dir/cmd/critest" ] || { say "could not download sigs.k8s.io/cri-tools $critest_version from the module proxy"; exit 1; }
  cp -r "$dir" "$work/cri-tools"
  chmod -R u+w "$work/cri-tools"
  # The module zip carries no vendor/ directory: -mod=mod resolves the dependencies from the proxy.
  say "compiling (go test -c ./cmd/critest, CGO off)"
  (cd "$work/cri-tools" && CGO_ENABLED=0 GOFLAGS=-mod=mod go test -c -trimpath \
    -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${critest_version#v}" \
    -o "$work/critest" ./cmd/critest) >&2
  mkdir -p "${critest%/*}"
  mv -f "$work/critest" "$critest"
  critest_cached || { say "built critest does not report $critest_version: $("$critest" --version 2>&1)"; exit 1; }
  say "critest $critest_version built in $(($(date +%s) - start)) s → $critest"
fi

if ! crane_cached; then
  start=$(date +%s)
  say "building crane $crane_version from the Go module proxy (once per version, ~1 min)"
  GOBIN=$work CGO_ENABLED=0 GOFLAGS=-mod=mod go install -trimpath \
    -ldflags "-s -w -X github.com/google/go-containerregistry/cmd/crane/cmd.Version=$crane_version" \
    "github.com/google/go-containerregistry/cmd/crane@$crane_version" >&2
  mkdir -p "${crane%/*}"
  mv -f "$work/crane" "$crane"
  crane_cached || { say "built crane does not report $crane_version: $("$crane" version 2>&1)"; exit 1; }
  say "crane $crane_version built in $(($(date +%s) - start)) s → $crane"
fi

echo "$critest"
echo "$crane"
