"""Memory each worker holds for the item features, with and without object-store sharing.

    python bench/feature_memory.py                      # image features of synthetic `baby`
    python bench/feature_memory.py --data runs/data/x --modality image

The ``(n_items, d)`` float32 features of one modality (synthetic ``baby``: 7,050 x 4,096,
115.5 MB) are read with Ray Data (:func:`mmrecun_ray.data.dataset.features_dataset`) and
``ray.put`` once. Then, per scenario, two fresh Ray actors on this node each hold the matrix:

* ``shared``: ``ray.get`` of the one ObjectRef -- a read-only numpy view of the object store's
  shared memory (zero-copy), which is how the training loop's inputs reach the workers;
* ``copy``: ``np.array(ray.get(ref), copy=True)`` -- a private copy, the view dropped;
* ``own read``: each actor reads the Parquet file itself (no Ray involved), as workers
  loading the dataset themselves would.

Each actor touches every element (a checksum) so all pages are resident, then reports
psutil ``memory_full_info()``: USS (pages only it maps) and PSS (its own pages plus each
shared page divided by the number of processes mapping it -- the driver that wrote the
object and both actors). Deltas are against the same actor before it got the features.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmrecun_ray.data.dataset import features_dataset, features_to_numpy, read_manifest  # noqa: E402

MB = 1_000_000
SCENARIOS = ("shared", "copy", "own read")


def _memory() -> dict[str, int]:
    """This process's USS, PSS and RSS in bytes (after a garbage collection)."""
    import psutil
    gc.collect()
    m = psutil.Process().memory_full_info()
    return {"uss": m.uss, "pss": m.pss, "rss": m.rss}


class FeatureHolder:
    """A worker that holds the ``(n_items, d)`` float32 feature matrix (a Ray actor)."""

    def __init__(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        import ray
        self.features: np.ndarray | None = None
        # warm both paths before the baseline (object store client; Parquet reader, thread
        # pool, allocator), so the deltas count the features, not one-off set-up
        ray.get(ray.put(np.zeros(1 << 18, dtype=np.float32)))
        buf = pa.BufferOutputStream()
        pq.write_table(pa.table({"x": np.zeros(1 << 16, dtype=np.float32)}), buf)
        pq.read_table(pa.BufferReader(buf.getvalue()))

    def memory(self) -> dict[str, int]:
        return _memory()

    def hold(self, mode: str, refs: list[Any], parquet_path: str, dim: int) -> dict[str, Any]:
        """Get the features the ``mode`` way; returns checksum, writeable flag and nbytes.

        Args:
            refs: ``[ObjectRef]`` (wrapped so Ray hands over the ref, not its value).
        """
        import ray
        if mode == "shared":
            self.features = ray.get(refs[0])
        elif mode == "copy":
            view = ray.get(refs[0])
            self.features = np.array(view, copy=True)
            del view
        elif mode == "own read":
            import pyarrow as pa
            import pyarrow.parquet as pq
            col = pq.read_table(parquet_path, columns=["embedding"])["embedding"].combine_chunks()
            self.features = col.flatten().to_numpy().reshape(-1, dim)  # (n_items, d), arrow-owned
            del col
            pa.default_memory_pool().release_unused()
        else:
            raise ValueError(f"unknown mode {mode!r}; expected one of {SCENARIOS}")
        checksum = float(self.features.sum(dtype=np.float64))  # touches every page
        return {"checksum": checksum, "writeable": bool(self.features.flags.writeable),
                "nbytes": int(self.features.nbytes)}


def run(data: str, modality: str, workers: int) -> list[dict[str, Any]]:
    """Load the features once, run every scenario with ``workers`` fresh actors; returns rows."""
    import ray
    m = read_manifest(data)
    dim = int(m.modalities[modality])
    feats = features_to_numpy(features_dataset(data, modality), int(m.n_items), dim)
    ref = ray.put(feats)
    path = str(Path(data, "features", f"{modality}.parquet").resolve())
    print(f"features {modality}: {feats.shape} float32, {feats.nbytes / MB:.1f} MB, put once "
          f"in the object store; {workers} actors per scenario")
    expected = float(feats.sum(dtype=np.float64))
    del feats
    holder_cls = ray.remote(num_cpus=0)(FeatureHolder)
    rows: list[dict[str, Any]] = []
    for mode in SCENARIOS:
        actors = [holder_cls.remote() for _ in range(workers)]
        before = ray.get([a.memory.remote() for a in actors])
        held = ray.get([a.hold.remote(mode, [ref], path, dim) for a in actors])
        after = ray.get([a.memory.remote() for a in actors])  # every actor has touched its pages
        for w, (b, h, a) in enumerate(zip(before, held, after)):
            if abs(h["checksum"] - expected) > 1e-6 * max(1.0, abs(expected)):
                raise RuntimeError(f"{mode} worker {w}: checksum {h['checksum']} != {expected}")
            rows.append({"mode": mode, "worker": w, "writeable": h["writeable"], "nbytes": h["nbytes"],
                         **{k: a[k] for k in ("uss", "pss", "rss")},
                         **{f"d_{k}": a[k] - b[k] for k in ("uss", "pss", "rss")}})
        for a in actors:
            ray.kill(a)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (f"{'scenario':<9} {'worker':>6} {'USS MB':>8} {'PSS MB':>8} {'RSS MB':>8} "
            f"{'+USS MB':>8} {'+PSS MB':>8} {'+RSS MB':>8} {'writeable':>9}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['mode']:<9} {r['worker']:>6} {r['uss'] / MB:>8.1f} {r['pss'] / MB:>8.1f} "
              f"{r['rss'] / MB:>8.1f} {r['d_uss'] / MB:>8.1f} {r['d_pss'] / MB:>8.1f} "
              f"{r['d_rss'] / MB:>8.1f} {str(r['writeable']):>9}")
    mean = {mode: {k: float(np.mean([r[k] for r in rows if r["mode"] == mode])) / MB
                   for k in ("d_uss", "d_pss")} for mode in SCENARIOS}
    print("\nper worker, mean added by holding the features (MB):")
    for mode in SCENARIOS:
        print(f"  {mode:<9} USS {mean[mode]['d_uss']:7.1f}   PSS {mean[mode]['d_pss']:7.1f}")
    sh = mean["shared"]
    for mode in ("copy", "own read"):
        print(f"  {mode} / shared: PSS {mean[mode]['d_pss'] / max(sh['d_pss'], 1e-9):.1f}x, "
              f"USS {mean[mode]['d_uss']:.1f} MB vs {sh['d_uss']:.1f} MB")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "runs" / "data" / "baby-synth"),
                   help="local published version (synthetic baby generated if absent; "
                        "default: runs/data/baby-synth)")
    p.add_argument("--modality", default="image", help="modality whose features are held (default: image)")
    p.add_argument("--workers", type=int, default=2, help="actors per scenario (default: 2)")
    p.add_argument("--object-store-mb", type=int, default=1024, help="Ray object store (default: 1024)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if not Path(args.data, "manifest.json").is_file():
        from mmrecun_ray.data.synthetic import prepare_synthetic
        prepare_synthetic("baby", 0, args.data)
    import ray
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, object_store_memory=args.object_store_mb * 1024 * 1024, include_dashboard=False,
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        print_table(run(args.data, args.modality, args.workers))
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
