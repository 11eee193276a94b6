"""Argument helpers every sub-command shares (a leaf: the command modules import it, it
imports none of them): Ray Train scaling flags, S3 flags, ``--set``/``--config`` reading."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from mmrecun_ray.config import parse_sets
from mmrecun_ray.errors import ConfigError


def add_scaling(p: argparse.ArgumentParser) -> None:
    """``--workers``, ``--gpus``, ``--cpus-per-worker``, ``--max-failures``, ``--storage``."""
    g = p.add_argument_group("scaling (Ray Train)")
    g.add_argument("--workers", type=int, default=2,
                   help="Ray Train workers (DDP ranks). 0 = local mode: the loop runs in this "
                        "process, no worker actors (default: 2)")
    g.add_argument("--gpus", action="store_true",
                   help="one GPU per worker, NCCL backend (default: CPU workers with gloo)")
    g.add_argument("--cpus-per-worker", type=float, default=0.5,
                   help="CPU reservation per worker; fractions leave CPU for Ray Data and Tune "
                        "drivers on small machines (default: 0.5)")
    g.add_argument("--max-failures", type=int, default=1,
                   help="restart a failed worker group this many times, resuming from the "
                        "last checkpoint (default: 1)")
    g.add_argument("--storage", default=None,
                   help="where Ray Train keeps run checkpoints: local folder or s3:// prefix "
                        "(default: <out>/ray)")


def add_s3(p: argparse.ArgumentParser) -> None:
    """``--s3-endpoint``, ``--s3-region``, ``--s3-profile``."""
    g = p.add_argument_group("object storage (else AWS_* environment variables)")
    g.add_argument("--s3-endpoint", default=None, help="S3 endpoint URL, e.g. http://127.0.0.1:8333 "
                   "(else AWS_ENDPOINT_URL)")
    g.add_argument("--s3-region", default=None, help="S3 region (else AWS_REGION)")
    g.add_argument("--s3-profile", default=None, help="AWS profile for credentials (else AWS_PROFILE)")


def scaling(args: argparse.Namespace, out: str) -> Any:
    """The :class:`~mmrecun_ray.training.runner.Scaling` the flags ask for."""
    from mmrecun_ray.storage import join
    from mmrecun_ray.training.runner import Scaling
    if args.workers < 0:
        raise ConfigError(f"--workers {args.workers}: expected 0 (local mode) or more")
    if args.cpus_per_worker <= 0:
        raise ConfigError(f"--cpus-per-worker {args.cpus_per_worker}: expected a positive number")
    if args.max_failures < 0:
        raise ConfigError(f"--max-failures {args.max_failures}: expected 0 or more")
    return Scaling(workers=args.workers, gpus=args.gpus, cpus_per_worker=args.cpus_per_worker,
                   max_failures=args.max_failures, storage_uri=args.storage or join(out, "ray"))


def read_config(path: str | None) -> dict[str, Any]:
    """A ``--config`` JSON file: ``{"method": ..., "settings": {...}}`` (what ``tune``
    writes) or a plain settings object. Returns ``{"method": str | None, "settings": dict}``.

    Raises:
        ConfigError: missing file, invalid JSON, or not an object (naming the file).
    """
    if not path:
        return {"method": None, "settings": {}}
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"--config {path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"--config {path}: expected a JSON object, got {type(d).__name__}")
    settings = d.get("settings", d if "method" not in d else {})
    if not isinstance(settings, dict):
        raise ConfigError(f"--config {path}: 'settings' must be an object")
    method = d.get("method")
    if method is not None and not isinstance(method, str):
        raise ConfigError(f"--config {path}: 'method' must be a string")
    return {"method": method, "settings": settings}


def settings_from_args(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    """``(method named by --config, settings)``: the ``--config`` file's settings with
    ``--set KEY=VALUE`` on top (values stay as given; the method coerces them)."""
    cfg = read_config(getattr(args, "config", None))
    return cfg["method"], {**cfg["settings"], **parse_sets(getattr(args, "set", None))}
