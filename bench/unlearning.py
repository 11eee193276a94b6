"""Compare unlearning methods on one trained model for several requests and print the
ratios against Gold measured in this run.

    python bench/unlearning.py --model-uri runs/lfm2k-lightgcn/model --data runs/data/lfm2k \
        --requests 'users:5%,items:2%,interactions:10%' --methods mmrecun,gold,finetune,neggrad,sisa

For each request: forget-set Recall@20 vs Gold's, retain test Recall@20 as a fraction of
Gold's, MIA AUC vs Gold's, wall-time speed-up over Gold, and the pass/fail of the
acceptance rules (forget <= Gold + 0.01, retain >= 95% of Gold, speed-up >= 5x).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrecun_ray.cli import parse_sets  # noqa: E402
from mmrecun_ray.training.runner import Scaling, ensure_ray  # noqa: E402
from mmrecun_ray.unlearning.methods import UnlearnSettings  # noqa: E402
from mmrecun_ray.unlearning.service import run_methods  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-uri", required=True, help="trained model folder")
    p.add_argument("--data", required=True, help="dataset URI the model was trained on (a copy: "
                   "each request is recorded in its ledger)")
    p.add_argument("--requests", default="users:5%,items:2%,interactions:10%", help="comma-separated specs")
    p.add_argument("--methods", default="mmrecun,gold,finetune,neggrad", help="comma-separated methods")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers for every method")
    p.add_argument("--out", default="runs/bench-unlearn", help="output folder")
    p.add_argument("--set", action="append", help="unlearning settings key=value")
    p.add_argument("--also-local", action="store_true",
                   help="also run MMRecUN in Ray Train local mode (--workers 0: no worker group to "
                        "start) on the same request, with its speed-up over the DDP Gold run")
    p.add_argument("--variant", action="append", default=[],
                   help="also run MMRecUN with these extra settings (comma-separated key=value, "
                        "e.g. 'reset_exclusive=false' for the reverse term alone), same workers; "
                        "repeatable")
    p.add_argument("--no-record", action="store_true",
                   help="do not append requests to the ledger (so that requests stay independent)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ensure_ray()
    settings = UnlearnSettings.from_sets(parse_sets(args.set))
    summary = []
    for i, spec in enumerate(args.requests.split(",")):
        out = str(Path(args.out) / f"req{i}")
        pl = run_methods(args.model_uri, args.data, spec, args.methods.split(","), out,
                         Scaling(workers=args.workers, storage_uri=str(Path(out) / "ray")), settings,
                         command="compare", record=not args.no_record)
        gold = next((r for r in pl["methods"] if r["method"] == "gold"), pl["methods"][0])
        rows = list(pl["methods"])
        if args.also_local:
            loc = run_methods(args.model_uri, args.data, spec, ["mmrecun"], out + "-local",
                              Scaling(workers=0), settings, command="unlearn", record=False)
            r = dict(loc["methods"][0], method="mmrecun (local mode)")
            r["speedup_vs_gold"] = gold["wall_seconds"] / max(r["wall_seconds"], 1e-9)
            rows.append(r)
        for variant in args.variant:
            sets = variant.split(",")
            tag = "-".join(x.replace("=", "_") for x in sets)
            v_settings = UnlearnSettings.from_sets({**settings.__dict__, **parse_sets(sets)})
            var = run_methods(args.model_uri, args.data, spec, ["mmrecun"], f"{out}-{tag}",
                              Scaling(workers=args.workers, storage_uri=str(Path(out) / "ray")),
                              v_settings, command="unlearn", record=False)
            r = dict(var["methods"][0], method=f"mmrecun ({variant})")
            r["speedup_vs_gold"] = gold["wall_seconds"] / max(r["wall_seconds"], 1e-9)
            rows.append(r)
        for r in rows:
            f = r["metrics"].get("forget", {}).get("recall@20")
            gf = gold["metrics"].get("forget", {}).get("recall@20")
            row = {"request": spec, "method": r["method"], "forget_pairs": pl["request"]["forget_pairs"],
                   "retain_R@20": r["metrics"]["test"]["recall@20"],
                   "retain_vs_gold": r["metrics"]["test"]["recall@20"] / gold["metrics"]["test"]["recall@20"],
                   "forget_R@20": f, "gold_forget_R@20": gf, "mia": r.get("mia_auc"),
                   "gold_mia": gold.get("mia_auc"), "wall_s": r["wall_seconds"],
                   "speedup": r.get("speedup_vs_gold", 1.0), "overlap@20": r.get("overlap@20_vs_gold"),
                   "peak_mb": r.get("peak_rss_mb"), "peak_tree_mb": r.get("peak_rss_tree_mb"),
                   "before_forget_R@20": pl["original"]["metrics"].get("forget", {}).get("recall@20")}
            summary.append(row)
            print(json.dumps(row), flush=True)
    print("\n| request | method | |D_f| | retain R@20 (x Gold) | forget R@20 (before / Gold) | MIA (Gold) | overlap@20 | wall s | speed-up |")
    print("|---|---|---|---|---|---|---|---|---|")

    def f4(v: float | None) -> str:
        return "—" if v is None else f"{v:.4f}"
    for r in summary:
        print(f"| {r['request']} | {r['method']} | {r['forget_pairs']} | {r['retain_R@20']:.4f} ({r['retain_vs_gold']:.2f}) | "
              f"{f4(r['forget_R@20'])} ({f4(r['before_forget_R@20'])} / {f4(r['gold_forget_R@20'])}) | "
              f"{f4(r['mia'])} ({f4(r['gold_mia'])}) | {f4(r['overlap@20'])} | {r['wall_s']:.1f} | {r['speedup']:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
