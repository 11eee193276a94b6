"""What a short job pays before its first optimisation step, measured in one run.

    python bench/startup.py --data runs/data/lfm2k --repeat 3

Rows (medians of ``--repeat`` runs; the load average is printed with them, since this
machine is shared):

- ``python -m mmrecun_ray --help``: interpreter + the CLI's imports (a subprocess);
- ``ray.init``: a fresh local Ray instance (a subprocess each time);
- an *empty* ``TorchTrainer.fit()`` with 0 (local mode), 1 and 2 workers, without and
  with the training pairs as a Ray Dataset (Ray Train splits it over the workers): the
  worker-group start the loop pays per run;
- what a run puts in front of the workers: the dataset's materialisation and the
  ``ray.put`` of the loop's inputs (graph, features, validation pairs);
- a real one-epoch training run (``run_loop``), local mode against 2-worker DDP.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def _median_of(fn: Callable[[], float], repeat: int) -> tuple[float, list[float]]:
    vals = [fn() for _ in range(repeat)]
    return statistics.median(vals), vals


def _subprocess_seconds(code: str) -> float:
    """Seconds of ``python -c code``: start to exit, or what the code prints last (a float)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT,
                         capture_output=True, text=True).stdout.split()
    wall = time.perf_counter() - t
    try:
        return float(out[-1])
    except (IndexError, ValueError):
        return wall


def _ray_init_code(tmp: str) -> str:
    return ("import ray, time; t = time.perf_counter(); "
            "ray.init(address='local', num_cpus=2, object_store_memory=300 * 2**20, "
            f"include_dashboard=False, log_to_driver=False, _temp_dir={tmp!r}); "
            "print(time.perf_counter() - t); ray.shutdown()")


def _empty(config: dict[str, Any]) -> None:
    """The trainer's per-worker function, doing nothing (touches its shard if any)."""
    import ray.train
    if config.get("dataset"):
        ray.train.get_dataset_shard("train")


def _empty_fit(workers: int, dataset: Any = None) -> float:
    import ray.train
    from ray.train.torch import TorchTrainer
    t = time.perf_counter()
    trainer = TorchTrainer(
        _empty, train_loop_config={"dataset": dataset is not None},
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, resources_per_worker={"CPU": 0.5} if workers else None),
        datasets={"train": dataset} if dataset is not None else None,
        run_config=ray.train.RunConfig(storage_path=tempfile.mkdtemp(prefix="h6-startup-")))
    trainer.fit()
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="dataset URI (its training pairs feed the runs)")
    p.add_argument("--model", default="lightgcn", help="model of the one-epoch runs (default: lightgcn)")
    p.add_argument("--repeat", type=int, default=3, help="runs per row; medians reported (default: 3)")
    p.add_argument("--ray-tmp", default="/tmp/ray-bench", help="Ray temp dir (short path)")
    args = p.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    rows: list[tuple[str, float, list[float]]] = []
    load0 = os.getloadavg()

    rows.append(("python -m mmrecun_ray --help", *_median_of(
        lambda: _subprocess_seconds("import runpy, sys; sys.argv = ['mmrecun_ray', '--help']; "
                                    "runpy.run_module('mmrecun_ray', run_name='__main__')"),
        args.repeat)))
    rows.append(("ray.init (fresh local instance)", *_median_of(
        lambda: _subprocess_seconds(_ray_init_code(args.ray_tmp)), args.repeat)))

    import ray
    ray.init(address="local", num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False,
             log_to_driver=False, _temp_dir=args.ray_tmp)
    ray.data.DataContext.get_current().enable_progress_bars = False
    from mmrecun_ray.data.dataset import load_dataset
    from mmrecun_ray.training.runner import Scaling, run_loop
    from mmrecun_ray.training.train import loop_inputs, recipe, train_datasets

    t = time.perf_counter()
    train_ds = train_datasets(args.data)["train"]
    rows.append(("materialise the training pairs from Parquet (Ray Data read tasks)",
                 time.perf_counter() - t, []))
    t = time.perf_counter()
    ds = load_dataset(args.data)
    rows.append(("load_dataset (numpy, in the driver)", time.perf_counter() - t, []))
    inputs = loop_inputs(ds)

    def from_arrays() -> float:
        import pyarrow as pa
        t = time.perf_counter()
        ray.data.from_arrow(pa.table({"user_id": ds.train.user.astype("int64"),
                                      "item_id": ds.train.item.astype("int64")})).materialize()
        return time.perf_counter() - t
    rows.append(("the same pairs from the loaded arrays (ray.data.from_arrow)",
                 *_median_of(from_arrays, args.repeat)))
    t = time.perf_counter()
    train_datasets(args.data)
    rows.append(("materialise from Parquet again (read tasks' workers warm)", time.perf_counter() - t, []))

    def put() -> float:
        t = time.perf_counter()
        ref = ray.put(inputs)
        dt = time.perf_counter() - t
        del ref
        return dt
    rows.append(("ray.put(LoopInputs)", *_median_of(put, args.repeat)))

    for workers in (0, 1, 2):
        rows.append((f"empty TorchTrainer.fit(), {workers} workers", *_median_of(
            lambda: _empty_fit(workers), args.repeat)))
        rows.append((f"empty TorchTrainer.fit(), {workers} workers + dataset", *_median_of(
            lambda: _empty_fit(workers, train_ds), args.repeat)))

    for workers in (0, 2):
        def one() -> float:
            cfg, fit = recipe(args.model, {"epochs": 1})  # a fresh objective: it keeps state
            res = run_loop(cfg, fit, inputs, {"train": train_ds}, Scaling(
                workers=workers, storage_uri=tempfile.mkdtemp(prefix="h6-startup-")), name="bench")
            return res.wall_seconds
        rows.append((f"run_loop {args.model}, 1 epoch, {workers} workers", *_median_of(one, args.repeat)))
    ray.shutdown()

    load1 = os.getloadavg()
    print(f"\n{args.data}: {len(ds.train)} train pairs; {os.cpu_count()} CPUs; load average "
          f"{load0[0]:.1f} at start, {load1[0]:.1f} at end (1-min)")
    print("| what | seconds (median) | runs |")
    print("|---|---|---|")
    for name, med, vals in rows:
        print(f"| {name} | {med:.2f} | {', '.join(f'{v:.2f}' for v in vals) or '1 run'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
