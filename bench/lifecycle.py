"""What the request lifecycle costs per request, on a local folder and on SeaweedFS (S3).

    python bench/lifecycle.py --data runs/data/lfm2k --requests 10

For each backend: the dataset is published there (a fresh copy, empty ledger), then
``--requests`` explicit user requests (2 users each) go through the lifecycle without any
unlearning method: resolve + lineage check (``plan``: loads the view with every earlier
request hidden), accept (ledger entry in the root's ledger + journal), publish the retain
version (Parquet + manifest + journal). Printed: median and max milliseconds per step and
per request, and the ledger read cost once N entries exist. The S3 run starts its own
SeaweedFS server on 127.0.0.1 (tests/s3server.py).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mmrecun_ray.data.dataset import load_dataset  # noqa: E402
from mmrecun_ray.data.writer import write_dataset  # noqa: E402
from mmrecun_ray.storage import join  # noqa: E402
from mmrecun_ray.training.export import ModelInfo  # noqa: E402
from mmrecun_ray.unlearning import lifecycle  # noqa: E402


def _publish_copy(src: str, dest: str) -> None:
    ds = load_dataset(src)
    write_dataset(dest, name=ds.manifest.name, n_users=ds.n_users, n_items=ds.n_items,
                  train=ds.train, valid=ds.valid, test=ds.test, features=ds.features,
                  source=f"copy:{src}")


def run(data: str, outs: str, n: int) -> dict[str, list[float]]:
    """Time ``n`` requests through plan / accept / publish_retain; ms per step."""
    from mmrecun_ray.data.lineage import version_hashes
    ds = load_dataset(data)
    info = ModelInfo(model="mf", params={}, n_users=ds.n_users, n_items=ds.n_items, modalities={},
                     data_uri=data, manifest_hash=ds.manifest.content_hash(),
                     root_hash=version_hashes(ds.manifest)[0])
    users = sorted(set(ds.train.user.tolist()))
    times: dict[str, list[float]] = {"plan": [], "accept": [], "publish_retain": [], "total": []}
    for k in range(n):
        spec = f"users={users[2 * k]},{users[2 * k + 1]}"
        t0 = time.perf_counter()
        p = lifecycle.plan(data, spec, 0, join(outs, f"req{k}"), info=info, model_uri="bench",
                           command="unlearn", methods=["none"], settings={})
        t1 = time.perf_counter()
        lifecycle.accept(p)
        t2 = time.perf_counter()
        lifecycle.publish_retain(p)
        t3 = time.perf_counter()
        info.honoured = sorted(set(info.honoured) | {p.request_id})  # the chain's model honours it
        for key, dt in (("plan", t1 - t0), ("accept", t2 - t1), ("publish_retain", t3 - t2),
                        ("total", t3 - t0)):
            times[key].append(1000 * dt)
    return times


def _report(label: str, times: dict[str, list[float]]) -> None:
    cells = ", ".join(f"{k} {statistics.median(v):.0f} ms (max {max(v):.0f})" for k, v in times.items())
    print(f"{label}: {cells}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="a published dataset version to copy")
    ap.add_argument("--requests", type=int, default=10, help="requests per backend (default: 10)")
    ap.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS run")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-lifecycle-"))
    try:
        local = str(tmp / "data")
        _publish_copy(args.data, local)
        _report(f"local folder ({args.requests} requests)", run(local, str(tmp / "out"), args.requests))
        if not args.no_s3:
            import os

            from s3server import SeaweedS3Server
            server = SeaweedS3Server(tmp / "seaweed")
            server.start()
            try:
                os.environ.update(server.env())
                remote = server.uri("bench/data")
                _publish_copy(args.data, remote)
                _report(f"SeaweedFS ({args.requests} requests)",
                        run(remote, server.uri("bench/out"), args.requests))
            finally:
                server.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
