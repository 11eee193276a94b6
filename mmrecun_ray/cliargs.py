"""Argument helpers every sub-command shares (a leaf: the command modules import it, it
imports none of them): Ray Train scaling flags (``--workers auto`` resolved here), S3
flags, ``--set``/``--config`` reading."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from mmrecun_ray.config import parse_sets
from mmrecun_ray.errors import ConfigError

logger = logging.getLogger(__name__)

#: an unlearning method's run other than Gold's and SISA's, as ``--workers auto`` weighs
#: it: this many epochs over the training pairs (MMRecUN's, NegGrad's and fine-tuning's
#: budgets are a few passes; Gold and SISA retrain with the model's recipe)
UNLEARN_EPOCHS = 10
#: commands that cannot run in local mode (inside a Tune trial Ray disables the
#: ``ray.train`` calls the loop makes): ``auto`` picks at least this many workers
MIN_WORKERS = {"tune": 1}
#: the ``--workers auto`` choices made in this process (the CLI records them in metrics.json)
_CHOICES: list[dict[str, Any]] = []


def workers_value(text: str) -> int | str:
    """``--workers``: ``auto`` or a number >= 0 (argparse ``type``)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number of workers, got {text!r}") from None
    return n  # a negative count is refused by scaling(), as one line naming the flag


WORKERS_HELP = ("Ray Train workers (DDP ranks), or 'auto'. 0 = local mode: the loop runs in this "
                "process, no worker actors. auto (default): local mode unless DDP's estimated "
                "time is lower: the work (training pairs / batch size = steps per epoch, x "
                "epochs, x a measured per-step cost of the model that grows with the graph's "
                "edges) split over the workers' CPUs, plus ~10 s of worker-group start-up per "
                "run (an empty TorchTrainer.fit() here); on one machine local mode already uses "
                "every CPU, so auto picks DDP only when the cluster has more CPUs than this node "
                "(or with --gpus: one worker per GPU). The choice is printed and recorded in "
                "metrics.json")


def add_scaling(p: argparse.ArgumentParser) -> None:
    """``--workers``, ``--gpus``, ``--cpus-per-worker``, ``--max-failures``, ``--storage``."""
    g = p.add_argument_group("scaling (Ray Train)")
    g.add_argument("--workers", type=workers_value, default="auto", metavar="N|auto", help=WORKERS_HELP)
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
    """The :class:`~mmrecun_ray.training.runner.Scaling` the flags ask for, ``--workers
    auto`` resolved (:func:`resolve_auto`)."""
    from mmrecun_ray.storage import join
    from mmrecun_ray.training.runner import Scaling
    if args.workers != "auto" and int(args.workers) < 0:
        raise ConfigError(f"--workers {args.workers}: expected 0 (local mode) or more")
    if args.cpus_per_worker <= 0:
        raise ConfigError(f"--cpus-per-worker {args.cpus_per_worker}: expected a positive number")
    if args.max_failures < 0:
        raise ConfigError(f"--max-failures {args.max_failures}: expected 0 or more")
    workers, choice = (int(args.workers), None) if args.workers != "auto" else resolve_auto(
        work_of(args), args.cpus_per_worker, args.gpus, MIN_WORKERS.get(getattr(args, "command", ""), 0))
    return Scaling(workers=workers, gpus=args.gpus, cpus_per_worker=args.cpus_per_worker,
                   max_failures=args.max_failures, storage_uri=args.storage or join(out, "ray"),
                   choice=choice)


def resolve_auto(work: Any, cpus_per_worker: float = 0.5, gpus: bool = False,
                 min_workers: int = 0) -> tuple[int, dict[str, Any]]:
    """``--workers auto`` for ``work`` (a :class:`~mmrecun_ray.training.runner.Work`) on
    the current cluster: ``(workers, record)``; the choice is printed once and kept for
    :func:`choices`."""
    from mmrecun_ray import console
    from mmrecun_ray.training.runner import Cluster, choose_workers
    workers, record = choose_workers(work, Cluster.current(), cpus_per_worker, gpus, min_workers)
    _CHOICES.append(record)
    line = f"workers: auto -> {workers} ({record['reason']})"
    if console.configured():
        console.note(line)
    else:
        logger.info("%s", line)
    return workers, record


def choices() -> list[dict[str, Any]]:
    """The ``--workers auto`` records of this process, in order."""
    return list(_CHOICES)


def work_of(args: argparse.Namespace) -> Any:
    """The :class:`~mmrecun_ray.training.runner.Work` a command's flags ask for: the
    dataset's training pairs (its manifest), the recipe's epochs and batch size (``train``:
    ``--model``, ``--epochs``, ``--set``; the others: the trained model's ``model.json``),
    and the runs: ``compare`` one per training method plus ``--gold-seeds`` Golds, ``tune``
    one per trial plus the default run; an unlearning method's run counts
    :data:`UNLEARN_EPOCHS` epochs, Gold's and SISA's the recipe's."""
    from mmrecun_ray.data.dataset import read_manifest
    from mmrecun_ray.training.runner import Work
    pairs = int(read_manifest(args.data).counts.get("train", 0))
    if getattr(args, "model_uri", None):
        from mmrecun_ray.training.export import read_model_info
        from mmrecun_ray.training.train import recipe_of
        info = read_model_info(args.model_uri)
        cfg, _ = recipe_of(info)
        model = info.model
    else:
        from mmrecun_ray.training.train import recipe
        sets = {**parse_sets(getattr(args, "set", None)),
                **({"epochs": args.epochs} if getattr(args, "epochs", None) else {})}
        cfg, _ = recipe(args.model, sets)
        model = args.model
    command = getattr(args, "command", "train")
    if command == "train":
        epochs, runs = cfg.epochs, 1
    else:
        if command == "compare":
            from mmrecun_ray.unlearning.methods import COMPARE_DEFAULT
            methods = [m.strip() for m in (args.methods or COMPARE_DEFAULT).split(",") if m.strip()]
            golds = int(args.gold_seeds)
        elif command == "tune":
            methods, golds = ["mmrecun"] * (int(args.samples) + 1), 0
        else:
            from mmrecun_ray.unlearning.methods import DEFAULT_METHOD
            methods, golds = [getattr(args, "method", None) or DEFAULT_METHOD], 0
        # reference rows and hir train nothing; compare's "gold" is its band (counted in golds)
        skip = ("original", "retain-graph", "hir") + (("gold",) if command == "compare" else ())
        trained = [m for m in methods if m not in skip]
        retrain = [m for m in trained if m in ("gold", "sisa")]
        runs = max(1, golds + len(trained))
        epochs = (golds + len(retrain)) * cfg.epochs + (len(trained) - len(retrain)) * UNLEARN_EPOCHS
    return Work(model=model, pairs=pairs, epochs=max(1, epochs), batch_size=cfg.batch_size, runs=runs)


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
