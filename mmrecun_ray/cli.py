"""Command line: ``python -m mmrecun_ray <command> --help``.

Every command that produces results writes ``metrics.json`` into ``--out``. Bad input
exits with code 2 and one line naming the file, column or id at fault. The console is
quiet: a live progress display per training/unlearning run and a summary line when it
ends; Ray's, Ray Data's and Ray Train's logs and the project's own go to
``<out>/logs/`` (``--verbose`` shows them; see :mod:`mmrecun_ray.console`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable, Sequence

from mmrecun_ray import console
from mmrecun_ray.cliargs import WORKERS_HELP, add_s3, add_scaling, choices, scaling, workers_value
from mmrecun_ray.config import parse_sets
from mmrecun_ray.errors import MMRecUNError

logger = logging.getLogger("mmrecun_ray")


def _configure_storage(args: argparse.Namespace) -> None:
    if any(getattr(args, a, None) for a in ("s3_endpoint", "s3_region", "s3_profile")):
        from mmrecun_ray.storage import uri as su
        su.configure(su.S3Settings(endpoint_url=args.s3_endpoint, region=args.s3_region,
                                   profile=args.s3_profile))


def one_line(exc: BaseException) -> str:
    """A failure as one line: our own errors as they are; others with their type, unwrapped
    from Ray's wrappers down to the root cause."""
    seen = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None) or e.__cause__
        if isinstance(inner, BaseException) and not isinstance(e, MMRecUNError):
            e = inner
            continue
        break
    e = e or exc
    text = (str(e).strip().splitlines() or [""])[0]
    return text if isinstance(e, MMRecUNError) else f"{type(e).__name__}: {text[:300]}"


# --- commands ----------------------------------------------------------------------------

