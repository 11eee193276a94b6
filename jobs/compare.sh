#!/usr/bin/env bash
# Ray job entrypoint: run several unlearning methods on one request and compare them.
#
#   python -m mmrecun_ray compare --model-uri MODEL_URI --data DATA_URI --request REQUEST
#          [--methods METHODS] --out OUT_URI [--workers WORKERS] [--gpus] [ARGS...]
#
# Environment:
#   MODEL_URI (required) trained model folder written by `train` (<train OUT_URI>/model)
#   DATA_URI  (required) dataset the model was trained on
#   REQUEST   (required) what to forget (see jobs/unlearn.sh), e.g. users:5%
#   OUT_URI   (required) output URI; metrics.json (one row per method) lands there
#   METHODS   comma-separated (default: the CLI's: hir and every other method, with a Gold band)
#   WORKERS, GPUS, PYTHON: see jobs/_common.sh
# Arguments after the script name are passed to the CLI.
#
# Example:
#   MODEL_URI=s3://mmrecun/runs/lfm2k-freedom/model DATA_URI=s3://mmrecun/datasets/lfm2k \
#     REQUEST='users:5%' OUT_URI=s3://mmrecun/runs/lfm2k-compare-users5 bash jobs/compare.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

require MODEL_URI "trained model folder, e.g. s3://mmrecun/runs/lfm2k-freedom/model"
require DATA_URI "dataset URI the model was trained on"
require REQUEST "forget request, e.g. users:5%"
require OUT_URI "output URI, e.g. s3://mmrecun/runs/lfm2k-compare-users5"

args=(compare --model-uri "${MODEL_URI}" --data "${DATA_URI}" --request "${REQUEST}"
  --out "${OUT_URI}")
if [[ -n "${METHODS:-}" ]]; then
  args+=(--methods "${METHODS}")
fi
mapfile -t scaling < <(scaling_args)
args+=("${scaling[@]}")
run_cli "${args[@]}" "$@"
