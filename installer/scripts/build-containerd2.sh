#!/usr/bin/env bash
# Builds a pinned containerd 2.x from the Go module proxy (no web downloads), for the tests that
# check the installer's version 3 config against a real containerd 2. Cached by version:
#   ${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/containerd-<version>/containerd
# Prints that path on stdout; progress goes to stderr. Override with CONTAINERD2_VERSION.
set -euo pipefail

version=${CONTAINERD2_VERSION:-v2.1.9}
cache=${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/containerd-$version
out=$cache/containerd
export PATH=/usr/local/go/bin:$PATH

if [ -x "$out" ] && "$out" --version 2>/dev/null | grep -q " $version "; then
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "build-containerd2.sh: Go is required (not in PATH or /usr/local/go/bin)" >&2; exit 1; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
echo "build-containerd2.sh: building containerd $version from the Go module proxy (once per version, minutes)" >&2
# `go install pkg@version` refuses containerd's go.mod (it has exclude directives), so build
# inside the downloaded module source as the main module. No CGO and no btrfs: the plugins we
# test (CRI, overlayfs) need neither. -X is what containerd's Makefile sets for --version.
src=$(go mod download -json "github.com/containerd/containerd/v2@$version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { echo "build-containerd2.sh: could not download containerd $version from the module proxy" >&2; exit 1; }
(cd "$src" && CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -tags "no_btrfs" -o "$work/containerd" \
  -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$version" ./cmd/containerd) >&2
"$work/containerd" --version | grep -q " $version " || {
  echo "build-containerd2.sh: built containerd does not report $version: $("$work/containerd" --version)" >&2
  exit 1
}
mv -f "$work/containerd" "$out"
echo "build-containerd2.sh: containerd $version built in $(($(date +%s) - start)) s → $out" >&2
echo "$out"
