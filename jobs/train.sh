#!/usr/bin/env bash
# Ray job entrypoint: train a recommender with Ray Train (DDP).
#
#   python -m mmrecun_ray train --data DATA_URI --model MODEL --out OUT_URI
#          [--workers WORKERS] [--gpus] [--epochs EPOCHS] [ARGS...]
#
# Environment:
#   DATA_URI  (required) dataset published by `prepare` (folder or s3://bucket/prefix)
#   OUT_URI   (required) output URI; model/ and metrics.json are written there.
#             On a multi-node cluster use s3://: every node must reach it.
#   MODEL     mf | vbpr | lightgcn | freedom | mgcn (default: freedom)
#   EPOCHS    maximum epochs (default: the CLI's)
#   WORKERS, GPUS, PYTHON: see jobs/_common.sh
# Arguments after the script name are passed to the CLI, e.g. --set learning_rate=0.001
#
# Example (see jobs/README.md for the `ray job submit` form):
#   DATA_URI=s3://mmrecun/datasets/lfm2k OUT_URI=s3://mmrecun/runs/lfm2k-freedom \
#     GPUS=1 WORKERS=2 bash jobs/train.sh --set learning_rate=0.001
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

require DATA_URI "dataset URI, e.g. s3://mmrecun/datasets/lfm2k"
require OUT_URI "output URI, e.g. s3://mmrecun/runs/lfm2k-freedom"

args=(train --data "${DATA_URI}" --model "${MODEL:-freedom}" --out "${OUT_URI}")
mapfile -t scaling < <(scaling_args)
args+=("${scaling[@]}")
if [[ -n "${EPOCHS:-}" ]]; then
  args+=(--epochs "${EPOCHS}")
fi
run_cli "${args[@]}" "$@"
