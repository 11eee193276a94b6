"""``process`` sub-command: the deletion-request inbox as one batch (see
:mod:`mmrecun_ray.unlearning.inbox`)."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from mmrecun_ray.cliargs import scaling
from mmrecun_ray.unlearning.cli import method_and_settings
from mmrecun_ray.unlearning.methods import DEFAULT_METHOD, METHODS
from mmrecun_ray.unlearning.policy import FALLBACKS, GOLD_MODES

#: flag -> policy key (flags that are given override the --policy file)
_POLICY_FLAGS = {"gold": "gold", "gold_seeds": "gold_seeds", "gold_max_age": "gold_max_age",
                 "retain_min_gold": "retain_ratio_min", "retain_min_shipped": "retain_ratio_min_shipped",
                 "fallback": "fallback"}


def policy_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The policy keys the flags set (``--gate none`` = no band gate)."""
    out = {key: getattr(args, flag) for flag, key in _POLICY_FLAGS.items()
           if getattr(args, flag) is not None}
    if args.gate is not None:
        names = [m.strip() for m in args.gate.split(",") if m.strip()]
        out["gate"] = [] if names == ["none"] else names
    if args.observe:
        out["mode"] = "observe"
    return out


def cmd_process(args: argparse.Namespace) -> int:
    from mmrecun_ray.unlearning.inbox import ProcessOptions, process
    from mmrecun_ray.unlearning.policy import load_policy
    method, sets = method_and_settings(args)
    opts = ProcessOptions(inbox=args.inbox, data_uri=args.data, out_uri=args.out,
                          model_uri=args.model_uri, method=method,
                          policy=load_policy(args.policy, policy_overrides(args)),
                          scaling=scaling(args, args.out), sets=sets)
    batches = process(opts)
    if not batches:
        print(f"{args.inbox}: no pending request")
    for b in batches:
        v = b.get("verdict") or {}
        why = "; ".join(v.get("reasons", [])[:2])
        print(f"batch {b['batch']} (#{b['index']}): {len(b['requests'])} request(s), "
              f"{b['decision']}{' (' + why + ')' if why else ''} -> "
              f"{b['model_uri'] or 'pointer unchanged, retrain scheduled'} in {b['seconds']:.1f}s")
    return 0


def add_parsers(sub: Any, add_scaling: Callable, add_s3: Callable) -> None:
    p = sub.add_parser("process", help="process every pending forget request of an inbox as one "
                                       "batch: unlearn from the shipped model, audit, publish if the "
                                       "policy passes")
    p.add_argument("--inbox", required=True, help="inbox URI: request files in <inbox>/pending/, "
                   "moved to done/ or failed/ with a <name>.result.json")
    p.add_argument("--data", required=True, help="dataset URI the models serve (its lineage root's "
                   "ledger records every accepted request)")
    p.add_argument("--out", required=True, help="output URI: CURRENT (the pointer), batches/<id>/, "
                   "RETRAIN_SCHEDULED, GOLD")
    p.add_argument("--model-uri", default=None, help="model to start from before the first publish; "
                   "afterwards <out>/CURRENT names it")
    p.add_argument("--method", default=None,
                   choices=[n for n, c in METHODS.items() if c.role in ("method", "gold")],
                   help=f"unlearning method (default: {DEFAULT_METHOD}, or the one --config names)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a method setting (see "
                   "`unlearn --help`)")
    p.add_argument("--config", default=None, help="JSON file of method settings (e.g. best_config.json "
                   "from `tune`)")
    g = p.add_argument_group("policy (a --policy file, flags on top; see mmrecun_ray/unlearning/policy.py)")
    g.add_argument("--policy", default=None, help="policy JSON file (local or s3://): gate, "
                   "retain_ratio_min, retain_ratio_min_shipped, gold, gold_seeds, gold_max_age, "
                   "fallback, mode")
    g.add_argument("--gate", default=None, help="comma-separated audit metrics that must lie inside "
                   "the Gold band, or 'none' (default: every banded metric the batch's audit reports)")
    g.add_argument("--gold", default=None, choices=GOLD_MODES, help="Gold band: retrained 'now' on "
                   "the cumulative retain set, the 'scheduled' last one when fresh enough, or 'none' "
                   "(default: now)")
    g.add_argument("--gold-seeds", type=int, default=None, help="Gold retrains of a band (default: 2)")
    g.add_argument("--gold-max-age", type=int, default=None, help="'scheduled': reuse a band at most "
                   "this many batches old (default: 4)")
    g.add_argument("--retain-min-gold", type=float, default=None, help="retain Recall@20 >= this x the "
                   "Gold mean (default: 0.97; 0: off)")
    g.add_argument("--retain-min-shipped", type=float, default=None, help="retain Recall@20 >= this x "
                   "the shipped model's (default: 0.95; 0: off)")
    g.add_argument("--fallback", default=None, choices=FALLBACKS, help="on a rejected model: ship a "
                   "'retrain' from scratch now, or 'schedule' it for the next run (default: retrain)")
    g.add_argument("--observe", action="store_true", help="judge and record, but ship whatever the "
                   "verdict")
    add_scaling(p)
    add_s3(p)
    p.set_defaults(func=cmd_process)
