"""Seconds per epoch of the Ray Train loop against a plain PyTorch loop, same model, data,
batch size and objective, measured in one run.

    python bench/loop_overhead.py --data runs/data/lfm2k --model lightgcn --epochs 5

Rows: plain PyTorch (in-process numpy batches, no Ray), Ray Train local mode (Ray Data
stream, no worker processes), Ray Train with N DDP workers. Epoch time covers the
optimisation steps only (``epoch_seconds`` reported by the loop), and separately the
whole wall time including start-up and per-epoch validation.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrecun_ray.data.dataset import load_dataset  # noqa: E402
from mmrecun_ray.models import BatchRows  # noqa: E402
from mmrecun_ray.objectives import bpr_loss  # noqa: E402
from mmrecun_ray.training.loop import make_model  # noqa: E402
from mmrecun_ray.training.runner import Scaling, ensure_ray, run_loop  # noqa: E402
from mmrecun_ray.training.sampler import NegativeSampler  # noqa: E402
from mmrecun_ray.training.train import loop_inputs, split_settings, train_datasets  # noqa: E402


def plain_epochs(cfg, inputs, epochs: int) -> list[float]:
    """The same optimisation in a bare PyTorch loop; returns seconds per epoch."""
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, inputs, torch.device("cpu"))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    u_all = inputs.graph_edges[0]
    i_all = inputs.graph_edges[1]
    sampler = NegativeSampler(inputs.known_keys, inputs.n_items, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    times = []
    for epoch in range(epochs):
        t = time.perf_counter()
        perm = rng.permutation(u_all.size)
        model.train()
        model.on_epoch_start(epoch, cfg.seed)
        for s in range(0, perm.size, cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            u, i = torch.from_numpy(u_all[idx]), torch.from_numpy(i_all[idx])
            j = sampler.sample_torch(u)
            out = model()
            rows = BatchRows.gather(out, u, i, j)
            loss = bpr_loss(*rows.scores()) + model.auxiliary_loss(out, u, i, j, rows=rows)
            if cfg.reg_weight:
                loss = loss + cfg.reg_weight * model.regularization(out, u, i, j, rows=rows)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t)
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset URI")
    p.add_argument("--model", default="lightgcn", help="model name")
    p.add_argument("--epochs", type=int, default=5, help="epochs per variant")
    p.add_argument("--workers", type=int, default=2, help="DDP workers of the distributed variant")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ds = load_dataset(args.data)
    cfg = split_settings(args.model, {"epochs": args.epochs, "patience": 10**6})
    inputs = loop_inputs(ds)
    rows = []
    t0 = time.perf_counter()
    plain = plain_epochs(cfg, inputs, args.epochs)
    rows.append(("plain PyTorch", float(np.median(plain)), time.perf_counter() - t0))
    ensure_ray()
    for name, workers in (("Ray Train local mode", 0), (f"Ray Train DDP x{args.workers}", args.workers)):
        res = run_loop(cfg, inputs, train_datasets(args.data), Scaling(workers=workers), name="bench")
        ep = [h["epoch_seconds"] for h in res.history]
        rows.append((name, float(np.median(ep)), res.wall_seconds))
    base = rows[0][1]
    print(f"\n{args.model} on {args.data} ({len(ds.train)} train pairs, batch {cfg.batch_size}), {args.epochs} epochs")
    print("| variant | s/epoch (median, steps only) | x plain | wall s (start-up + eval incl.) |")
    print("|---|---|---|---|")
    for name, sec, wall in rows:
        print(f"| {name} | {sec:.3f} | {sec / base:.2f} | {wall:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
