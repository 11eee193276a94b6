"""``tune`` sub-command: Ray Tune sweep of the MMRecUN unlearning weights."""

from __future__ import annotations

import argparse
from typing import Any, Callable


def _floats(text: str, what: str) -> tuple[float, ...]:
    from mmrecun_ray.errors import ConfigError
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise ConfigError(f"{what} {text!r}: expected comma-separated numbers") from e


def _pair(text: str, what: str) -> tuple[float, float]:
    from mmrecun_ray.errors import ConfigError
    vals = _floats(text, what)
    if len(vals) != 2:
        raise ConfigError(f"{what} {text!r}: expected LOW,HIGH")
    return vals[0], vals[1]


def cmd_tune(args: argparse.Namespace) -> int:
    from mmrecun_ray.cliargs import scaling
    from mmrecun_ray.config import parse_sets
    from mmrecun_ray.tuning.sweep import SearchSpace, TuneOptions, run_sweep
    space = SearchSpace(alpha=_pair(args.alpha, "--alpha"), beta=_pair(args.beta, "--beta"),
                        lr_factor=_pair(args.lr_factor, "--lr-factor"), max_epochs=args.max_epochs,
                        forget_ratios=_floats(args.forget_ratios, "--forget-ratios"))
    opts = TuneOptions(samples=args.samples, method=args.method, mode=args.mode, max_concurrent=args.max_concurrent,
                       seed=args.seed, tolerance=args.tolerance, lam=args.lam,
                       grace_period=args.grace_period, trial_cpus=args.trial_cpus, space=space,
                       fixed=parse_sets(args.set), run_default=not args.no_default,
                       verbose=args.tune_verbose)
    p = run_sweep(args.model_uri, args.data, args.request, args.out, scaling(args, args.out), opts,
                  gold_uri=args.gold_uri, target=args.target)
    print(format_summary(p))
    return 0


def format_summary(p: dict[str, Any]) -> str:
    """Plain-text summary of a ``tune`` payload: the front, the choice, the default."""
    def fmt(r: dict[str, Any] | None, label: str) -> str:
        if not r:
            return f"{label:<12} —"
        f = lambda k, s: format(r[k], s) if isinstance(r.get(k), (int, float)) else "—"  # noqa: E731
        return (f"{label:<12} {f('alpha', '8.3f')} {f('beta', '6.3f')} {f('learning_rate', '9.2e')} "
                f"{f('epochs', '6d')} {f('forget_ratio', '6.2f')} {f('valid_recall@20', '9.4f')} "
                f"{f('forget_recall@20', '9.4f')} {f('wall_seconds', '7.1f')}")
    head = (f"{'trial':<12} {'alpha':>8} {'beta':>6} {'lr':>9} {'epochs':>6} {'ratio':>6} "
            f"{'validR@20':>9} {'forgetR@20':>9} {'wall s':>7}")
    lines = [f"tune {p.get('method', 'mmrecun')} ({p['mode']}) {p['model']} request {p['request']['spec']} "
             f"({p['request']['forget_pairs']} forget pairs): {p['n_completed']}/{p['n_trials']} trials "
             f"in {p['wall_seconds']:.0f}s; target forget recall@20 {p['target']:.4f} ({p['target_source']})",
             head, "-" * len(head), fmt(p.get("original"), "original")]
    lines += [fmt(r, r["trial_id"][-12:]) for r in p["pareto"]]
    lines += [fmt(p.get("best"), "best"), fmt(p.get("default"), "default")]
    return "\n".join(lines)


def add_parsers(sub: Any, add_scaling: Callable, add_s3: Callable) -> None:
    pt = sub.add_parser("tune", help="Ray Tune sweep of the unlearning weights (alpha, beta, lr, "
                                     "budget, forget ratio): Pareto front of retain vs forget recall")
    pt.add_argument("--model-uri", required=True, help="trained model folder (…/model) to unlearn from")
    pt.add_argument("--data", required=True, help="dataset URI the model was trained on (the request "
                    "is NOT recorded in its ledger: a sweep explores)")
    pt.add_argument("--request", required=True,
                    help="what to forget, as for `unlearn` (e.g. users:5%%); applied once, shared by "
                         "all trials; needs forget pairs (not a modality request)")
    pt.add_argument("--out", required=True, help="output URI: retain_data/, trials.csv/json, pareto.json, "
                    "best_config.json, metrics.json")
    pt.add_argument("--samples", type=int, default=8, help="number of trials (default: 8)")
    pt.add_argument("--method", default="mmrecun", choices=("mmrecun", "neggrad"),
                    help="the method whose loss weights are searched (default: mmrecun, the "
                         "paper's); best_config.json records it and `unlearn --config` runs it")
    pt.add_argument("--mode", choices=("pareto", "asha"), default="pareto",
                    help="pareto: multi-objective Optuna search, report the front (default); asha: "
                         "scalarised score valid - lam*|forget - target| with ASHA early stopping")
    pt.add_argument("--max-concurrent", type=int, default=1,
                    help="trials at once (default: 1, right for one 2-CPU machine)")
    pt.add_argument("--seed", type=int, default=0,
                    help="seed of the sampled request, the searcher and the trials (default: 0)")
    pt.add_argument("--gold-uri", default=None,
                    help="Gold reference: metrics.json of `unlearn --method gold`/`compare`, its folder, "
                         "or a Gold model folder; default: the trained model's validation recall@20")
    pt.add_argument("--target", type=float, default=None,
                    help="forget recall@20 target, overriding --gold-uri and the default")
    pt.add_argument("--tolerance", type=float, default=0.01,
                    help="a chosen trial's forget recall@20 may exceed the target by this (default: 0.01)")
    pt.add_argument("--lam", type=float, default=1.0,
                    help="asha mode: weight of |forget - target| in the score (default: 1.0)")
    pt.add_argument("--grace-period", type=int, default=2,
                    help="asha mode: epochs before a trial can be stopped (default: 2)")
    pt.add_argument("--alpha", default="0.1,10", help="log-uniform range of alpha (default: 0.1,10)")
    pt.add_argument("--beta", default="0.1,2", help="uniform range of beta (default: 0.1,2)")
    pt.add_argument("--lr-factor", default="0.5,50",
                    help="log-uniform range of the learning rate as a multiple of the trained model's "
                         "(default: 0.5,50, centred on unlearn's default 5x)")
    pt.add_argument("--max-epochs", type=int, default=10,
                    help="budget drawn from 1..N passes over the forget set (default: 10)")
    pt.add_argument("--forget-ratios", default="0.25,0.5,1,2",
                    help="forget:retain batch ratios to choose from (default: 0.25,0.5,1,2)")
    pt.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="fixed unlearning setting for every trial and the default run "
                         "(batch_size, max_steps, eval_steps, min_valid_ratio, forget_target)")
    pt.add_argument("--trial-cpus", type=float, default=0.1,
                    help="CPU reserved by each trial's driver function (default: 0.1)")
    pt.add_argument("--no-default", action="store_true",
                    help="skip the comparison run with the default settings")
    pt.add_argument("--tune-verbose", type=int, default=1, help="Ray Tune console verbosity 0-3 (default: 1)")
    add_scaling(pt)
    add_s3(pt)
    pt.set_defaults(func=cmd_tune)
