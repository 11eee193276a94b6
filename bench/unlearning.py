"""The unlearning matrix: every method against a Gold band, per (dataset, model, request).

    python bench/unlearning.py --cell lfm2k:runs/lfm2k-lightgcn/model:runs/data/lfm2k \
        --requests 'users:5%,items:2%,interactions:10%' --gold-seeds 3 --workers 2

Each cell is one ``compare`` (request applied once, the Gold band retrained with
``--gold-seeds`` seeds, every method run on the same workers, every model audited with
one context). The request is *not* recorded (an experiment), so cells stay independent.
Printed per cell: the methods' retain Recall@20, forget Recall@20, score-MIA AUC, fold-in
Recall@20 (users requests) or item fold-in Hit@20 (items requests), differencing AUC, wall
seconds and speed-up over the first Gold run (same workers), each number marked against the
Gold band (✓ inside, ↑ above, ↓ below), and the band itself (mean ± half-width). A JSON of
every figure goes to ``<out>/unlearning.json``. Ratios are measured in this run only.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrecun_ray.storage.uri import to_jsonable  # noqa: E402
from mmrecun_ray.training.runner import Scaling, ensure_ray  # noqa: E402
from mmrecun_ray.unlearning.report import MARKERS  # noqa: E402
from mmrecun_ray.unlearning.service import run_methods  # noqa: E402

METHODS = "original,retain-graph,mmrecun,hir,redraw,finetune,neggrad,sisa,gold"
COLUMNS = (("retain R@20", "retain_recall@20"), ("forget R@20", "forget_recall@20"),
           ("MIA AUC", "mia_auc"), ("fold-in R@20", "fold_in_recall@20"),
           ("item fold-in Hit@20", "item_fold_in_hit@20"), ("probe R²", "probe_r2"),
           ("diff AUC", "diff_auc"))


def _cell(text: str) -> tuple[str, str, str]:
    name, model, data = text.split(":", 2)
    return name, model, data


def _num(v: object, spec: str = ".4f") -> str:
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "—"


def _speedup(v: object) -> str:
    """``"12.3x"``, or ``"—"`` where there is none (a reference row unlearns nothing)."""
    text = _num(v, ",.1f")
    return text if text == "—" else text + "x"


def table(p: dict) -> list[str]:
    """Markdown rows of one compare payload (methods, then the band)."""
    rows, bands = p["methods"], p["bands"]
    cols = [(t, m) for t, m in COLUMNS if m in bands]
    out = ["| method | " + " | ".join(t for t, _ in cols) + " | wall s | speed-up | passes |",
           "|---" * (len(cols) + 4) + "|"]
    for r in rows:
        if r["role"] == "gold":
            continue
        v, verd = r["audit"]["values"], r.get("verdicts", {})
        cells = [_num(v.get(m)) + MARKERS.get(verd.get(m, "n/a"), "") for _, m in cols]
        out.append(f"| {r['method']} | " + " | ".join(cells) +
                   f" | {_num(r.get('wall_seconds'), '.2f')} | {_speedup(r.get('speedup_vs_gold'))}"
                   f" | {'yes' if r.get('passes') else 'no'} |")
    golds = [r for r in rows if r["role"] == "gold"]
    band = [f"{bands[m]['mean']:.4f} ± {bands[m]['half_width']:.4f}" for _, m in cols]
    walls = [g.get("wall_seconds") for g in golds]
    out.append(f"| Gold band ({len(golds)} seeds) | " + " | ".join(band) +
               f" | {' / '.join(_num(w, '.1f') for w in walls)} | 1x | — |")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", action="append", required=True, type=_cell,
                   help="NAME:MODEL_URI:DATA_URI of a trained model and its dataset; repeatable")
    p.add_argument("--requests", default="users:5%,items:2%,interactions:10%",
                   help="comma-separated request specs, each run on every cell")
    p.add_argument("--methods", default=METHODS, help=f"comma-separated methods (default: {METHODS})")
    p.add_argument("--gold-seeds", type=int, default=3, help="Gold retrains per band (default: 3)")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers for every method (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled requests (default: 0)")
    p.add_argument("--out", default="runs/bench-unlearning", help="output folder")
    p.add_argument("--set", action="append", default=[], help="method setting KEY=VALUE (all methods)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ensure_ray()
    from mmrecun_ray.config import parse_sets
    sets = parse_sets(args.set)
    results = []
    for name, model, data in args.cell:
        for spec in args.requests.split(","):
            out = Path(args.out) / f"{name}-{spec.replace(':', '_').replace('%', 'pct').replace('@', '_s')}"
            pl = run_methods(model, data, spec, args.methods.split(","), str(out),
                             Scaling(workers=args.workers, storage_uri=str(out / "ray")), sets,
                             seed=args.seed, command="compare", record=False,
                             gold_seeds=args.gold_seeds)
            print(f"\n### {name}, {spec} ({pl['request']['forget_pairs']} forget pairs, "
                  f"{len([r for r in pl['methods'] if r['role'] == 'gold'])} Gold seeds, "
                  f"{args.workers} workers)\n")
            print("\n".join(table(pl)))
            results.append({"cell": name, "request": spec, "payload": pl})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "unlearning.json").write_text(json.dumps(to_jsonable(results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
