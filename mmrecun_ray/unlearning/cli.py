"""``unlearn`` and ``compare`` sub-commands."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from mmrecun_ray.unlearning.methods import METHODS


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-uri", required=True, help="trained model folder (…/model) to unlearn from")
    p.add_argument("--data", required=True, help="dataset URI the model was trained on; the request "
                   "is recorded in its ledger")
    p.add_argument("--request", required=True,
                   help="what to forget: users=1,2 | items=5 | interactions=u:i,.. | modality:NAME[=ids] "
                        "| users:5%% | items:2%% | interactions:10%% (sampled; @SEED suffix) | a .json or "
                        ".parquet request file")
    p.add_argument("--out", required=True, help="output URI: retain_data/, model(s), metrics.json")
    p.add_argument("--seed", type=int, default=0, help="seed for sampled requests (default: 0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="unlearning setting: alpha, beta, epochs, max_steps, forget_ratio, batch_size, "
                        "learning_rate, lr_scale, eval_steps, reset_exclusive (true|false), "
                        "reverse_reference (matched|sampled), matched_tolerance, forget_target "
                        "(auto|float|null; sampled), stop_on_auc, reverse_side (auto|both|user|item), "
                        "min_valid_ratio, sisa_shards, seed (see README, Unlearning knobs)")
    p.add_argument("--config", default=None,
                   help="JSON file of unlearning settings (e.g. the best config saved by `tune`); "
                        "--set values override it")


def _settings(args: argparse.Namespace):
    import json
    from pathlib import Path

    from mmrecun_ray.cli import parse_sets
    from mmrecun_ray.unlearning.methods import UnlearnSettings
    base: dict[str, Any] = {}
    if args.config:
        d = json.loads(Path(args.config).read_text())
        base = d.get("settings", d)
    return UnlearnSettings.from_sets({**base, **parse_sets(args.set)})


def cmd_unlearn(args: argparse.Namespace) -> int:
    from mmrecun_ray.cli import _scaling
    from mmrecun_ray.unlearning.service import run_methods
    p = run_methods(args.model_uri, args.data, args.request, [args.method], args.out,
                    _scaling(args, args.out), _settings(args), seed=args.seed, command="unlearn")
    m = p["metrics"]
    f = m.get("forget", {}).get("recall@20", float("nan"))
    print(f"{args.method}: forget recall@20 {f:.4f} (before {p['original']['metrics'].get('forget', {}).get('recall@20', float('nan')):.4f}), "
          f"retain test recall@20 {m['test']['recall@20']:.4f}, MIA AUC {p.get('mia_auc', float('nan')):.3f}, "
          f"{p['wall_seconds']:.1f}s -> {args.out}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mmrecun_ray.cli import _scaling
    from mmrecun_ray.unlearning.service import run_methods
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    p = run_methods(args.model_uri, args.data, args.request, methods, args.out,
                    _scaling(args, args.out), _settings(args), seed=args.seed, command="compare")
    print(format_table(p))
    return 0


def format_table(p: dict[str, Any]) -> str:
    """Plain-text comparison table of a ``compare`` payload."""
    head = f"{'method':<10} {'retainR@20':>10} {'forgetR@20':>10} {'MIA AUC':>8} {'ovl@20':>7} {'wall s':>8} {'speedup':>8}"
    lines = [f"request {p['request']['spec']} ({p['request']['forget_pairs']} forget pairs), model {p['model']}",
             head, "-" * len(head)]
    rows = [dict(p["original"], method="original")] + p["methods"]

    def fmt(v: Any, spec: str, suffix: str = "") -> str:
        return f"{v:{spec}}{suffix}" if isinstance(v, (int, float)) else "—"
    for r in rows:
        m = r.get("metrics", {})
        lines.append(f"{r['method']:<10} {fmt(m.get('test', {}).get('recall@20'), '.4f'):>10} "
                     f"{fmt(m.get('forget', {}).get('recall@20'), '.4f'):>10} "
                     f"{fmt(r.get('mia_auc'), '.3f'):>8} {fmt(r.get('overlap@20_vs_gold'), '.2f'):>7} "
                     f"{fmt(r.get('wall_seconds'), '.1f'):>8} {fmt(r.get('speedup_vs_gold'), '.1f', 'x'):>8}")
    return "\n".join(lines)


def add_parsers(sub: Any, add_scaling: Callable, add_s3: Callable) -> None:
    pu = sub.add_parser("unlearn", help="make a trained model forget a request (one method)")
    _common(pu)
    pu.add_argument("--method", default="mmrecun", choices=METHODS,
                    help="mmrecun (reverse BPR, default) | gold (retrain on D_r) | finetune (D_r only) "
                         "| neggrad (gradient ascent on D_f) | sisa (shard retraining)")
    add_scaling(pu)
    add_s3(pu)
    pu.set_defaults(func=cmd_unlearn)
    pc = sub.add_parser("compare", help="run several unlearning methods on one request; one table, one report")
    _common(pc)
    pc.add_argument("--methods", default="mmrecun,gold,finetune,neggrad,sisa",
                    help="comma-separated methods (default: all five)")
    add_scaling(pc)
    add_s3(pc)
    pc.set_defaults(func=cmd_compare)
