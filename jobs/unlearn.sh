#!/usr/bin/env bash
# Ray job entrypoint: make a trained model forget one request with one method.
#
#   python -m mmrecun_ray unlearn --model-uri MODEL_URI --data DATA_URI --request REQUEST
#          [--method METHOD] --out OUT_URI [--workers WORKERS] [--gpus] [--set alpha=ALPHA] [ARGS...]
#
# Environment:
#   MODEL_URI (required) trained model folder written by `train` (<train OUT_URI>/model)
#   DATA_URI  (required) dataset the model was trained on
#   REQUEST   (required) what to forget: users=3,7 | items=10 | interactions=3:10 |
#             modality:image | users:5% | items:2% | interactions:10% (@SEED suffix) |
#             a .json/.parquet request file
#   OUT_URI   (required) output URI; metrics.json and the unlearned model land there
#   METHOD    hir | mmrecun | redraw | gold | finetune | neggrad | sisa (default: the CLI's, hir)
#   ALPHA     MMRecUN/NegGrad forget weight, passed as --set alpha=ALPHA (default: the CLI's)
#   WORKERS, GPUS, PYTHON: see jobs/_common.sh
# Arguments after the script name are passed to the CLI, e.g. --set beta=0.5
#
# Example:
#   MODEL_URI=s3://mmrecun/runs/lfm2k-freedom/model DATA_URI=s3://mmrecun/datasets/lfm2k \
#     REQUEST='users:5%' OUT_URI=s3://mmrecun/runs/lfm2k-forget-users5 bash jobs/unlearn.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

require MODEL_URI "trained model folder, e.g. s3://mmrecun/runs/lfm2k-freedom/model"
require DATA_URI "dataset URI the model was trained on"
require REQUEST "forget request, e.g. users:5%"
require OUT_URI "output URI, e.g. s3://mmrecun/runs/lfm2k-forget-users5"

args=(unlearn --model-uri "${MODEL_URI}" --data "${DATA_URI}" --request "${REQUEST}"
  --out "${OUT_URI}")
if [[ -n "${METHOD:-}" ]]; then
  args+=(--method "${METHOD}")
fi
mapfile -t scaling < <(scaling_args)
args+=("${scaling[@]}")
if [[ -n "${ALPHA:-}" ]]; then
  args+=(--set "alpha=${ALPHA}")
fi
run_cli "${args[@]}" "$@"
