"""Seconds per epoch of the Ray Train loop against a plain PyTorch loop, same model, data,
batch size and objective, measured in one run.

    python bench/loop_overhead.py --data runs/data/lfm2k --model lightgcn --epochs 5

Rows: plain PyTorch (in-process numpy batches, no Ray, the same :class:`Fit` loss,
negative sampler and per-epoch validation), Ray Train local mode (Ray Data stream, no worker processes), Ray Train
with one worker holding every CPU, and with N DDP workers (``--cpus-per-worker`` each).
Epoch time covers the optimisation steps only (``epoch_seconds`` reported by the loop;
the first epoch dropped as warm-up: it is also the pass that streams the shard through Ray
Data before the worker keeps it in memory, see ``LoopConfig.cache_rows``), as the median
and the minimum over epochs (the minimum is the cost without interference from other
processes on a shared machine), and separately the whole wall time including start-up,
the first epoch and per-epoch validation. ``--models`` measures several models in one run and
prints seconds per step against the graph's edge count (what ``--workers auto`` uses).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrecun_ray.data.dataset import load_dataset  # noqa: E402
from mmrecun_ray.objectives import Fit  # noqa: E402
from mmrecun_ray.training.config import LoopConfig, LoopInputs  # noqa: E402
from mmrecun_ray.training.loop import View, build_start, make_sampler  # noqa: E402
from mmrecun_ray.training.runner import Scaling, ensure_ray, run_loop  # noqa: E402
from mmrecun_ray.training.train import loop_inputs, recipe, train_datasets  # noqa: E402


def plain_epochs(cfg: LoopConfig, fit: Fit, inputs: LoopInputs, epochs: int) -> list[float]:
    """The same optimisation in a bare PyTorch loop, with the loop's validation after every
    epoch (a plain loop with early stopping validates too, and what validation leaves behind
    in the allocator and caches slows the next epoch's first steps alike); returns steps-only
    seconds per epoch."""
    device = torch.device("cpu")
    model, _ = build_start(cfg, fit, inputs, device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    view = View(inputs, cfg, 0, 1, device, make_sampler(inputs, cfg.seed * 1000))
    u_all = torch.from_numpy(inputs.graph_edges[0])
    i_all = torch.from_numpy(inputs.graph_edges[1])
    gen = torch.Generator().manual_seed(cfg.seed)
    times = []
    for epoch in range(epochs):
        t = time.perf_counter()
        perm = torch.randperm(u_all.numel(), generator=gen)
        model.train()
        model.on_epoch_start(epoch, cfg.seed)
        for s in range(0, perm.numel(), cfg.batch_size):
            idx = perm[s:s + cfg.batch_size]
            batch = {"user_id": u_all[idx], "item_id": i_all[idx]}
            out = model()
            loss = fit.loss(model, out, batch, view)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t)
        model.eval()  # the same per-epoch validation as the loop's (untimed, as there)
        with torch.no_grad():
            view.validate(model())
    return times


def measure(data: str, model: str, epochs: int, variants: list[tuple[str, Scaling]],
            repeats: int = 2, cache_rows: int | None = None) -> list[tuple[str, tuple[float, float], float]]:
    """``(variant, steps-only s/epoch (median, min), wall s)`` rows, plain PyTorch first.

    The variants run interleaved, ``repeats`` rounds of plain, then each Ray variant, so a
    drift of the machine's speed during the run (other jobs, CPU frequency) hits them all
    alike; the epochs of all rounds (each round's first dropped) are pooled, wall is the
    median of the rounds."""
    ds = load_dataset(data)
    sets = {"epochs": epochs, "patience": 10**6, "checkpoint_every": 10**6, "report_every": 10**6}
    if cache_rows is not None:
        sets["cache_rows"] = cache_rows
    cfg, fit = recipe(model, sets)
    inputs = loop_inputs(ds)
    datasets = train_datasets(data)
    names = ["plain PyTorch"] + [name for name, _ in variants]
    epochs_of: dict[str, list[float]] = {n: [] for n in names}
    walls: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(repeats):
        t0 = time.perf_counter()
        plain = plain_epochs(cfg, fit, inputs, epochs)
        walls[names[0]].append(time.perf_counter() - t0)
        epochs_of[names[0]] += plain[1:]
        for name, scaling in variants:
            res = run_loop(cfg, fit, inputs, datasets, scaling, name="bench")
            epochs_of[name] += [h["epoch_seconds"] for h in res.history][1:]
            walls[name].append(res.wall_seconds)
    return [(n, (float(np.median(epochs_of[n])), float(np.min(epochs_of[n]))),
             float(np.median(walls[n]))) for n in names]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset URI")
    p.add_argument("--model", default="lightgcn", help="model name (default: lightgcn)")
    p.add_argument("--models", default=None, help="comma-separated models: plain vs local mode "
                   "only, with seconds per step (overrides --model)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per variant and round (default: 5)")
    p.add_argument("--cache-rows", type=int, default=None,
                   help="LoopConfig.cache_rows of the Ray variants (0: stream every epoch through "
                        "Ray Data, the loop before shards were kept; default: the loop's)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds of all variants (default: 2)")
    p.add_argument("--workers", type=int, default=2, help="DDP workers of the distributed variant (0: skip)")
    p.add_argument("--cpus-per-worker", type=float, default=0.5, help="of the DDP variant (default: 0.5)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    ensure_ray()
    ds = load_dataset(args.data)
    storage = tempfile.mkdtemp(prefix="loop-overhead-")
    cpus = float(os.cpu_count() or 1)
    if args.models:
        print(f"\n{args.data}: {len(ds.train)} train pairs = graph edges, {args.epochs} epochs, "
              f"load average {os.getloadavg()[0]:.1f}")
        print("| model | batch | steps/epoch | plain s/step | local mode s/step | x plain (median) | x plain (min) |")
        print("|---|---|---|---|---|---|---|")
        for model in args.models.split(","):
            cfg, _ = recipe(model, {})
            steps = -(-len(ds.train) // cfg.batch_size)
            rows = measure(args.data, model, args.epochs, [("local", Scaling(workers=0, storage_uri=storage))],
                           args.repeats, args.cache_rows)
            (pm, pn), (lm, ln) = rows[0][1], rows[1][1]
            print(f"| {model} | {cfg.batch_size} | {steps} | {pm / steps:.4f} | "
                  f"{lm / steps:.4f} | {lm / pm:.2f} | {ln / pn:.2f} |", flush=True)
        return 0
    variants = [("Ray Train local mode", Scaling(workers=0, storage_uri=storage)),
                (f"Ray Train 1 worker ({cpus:g} CPUs)",
                 Scaling(workers=1, cpus_per_worker=cpus, storage_uri=storage))]
    if args.workers:
        variants.append((f"Ray Train DDP x{args.workers} ({args.cpus_per_worker:g} CPUs each)",
                         Scaling(workers=args.workers, cpus_per_worker=args.cpus_per_worker,
                                 storage_uri=storage)))
    load0 = os.getloadavg()[0]
    rows = measure(args.data, args.model, args.epochs, variants, args.repeats, args.cache_rows)
    base_med, base_min = rows[0][1]
    print(f"\n{args.model} on {args.data} ({len(ds.train)} train pairs), {args.epochs} epochs x "
          f"{args.repeats} rounds, torch threads {torch.get_num_threads()}, cache_rows "
          f"{'default' if args.cache_rows is None else args.cache_rows}, "
          f"load average {load0:.1f} -> {os.getloadavg()[0]:.1f}")
    print("| variant | s/epoch median | x plain | s/epoch min | x plain | wall s (start-up + eval incl.) |")
    print("|---|---|---|---|---|---|")
    for name, (med, low), wall in rows:
        print(f"| {name} | {med:.3f} | {med / base_med:.2f} | {low:.3f} | {low / base_min:.2f} | {wall:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
