# shellcheck shell=bash
# Shared helpers for jobs/*.sh. Sourced by the entrypoints, never run on its own.
#
# Every entrypoint turns environment variables into flags of `python -m mmrecun_ray ...`
# and appends its own command-line arguments unchanged, so `bash jobs/X.sh --set k=v`
# reaches the CLI (argparse keeps the last value of a repeated flag: arguments win over
# the environment).
#
# Common environment:
#   PYTHON    interpreter to run (default: python)
#   WORKERS   Ray Train workers, passed as --workers when set (default: the CLI's)
#   GPUS      1/true: pass --gpus (one GPU per Ray Train worker)
#
# Inside `ray job submit` (or a KubeRay RayJob) Ray sets RAY_ADDRESS for the entrypoint,
# and the CLI joins that cluster instead of starting a local one.

set -euo pipefail

JOBS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${JOBS_DIR}/.." && pwd)"
# The package is importable from wherever the script is started (a Ray job's working
# directory, /code in the KubeRay pods, or a local checkout).
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python}"

# require NAME DESCRIPTION: exit 2 with a message naming NAME when it is unset or empty.
require() {
  local name="$1" what="$2"
  if [[ -z "${!name:-}" ]]; then
    echo "error: environment variable ${name} is not set (${what})" >&2
    exit 2
  fi
}

# is_true VALUE: succeed for 1/true/yes/on (any case).
is_true() {
  case "${1,,}" in
    1 | true | yes | on) return 0 ;;
    *) return 1 ;;
  esac
}

# scaling_args: print nothing or "--workers N" / "--gpus" lines from WORKERS and GPUS.
# Use as: mapfile -t extra < <(scaling_args)
scaling_args() {
  if [[ -n "${WORKERS:-}" ]]; then
    printf '%s\n' --workers "${WORKERS}"
  fi
  if is_true "${GPUS:-0}"; then
    printf '%s\n' --gpus
  fi
}

# run_cli SUBCOMMAND [ARGS...]: log the command line (URIs and settings only, never
# credentials: those stay in AWS_* variables) and replace this shell with the CLI.
run_cli() {
  echo "+ ${PYTHON} -m mmrecun_ray $*" >&2
  exec "${PYTHON}" -m mmrecun_ray "$@"
}
