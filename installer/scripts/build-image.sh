#!/usr/bin/env bash
# Builds the installer image as an OCI archive without a container engine:
#   installer/scripts/build-image.sh [--out FILE] [--name REF] [--cloud-hypervisor FILE]
# Needs a built tree (scripts/dev.sh setup). Import it with: ctr -n k8s.io images import FILE
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
exec node "$repo/installer/dist/src/bin/build-image.js" "$@"
