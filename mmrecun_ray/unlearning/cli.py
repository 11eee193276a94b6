"""``unlearn`` and ``compare`` sub-commands."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from mmrecun_ray.cliargs import scaling, settings_from_args
from mmrecun_ray.errors import ConfigError
from mmrecun_ray.unlearning.methods import COMPARE_DEFAULT, DEFAULT_METHOD, METHODS


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-uri", required=True, help="trained model folder (…/model) to unlearn from")
    p.add_argument("--data", required=True, help="dataset URI the model was trained on (or a "
                   "descendant version); the request is recorded in its lineage root's ledger")
    p.add_argument("--request", required=True,
                   help="what to forget: users=1,2 | items=5 | interactions=u:i,.. | modality:NAME[=ids] "
                        "| users:5%% | items:2%% | interactions:10%% (sampled; @SEED suffix) | a .json or "
                        ".parquet request file")
    p.add_argument("--out", required=True, help="output URI: retain_data/, model(s), metrics.json")
    p.add_argument("--seed", type=int, default=0, help="seed for sampled requests (default: 0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="a method setting, coerced to its type (true/false, numbers, null); unknown "
                        "keys are refused. hir: neg_per_user, kappa_min, kappa_max, kappa_points, damping "
                        "(global|row|sqrt), curvature_mix (null: set from held-out data on "
                        "interactions), mix_steps, splits, foldin_ridge, calibration_candidates, target, "
                        "tolerance_se, scan_patience, fixed_kappa, "
                        "cg_iters, cg_tol, seed; mmrecun/neggrad: alpha, beta, batch_size, forget_ratio, "
                        "lr_scale, learning_rate, max_steps, epochs, eval_steps, forget_target "
                        "(auto|number|null), seed; finetune: lr_scale, learning_rate, max_steps, "
                        "epochs, eval_steps, seed; redraw: refit_steps, refit_batch, refit_alpha, "
                        "refit_lr_scale, batch_size, seed; sisa: shards, seed (README: Unlearning "
                        "knobs)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace another job found in --out (its files are moved aside until the new "
                        "job is done); without it an occupied --out is refused, and a re-run of the "
                        "same job resumes it")
    p.add_argument("--config", default=None,
                   help="JSON file of method settings (e.g. best_config.json from `tune`, which also "
                        "names its method); --set values override it")


def _method_list(text: str) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"--methods {text!r}: a method is listed twice")
    return names


def _applicable(names: list[str], model_uri: str) -> list[str]:
    """``names`` without the methods whose :meth:`~mmrecun_ray.unlearning.methods.Method.check`
    refuses the model at ``model_uri`` (each left out is logged with the reason)."""
    import logging

    from mmrecun_ray.training.export import read_model_info
    info = read_model_info(model_uri)
    keep = []
    for n in names:
        try:
            METHODS[n]().check(info)
            keep.append(n)
        except ConfigError as e:
            logging.getLogger(__name__).warning("compare: %s left out of the default methods (%s)", n, e)
    return keep


def method_and_settings(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """``(method, settings)`` of a one-method command: ``--method``, else the one
    ``--config`` names, else :data:`DEFAULT_METHOD`; ``--set`` over ``--config``.

    Raises:
        ConfigError: ``--config`` holds another method's settings than ``--method``.
    """
    cfg_method, sets = settings_from_args(args)
    if args.method and cfg_method and args.method != cfg_method:
        raise ConfigError(f"--config {args.config} holds settings of method {cfg_method!r}, "
                          f"--method is {args.method!r}")
    return args.method or cfg_method or DEFAULT_METHOD, sets


def cmd_unlearn(args: argparse.Namespace) -> int:
    from mmrecun_ray.unlearning.service import run_methods
    method, sets = method_and_settings(args)
    p = run_methods(args.model_uri, args.data, args.request, [method], args.out,
                    scaling(args, args.out), sets, seed=args.seed, command="unlearn",
                    record=not args.no_record, overwrite=args.overwrite)
    v, before = p["audit"]["values"], p["original"]["audit"]["values"]
    nan = float("nan")
    extra = "".join(f", {label} {v[k]:.4f} (before {before.get(k, nan):.4f})"
                    for label, k in (("fold-in recall@20", "fold_in_recall@20"),
                                     ("item fold-in hit@20", "item_fold_in_hit@20"),
                                     ("probe R2", "probe_r2")) if k in v)
    print(f"{method}: forget recall@20 {v.get('forget_recall@20', nan):.4f} (before "
          f"{before.get('forget_recall@20', nan):.4f}), retain test recall@20 "
          f"{v['retain_recall@20']:.4f}, MIA AUC {v.get('mia_auc', nan):.3f}{extra}, "
          f"{p['wall_seconds']:.1f}s -> {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mmrecun_ray.unlearning.service import run_methods
    from mmrecun_ray.unlearning.summary import format_table
    _, sets = settings_from_args(args)
    names = _method_list(args.methods or COMPARE_DEFAULT)
    if args.methods is None:  # the default list: leave out what cannot take this model
        names = _applicable(names, args.model_uri)
    p = run_methods(args.model_uri, args.data, args.request, names, args.out,
                    scaling(args, args.out), sets, seed=args.seed, command="compare",
                    record=args.record, overwrite=args.overwrite, gold_seeds=args.gold_seeds)
    print(format_table(p))
    return 0


def add_parsers(sub: Any, add_scaling: Callable, add_s3: Callable) -> None:
    summaries = "; ".join(f"{n}: {c.summary}" for n, c in METHODS.items())
    pu = sub.add_parser("unlearn", help="make a trained model forget a request (one method)")
    _common(pu)
    pu.add_argument("--method", default=None, choices=list(METHODS),
                    help=f"unlearning method (default: {DEFAULT_METHOD}, or the one --config names). "
                         f"{summaries}")
    pu.add_argument("--no-record", action="store_true",
                    help="an experiment: do not accept the request (no ledger entry; later loads of "
                         "--data still show its pairs). Default: the request is accepted, recorded in "
                         "the ledger of the dataset's lineage root")
    add_scaling(pu)
    add_s3(pu)
    pu.set_defaults(func=cmd_unlearn)
    pc = sub.add_parser("compare", help="run several unlearning methods on one request; one table, one report")
    _common(pc)
    pc.add_argument("--methods", default=None,
                    help=f"comma-separated methods (default: {COMPARE_DEFAULT}, less those that "
                         f"cannot take the model, e.g. hir on mgcn). {summaries}")
    pc.add_argument("--gold-seeds", type=int, default=3,
                    help="Gold retrains with different seeds (the model's seed, +1, ...) that make "
                         "the band every method is judged against: mean +- max(2 sd, 2 s.e.) "
                         "(default: 3; side by side as Ray Tune trials when the cluster has the "
                         "CPUs, else one after the other)")
    pc.add_argument("--record", action="store_true",
                    help="accept the request (ledger entry) as `unlearn` does; default: a comparison "
                         "is an experiment and leaves the ledger alone")
    add_scaling(pc)
    add_s3(pc)
    pc.set_defaults(func=cmd_compare)
