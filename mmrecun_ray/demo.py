"""``demo``: the main job on an embedded default — synthetic data in a local folder,
local Ray, training (``--workers auto``: local mode for a job this small), then forgetting
a user group with MMRecUN against Gold and the baselines. Prints at most ~30 lines: one
per step, one summary line per training/unlearning run, the comparison table."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mmrecun_ray.storage import exists, join, write_json_atomic

logger = logging.getLogger(__name__)

DEMO_MODEL = "lightgcn"
DEMO_REQUEST = "users:5%"
DEMO_EPOCHS = 60
#: HIR (the unlearn default) against the paper's MMRecUN, the baselines and the Gold band
DEMO_METHODS = "hir,original,retain-graph,mmrecun,finetune,neggrad,gold"


def run_demo(out: str, workers: int | str = "auto", preset: str = "tiny", model: str = DEMO_MODEL,
             methods: str = DEMO_METHODS) -> int:
    """Prepare -> train -> evaluate vs popularity -> compare unlearning methods; print;
    ``<out>/metrics.json`` holds the headline numbers and the workers choice."""
    from mmrecun_ray import console
    from mmrecun_ray.cliargs import UNLEARN_EPOCHS, resolve_auto
    from mmrecun_ray.data.dataset import load_dataset
    from mmrecun_ray.data.synthetic import prepare_synthetic
    from mmrecun_ray.evaluation.evaluate import evaluate_popularity
    from mmrecun_ray.training.runner import Scaling, Work, ensure_ray
    from mmrecun_ray.training.train import train
    from mmrecun_ray.unlearning.service import GOLD_SEEDS, run_methods
    from mmrecun_ray.unlearning.summary import format_table

    say = console.note if console.configured() else print
    t0 = time.perf_counter()
    out = str(Path(out).resolve())
    data = join(out, "data")
    if not exists(join(data, "manifest.json")):
        prepare_synthetic(preset, 0, data)
    ds = load_dataset(data)
    say(f"[1/4] data: synthetic '{preset}' -> {data}: {ds.n_users} users, {ds.n_items} items, "
        f"{len(ds.train)}/{len(ds.valid)}/{len(ds.test)} train/valid/test, "
        f"modalities {{{', '.join(f'{m}: {f.shape[1]}' for m, f in ds.features.items())}}}")
    choice = None
    names = [m for m in methods.split(",") if m != "gold"]
    if workers == "auto":
        runs = 1 + GOLD_SEEDS + len(names)
        work = Work(model=model, pairs=len(ds.train), batch_size=2048, runs=runs,
                    epochs=(1 + GOLD_SEEDS) * DEMO_EPOCHS + len(names) * UNLEARN_EPOCHS)
        workers, choice = resolve_auto(work)
    ensure_ray()
    scaling = Scaling(workers=int(workers), storage_uri=join(out, "ray"), choice=choice)
    res = train(data, model, join(out, "train"), scaling, sets={"epochs": DEMO_EPOCHS, "patience": 10})
    pop = evaluate_popularity(ds)["test"]
    t = res.metrics["metrics"]["test"]
    say(f"[2/4] trained {model} ({scaling.mode}) in {res.metrics['wall_seconds']:.1f}s "
        f"({res.metrics['epochs_run']} epochs): test recall@20 {t['recall@20']:.4f} "
        f"ndcg@20 {t['ndcg@20']:.4f} vs popularity {pop['recall@20']:.4f} / {pop['ndcg@20']:.4f}")
    say(f"[3/4] forgetting {DEMO_REQUEST} of the users with {methods} ...")
    p = run_methods(res.model_uri, data, DEMO_REQUEST, methods.split(","), join(out, "compare"),
                    scaling, {}, command="compare")
    say(format_table(p))
    total = time.perf_counter() - t0
    write_json_atomic(join(out, "metrics.json"), {
        "command": "demo", "model": model, "data": data, "workers": scaling.workers,
        "workers_auto": choice, "wall_seconds": total,
        "train": {"wall_seconds": res.metrics["wall_seconds"], "epochs_run": res.metrics["epochs_run"],
                  "test": {k: t[k] for k in ("recall@20", "ndcg@20")},
                  "popularity": {k: pop[k] for k in ("recall@20", "ndcg@20")}},
        "compare": join(out, "compare", "metrics.json")})
    say(f"[4/4] report: {join(out, 'compare', 'report.md')} — total {total:.1f}s")
    return 0
