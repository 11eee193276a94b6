#!/usr/bin/env bash
# Ray job entrypoint: Ray Tune sweep of the MMRecUN unlearning weights for one request.
#
#   python -m mmrecun_ray tune --model-uri MODEL_URI --data DATA_URI --request REQUEST
#          --samples SAMPLES --out OUT_URI [--workers WORKERS] [--gpus] [ARGS...]
#
# Environment:
#   MODEL_URI (required) trained model folder written by `train` (<train OUT_URI>/model)
#   DATA_URI  (required) dataset the model was trained on
#   REQUEST   (required) what to forget (see jobs/unlearn.sh), e.g. users:5%
#   OUT_URI   (required) output URI; metrics.json (trials, best config) lands there
#   SAMPLES   number of Tune trials (default: 8)
#   WORKERS, GPUS, PYTHON: see jobs/_common.sh
# Arguments after the script name are passed to the CLI.
#
# Example:
#   MODEL_URI=s3://mmrecun/runs/lfm2k-freedom/model DATA_URI=s3://mmrecun/datasets/lfm2k \
#     REQUEST='users:5%' SAMPLES=16 OUT_URI=s3://mmrecun/runs/lfm2k-tune-users5 bash jobs/tune.sh
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

require MODEL_URI "trained model folder, e.g. s3://mmrecun/runs/lfm2k-freedom/model"
require DATA_URI "dataset URI the model was trained on"
require REQUEST "forget request, e.g. users:5%"
require OUT_URI "output URI, e.g. s3://mmrecun/runs/lfm2k-tune-users5"

args=(tune --model-uri "${MODEL_URI}" --data "${DATA_URI}" --request "${REQUEST}"
  --samples "${SAMPLES:-8}" --out "${OUT_URI}")
mapfile -t scaling < <(scaling_args)
args+=("${scaling[@]}")
run_cli "${args[@]}" "$@"
