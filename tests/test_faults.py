"""Faults: a real Ray Train worker is killed (SIGKILL) mid-training and mid-unlearning; the
worker group restarts from the last checkpoint (``--max-failures 1``, the default), the
epoch and step counts carry on, and the result is as good as an uninterrupted run's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mmrecun_ray.data.dataset import load_dataset
from mmrecun_ray.data.synthetic import prepare_synthetic
from mmrecun_ray.evaluation.evaluate import evaluate_popularity
from mmrecun_ray.training.runner import Scaling
from mmrecun_ray.training.train import train

ROOT = Path(__file__).resolve().parents[1]
SETS = ["--set", "patience=1000", "--set", "checkpoint_every=2", "--set", "batch_size=512",
        "--set", "seed=0"]


def _start(args: list[str], tmp: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "mmrecun_ray", *args], cwd=ROOT, env=env,
                            stdout=open(tmp / "stdout.txt", "w"), stderr=open(tmp / "stderr.txt", "w"))


def _kill_one_worker_after_a_checkpoint(proc: subprocess.Popen, storage: Path,
                                        timeout: float = 400.0) -> int:
    """Wait until Ray Train has registered the run's first checkpoint (its checkpoint
    manager snapshot lists one), then SIGKILL one of its RayTrainWorker processes (a
    descendant of the CLI process: its own local Ray). Returns the pid."""
    def registered() -> bool:
        for snap in storage.glob("*/checkpoint_manager_snapshot.json"):
            try:
                return bool(json.loads(snap.read_text()).get("checkpoint_results"))
            except (OSError, ValueError):
                return False
        return False
    deadline = time.monotonic() + timeout
    while not registered():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.5)
    for child in psutil.Process(proc.pid).children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(child.cmdline()):
                os.kill(child.pid, signal.SIGKILL)
                return child.pid
        except psutil.Error:
            continue
    raise AssertionError("no RayTrainWorker process found")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("faults") / "data")
    prepare_synthetic("tiny", 0, out)
    return out


def test_a_killed_worker_mid_training_resumes_with_the_same_quality(ray_session: None, data: str,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "train"
    proc = _start(["train", "--data", data, "--model", "lightgcn", "--out", str(out), "--workers", "2",
                   "--epochs", "16", *SETS], tmp_path)
    killed = _kill_one_worker_after_a_checkpoint(proc, out / "ray")
    assert proc.wait(timeout=900) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert not psutil.pid_exists(killed) or psutil.Process(killed).status() == psutil.STATUS_ZOMBIE
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed_from_epoch"] is not None and m["resumed_from_epoch"] >= 1
    assert m["epochs_run"] == 16  # counted over both attempts, not restarted from 0
    # an uninterrupted run of the same recipe, and popularity
    ref = train(data, "lightgcn", str(tmp_path / "ref"), Scaling(workers=2),
                sets={"epochs": 16, "patience": 1000, "checkpoint_every": 2, "batch_size": 512})
    got, want = m["metrics"]["test"]["recall@20"], ref.metrics["metrics"]["test"]["recall@20"]
    assert abs(got - want) < 0.05, (got, want)
    pop = evaluate_popularity(load_dataset(data))["test"]["recall@20"]
    assert got > pop + 0.15


def test_a_killed_worker_mid_unlearning_resumes_and_finishes_the_budget(ray_session: None, data: str,
                                                                        tmp_path: Path) -> None:
    model = train(data, "lightgcn", str(tmp_path / "trained"), Scaling(workers=0),
                  sets={"epochs": 15, "patience": 5, "batch_size": 512, "checkpoint_every": 2}).model_uri
    out = tmp_path / "unlearn"
    proc = _start(["unlearn", "--model-uri", model, "--data", data, "--request", "users:10%",
                   "--method", "mmrecun", "--out", str(out), "--workers", "2", "--no-record",
                   "--set", "max_steps=40", "--set", "forget_target=null"], tmp_path)
    _kill_one_worker_after_a_checkpoint(proc, out / "ray")
    assert proc.wait(timeout=900) == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["steps"] == 40  # the budget, counted across the restart
    before, after = m["original"]["metrics"], m["metrics"]
    assert after["forget"]["recall@20"] < 0.5 * before["forget"]["recall@20"]
    assert after["test"]["recall@20"] >= 0.85 * before["test"]["recall@20"]
