"""Read throughput of a dataset version's Parquet files: Ray Data vs plain pyarrow, from a
local S3 server (SeaweedFS ``weed mini``) and from local disk, same bytes, one run.

    python bench/s3_read.py                       # synthetic `baby` (7,050 x (4096 + 384) features)
    python bench/s3_read.py --data runs/data/x    # any published local version

The script publishes the synthetic ``baby`` preset to ``--data`` if no version is there,
starts its own ``weed mini`` (``tests/s3server.py``), uploads the version with
:func:`mmrecun_ray.storage.upload.upload_dir_report` and reads every Parquet file the
manifest lists (interactions and features) four ways, each consumed fully:

* ``pyarrow local``: ``pq.read_table(path)`` from disk;
* ``pyarrow S3``: ``pq.read_table(path, filesystem=S3FileSystem)``;
* ``Ray Data local`` / ``Ray Data S3``: ``ray.data.read_parquet(paths, filesystem=fs)
  .materialize()`` (blocks land in the object store).

Each file is timed on its own (one Ray Dataset per file, as the pipeline reads them), and the
largest file (``features/image.parquet``) is also shown alone: Ray Data's fixed cost per
dataset (planning, a ``ListFiles`` task, scheduling) weighs on the small files. MB/s counts
the Parquet bytes on disk (what crosses the wire). Before timing, every reader reads the small
interactions file once (Ray worker start-up, S3 clients, pyarrow thread pools) and the local
files are read once (page cache). Timings on a shared 2-CPU machine are indicative: compare
ratios within one run only.
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow.fs as pafs
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mmrecun_ray.data.dataset import read_manifest  # noqa: E402
from mmrecun_ray.storage.upload import upload_dir_report  # noqa: E402
from mmrecun_ray.storage.s3 import s3_filesystem  # noqa: E402
from mmrecun_ray.storage.settings import S3Settings  # noqa: E402
from s3server import SeaweedS3Server  # noqa: E402

log = logging.getLogger("bench.s3_read")


@dataclass
class Row:
    """One way of reading the files: seconds per file and rows/bytes it produced."""

    name: str
    file_seconds: list[float]
    rows: int
    decoded_bytes: int

    @property
    def seconds(self) -> float:
        return sum(self.file_seconds)


def _pyarrow_read(fs: pafs.FileSystem, path: str) -> tuple[int, int]:
    """Read one file whole with ``pq.read_table``; returns (rows, decoded bytes)."""
    t = pq.read_table(path, filesystem=fs)
    return t.num_rows, t.nbytes


def _ray_read(fs: pafs.FileSystem, path: str) -> tuple[int, int]:
    """``ray.data.read_parquet`` of one file, materialized; returns (rows, decoded bytes).

    Interactions and each modality have different schemas, so each file is one dataset (as
    in :func:`mmrecun_ray.data.dataset.interactions_dataset` / ``features_dataset``).
    """
    import ray.data
    ds = ray.data.read_parquet([path], filesystem=fs, partitioning=None).materialize()
    return ds.count(), ds.size_bytes()


def _time(name: str, read: Callable[[pafs.FileSystem, str], tuple[int, int]], fs: pafs.FileSystem,
          paths: list[str]) -> Row:
    """Read ``paths`` one after the other with ``read``, timing each file."""
    row = Row(name, [], 0, 0)
    for p in paths:
        t0 = time.perf_counter()
        rows, nbytes = read(fs, p)
        row.file_seconds.append(time.perf_counter() - t0)
        row.rows += rows
        row.decoded_bytes += nbytes
    log.info("%s: %.2fs", name, row.seconds)
    return row


def ensure_version(data: Path, preset: str) -> None:
    """Publish the synthetic ``preset`` at ``data`` unless a version is already there."""
    if (data / "manifest.json").is_file():
        return
    from mmrecun_ray.data.synthetic import prepare_synthetic
    t0 = time.perf_counter()
    prepare_synthetic(preset, 0, str(data))
    log.info("generated synthetic %s at %s in %.1fs", preset, data, time.perf_counter() - t0)


def run(data: Path, object_store_mb: int) -> list[Row]:
    """Start weed, upload ``data``, time the four readers; returns the table rows."""
    import ray
    m = read_manifest(str(data))
    rels = sorted(k for k in m.files if k.endswith(".parquet"))
    disk_bytes = sum((data / r).stat().st_size for r in rels)
    with tempfile.TemporaryDirectory(prefix="bench-weed-") as tmp:
        server = SeaweedS3Server(Path(tmp))
        server.start()
        try:
            settings: S3Settings = server.settings()
            up = upload_dir_report(data, server.uri("bench", data.name), settings)
            print(f"uploaded {up.files} files, {up.bytes / 1e6:.1f} MB in {up.seconds:.2f}s "
                  f"({up.mb_per_s:.0f} MB/s) to {server.endpoint_url}")
            s3 = s3_filesystem(settings)
            local = pafs.LocalFileSystem()
            s3_paths = [posixpath.join(server.bucket, "bench", data.name, r) for r in rels]
            local_paths = [str((data / r).resolve()) for r in rels]

            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            ray.init(num_cpus=2, object_store_memory=object_store_mb * 1024 * 1024,
                     include_dashboard=False, log_to_driver=False)
            ray.data.DataContext.get_current().enable_progress_bars = False
            # warm-up on the small interactions file: Ray worker processes, the S3 clients,
            # pyarrow's thread pools and allocator (and the page cache for the local files)
            small = rels.index(next(r for r in rels if r.startswith("interactions/")))
            for fs, paths in ((local, local_paths), (s3, s3_paths)):
                _pyarrow_read(fs, paths[small])
                _ray_read(fs, paths[small])
            for path in local_paths:
                _pyarrow_read(local, path)
            rows = [_time("pyarrow local", _pyarrow_read, local, local_paths),
                    _time("pyarrow S3", _pyarrow_read, s3, s3_paths),
                    _time("Ray Data local", _ray_read, local, local_paths),
                    _time("Ray Data S3", _ray_read, s3, s3_paths)]
            ray.shutdown()
        finally:
            server.close()
    print(f"\n{len(rels)} Parquet files, {disk_bytes / 1e6:.1f} MB on disk "
          f"({', '.join(f'{r}: {(data / r).stat().st_size / 1e6:.1f} MB' for r in rels)})")
    big = max(range(len(rels)), key=lambda i: (data / rels[i]).stat().st_size)
    big_mb = (data / rels[big]).stat().st_size / 1e6
    print(f"{'reader':<16} {'seconds':>8} {'MB/s':>8} {'vs pyarrow S3':>14} {'rows':>9} "
          f"{'decoded MB':>11}   {rels[big]} alone: s, MB/s")
    base = next(r for r in rows if r.name == "pyarrow S3")
    for r in rows:
        print(f"{r.name:<16} {r.seconds:>8.2f} {disk_bytes / 1e6 / r.seconds:>8.1f} "
              f"{base.seconds / r.seconds:>13.2f}x {r.rows:>9} {r.decoded_bytes / 1e6:>11.1f}   "
              f"{r.file_seconds[big]:>6.2f} {big_mb / r.file_seconds[big]:>7.1f}")
    ray_s3 = next(r for r in rows if r.name == "Ray Data S3")
    print(f"\nthroughput ratios, all files: Ray Data S3 / pyarrow S3 {base.seconds / ray_s3.seconds:.2f}, "
          f"pyarrow S3 / pyarrow local {rows[0].seconds / base.seconds:.2f}; {rels[big]} alone: "
          f"Ray Data S3 / pyarrow S3 {base.file_seconds[big] / ray_s3.file_seconds[big]:.2f}")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "runs" / "data" / "baby-synth"),
                   help="local published version (generated if absent; default: runs/data/baby-synth)")
    p.add_argument("--preset", default="baby", help="synthetic preset to generate (default: baby)")
    p.add_argument("--object-store-mb", type=int, default=1024, help="Ray object store (default: 1024)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("mmrecun_ray", "ray", "s3server"):
        logging.getLogger(name).setLevel(logging.WARNING)
    data = Path(args.data)
    ensure_version(data, args.preset)
    run(data, args.object_store_mb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
