"""Train every model on one dataset with Ray Train and print a quality/time table.

    python bench/train_models.py --data runs/data/lfm2k --models mf,vbpr,lightgcn,freedom,mgcn --workers 2

Prints, for each model with its training defaults (``training/defaults.py``) unless
``--set`` overrides them: validation and test Recall@20, test NDCG@20, seconds per epoch,
epochs run (and the best epoch), whether early stopping or the epoch cap ended the run, the
popularity ranking, and each model's ratio over popularity and over ``mf``, all measured
in this one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrecun_ray.cli import parse_sets  # noqa: E402
from mmrecun_ray.data.dataset import load_dataset  # noqa: E402
from mmrecun_ray.evaluation.evaluate import evaluate_popularity  # noqa: E402
from mmrecun_ray.training.runner import Scaling, ensure_ray  # noqa: E402
from mmrecun_ray.training.train import train  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset URI")
    p.add_argument("--models", default="mf,vbpr,lightgcn,freedom,mgcn", help="comma-separated models")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers (0 = local mode)")
    p.add_argument("--out", default="runs/bench-train", help="output folder (models, metrics.json)")
    p.add_argument("--set", action="append", help="loop/model settings for every model, key=value")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ensure_ray()
    ds = load_dataset(args.data)
    pop = evaluate_popularity(ds)["test"]
    rows = []
    for model in args.models.split(","):
        out = str(Path(args.out) / model)
        res = train(args.data, model, out, Scaling(workers=args.workers, storage_uri=str(Path(out) / "ray")),
                    sets=parse_sets(args.set), ds=ds)
        m = res.metrics
        cap = m["loop_config"]["epochs"]
        rows.append({"model": model, "recall@20": m["metrics"]["test"]["recall@20"],
                     "ndcg@20": m["metrics"]["test"]["ndcg@20"],
                     "valid_recall@20": m["metrics"]["valid"]["recall@20"],
                     "s/epoch": m["seconds_per_epoch"], "epochs": m["epochs_run"],
                     "best_epoch": m["best_epoch"] + 1, "cap": cap,
                     "early_stop": m["epochs_run"] < cap, "wall_s": m["wall_seconds"],
                     "learning_rate": m["loop_config"]["learning_rate"]})
        print(json.dumps(rows[-1]), flush=True)
    mf = next((r for r in rows if r["model"] == "mf"), None)
    print(f"\n{args.data}: {ds.n_users} users, {ds.n_items} items, workers={args.workers}")
    print("| model | lr | valid R@20 | test R@20 | test N@20 | s/epoch | epochs (best) | stopped by "
          "| wall s | R@20 / pop | R@20 / mf |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| popularity | — | — | {pop['recall@20']:.4f} | {pop['ndcg@20']:.4f} | — | — | — | — | 1.00 | — |")
    for r in rows:
        vs_mf = f"{r['recall@20'] / mf['recall@20']:.2f}" if mf else "—"
        stop = "early stopping" if r["early_stop"] else f"the cap ({r['cap']})"
        print(f"| {r['model']} | {r['learning_rate']:g} | {r['valid_recall@20']:.4f} | "
              f"{r['recall@20']:.4f} | {r['ndcg@20']:.4f} | {r['s/epoch']:.2f} | "
              f"{r['epochs']} ({r['best_epoch']}) | {stop} | {r['wall_s']:.0f} | "
              f"{r['recall@20'] / pop['recall@20']:.2f} | {vs_mf} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
