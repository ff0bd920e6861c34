#!/usr/bin/env bash
# bash cluster/submit.sh [train|sweep|select|eval|report] [CONFIG.yaml|SPACE.yaml] [KEY=VALUE ...]
# Submits a raylsl command (default: train) as a Ray job to $RAY_ADDRESS (default: a head on this
# machine, or a port-forward / SSH tunnel to one). Ships this checkout as the working directory.
#   bash cluster/submit.sh configs/sarcasm-smollm2.yaml workers=2
#   bash cluster/submit.sh sweep search_spaces/default.yaml --workers-per-trial 2
set -euo pipefail
cd "$(dirname "$0")/.."
command=train
case "${1:-}" in train|sweep|select|eval|report) command=$1; shift ;; esac
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir . \
  --runtime-env cluster/runtime_env.yaml -- python -m raylsl "$command" "$@"
