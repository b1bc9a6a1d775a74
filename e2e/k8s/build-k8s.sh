#!/usr/bin/env bash
# Builds the pinned Kubernetes node and control-plane binaries and etcd from the Go module proxy
# (no web downloads), for the Kubernetes test level (e2e/k8s/cluster.sh). Cached by version:
#   ${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/k8s-<version>/{kube-apiserver,...,kubectl}
#   ${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}/etcd-<version>/etcd
# Prints the two directories on stdout (k8s first); progress goes to stderr. A second run only
# checks the cached binaries. Override with K8S_VERSION (v1.x.y) and ETCD_VERSION (v3.x.y).
# `--check`: print the directories when both are cached, else exit 3 without building.
#
# k8s.io/kubernetes cannot be built with `go install pkg@version`: its go.mod replaces its
# staging modules (k8s.io/api, client-go, ...) with ./staging/src/... directories that the module
# proxy does not ship. A small wrapper module requires k8s.io/kubernetes and replaces every one of
# those staging modules with its published v0.<minor>.<patch> twin. etcd's server module has
# local replaces too, so it gets the same wrapper (its dependencies are published at its version).
set -euo pipefail

k8s_version=${K8S_VERSION:-v1.34.4}
etcd_version=${ETCD_VERSION:-v3.6.17}
root=${CLOUDHV_BUILD_CACHE:-/var/cache/cloudhv-build}
k8s_dir=$root/k8s-$k8s_version
etcd_dir=$root/etcd-$etcd_version
components=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
export PATH=/usr/local/go/bin:$PATH

say() { echo "build-k8s.sh: $*" >&2; }

k8s_cached() {
  local c
  for c in "${components[@]}"; do
    [ -x "$k8s_dir/$c" ] || return 1
  done
  # Output captured first: `cmd | grep -q` under pipefail fails whenever grep's early exit
  # makes the writer die of SIGPIPE, which made a cached build look missing now and then.
  local out
  out=$("$k8s_dir/kubectl" version --client -o json 2>/dev/null) || return 1
  grep -q "\"gitVersion\": \"$k8s_version\"" <<<"$out"
}

etcd_cached() {
  [ -x "$etcd_dir/etcd" ] || return 1
  local out
  out=$("$etcd_dir/etcd" --version 2>/dev/null) || return 1
  grep -q "etcd Version: ${etcd_version#v}$" <<<"$out"
}

if k8s_cached && etcd_cached; then
  echo "$k8s_dir"
  echo "$etcd_dir"
  exit 0
fi
if [ "${1:-}" = --check ]; then
  say "Kubernetes $k8s_version or etcd $etcd_version is not built yet (run e2e/k8s/build-k8s.sh)"
  exit 3
fi

command -v go >/dev/null || { say "Go is required (not in PATH or /usr/local/go/bin)"; exit 1; }
work=$(mktemp -d "$root/.build-k8s-XXXXXX")
trap 'rm -rf "$work"' EXIT

if ! k8s_cached; then
  start=$(date +%s)
  say "building Kubernetes $k8s_version (${components[*]}) from the Go module proxy (once per version, ~6 min on 2 idle cores)"
  gomod=$(go mod download -json "k8s.io/kubernetes@$k8s_version" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
  [ -f "$gomod" ] || { say "could not download k8s.io/kubernetes $k8s_version from the module proxy"; exit 1; }
  minor_patch=${k8s_version#v1.}
  mkdir -p "$work/k8s"
  {
    echo "module cloudhv.local/k8s-build"
    echo
    echo "go 1.24"
    echo
    echo "require k8s.io/kubernetes $k8s_version"
    echo
    echo "replace ("
    # Every `k8s.io/x => ./staging/src/k8s.io/x` line of Kubernetes' go.mod, re-pointed at the
    # published module of the same release.
    sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9-]*\) => \./staging/src/k8s\.io/[a-z0-9-]*$#\t\1 => \1 v0.'"$minor_patch"'#p' "$gomod"
    echo ")"
  } >"$work/k8s/go.mod"
  n=$(grep -c '=> k8s.io/' "$work/k8s/go.mod")
  ((n > 20)) || { say "found only $n staging modules in Kubernetes' go.mod: its layout changed"; exit 1; }
  say "wrapper module replaces $n staging modules with v0.$minor_patch"
  pkg=k8s.io/component-base/version
  cpkg=k8s.io/client-go/pkg/version
  major_minor=${k8s_version#v}
  major=${major_minor%%.*}
  minor=${major_minor#*.}
  minor=${minor%%.*}
  ldflags="-s -w"
  for p in "$pkg" "$cpkg"; do
    ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=$major -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    ldflags+=" -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  pkgs=()
  for c in "${components[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  say "resolving modules (go mod tidy)…"
  printf 'package main\n\nimport (\n' >"$work/k8s/tools.go"
  # Importing the commands' main packages is not allowed; their app packages pull in the same graph.
  cat >>"$work/k8s/tools.go" <<'GO'
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
	_ "k8s.io/kubectl/pkg/cmd"
)

func main() {}
GO
  (cd "$work/k8s" && go mod tidy >&2)
  say "compiling (go build -trimpath, CGO off; progress: one line per finished binary)"
  for c in "${components[@]}"; do
    t=$(date +%s)
    (cd "$work/k8s" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$work/$c" "k8s.io/kubernetes/cmd/$c") >&2
    say "  $c built ($(($(date +%s) - t)) s)"
  done
  mkdir -p "$k8s_dir"
  for c in "${components[@]}"; do mv -f "$work/$c" "$k8s_dir/$c"; done
  k8s_cached || { say "built kubectl does not report $k8s_version: $("$k8s_dir/kubectl" version --client 2>&1)"; exit 1; }
  say "Kubernetes $k8s_version built in $(($(date +%s) - start)) s → $k8s_dir"
fi

if ! etcd_cached; then
  start=$(date +%s)
  say "building etcd $etcd_version from the Go module proxy (once per version, a few minutes)"
  mkdir -p "$work/etcd"
  cat >"$work/etcd/go.mod" <<GO
module cloudhv.local/etcd-build

go 1.24

require go.etcd.io/etcd/server/v3 $etcd_version
GO
  cat >"$work/etcd/tools.go" <<'GO'
package main

import _ "go.etcd.io/etcd/server/v3/etcdmain"

func main() {}
GO
  (cd "$work/etcd" && go mod tidy >&2 &&
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$work/etcd-bin" go.etcd.io/etcd/server/v3) >&2
  mkdir -p "$etcd_dir"
  mv -f "$work/etcd-bin" "$etcd_dir/etcd"
  etcd_cached || { say "built etcd does not report $etcd_version: $("$etcd_dir/etcd" --version 2>&1)"; exit 1; }
  say "etcd $etcd_version built in $(($(date +%s) - start)) s → $etcd_dir"
fi

echo "$k8s_dir"
echo "$etcd_dir"
