#!/usr/bin/env bash
# Ray job entrypoint: process the deletion-request inbox as one batch (run it on a schedule).
#
#   python -m mmrecun_ray process --inbox INBOX_URI --data DATA_URI --out OUT_URI
#          [--model-uri MODEL_URI] [--method METHOD] [--policy POLICY_URI]
#          [--workers WORKERS] [--gpus] [ARGS...]
#
# Every request file in ${INBOX_URI}/pending/ is accepted into the dataset's ledger, the
# batch is unlearned from the model ${OUT_URI}/CURRENT names, audited, and published (the
# pointer moves) only if the policy passes; the files move to done/ or failed/ with a
# <name>.result.json. A run killed half-way is finished by the next one.
#
# Environment:
#   INBOX_URI  (required) inbox prefix, e.g. s3://mmrecun/inbox/lfm2k
#   DATA_URI   (required) dataset the models serve
#   OUT_URI    (required) where CURRENT, batches/<id>/ and the models go
#   MODEL_URI  the model to start from before the first publish (afterwards CURRENT names it)
#   METHOD     unlearning method (default: the CLI's)
#   POLICY_URI policy JSON (local or s3://; default: the CLI's defaults)
#   WORKERS, GPUS, PYTHON: see jobs/_common.sh
# Arguments after the script name are passed to the CLI, e.g. --gold scheduled
#
# Example:
#   INBOX_URI=s3://mmrecun/inbox/lfm2k DATA_URI=s3://mmrecun/datasets/lfm2k \
#     OUT_URI=s3://mmrecun/serving/lfm2k MODEL_URI=s3://mmrecun/runs/lfm2k-freedom/model \
#     bash jobs/process.sh --policy s3://mmrecun/policies/default.json
source "$(dirname "${BASH_SOURCE[0]}")/_common.sh"

require INBOX_URI "inbox prefix, e.g. s3://mmrecun/inbox/lfm2k"
require DATA_URI "dataset URI the models serve"
require OUT_URI "output URI, e.g. s3://mmrecun/serving/lfm2k"

args=(process --inbox "${INBOX_URI}" --data "${DATA_URI}" --out "${OUT_URI}")
if [[ -n "${MODEL_URI:-}" ]]; then
  args+=(--model-uri "${MODEL_URI}")
fi
if [[ -n "${METHOD:-}" ]]; then
  args+=(--method "${METHOD}")
fi
if [[ -n "${POLICY_URI:-}" ]]; then
  args+=(--policy "${POLICY_URI}")
fi
mapfile -t scaling < <(scaling_args)
args+=("${scaling[@]}")
run_cli "${args[@]}" "$@"
