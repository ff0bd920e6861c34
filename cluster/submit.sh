#!/usr/bin/env bash
# bash cluster/submit.sh [train|sweep|select|eval|report] [CONFIG.yaml|SPACE.yaml] [KEY=VALUE ...]
# Submits a raylsl command (default: train) as a Ray job to $RAY_ADDRESS (default: a head on this
# machine, or a port-forward / SSH tunnel to one). Ships this checkout as the working directory.
#   bash cluster/submit.sh configs/sarcasm-smollm2.yaml workers=2
#   bash cluster/submit.sh sweep search_spaces/default.yaml --workers-per-trial 2
# train and sweep get the settings a CPU head with GPU workers and no shared disk needs, placed
# before your own KEY=VALUE (which win):
#   storage=$RAYLSL_STORAGE            default s3://YOUR-BUCKET/raylsl: set your bucket; every node
#                                      needs S3 credentials in its own environment (cluster/README.md)
#   gpus_per_worker=$RAYLSL_GPUS_PER_WORKER   default 1, also while the autoscaler's GPU nodes are down
# Set either to '' to leave it out (one machine, or a disk every node mounts).
# A head with token auth (cluster/README.md): export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=... first.
set -euo pipefail
cd "$(dirname "$0")/.."
command=train
case "${1:-}" in train|sweep|select|eval|report) command=$1; shift ;; esac
storage=${RAYLSL_STORAGE-s3://YOUR-BUCKET/raylsl}
gpus=${RAYLSL_GPUS_PER_WORKER-1}
first=() explicit=() resume=
for arg in "$@"; do case $arg in --resume|--resume=*) resume=1 ;; esac; done  # a resumed run keeps its settings
if [[ $command == train || $command == sweep ]] && [[ -z $resume ]]; then
  if [[ $storage == *YOUR-BUCKET* ]]; then
    echo "submit.sh: set RAYLSL_STORAGE=s3://BUCKET/PREFIX (or RAYLSL_STORAGE='' with a disk every node sees)" >&2
    exit 2
  fi
  if [[ -n $gpus ]]; then explicit+=("gpus_per_worker=$gpus"); fi
  if [[ -n $storage ]]; then explicit+=("storage=$storage"); fi
  if [[ $# -gt 0 && $1 != *=* && $1 != -* ]]; then first=("$1"); shift; fi  # CONFIG.yaml / SPACE.yaml stays first
fi
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir . \
  --runtime-env cluster/runtime_env.yaml -- python -m raylsl "$command" \
  ${first[@]+"${first[@]}"} ${explicit[@]+"${explicit[@]}"} "$@"