def cmd_prepare(args: argparse.Namespace) -> int:
    if args.source == "mmrec":
        from mmrecun_ray.data.mmrec_import import prepare_mmrec
        m = prepare_mmrec(args.src, args.out, name=args.name, overwrite=args.overwrite)
    else:
        from mmrecun_ray.data.synthetic import prepare_synthetic
        m = prepare_synthetic(args.preset, args.seed, args.out, overwrite=args.overwrite)
    print(f"published {m.name}: {m.n_users} users, {m.n_items} items, "
          f"{m.counts} interactions, modalities {m.modalities} -> {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from mmrecun_ray.training.train import train
    res = train(args.data, args.model, args.out, scaling(args, args.out),
                sets={**parse_sets(args.set), **({"epochs": args.epochs} if args.epochs else {})},
                overwrite=args.overwrite, twin=args.twin)
    t = res.metrics["metrics"]["test"]
    tw = res.metrics.get("twin")
    twin = (f", twin (seed {tw['seed']}) test recall@20 {tw['metrics']['test']['recall@20']:.4f}"
            if tw else "")
    print(f"{args.model}: test recall@20 {t['recall@20']:.4f} ndcg@20 {t['ndcg@20']:.4f}{twin} "
          f"in {res.metrics['wall_seconds']:.1f}s ({res.metrics['epochs_run']} epochs) -> {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from mmrecun_ray.data.dataset import load_dataset
    from mmrecun_ray.evaluation.evaluate import evaluate_model
    from mmrecun_ray.training.export import load_model
    from mmrecun_ray.training.train import write_metrics
    t0 = time.perf_counter()
    ds = load_dataset(args.data)
    model, info = load_model(args.model_uri, ds)
    banned = np.asarray(info.banned_items, dtype=np.int64) if info.banned_items else None
    metrics = evaluate_model(model, ds, banned_items=banned)
    write_metrics(args.out, {"command": "evaluate", "model": info.model, "model_uri": args.model_uri,
                             "data": args.data, "wall_seconds": time.perf_counter() - t0,
                             "metrics": metrics})
    t = metrics["test"]
    print(f"{info.model}: test recall@20 {t['recall@20']:.4f} ndcg@20 {t['ndcg@20']:.4f} -> {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mmrecun_ray.demo import run_demo
    return run_demo(args.out, workers=args.workers)


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        import importlib
        return getattr(importlib.import_module(module), func)(args)
    return run


EXTRA_COMMANDS: list[str] = [
    # modules providing add_parsers(subparsers, add_scaling, add_s3)
    "mmrecun_ray.unlearning.cli",
    "mmrecun_ray.unlearning.inbox_cli",
    "mmrecun_ray.tuning.cli",
    "mmrecun_ray.storage.cli",
]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mmrecun_ray",
        description="Train multi-modal recommenders on Ray and make them forget (MMRecUN).")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show Ray's, Ray Data's and Ray Train's logs (every worker's output) and "
                        "the project's info and debug records on the console; default: a quiet "
                        "console (progress display, summary lines, warnings) with those logs in "
                        "<out>/logs/ (mmrecun.log, ray.log, ray-session -> the Ray session's logs)")
    p.add_argument("--debug", action="store_true",
                   help="on failure, show the full traceback (default: one line and exit code 2)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pp = sub.add_parser("prepare", help="publish a dataset version (Parquet + manifest)")
    psub = pp.add_subparsers(dest="source", required=True, metavar="SOURCE")
    pm = psub.add_parser("mmrec", help="import the MMRec layout (NAME.inter + *_feat.npy)")
    pm.add_argument("--src", required=True, help="folder with NAME.inter and *_feat.npy files")
    pm.add_argument("--out", required=True, help="dataset URI to publish (folder or s3:// prefix)")
    pm.add_argument("--name", default=None, help="dataset name (default: the .inter file's stem)")
    pm.add_argument("--overwrite", action="store_true",
                    help="replace a version already at --out (its forget ledger is kept)")
    add_s3(pm)
    pm.set_defaults(func=cmd_prepare)
    ps = psub.add_parser("synthetic", help="generate a dataset with planted structure")
    ps.add_argument("--preset", default="tiny", help="tiny | baby | sports | clothing (default: tiny)")
    ps.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    ps.add_argument("--out", required=True, help="dataset URI to publish (folder or s3:// prefix)")
    ps.add_argument("--overwrite", action="store_true",
                    help="replace a version already at --out (its forget ledger is kept)")
    add_s3(ps)
    ps.set_defaults(func=cmd_prepare)

    pt = sub.add_parser("train", help="train a recommender with Ray Train (DDP)")
    pt.add_argument("--data", required=True, help="dataset URI (folder or s3:// prefix)")
    pt.add_argument("--model", required=True, help="model name: mf | vbpr | lightgcn | freedom | mgcn")
    pt.add_argument("--out", required=True, help="output URI: model/ and metrics.json go here")
    pt.add_argument("--epochs", type=int, default=None, help="epoch cap (early stopping on "
                    "validation recall@20 after `patience` evaluations without improvement ends the "
                    "run first; default: the model's cap, 1000, with its learning rate, L2 weight and "
                    "patience from mmrecun_ray/training/defaults.py)")
    pt.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="loop setting (batch_size, learning_rate, seed, eval_every, max_steps, ...), "
                         "objective setting (reg_weight, patience) or model parameter "
                         "(embedding_dim, n_layers, knn_k, ...), coerced to its type; unknown keys "
                         "are refused; repeatable")
    pt.add_argument("--overwrite", action="store_true",
                    help="replace a model already published at --out (default: refuse)")
    pt.add_argument("--twin", action="store_true",
                    help="also train a standby twin: the same recipe from seed + 1000 (away from the "
                         "Gold band's seeds), stored in the model folder (twin.pt); `unlearn --method "
                         "hir-twin` corrects both and serves the twin, so the change an attacker sees "
                         "is a seed-to-seed one, as after a retrain. Twice the training time")
    add_scaling(pt)
    add_s3(pt)
    pt.set_defaults(func=cmd_train)

    pe = sub.add_parser("evaluate", help="full-ranking evaluation of an exported model")
    pe.add_argument("--model-uri", required=True, help="exported model folder (…/model)")
    pe.add_argument("--data", required=True, help="dataset URI to evaluate on")
    pe.add_argument("--out", required=True, help="output URI for metrics.json")
    add_s3(pe)
    pe.set_defaults(func=cmd_evaluate)

    pd = sub.add_parser("demo", help="run the main job on an embedded default (synthetic data, "
                                     "local folder, local Ray) and print a summary")
    pd.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    pd.add_argument("--workers", type=workers_value, default="auto", metavar="N|auto", help=WORKERS_HELP)
    pd.set_defaults(func=cmd_demo)

    import importlib
    for module in EXTRA_COMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:
                raise
            continue
        mod.add_parsers(sub, add_scaling, add_s3)
    return p


#: commands whose --out is not a folder of results (a dataset version): logs stay aside
_NO_LOG_OUT = {"prepare"}


def record_choices(out: str | None) -> None:
    """Add the ``--workers auto`` choice to the command's ``<out>/metrics.json``
    (``workers_auto``), when both exist."""
    made = choices()
    if not made or not out:
        return
    from mmrecun_ray.storage import exists, join, read_json, write_json_atomic
    uri = join(out, "metrics.json")
    if exists(uri):
        payload = read_json(uri)
        if isinstance(payload, dict):
            payload["workers_auto"] = made[-1] if len(made) == 1 else made
            write_json_atomic(uri, payload)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    console.configure(verbose=args.verbose)
    out = None if args.command in _NO_LOG_OUT else getattr(args, "out", None)
    rc = 2
    try:
        _configure_storage(args)
        rc = int(args.func(args) or 0)
        record_choices(out)
        console.finish(out)
        return rc
    except KeyboardInterrupt:
        where = console.finish(None)  # a failed command leaves --out as it found it
        print(f"interrupted (logs: {where})" if where else "interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure is one line and exit 2
        where = console.finish(None)
        if args.debug:
            raise
        logger.debug("failure", exc_info=True)
        print(f"error: {one_line(e)}" + (f" (logs: {where})" if where else ""), file=sys.stderr)
        return 2

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
