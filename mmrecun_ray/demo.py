"""``demo``: the main job on an embedded default — synthetic data in a local folder,
local Ray, 2-worker DDP training, then forgetting a user group with MMRecUN against Gold
and the baselines."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from mmrecun_ray.storage import exists, join

logger = logging.getLogger(__name__)

DEMO_MODEL = "lightgcn"
DEMO_REQUEST = "users:5%"


def run_demo(out: str, workers: int = 2, preset: str = "tiny", model: str = DEMO_MODEL,
             methods: str = "mmrecun,gold,finetune,neggrad") -> int:
    """Prepare -> train -> evaluate vs popularity -> compare unlearning methods; print."""
    from mmrecun_ray.data.dataset import load_dataset
    from mmrecun_ray.data.synthetic import prepare_synthetic
    from mmrecun_ray.evaluation.evaluate import evaluate_popularity
    from mmrecun_ray.training.runner import Scaling, ensure_ray
    from mmrecun_ray.training.train import train
    from mmrecun_ray.unlearning.service import run_methods
    from mmrecun_ray.unlearning.summary import format_table

    t0 = time.perf_counter()
    out = str(Path(out).resolve())
    data = join(out, "data")
    if not exists(join(data, "manifest.json")):
        prepare_synthetic(preset, 0, data)
    ds = load_dataset(data)
    print(f"[1/4] data: synthetic '{preset}' -> {data}: {ds.n_users} users, {ds.n_items} items, "
          f"{len(ds.train)}/{len(ds.valid)}/{len(ds.test)} train/valid/test, "
          f"modalities {{{', '.join(f'{m}: {f.shape[1]}' for m, f in ds.features.items())}}}")
    ensure_ray()
    scaling = Scaling(workers=workers, storage_uri=join(out, "ray"))
    res = train(data, model, join(out, "train"), scaling, sets={"epochs": 60, "patience": 5})
    pop = evaluate_popularity(ds)["test"]
    t = res.metrics["metrics"]["test"]
    print(f"[2/4] trained {model} on {workers} Ray Train workers in {res.metrics['wall_seconds']:.1f}s "
          f"({res.metrics['epochs_run']} epochs): test recall@20 {t['recall@20']:.4f} "
          f"ndcg@20 {t['ndcg@20']:.4f} vs popularity {pop['recall@20']:.4f} / {pop['ndcg@20']:.4f}")
    print(f"[3/4] forgetting {DEMO_REQUEST} of the users with {methods} ...")
    p = run_methods(res.model_uri, data, DEMO_REQUEST, methods.split(","), join(out, "compare"),
                    scaling, {}, command="compare")
    print(format_table(p))
    print(f"[4/4] report: {join(out, 'compare', 'report.md')} — total {time.perf_counter() - t0:.1f}s")
    return 0
