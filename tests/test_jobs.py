"""`ray job submit` against a real local Ray cluster (``ray start --head`` on loopback):
a training job then an unlearning job, through the entrypoints in ``jobs/``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env["RAY_AUTH_MODE"] = "disabled"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


def _kill_cluster(temp_dir: str) -> None:
    """Stop only this cluster: every process whose command line names its temp dir
    (``ray stop`` would also kill other Ray instances of this user)."""
    victims = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(temp_dir in (a or "") for a in (p.info["cmdline"] or [])):
                victims.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in victims:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(victims, timeout=10)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    if shutil.which("ray") is None:
        pytest.skip("the `ray` CLI is not installed (pip install 'ray[default]')")
    temp_dir = tempfile.mkdtemp(prefix="mmrj", dir="/tmp")  # short: Ray's socket paths
    gcs, dash = _free_port(), _free_port()
    cmd = ["ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(gcs),
           "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash), "--num-cpus", "2",
           "--object-store-memory", str(200 * 1024 * 1024), "--temp-dir", temp_dir,
           "--disable-usage-stats", "--include-dashboard", "true",
           # every port of its own: another Ray on this machine may hold the defaults
           "--dashboard-agent-listen-port", str(_free_port()),
           "--dashboard-agent-grpc-port", str(_free_port()),
           "--runtime-env-agent-port", str(_free_port()),
           "--metrics-export-port", str(_free_port()),
           "--ray-client-server-port", str(_free_port())]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        _kill_cluster(temp_dir)
        pytest.fail(f"ray start failed:\n{out.stdout}\n{out.stderr}")
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # the job server answers shortly after start
            r = subprocess.run(["ray", "job", "list", "--address", address], env=_env(),
                               capture_output=True, text=True, timeout=60)
            if r.returncode == 0:
                break
            time.sleep(1)
        yield address
    finally:
        _kill_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(address: str, env_vars: dict[str, str], script: str) -> str:
    cmd = ["ray", "job", "submit", "--address", address, "--working-dir", str(REPO),
           "--runtime-env", str(REPO / "jobs" / "runtime_env.yaml"), "--",
           "env", *[f"{k}={v}" for k, v in env_vars.items()], "bash", f"jobs/{script}"]
    deadline = time.time() + 90
    while True:  # the job agent on the head node comes up a few seconds after `ray start`
        r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=REPO)
        log = r.stdout + r.stderr
        if "No available agent" not in log or time.time() > deadline:
            break
        time.sleep(3)
    assert r.returncode == 0 and "succeeded" in log, log[-4000:]
    return log


def test_train_then_unlearn_through_ray_job_submit(cluster: str, tmp_path: Path) -> None:
    from mmrecun_ray.data.synthetic import prepare_synthetic
    data = str(tmp_path / "data")
    prepare_synthetic("tiny", 0, data)
    train_out = str(tmp_path / "train")  # absolute: jobs run in Ray's copy of the repo
    _submit(cluster, {"DATA_URI": data, "OUT_URI": train_out, "MODEL": "lightgcn", "EPOCHS": "30",
                      "WORKERS": "0"}, "train.sh")
    assert (Path(train_out) / "model" / "model.json").exists()
    out = str(tmp_path / "forget")
    log = _submit(cluster, {"MODEL_URI": f"{train_out}/model", "DATA_URI": data,
                            "REQUEST": "users:10%", "OUT_URI": out, "METHOD": "mmrecun",
                            "WORKERS": "1"}, "unlearn.sh")
    m = json.loads((Path(out) / "metrics.json").read_text())
    assert m["command"] == "unlearn" and m["method"] == "mmrecun"
    assert m["metrics"]["forget"]["recall@20"] < m["original"]["metrics"]["forget"]["recall@20"]
    assert m["metrics"]["test"]["recall@20"] > 0.3
    assert "mmrecun:" in log  # the CLI's summary line reached the job log
