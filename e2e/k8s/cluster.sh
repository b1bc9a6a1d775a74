#!/usr/bin/env bash
# The Kubernetes e2e's single-node cluster by hand (the test starts its own; see
# docs/development.md):
#   e2e/k8s/cluster.sh up     build (cached) and start it; prints `export KUBECONFIG=…`, stays in
#                             the foreground, Ctrl-C tears it all down
#   e2e/k8s/cluster.sh down   tear down a cluster left behind
# Needs root, a built tree (scripts/dev.sh setup), containerd and s6 (apt).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
case "${1:-}" in
  up) "$repo/e2e/k8s/build-k8s.sh" >/dev/null ;;
  down) ;;
  *) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
exec node "$repo/e2e/dist/src/bin/k8s-cluster.js" "$1"
