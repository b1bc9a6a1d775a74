#!/usr/bin/env bash
# Builds a pinned `helm` from the Go module proxy (no web downloads) and caches it by version:
#   ${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/helm-<version>/helm
# Prints that path on stdout; progress goes to stderr. A second run with the same version
# only checks the cached binary. Override the version with HELM_VERSION (must exist on the
# proxy: `go list -m -versions helm.sh/helm/v3`).
set -euo pipefail

version=${HELM_VERSION:-v3.19.5}
cache=${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/helm-$version
out=$cache/helm
export PATH=/usr/local/go/bin:$PATH

if [ -x "$out" ] && "$out" version --template '{{.Version}}' 2>/dev/null | grep -qx "$version"; then
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { echo "build-helm.sh: Go is required (not in PATH or /usr/local/go/bin)" >&2; exit 1; }
mkdir -p "$cache"
work=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
echo "build-helm.sh: building helm $version from the Go module proxy (once per version)" >&2
# CGO off: a static binary that runs on any node image. The -X flags are what helm's own
# Makefile sets, so `helm version` reports the pinned release rather than "v3.x-dirty".
GOBIN=$work CGO_ENABLED=0 GOFLAGS=-mod=mod go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  "helm.sh/helm/v3/cmd/helm@$version" >&2
"$work/helm" version --template '{{.Version}}' | grep -qx "$version" || {
  echo "build-helm.sh: built helm does not report $version" >&2
  exit 1
}
mv -f "$work/helm" "$out"
echo "build-helm.sh: helm $version built in $(($(date +%s) - start)) s → $out" >&2
echo "$out"
