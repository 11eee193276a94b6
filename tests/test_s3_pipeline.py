"""``s3://`` end to end against a real SeaweedFS server: prepare -> train -> unlearn ->
evaluate with every input and artifact on S3, the same run on a local folder, a 2-worker
Ray Train run checkpointing to S3, the object store going down mid-pipeline, and ``upload``.

Ray-level work is shared by the module (a ``TorchTrainer.fit()`` costs ~20 s here): the S3
and local pipelines run in local mode (``--workers 0``, bitwise comparable), and one 2-worker
DDP run trains on the S3 data and checkpoints to S3.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmrecun_ray.cli import main
from mmrecun_ray.data.dataset import load_dataset
from mmrecun_ray.data.schema import SPLITS
from mmrecun_ray.data.synthetic import prepare_synthetic
from mmrecun_ray.evaluation.evaluate import evaluate_popularity
from mmrecun_ray.storage import join, ledger, list_files, read_json, resolve
from mmrecun_ray.storage import uri as storage_uri
from mmrecun_ray.storage.retry import RetryPolicy
from mmrecun_ray.training.train import train_datasets

TRAIN_ARGS = ["--model", "lightgcn", "--epochs", "8", "--set", "batch_size=512", "--set", "seed=0",
              "--set", "learning_rate=0.01"]
UNLEARN_ARGS = ["--request", "users:10%", "--seed", "0", "--method", "mmrecun", "--set", "max_steps=40"]
COMMANDS = ("train", "unlearn", "evaluate")


def _pipeline(root: str, ddp_out: str | None = None) -> dict[str, dict[str, Any]]:
    """prepare tiny -> train (local mode) -> [train with 2 workers to ``ddp_out``] -> unlearn
    users:10% -> evaluate the unlearned model, all below ``root``; returns each command's
    ``metrics.json`` and the popularity baseline of the data."""
    data = join(root, "data")
    assert main(["prepare", "synthetic", "--preset", "tiny", "--seed", "0", "--out", data]) == 0
    popularity = evaluate_popularity(load_dataset(data))
    assert main(["train", "--data", data, "--out", join(root, "train"), "--workers", "0", *TRAIN_ARGS]) == 0
    if ddp_out is not None:  # before unlearn: trains on the full data, like the local-mode run
        _train_ddp_endpoint_from_flag(data, ddp_out)
    assert main(["unlearn", "--model-uri", join(root, "train", "model"), "--data", data,
                 "--out", join(root, "unlearn"), "--workers", "0", *UNLEARN_ARGS]) == 0
    assert main(["evaluate", "--model-uri", join(root, "unlearn", "model"), "--data", data,
                 "--out", join(root, "evaluate")]) == 0
    return {"popularity": popularity, **{c: read_json(join(root, c, "metrics.json")) for c in COMMANDS}}


def _train_ddp_endpoint_from_flag(data: str, out: str) -> None:
    """2-worker training with the endpoint given only as ``--s3-endpoint`` (``configure()``
    in this process, nothing in the environment), so the Ray Data read tasks and the Ray
    Train workers reach S3 only through the filesystem objects handed to them."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("AWS_ENDPOINT_URL")
        try:
            assert main(["train", "--data", data, "--out", out, "--workers", "2",
                         "--s3-endpoint", endpoint, *TRAIN_ARGS]) == 0
        finally:
            storage_uri.configure(None)


