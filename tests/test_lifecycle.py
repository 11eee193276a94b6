"""The request lifecycle on real files and a real local Ray: sampled requests resolve to the
same ids whatever the ledger holds, a re-run resumes (or does nothing), ``--overwrite``
replaces another job, chained requests are honoured by a later ``train`` of the original,
and a process killed (SIGKILL) at each lifecycle state finishes on re-run with the same
pairs and one ledger entry.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmrecun_ray.cli import main
from mmrecun_ray.data.dataset import load_dataset
from mmrecun_ray.data.synthetic import prepare_synthetic
from mmrecun_ray.storage import ledger
from mmrecun_ray.training.export import read_model_info
from mmrecun_ray.training.runner import Scaling
from mmrecun_ray.training.train import train, train_datasets

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("lifecycle")
    data = str(root / "data")
    prepare_synthetic("tiny", 0, data)
    model = train(data, "lightgcn", str(root / "trained"), Scaling(workers=0),
                  sets={"epochs": 15, "patience": 5, "batch_size": 512}).model_uri
    return {"root": str(root), "data": data, "model": model}


def _fresh_copy(trained: dict[str, str], tmp: Path) -> str:
    """A copy of the dataset with an empty ledger (requests stay independent)."""
    import shutil
    dest = tmp / "data"
    shutil.copytree(trained["data"], dest, ignore=shutil.ignore_patterns("ledger"))
    return str(dest)


def _pairs(uri: str) -> set[tuple[int, int]]:
    ds = load_dataset(uri)
    return set(zip(ds.train.user.tolist(), ds.train.item.tolist()))


def _entries(data: str) -> list[dict]:
    return ledger.read_entries(str(Path(data) / "ledger"))


def _unlearn(model: str, data: str, out: Path, method: str = "redraw", request: str = "users:10%",
             *extra: str) -> list[str]:
    return ["unlearn", "--model-uri", model, "--data", data, "--request", request, "--method", method,
            "--out", str(out), "--workers", "0", *extra]


def test_sampled_request_is_the_same_for_every_command(trained, tmp_path: Path) -> None:
    data = _fresh_copy(trained, tmp_path)
    assert main(_unlearn(trained["model"], data, tmp_path / "a", "redraw")) == 0
    # the ledger now hides the first draw; the second command still draws the same users
    assert main(_unlearn(trained["model"], data, tmp_path / "b", "finetune", "users:10%",
                         "--set", "max_steps=3")) == 0
    entries = _entries(data)
    assert len(entries) == 1 and entries[0]["kind"] == "users" and len(entries[0]["users"]) == 30
    a = json.loads((tmp_path / "a" / "job.json").read_text())["key"]["request_id"]
    b = json.loads((tmp_path / "b" / "job.json").read_text())["key"]["request_id"]
    assert a == b == entries[0]["id"]
    assert _pairs(str(tmp_path / "a" / "retain_data")) == _pairs(str(tmp_path / "b" / "retain_data"))
    # both models honour the request, and the users' held-out rows are gone everywhere
    for out in ("a", "b"):
        assert read_model_info(str(tmp_path / out / "model")).honoured == [a]
    users = set(entries[0]["users"])
    again = load_dataset(data)
    for split in ("train", "valid", "test"):
        assert not users & set(again.split(split).user.tolist())


def test_rerun_of_a_finished_job_does_nothing_and_another_job_needs_overwrite(trained, tmp_path: Path,
                                                                              capsys) -> None:
    data = _fresh_copy(trained, tmp_path)
    out = tmp_path / "job"
    assert main(_unlearn(trained["model"], data, out, "redraw", "users:5%", "--no-record")) == 0
    def results() -> dict:  # every file but the run logs (each invocation appends its own)
        return {p: p.stat().st_mtime_ns for p in out.rglob("*")
                if p.is_file() and "logs" not in p.relative_to(out).parts}
    stamp = results()
    assert main(_unlearn(trained["model"], data, out, "redraw", "users:5%", "--no-record")) == 0
    assert results() == stamp
    assert (out / "logs" / "mmrecun.log").is_file()
    assert _entries(data) == []  # an experiment leaves the ledger alone
    capsys.readouterr()
    assert main(_unlearn(trained["model"], data, out, "redraw", "items:2%", "--no-record")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(_unlearn(trained["model"], data, out, "redraw", "items:2%", "--no-record",
                         "--overwrite")) == 0
    job = json.loads((out / "job.json").read_text())
    assert job["state"] == "done" and job["request"]["kind"] == "items"
    assert not list(tmp_path.glob("job.replaced-*"))  # moved aside, then removed once done
    assert read_model_info(str(out / "model")).banned_items


def test_chained_requests_are_honoured_by_a_later_train_of_the_original(trained, tmp_path: Path) -> None:
    data = _fresh_copy(trained, tmp_path)
    assert main(_unlearn(trained["model"], data, tmp_path / "r1", "redraw", "users=1,2,3")) == 0
    # the second request is applied to the first one's retain version, from its model
    assert main(_unlearn(str(tmp_path / "r1" / "model"), str(tmp_path / "r1" / "retain_data"),
                         tmp_path / "r2", "redraw", "users=4,5")) == 0
    entries = _entries(data)  # both in the ROOT's ledger
    assert [sorted(e["users"]) for e in entries] == [[1, 2, 3], [4, 5]]
    assert sorted(read_model_info(str(tmp_path / "r2" / "model")).honoured) == sorted(e["id"] for e in entries)
    stream = train_datasets(data)["train"].to_pandas()
    assert not set(stream.user_id.tolist()) & {1, 2, 3, 4, 5}
    again = train(data, "mf", str(tmp_path / "retrained"), Scaling(workers=0), sets={"epochs": 1})
    assert sorted(read_model_info(again.model_uri).honoured) == sorted(e["id"] for e in entries)
    # and the original model may no longer seed a new request: it still holds their data
    assert main(_unlearn(trained["model"], data, tmp_path / "r3", "redraw", "users=6")) == 2


STATES = ("accepted", "retain_published", "models_published", "done")


def _cli(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT), **env_extra}
    return subprocess.run([sys.executable, "-m", "mmrecun_ray", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("state", STATES)
def test_sigkill_at_each_state_then_rerun_finishes_with_the_same_pairs(trained, tmp_path: Path,
                                                                      state: str) -> None:
    data = _fresh_copy(trained, tmp_path)
    out = tmp_path / "out"
    args = _unlearn(trained["model"], data, out, "mmrecun", "users:10%", "--set", "max_steps=4",
                    "--set", "forget_target=null")
    killed = _cli(args, {"MMRECUN_FAULT_AT": state})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert json.loads((out / "job.json").read_text())["state"] == state
    rerun = _cli(args, {})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    job = json.loads((out / "job.json").read_text())
    entries = _entries(data)
    assert len(entries) == 1 and job["state"] == "done"
    assert [s["state"] for s in job["states"]].count("accepted") == 1
    # the pairs: the ledger's train rows are exactly what the retain version lacks
    raw = pq.read_table(Path(data) / "interactions").to_pandas()
    raw = raw[raw.split == "train"]
    all_pairs = set(zip(raw.user_id.tolist(), raw.item_id.tolist()))
    forgotten = ledger.entry_pairs(str(Path(data) / "ledger"), entries[0])
    train_rows = {(int(u), int(i)) for u, i, s in forgotten if s == 0}
    assert all_pairs - _pairs(str(out / "retain_data")) == train_rows
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 4 and (out / "model" / "model.json").is_file()
    assert np.isfinite(m["metrics"]["test"]["recall@20"])
