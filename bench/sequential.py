"""Drift of a chained model under a stream of small deletion requests.

    python bench/sequential.py --dataset lfm2k --batches 20 --gold-every 5 --workers 2
    python bench/sequential.py --dataset baby --batches 20 --gold-every 5 --workers 2
    python bench/sequential.py --dataset lfm2k --batches 6 --gold-every 3 --workers 0 --epochs 20

A model is trained once; then each of ``--batches`` batches drops small requests into an
inbox (``--mix``: one request per kind, each ``--size`` percent of the current training
users / items / pairs) and runs ``process`` on it: the method unlearns from the model the
pointer names (request 100 from the model that forgot requests 1-99), under an *observe*
policy (every model is judged and recorded, and shipped whatever the verdict, so the chain
is never reset). Every ``--gold-every``-th batch (and the first) retrains a Gold band
(``--gold-seeds`` Golds) on the cumulative retain set; the batches between are judged
against that band, reused (``gold: scheduled``), so their verdicts are marked stale.

Prints a table per batch (retain Recall@20, fold-in gap, forget Recall@20, MIA AUC, the
Gold band where fresh, verdict, wall time), says after how many batches the chained model
first leaves a fresh Gold band, and writes ``<out>/sequential.json`` (every figure) and
``<out>/sequential.svg`` (the plot).

Ray: a local instance with ``--ray-tmp`` as its temp dir, ``--cpus`` CPUs and a
``--object-store-mb`` object store.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from mmrecun_ray.config import parse_sets  # noqa: E402
from mmrecun_ray.data.dataset import load_dataset  # noqa: E402
from mmrecun_ray.training.runner import Scaling  # noqa: E402
from mmrecun_ray.unlearning.methods import DEFAULT_METHOD  # noqa: E402
from mmrecun_ray.unlearning.inbox import ProcessOptions, process  # noqa: E402
from mmrecun_ray.unlearning.policy import Policy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
KINDS = ("users", "items", "interactions")


# -- setup --------------------------------------------------------------------------------------
def prepare(dataset: str, dest: Path) -> str:
    """Publish the dataset at ``dest`` (Last.fm-2K from ../shared/data, or a synthetic preset)."""
    if dest.exists():
        shutil.rmtree(dest)
    if dataset == "lfm2k":
        from mmrecun_ray.data.mmrec_import import prepare_mmrec
        src = SHARED / "lfm2k"
        if not src.is_dir():
            raise SystemExit(f"{src}: Last.fm-2K not found (see ../shared/data/README.md)")
        prepare_mmrec(src, dest)
    else:
        from mmrecun_ray.data.synthetic import prepare_synthetic
        prepare_synthetic(dataset, 0, dest)
    return str(dest)


def draw_requests(data: str, kinds: Sequence[str], percent: float, rng: np.random.Generator
                  ) -> list[dict[str, Any]]:
    """One request per kind, ``percent`` % of the current (ledger-filtered) training users,
    items or pairs, at least one id each."""
    ds = load_dataset(data)
    tr, frac = ds.train, percent / 100.0
    out = []
    for kind in kinds:
        if kind == "interactions":
            n = max(1, int(round(frac * len(tr))))
            rows = rng.choice(len(tr), n, replace=False)
            out.append({"kind": kind, "pairs": [[int(tr.user[r]), int(tr.item[r])] for r in rows]})
        else:
            pool = np.unique(tr.user if kind == "users" else tr.item)
            n = max(1, int(round(frac * pool.size)))
            out.append({"kind": kind, "ids": sorted(int(x) for x in rng.choice(pool, n, replace=False))})
    return out


# -- one batch's figures --------------------------------------------------------------------------
def _gap(values: dict[str, float], attack: str) -> float | None:
    """Fold-in gap: the attack on the forgotten units minus the same attack on controls."""
    a, c = {"users": ("fold_in_recall@20", "fold_in_control_recall@20"),
            "items": ("item_fold_in_hit@20", "item_fold_in_control_hit@20")}[attack]
    if a in values and c in values and values[a] is not None and values[c] is not None:
        return float(values[a]) - float(values[c])
    return None


def batch_row(out: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """The figures of one processed batch, from its ``metrics.json``."""
    m = json.loads((out / "batches" / summary["batch"] / "metrics.json").read_text())
    audits = m["audits"]
    cand = audits["candidate"]["values"]
    golds = [a["values"] for k, a in audits.items() if k.startswith("gold")]
    verdict = m["verdict"] or {}
    fresh = m["band_source"] == "now"
    bands = m["bands"] or {}
    walls = m["wall_seconds"] or {}

    def gold_stat(fn: Any) -> tuple[float | None, float | None, float | None]:
        vals = [v for v in (fn(g) for g in golds) if v is not None]
        return (float(np.mean(vals)), min(vals), max(vals)) if vals else (None, None, None)

    row = {"batch": m["index"], "id": summary["batch"], "requests": len(m["requests"]),
           "forget_pairs": m["forget_pairs"], "kinds": m["kinds"], "band": m["band_source"],
           "fresh_gold": fresh, "decision": m["decision"],
           "inside": sum(v == "inside" for v in verdict.get("verdicts", {}).values()),
           "judged": len(verdict.get("verdicts", {})),
           "outside": sorted(k for k, v in verdict.get("verdicts", {}).items() if v != "inside"),
           "passed": verdict.get("passed"), "reasons": verdict.get("reasons", []),
           "retain_recall@20": cand.get("retain_recall@20"),
           "shipped_retain_recall@20": audits["shipped"]["values"].get("retain_recall@20"),
           "forget_recall@20": cand.get("forget_recall@20"), "mia_auc": cand.get("mia_auc"),
           "fold_in_gap": _gap(cand, "users"), "item_fold_in_gap": _gap(cand, "items"),
           "before_forget_recall@20": audits["shipped"]["values"].get("forget_recall@20"),
           "gold_fold_in_gap": gold_stat(lambda g: _gap(g, "users")) if fresh else (None,) * 3,
           "bands": {k: bands[k] for k in ("retain_recall@20", "forget_recall@20", "mia_auc",
                                           "fold_in_recall@20") if k in bands},
           "method_seconds": walls.get("candidate"),
           "gold_seconds": sum(v for k, v in walls.items() if k.startswith("gold") and v) or None,
           "audit_seconds": m.get("audit_seconds"), "batch_seconds": summary["seconds"]}
    return row


# -- output ---------------------------------------------------------------------------------------
def _f(v: Any, spec: str = ".4f") -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    """The per-batch table (markdown)."""
    head = ["batch", "reqs", "D_f", "retain R@20", "Gold retain band", "forget R@20", "Gold forget",
            "MIA AUC", "fold-in gap", "Gold gap", "band", "inside", "outside", "method s",
            "Gold s", "batch s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rb, fb = r["bands"].get("retain_recall@20"), r["bands"].get("forget_recall@20")
        band = "fresh" if r["fresh_gold"] else f"stale ({r['band'].split(':')[0]})"
        lines.append("| " + " | ".join([
            str(r["batch"]), str(r["requests"]), str(r["forget_pairs"]), _f(r["retain_recall@20"]),
            f"[{rb['lo']:.4f}, {rb['hi']:.4f}]" if rb else "—", _f(r["forget_recall@20"]),
            _f(fb["mean"]) if fb else "—", _f(r["mia_auc"], ".3f"), _f(r["fold_in_gap"]),
            _f(r["gold_fold_in_gap"][0]), band, f"{r['inside']}/{r['judged']}",
            ", ".join(r["outside"]) or "—", _f(r["method_seconds"], ".1f"),
            _f(r["gold_seconds"], ".1f"), _f(r["batch_seconds"], ".1f")]) + " |")
    return "\n".join(lines)


def svg_lines(title: str, xs: Sequence[int], series: Sequence[tuple[str, Sequence[float | None], str]],
              bands: Sequence[tuple[int, float, float]] = (), y_label: str = "",
              y_floor: float | None = None, width: int = 760, height: int = 230) -> str:
    """A line chart as an ``<svg>`` group body (no outer element): one polyline per series
    (None = gap), and Gold bands drawn as vertical bars ``(x, lo, hi)``; the axis starts no
    lower than ``y_floor``."""
    left, right, top, bottom = 64, 150, 30, 34
    pw, ph = width - left - right, height - top - bottom
    ys = [v for _, vs, _ in series for v in vs if v is not None] + [v for _, lo, hi in bands for v in (lo, hi)]
    lo, hi = (min(ys), max(ys)) if ys else (0.0, 1.0)
    pad = (hi - lo) * 0.1 or max(abs(hi) * 0.1, 0.01)
    lo, hi = lo - pad, hi + pad
    lo = lo if y_floor is None else max(lo, y_floor)
    x0, x1 = (min(xs), max(xs)) if xs else (0, 1)
    x1 = x1 if x1 > x0 else x0 + 1

    def px(x: float) -> float:
        return left + pw * (x - x0) / (x1 - x0)

    def py(y: float) -> float:
        return top + ph * (1 - (y - lo) / (hi - lo))

    esc = html.escape
    parts = [f'<text x="{left}" y="18" font-size="13" font-weight="bold">{esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for t in range(5):
        yv = lo + (hi - lo) * t / 4
        parts.append(f'<line x1="{left}" y1="{py(yv):.1f}" x2="{left + pw}" y2="{py(yv):.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 5}" y="{py(yv) + 4:.1f}" font-size="10" text-anchor="end">{yv:.3f}</text>')
    for x in xs:
        parts.append(f'<text x="{px(x):.1f}" y="{top + ph + 14}" font-size="10" text-anchor="middle">{x}</text>')
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" font-size="11" text-anchor="middle">'
                 'batches processed</text>')
    if y_label:
        parts.append(f'<text x="14" y="{top + ph / 2:.1f}" font-size="11" text-anchor="middle" '
                     f'transform="rotate(-90 14 {top + ph / 2:.1f})">{esc(y_label)}</text>')
    for x, blo, bhi in bands:
        parts.append(f'<rect x="{px(x) - 5:.1f}" y="{py(bhi):.1f}" width="10" '
                     f'height="{max(py(blo) - py(bhi), 1):.1f}" fill="#fdd9b5" stroke="#d95f02"/>')
    for n, (label, vs, colour) in enumerate(series):
        runs: list[list[tuple[float, float]]] = [[]]
        for x, v in zip(xs, vs):  # a missing value breaks the line
            if v is None:
                runs.append([])
            else:
                runs[-1].append((px(x), py(v)))
        for run in runs:
            if len(run) > 1:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                             + " ".join(f"{a:.1f},{b:.1f}" for a, b in run) + '"/>')
            for a, b in run:
                parts.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>')
        ly = top + 14 + 16 * n
        parts.append(f'<line x1="{left + pw + 10}" y1="{ly - 4}" x2="{left + pw + 28}" y2="{ly - 4}" '
                     f'stroke="{colour}" stroke-width="2"/>')
        parts.append(f'<text x="{left + pw + 32}" y="{ly}" font-size="11">{esc(label)}</text>')
    if bands:
        ly = top + 14 + 16 * len(series)
        parts.append(f'<rect x="{left + pw + 14}" y="{ly - 10}" width="10" height="10" fill="#fdd9b5" '
                     'stroke="#d95f02"/>')
        parts.append(f'<text x="{left + pw + 32}" y="{ly}" font-size="11">fresh Gold band</text>')
    return "\n".join(parts)


def plot(rows: list[dict[str, Any]], title: str) -> str:
    """Four stacked panels: retain R@20, fold-in gap, forget R@20 / MIA AUC, wall time."""
    xs = [r["batch"] for r in rows]

    def band(metric: str) -> list[tuple[int, float, float]]:
        return [(r["batch"], r["bands"][metric]["lo"], r["bands"][metric]["hi"]) for r in rows
                if r["fresh_gold"] and metric in r["bands"]]

    gap_bands = [(r["batch"], r["gold_fold_in_gap"][1], r["gold_fold_in_gap"][2]) for r in rows
                 if r["fresh_gold"] and r["gold_fold_in_gap"][0] is not None]
    panels = [
        svg_lines("Retain Recall@20 of the chained model", xs,
                  [("chained", [r["retain_recall@20"] for r in rows], "#1b9e77"),
                   ("shipped before", [r["shipped_retain_recall@20"] for r in rows], "#7570b3")],
                  band("retain_recall@20"), "Recall@20"),
        svg_lines("Fold-in gap (forgotten users - controls)", xs,
                  [("chained", [r["fold_in_gap"] for r in rows], "#1b9e77"),
                   ("items: hit gap", [r["item_fold_in_gap"] for r in rows], "#e7298a")],
                  gap_bands, "Recall@20 gap"),
        svg_lines("Forget Recall@20 and MIA AUC of the batch's D_f", xs,
                  [("forget R@20", [r["forget_recall@20"] for r in rows], "#1b9e77"),
                   ("before (shipped)", [r["before_forget_recall@20"] for r in rows], "#7570b3"),
                   ("MIA AUC", [r["mia_auc"] for r in rows], "#e7298a")],
                  band("forget_recall@20") + band("mia_auc"), "value"),
        svg_lines("Wall time per batch (s)", xs,
                  [("batch total", [r["batch_seconds"] for r in rows], "#1b9e77"),
                   ("method", [r["method_seconds"] for r in rows], "#7570b3"),
                   ("Golds", [r["gold_seconds"] for r in rows], "#d95f02")], (), "seconds", y_floor=0.0)]
    h, w = 230, 760
    body = [f'<text x="10" y="16" font-size="14" font-weight="bold">{html.escape(title)}</text>']
    body += [f'<g transform="translate(0,{24 + k * h})">{p}</g>' for k, p in enumerate(panels)]
    total = 24 + len(panels) * h
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{total}" '
            f'viewBox="0 0 {w} {total}" role="img" aria-label="{html.escape(title)}">\n'
            + "\n".join(body) + "\n</svg>\n")


def advice(rows: list[dict[str, Any]]) -> tuple[int | None, str]:
    """The first batch whose chained model leaves a *fresh* Gold band, and what to do."""
    if not rows:
        return None, "no batch ran"
    left = next((r for r in rows if r["fresh_gold"] and r["passed"] is False), None)
    stale = next((r for r in rows if not r["fresh_gold"] and r["passed"] is False), None)
    if left is None:
        text = f"the chained model stayed inside every fresh Gold band through batch {rows[-1]['batch']}"
        if stale is not None:
            text += (f"; a stale band flagged batch {stale['batch']} on the retain metrics "
                     f"({', '.join(stale['outside']) or '; '.join(stale['reasons'])}): shorten gold_max_age")
        return None, text
    why = ", ".join(left["outside"]) or "; ".join(left["reasons"])
    fallback = ("enforce the gate with fallback 'retrain': the batch ships its Gold and the chain "
                "restarts from a model that never saw the forgotten data")
    if left is next(r for r in rows if r["fresh_gold"]):
        return left["batch"], (
            f"the chained model is outside the fresh Gold band from the first audited batch "
            f"({left['batch']}: {why}), before any drift: the method itself does not meet the band "
            f"on these metrics; {fallback} (here: every batch), or tune the method / narrow the gate")
    return left["batch"], (
        f"the chained model leaves the fresh Gold band at batch {left['batch']} ({why}), inside "
        f"before: {fallback}, and retrain a fresh band at least every {left['batch'] - 1} batch(es)")


# -- main -----------------------------------------------------------------------------------------
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="lfm2k", help="lfm2k (../shared/data), or a synthetic preset: "
                   "baby, tiny, ...")
    p.add_argument("--model", default="lightgcn", help="model trained once, then unlearned in a chain")
    p.add_argument("--model-uri", default=None, help="use this trained model (of --data) instead")
    p.add_argument("--data", default=None, help="with --model-uri: its dataset (a copy: the ledger grows)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs of the model (and so of "
                   "every Gold, which retrains with its recipe)")
    p.add_argument("--train-set", action="append", help="training setting key=value")
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--gold-every", type=int, default=5, help="fresh Gold band every N batches")
    p.add_argument("--gold-seeds", type=int, default=2)
    p.add_argument("--mix", default="users,items,interactions", help="request kinds of each batch")
    p.add_argument("--size", type=float, default=0.25, help="percent of the current training users / "
                   "items / pairs per request (default 0.25)")
    p.add_argument("--method", default=DEFAULT_METHOD)
    p.add_argument("--set", action="append", help="method setting key=value")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/bench-sequential")
    p.add_argument("--ray-tmp", default="/tmp/ray-bench-seq")
    p.add_argument("--cpus", type=int, default=None)
    p.add_argument("--object-store-mb", type=int, default=1024)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("mmrecun_ray.unlearning.inbox").setLevel(logging.INFO)
    kinds = [k.strip() for k in args.mix.split(",") if k.strip()]
    if set(kinds) - set(KINDS):
        raise SystemExit(f"--mix: kinds must be among {KINDS}")
    import os

    import ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", _temp_dir=args.ray_tmp, num_cpus=args.cpus, include_dashboard=False,
             object_store_memory=args.object_store_mb * 2**20, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("inbox", "serving"):
        shutil.rmtree(out / sub, ignore_errors=True)
    t0 = time.perf_counter()
    if args.model_uri:
        if not args.data:
            raise SystemExit("--model-uri needs --data")
        data, model_uri, train_s = args.data, args.model_uri, None
    else:
        from mmrecun_ray.training.train import train
        data = prepare(args.dataset, out / "data")
        sets = {**parse_sets(args.train_set), **({"epochs": args.epochs} if args.epochs else {})}
        shutil.rmtree(out / "trained", ignore_errors=True)
        res = train(data, args.model, str(out / "trained"), Scaling(workers=args.workers), sets=sets)
        model_uri, train_s = res.model_uri, time.perf_counter() - t0
        print(f"trained {args.model} on {args.dataset}: test R@20 "
              f"{res.metrics['metrics']['test']['recall@20']:.4f} in {train_s:.0f}s", flush=True)
    policy = Policy(gate=None, gold="scheduled", gold_seeds=args.gold_seeds,
                    gold_max_age=max(0, args.gold_every - 1), mode="observe")
    rng = np.random.default_rng(args.seed)
    rows = []
    inbox = out / "inbox"
    for b in range(1, args.batches + 1):
        (inbox / "pending").mkdir(parents=True, exist_ok=True)
        for k, doc in enumerate(draw_requests(data, kinds, args.size, rng)):
            (inbox / "pending" / f"b{b:03d}-{k}-{doc['kind']}.json").write_text(json.dumps(doc))
        opts = ProcessOptions(inbox=str(inbox), data_uri=data, out_uri=str(out / "serving"),
                              model_uri=model_uri, method=args.method, policy=policy,
                              scaling=Scaling(workers=args.workers,
                                              storage_uri=str(out / "serving" / "ray")),
                              sets=parse_sets(args.set))
        summaries = process(opts)
        failed = sorted(q.name for q in (inbox / "failed").glob("*.result.json")) \
            if (inbox / "failed").exists() else []
        if failed:
            print(f"batch {b}: failed request files {failed}", flush=True)
        row = batch_row(out / "serving", summaries[-1])
        rows.append(row)
        print(f"batch {b}: retain R@20 {_f(row['retain_recall@20'])}, forget R@20 "
              f"{_f(row['forget_recall@20'])} (before {_f(row['before_forget_recall@20'])}), "
              f"fold-in gap {_f(row['fold_in_gap'])}, {row['inside']}/{row['judged']} inside "
              f"({'fresh' if row['fresh_gold'] else 'stale'} band), {row['batch_seconds']:.1f}s", flush=True)
    at, text = advice(rows)
    title = (f"{args.dataset} {args.model}, {args.method}: {args.batches} batches of "
             f"{'+'.join(kinds)} at {args.size:g}% each, Gold every {args.gold_every}")
    print()
    print(table(rows))
    print()
    print(text)
    (out / "sequential.svg").write_text(plot(rows, title))
    (out / "sequential.json").write_text(json.dumps({
        "setting": {k: v for k, v in vars(args).items()}, "train_seconds": train_s, "rows": rows,
        "left_band_at": at, "advice": text, "wall_seconds": time.perf_counter() - t0},
        indent=2, default=str) + "\n")
    print(f"-> {out / 'sequential.json'}, {out / 'sequential.svg'}")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
