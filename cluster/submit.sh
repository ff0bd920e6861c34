#!/usr/bin/env bash
# bash cluster/submit.sh [CONFIG.yaml] [KEY=VALUE ...]
# Submits `raylsl train` as a Ray job to $RAY_ADDRESS (default: a head on this machine, or a
# port-forward / SSH tunnel to one). Ships this checkout as the working directory.
set -euo pipefail
cd "$(dirname "$0")/.."
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir . \
  --runtime-env cluster/runtime_env.yaml -- python -m raylsl train "$@"
