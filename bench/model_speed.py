"""Seconds per training epoch of each model in a plain PyTorch loop (no Ray), the speed
the models themselves set.

    python bench/model_speed.py --data runs/data/lfm2k --epochs 6
    python bench/model_speed.py --data runs/data/lfm2k --models mgcn --profile
    python bench/model_speed.py --data runs/data/lfm2k --reference lightgcn=1.2,mgcn=3.4

One epoch = one shuffled pass over the training pairs in batches of ``--batch-size``
(2048, MMRec's ``train_batch_size``), each step: the model's full forward, one uniform
negative per pair, BPR + the model's auxiliary loss + ``reg_weight`` x its L2 penalty with
the model's training defaults, Adam. ``on_epoch_start`` is called before every epoch
(FREEDOM draws its pruned graph there). The first epoch is a warm-up and not counted;
the table gives the median wall and process-CPU seconds of the others, and with
``--reference`` (e.g. MMRec's s/epoch measured on the same machine, same thread count) the
ratio to it (of CPU seconds by default: wall time on a shared machine measures the load).
``--profile`` prints the top operators of one epoch (``torch.profiler``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmrecun_ray.data.dataset import load_dataset  # noqa: E402
from mmrecun_ray.data.schema import RecDataset  # noqa: E402
from mmrecun_ray.models import BatchRows, build_model  # noqa: E402
from mmrecun_ray.models.base import Recommender  # noqa: E402
from mmrecun_ray.objectives import bpr_loss  # noqa: E402
from mmrecun_ray.training.defaults import training_defaults  # noqa: E402
from mmrecun_ray.objectives.sampling import NegativeSampler  # noqa: E402


def build(name: str, ds: RecDataset, seed: int) -> Recommender:
    """The model over ``ds``'s training graph and features, in training mode."""
    torch.manual_seed(seed)
    feats = {m: torch.from_numpy(np.ascontiguousarray(f)).float() for m, f in ds.features.items()}
    model = build_model(name, ds.n_users, ds.n_items, feats, {})
    model.set_graph(torch.from_numpy(np.stack([ds.train.user, ds.train.item]).astype(np.int64)))
    return model.train()


def run_epoch(model: Recommender, opt: torch.optim.Optimizer, users: np.ndarray,
              items: np.ndarray, sampler: NegativeSampler, rng: np.random.Generator,
              batch_size: int, reg_weight: float, epoch: int, seed: int) -> float:
    """One pass over the ``(E,)`` training pairs; returns the mean loss."""
    model.on_epoch_start(epoch, seed)
    perm = rng.permutation(users.size)
    total, steps = 0.0, 0
    for s in range(0, perm.size, batch_size):
        idx = perm[s:s + batch_size]
        u, i = torch.from_numpy(users[idx]), torch.from_numpy(items[idx])
        j = sampler.sample_torch(u)
        out = model()
        rows = BatchRows.gather(out, u, i, j)
        loss = bpr_loss(*rows.scores()) + model.auxiliary_loss(out, u, i, j, rows=rows)
        if reg_weight:
            loss = loss + reg_weight * model.regularization(out, u, i, j, rows=rows)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach())
        steps += 1
    return total / max(steps, 1)


def time_model(name: str, ds: RecDataset, epochs: int, batch_size: int, seed: int,
               profile: bool) -> dict[str, float]:
    """Median wall / CPU seconds per epoch over ``epochs`` timed epochs (after a warm-up)."""
    td = training_defaults(name)
    model = build(name, ds, seed)
    opt = torch.optim.Adam(model.parameters(), lr=td.learning_rate)
    users = ds.train.user.astype(np.int64)
    items = ds.train.item.astype(np.int64)
    sampler = NegativeSampler(ds.train.keys(ds.n_items), ds.n_items, seed=seed)
    rng = np.random.default_rng(seed)
    args = (opt, users, items, sampler, rng, batch_size, td.reg_weight)
    first = run_epoch(model, *args, epoch=0, seed=seed)  # warm-up: kNN graphs, allocator
    walls, cpus, loss = [], [], first
    for epoch in range(1, epochs + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        loss = run_epoch(model, *args, epoch=epoch, seed=seed)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run_epoch(model, *args, epoch=epochs + 1, seed=seed)
        print(f"\n== {name}: one epoch, top operators by self CPU time ==")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus),
            "first_loss": first, "last_loss": loss}


def parse_reference(text: str | None) -> dict[str, float]:
    """``"lightgcn=1.2,mgcn=3.4"`` -> ``{"lightgcn": 1.2, "mgcn": 3.4}``."""
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        if part.strip():
            k, v = part.split("=", 1)
            out[k.strip()] = float(v)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset URI (prepared Last.fm-2K)")
    p.add_argument("--models", default="mf,vbpr,lightgcn,freedom,mgcn", help="comma-separated models")
    p.add_argument("--epochs", type=int, default=5, help="timed epochs per model (after one warm-up)")
    p.add_argument("--batch-size", type=int, default=2048, help="pairs per step (MMRec: 2048)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", default=None,
                   help="model=s_per_epoch pairs to compare with, e.g. MMRec's on this machine")
    p.add_argument("--reference-metric", choices=("cpu", "wall"), default="cpu",
                   help="which of our two timings the reference is compared with (default: "
                        "process CPU seconds, robust on a shared machine)")
    p.add_argument("--profile", action="store_true", help="print torch.profiler's top operators")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ds = load_dataset(args.data)
    ref = parse_reference(args.reference)
    print(f"{args.data}: {ds.n_users} users, {ds.n_items} items, {ds.train.user.size} train pairs, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads")
    rows = []
    for name in args.models.split(","):
        r = time_model(name, ds, args.epochs, args.batch_size, args.seed, args.profile)
        rows.append((name, r))
        print(f"{name}: {r['wall']:.3f} s/epoch wall, {r['cpu']:.3f} s/epoch CPU, "
              f"loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}", flush=True)
    key = args.reference_metric
    print(f"\n| model | s/epoch (wall, median) | s/epoch (CPU) | reference s/epoch ({key}) | ratio |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        ratio = f"{r[key] / ref[name]:.2f}" if name in ref else "—"
        print(f"| {name} | {r['wall']:.3f} | {r['cpu']:.3f} | {ref.get(name, '—')} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
