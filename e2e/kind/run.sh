#!/usr/bin/env bash
# The Kubernetes e2e (e2e/test/k8s.test.ts, the same test `npm test` runs against the local
# cluster) against kind, on a bare-metal host with KVM and Docker:
#   e2e/kind/run.sh            create kind cluster "cloudhv-e2e" (or reuse it), run, delete it
#   KIND_CLUSTER=name KEEP=1 e2e/kind/run.sh   reuse/keep a cluster of your own
# Needs kind, docker, kubectl on the PATH (or KUBECTL=…), a built tree (scripts/dev.sh setup) and
# Go for helm (installer/scripts/build-helm.sh). kind's node image lacks the host tools the shim
# runs; they are installed on the node with apt (docs/operations.md, "What a node needs").
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
name=${KIND_CLUSTER:-cloudhv-e2e}
image=${KIND_NODE_IMAGE:-kindest/node:v1.34.0}
node=$name-control-plane

for tool in kind docker "${KUBECTL:-kubectl}"; do
  command -v "$tool" >/dev/null || { echo "kind/run.sh: $tool is required" >&2; exit 1; }
done
[ -c /dev/kvm ] || echo "kind/run.sh: no /dev/kvm on this host: the VMs run under QEMU TCG (slow)" >&2

created=0
if ! kind get clusters 2>/dev/null | grep -qx "$name"; then
  kind create cluster --name "$name" --image "$image" --wait 120s
  created=1
fi
cleanup() { if [ "$created" = 1 ] && [ "${KEEP:-0}" != 1 ]; then kind delete cluster --name "$name"; fi; }
trap cleanup EXIT

echo "kind/run.sh: installing the host tools on $node"
docker exec "$node" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends qemu-system-x86 erofs-utils e2fsprogs iproute2 util-linux' >/dev/null

npm run --silent build
# A KVM host: its VMs use KVM, the chart's default (no TCG opt-in).
CLOUDHV_QEMU_ACCEL=kvm CLOUDHV_K8S_KIND=$name node --test --test-reporter=spec e2e/dist/test/k8s.test.js