@pytest.fixture(scope="module")
def runs(s3_server, ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Both pipelines and the DDP run; AWS_* variables point at ``s3_server`` for the module
    (set after Ray started, so Ray workers never see them: only the filesystem objects
    handed to Ray Data / Ray Train carry the endpoint and credentials)."""
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith("AWS_")]:
            mp.delenv(var)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        mp.setenv("AWS_CONFIG_FILE", os.devnull)
        for var, value in s3_server.env().items():
            mp.setenv(var, value)
        storage_uri.configure(None)
        s3_root = s3_server.uri(f"pipeline-{os.getpid()}-{time.time_ns() % 10**8}")
        local_root = str(tmp_path_factory.mktemp("s3-pipeline-local"))
        ddp_out = join(s3_root, "train-ddp")
        yield {"s3_root": s3_root, "local_root": local_root, "ddp_out": ddp_out, "server": s3_server,
               "s3": _pipeline(s3_root, ddp_out), "local": _pipeline(local_root),
               "ddp": read_json(join(ddp_out, "metrics.json"))}


def test_pipeline_on_s3_matches_the_local_folder_run(runs: dict[str, Any]) -> None:
    s3, local = runs["s3"], runs["local"]
    for c in COMMANDS:
        assert s3[c]["metrics"] == local[c]["metrics"], c  # same seeds, same bytes: identical
    assert s3["unlearn"]["mia_auc"] == local["unlearn"]["mia_auc"]
    def where_blind(request: dict) -> dict:
        return {k: v for k, v in request.items() if k != "data"}  # the URI differs, nothing else
    assert where_blind(s3["unlearn"]["request"]) == where_blind(local["unlearn"]["request"])
    # the numbers are real: training beat popularity, unlearning removed the forget set
    assert s3["popularity"] == local["popularity"]
    pop = s3["popularity"]["test"]["recall@20"]
    assert s3["train"]["metrics"]["test"]["recall@20"] > pop + 0.1, (s3["train"]["metrics"]["test"], pop)
    before, after = s3["unlearn"]["original"]["metrics"]["forget"], s3["unlearn"]["metrics"]["forget"]
    assert after["recall@20"] < 0.5 * before["recall@20"], (before, after)
    # every artifact is on S3, the same files as in the local run (plus Ray Train's checkpoints
    # of the 2-worker run); model and metrics point at S3 URIs
    on_s3 = set(list_files(runs["s3_root"]))
    # (run logs stay beside a local --out; an s3:// --out leaves them in the Ray session dir)
    local_files = {f for f in list_files(runs["local_root"]) if "/logs/" not in f}
    assert local_files == {f for f in on_s3 if not f.startswith("train-ddp/")}
    for f in ("data/manifest.json", "train/model/model.pt", "train/model/model.json", "train/metrics.json",
              "unlearn/model/model.pt", "unlearn/retain_data/manifest.json", "evaluate/metrics.json"):
        assert f in on_s3, f
    assert s3["evaluate"]["model_uri"] == join(runs["s3_root"], "unlearn", "model")
    assert s3["train"]["model_uri"].startswith("s3://")


def test_two_worker_run_reads_from_and_checkpoints_to_s3(runs: dict[str, Any]) -> None:
    ddp = runs["ddp"]
    assert ddp["workers"] == 2 and ddp["epochs_run"] >= 1
    ckpts = list_files(join(runs["ddp_out"], "ray"))  # --storage defaulted to <out>/ray on S3
    assert any(f.endswith("/checkpoint.pt") for f in ckpts), ckpts
    assert any(f.endswith("checkpoint_manager_snapshot.json") for f in ckpts), ckpts
    assert list_files(join(runs["ddp_out"], "model")) == ["model.json", "model.pt", "optimizer.pt"]
    # trained on S3-streamed shards in 2 processes: as good as the local-mode run on the same data
    local = runs["s3"]["train"]["metrics"]["test"]["recall@20"]
    assert abs(ddp["metrics"]["test"]["recall@20"] - local) < 0.03, (ddp["metrics"]["test"], local)
    # Ray worker processes never had this server's endpoint or keys in their environment
    import ray
    worker_env = ray.get(ray.remote(lambda: dict(os.environ)).remote())
    server = runs["server"]
    assert not {server.endpoint_url, server.access_key, server.secret_key} & set(worker_env.values())


def _raw_pairs(data_uri: str) -> dict[str, set[tuple[int, int]]]:
    """Per split, the pairs in the published Parquet read with plain pyarrow (no ledger)."""
    fs, root = resolve(data_uri)
    t = pq.read_table(f"{root}/interactions", filesystem=fs).to_pandas()
    return {s: set(zip(t.user_id[t.split == s].tolist(), t.item_id[t.split == s].tolist())) for s in SPLITS}


def test_ledger_on_s3_hides_forgotten_pairs_from_every_load(runs: dict[str, Any]) -> None:
    data = join(runs["s3_root"], "data")
    entries = ledger.read_entries(join(data, "ledger"))
    assert [e["seq"] for e in entries] == [0]
    assert entries[0]["id"] == runs["s3"]["unlearn"]["request"]["id"]
    pairs = ledger.entry_pairs(join(data, "ledger"), entries[0])  # [user, item, split]
    forgotten = set(map(tuple, pairs[:, :2].tolist()))
    assert int((pairs[:, 2] == 0).sum()) == runs["s3"]["unlearn"]["request"]["forget_pairs"] > 0
    assert (pairs[:, 2] > 0).any()  # the users' valid/test rows are recorded (and hidden) too
    # the S3 ledger and the local one recorded the same request
    local_entries = ledger.read_entries(join(runs["local_root"], "data", "ledger"))
    assert local_entries[0]["pairs_sha256"] == entries[0]["pairs_sha256"]

    raw = _raw_pairs(data)
    ds = load_dataset(data)
    for s in SPLITS:
        x = ds.split(s)
        assert set(zip(x.user.tolist(), x.item.tolist())) == raw[s] - forgotten, s
    assert forgotten <= set().union(*raw.values())
    stream = train_datasets(data)["train"].to_pandas()  # Ray Data tasks reading from S3
    assert set(zip(stream.user_id.tolist(), stream.item_id.tolist())) == raw["train"] - forgotten
    assert len(stream) == len(ds.train)


def test_evaluate_with_object_store_down_exits_2_naming_endpoint_bucket_key(
        s3_env, s3_prefix: str, capsys: pytest.CaptureFixture) -> None:
    data = join(s3_prefix, "data")
    prepare_synthetic("tiny", 0, data)
    storage_uri.configure(storage_uri.S3Settings(retry=RetryPolicy(max_attempts=2, deadline_s=3.0,
                                                                   connect_timeout_s=1.0)))
    capsys.readouterr()
    s3_env.stop()
    try:
        t0 = time.perf_counter()
        rc = main(["evaluate", "--model-uri", join(s3_prefix, "model"), "--data", data,
                   "--out", join(s3_prefix, "eval")])
        took = time.perf_counter() - t0
    finally:
        s3_env.start()
    err = capsys.readouterr().err
    assert rc == 2 and took < 15.0, (rc, took)
    bucket, key = s3_prefix[len("s3://"):].split("/", 1)
    assert s3_env.endpoint_url in err and f"bucket '{bucket}'" in err
    assert f"{key}/data/manifest.json" in err and "unreachable" in err
    assert s3_env.secret_key not in err
    # back up: the same command gets past storage (and fails on the missing model instead)
    rc = main(["evaluate", "--model-uri", join(s3_prefix, "model"), "--data", data,
               "--out", join(s3_prefix, "eval")])
    assert rc == 2 and "not an exported model folder" in capsys.readouterr().err


def test_upload_cli_publishes_a_local_dataset_readable_from_s3(
        s3_env, s3_prefix: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    src = tmp_path / "tiny"
    prepare_synthetic("tiny", 3, str(src))
    before = sorted((p.relative_to(tmp_path).as_posix(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    capsys.readouterr()
    assert main(["upload", "--src", str(src), "--dest", s3_prefix]) == 0
    out = capsys.readouterr().out
    files = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    nbytes = sum((src / f).stat().st_size for f in files)
    assert f"uploaded {len(files)} files, {nbytes} bytes" in out, out
    assert list_files(s3_prefix) == files
    assert sorted((p.relative_to(tmp_path).as_posix(), p.stat().st_mtime_ns)
                  for p in tmp_path.rglob("*")) == before  # wrote nothing locally

    a, b = load_dataset(str(src)), load_dataset(s3_prefix)
    assert (a.n_users, a.n_items) == (b.n_users, b.n_items) and a.manifest == b.manifest
    for s in SPLITS:
        np.testing.assert_array_equal(a.split(s).user, b.split(s).user)
        np.testing.assert_array_equal(a.split(s).item, b.split(s).item)
    assert a.features.keys() == b.features.keys()
    for m in a.features:
        np.testing.assert_array_equal(a.features[m], b.features[m])

    # a second publish is refused unless --overwrite
    assert main(["upload", "--src", str(src), "--dest", s3_prefix]) == 2
    assert "already published" in capsys.readouterr().err
    assert main(["upload", "--src", str(src), "--dest", s3_prefix, "--overwrite"]) == 0
