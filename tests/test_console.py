"""The console out of the box: a quiet CLI run (a progress summary per run, Ray's chatter
in ``<out>/logs/``, ``--verbose`` brings it back), ``--workers auto`` (local mode for
small jobs, DDP where the estimate says it pays), and :func:`run_loops` (several loop
jobs in one Ray Train run) returning what separate :func:`run_loop` calls return."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from mmrecun_ray.cliargs import UNLEARN_EPOCHS, add_scaling, work_of
from mmrecun_ray.data.synthetic import prepare_synthetic
from mmrecun_ray.training.runner import (STEP_SECONDS, WORKER_GROUP_START_S, Cluster, LoopJob,
                                         Scaling, Work, choose_workers, estimate_seconds,
                                         run_loop, run_loops)

ROOT = Path(__file__).resolve().parents[1]
#: Ray's and Ray Train's console chatter the quiet console must not show
CHATTER = ("Execution plan of Dataset", "TrainingReport(", "Reported metrics", "(RayTrainWorker",
           "(SplitCoordinator", "(TrainController", "Started a local Ray instance")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("console") / "data")
    prepare_synthetic("tiny", 0, out)
    return out


def _cli(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    # the CLI's own local Ray, in a short temp dir (Ray's socket paths have a length limit)
    ray_tmp = tempfile.mkdtemp(prefix="rc", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT), "RAY_TMPDIR": ray_tmp,
           "MMRECUN_OBJECT_STORE_MB": "200"}
    return subprocess.run([sys.executable, "-m", "mmrecun_ray", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def _lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip()]


SUMMARY = re.compile(r"^train-mf \[(?P<mode>[^\]]+)\]: (?P<run>\d+)/(?P<cap>\d+) epochs.*?, "
                     r"loss (?P<loss>[\d.]+), valid R@20 (?P<valid>[\d.]+), best (?P<best>[\d.]+) "
                     r"@(?P<at>\d+), [\d.]+s$")


def test_a_ddp_run_prints_a_few_lines_and_leaves_ray_chatter_in_the_logs(tiny: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _cli(["train", "--data", tiny, "--model", "mf", "--out", str(out), "--epochs", "4",
                 "--workers", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _lines(proc)
    # before: every rank's TrainingReport, Ray Data's plan per epoch, the controller's lines
    assert len(lines) <= 3, lines
    assert not [ln for ln in lines if any(c in ln for c in CHATTER)], lines
    summary = [m for m in map(SUMMARY.match, lines) if m]
    assert len(summary) == 1, lines
    s = summary[0]
    m = json.loads((out / "metrics.json").read_text())
    # the display's numbers came from rank 0 through the driver's queue: they are the run's
    assert s["mode"] == "2 workers" and int(s["cap"]) == 4 and int(s["run"]) == m["epochs_run"]
    assert int(s["at"]) == m["best_epoch"] + 1
    assert float(s["best"]) == pytest.approx(m["metrics"]["valid"]["recall@20"], abs=6e-5)
    assert "workers_auto" not in m and m["workers"] == 2  # a number given is used as is
    logs = out / "logs"
    ray_log = (logs / "ray.log").read_text()
    assert "Started a local Ray instance" in ray_log and "Execution plan of Dataset" in ray_log
    assert "exported mf model" in (logs / "mmrecun.log").read_text()
    workers_out = "".join(p.read_text(errors="replace") for p in (logs / "ray-session").glob("worker-*"))
    assert "Reported metrics" in workers_out or "TrainingReport" in workers_out


def test_verbose_brings_ray_back_and_auto_picks_local_mode_for_a_small_job(tiny: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _cli(["--verbose", "train", "--data", tiny, "--model", "mf", "--out", str(out),
                 "--epochs", "3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    assert "Started a local Ray instance" in text and "Execution plan of Dataset" in text
    assert "mmrecun_ray.training.export: exported mf model" in text  # info records shown
    m = json.loads((out / "metrics.json").read_text())
    choice = m["workers_auto"]
    assert m["workers"] == 0 and choice["workers"] == 0 and choice["requested"] == "auto"
    assert choice["work"] == {"model": "mf", "pairs": 4766, "epochs": 3, "batch_size": 2048, "runs": 1}
    a, b = STEP_SECONDS["mf"]
    assert choice["estimated_seconds"]["0"] == pytest.approx(round(3 * 3 * (a + b * 0.4766), 1))
    assert sum(ln.startswith("workers: auto -> 0 (local mode") for ln in text.splitlines()) == 1


def test_auto_resolution_small_and_large_jobs() -> None:
    a, b = STEP_SECONDS["lightgcn"]
    # tiny, 60 epochs: 3 steps of (a + b * 0.4766) s each per epoch
    small = Work(model="lightgcn", pairs=4766, epochs=60)
    assert estimate_seconds(small, 0, Cluster(2, 2)) == pytest.approx(60 * 3 * (a + b * 0.4766))
    assert choose_workers(small, Cluster(2, 2))[0] == 0
    # one machine: local mode's torch uses every CPU; DDP's workers get no more of them,
    # so however large the job, DDP only adds its start-up
    huge = Work(model="lightgcn", pairs=5_000_000, epochs=200)
    local = estimate_seconds(huge, 0, Cluster(2, 2))
    assert estimate_seconds(huge, 2, Cluster(2, 2)) == pytest.approx(WORKER_GROUP_START_S + local)
    assert choose_workers(huge, Cluster(2, 2))[0] == 0
    # a 64-CPU cluster driven from an 8-CPU node, 4 CPUs per worker: 8 workers compute with
    # 32 threads against local mode's 8 (x4) and pay one start-up per run
    big = Work(model="lightgcn", pairs=44_327, epochs=200, runs=3)
    big_local = 200 * 22 * (a + b * 4.4327)
    assert estimate_seconds(big, 0, Cluster(64, 8)) == pytest.approx(big_local)
    assert estimate_seconds(big, 8, Cluster(64, 8), 4.0) == pytest.approx(3 * WORKER_GROUP_START_S + big_local / 4)
    workers, record = choose_workers(big, Cluster(64, 8), cpus_per_worker=4.0)
    assert big_local * 3 / 4 > 3 * WORKER_GROUP_START_S and workers == 8
    assert record["workers"] == 8 and record["estimated_seconds"]["0"] == pytest.approx(round(big_local, 1))
    # ... while the small job stays local there too (its work is below one start-up)
    assert choose_workers(small, Cluster(64, 8), cpus_per_worker=4.0)[0] == 0
    # only as many workers as the cluster has CPUs for; tune needs at least one; GPUs: one each
    assert max(int(n) for n in choose_workers(big, Cluster(16, 8), cpus_per_worker=4.0)[1]
               ["estimated_seconds"]) == 4
    # tune (at least one worker): 1 worker computes with 1 of the 2 CPUs (10 s + 2x the
    # work), 2 workers with both (10 s + the work)
    n, rec = choose_workers(small, Cluster(2, 2), min_workers=1)
    assert n == 2 and "0" not in rec["estimated_seconds"]
    assert rec["estimated_seconds"]["1"] == pytest.approx(round(WORKER_GROUP_START_S + 2 * 60 * 3 * (a + b * 0.4766), 1))
    assert choose_workers(small, Cluster(8, 8, gpus=3), gpus=True)[0] == 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_scaling(p)
    return p


def test_workers_flag_takes_auto_or_a_count(capsys) -> None:
    p = _parser()
    assert p.parse_args([]).workers == "auto"
    assert p.parse_args(["--workers", "AUTO"]).workers == "auto"
    assert p.parse_args(["--workers", "3"]).workers == 3
    assert p.parse_args(["--workers", "-1"]).workers == -1  # refused by scaling(), one line
    for bad in ("two", "1.5"):
        with pytest.raises(SystemExit) as e:
            p.parse_args(["--workers", bad])
        assert e.value.code == 2 and bad in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_mf(tiny: str, ray_session, tmp_path_factory: pytest.TempPathFactory) -> str:
    from mmrecun_ray.training.train import train
    out = str(tmp_path_factory.mktemp("console") / "mf")
    return train(tiny, "mf", out, Scaling(workers=0), sets={"epochs": 1, "batch_size": 1024}).model_uri


def test_work_of_a_compare_counts_every_training_run(tiny: str, trained_mf: str) -> None:
    ns = argparse.Namespace(command="compare", data=tiny, model_uri=trained_mf, gold_seeds=3,
                            methods="original,retain-graph,mmrecun,finetune,sisa,gold")
    w = work_of(ns)
    # 3 Golds + SISA retrain with the recipe (1 epoch); mmrecun and finetune count 10 each
    assert (w.model, w.pairs, w.batch_size) == ("mf", 4766, 1024)
    assert w.runs == 3 + 3 and w.epochs == 4 * 1 + 2 * UNLEARN_EPOCHS
    ns = argparse.Namespace(command="train", data=tiny, model="lightgcn", epochs=None,
                            set=["epochs=7", "batch_size=512"])
    w = work_of(ns)
    assert (w.pairs, w.epochs, w.batch_size, w.runs) == (4766, 7, 512, 1)
    assert math.ceil(w.pairs / w.batch_size) == 10


@pytest.mark.parametrize("workers", [0, 2])
def test_run_loops_returns_what_separate_runs_return(tiny: str, ray_session, tmp_path: Path,
                                                     workers: int) -> None:
    from mmrecun_ray.data.dataset import load_dataset
    from mmrecun_ray.training.train import loop_inputs, recipe, train_datasets
    ds = load_dataset(tiny)
    inputs = loop_inputs(ds)
    data = train_datasets(tiny)["train"]
    jobs = []
    for seed in (0, 1):
        cfg, fit = recipe("mf", {"epochs": 3, "seed": seed, "batch_size": 1024, "eval_ks": [20],
                                 "report_every": 1})
        jobs.append(LoopJob(cfg, fit, inputs, {"train": data}, name=f"mf-s{seed}"))
    scaling = Scaling(workers=workers, storage_uri=str(tmp_path / "ray"))
    together = run_loops(jobs, scaling)
    apart = [run_loop(j.cfg, j.objective, j.inputs, j.datasets, scaling, name=j.name) for j in jobs]
    assert len(together) == 2
    steps = 3 * math.ceil(4766 / (1024 * max(workers, 1)))  # each worker: its half of the pairs
    for a, b in zip(together, apart):
        assert (a.epochs_run, a.steps) == (b.epochs_run, b.steps) == (3, steps)
        assert sorted(a.state) == sorted(b.state)
        if workers == 0:  # one process, same seeds, same stream: the same numbers (up to
            # the float rounding of torch's multi-threaded sums)
            assert a.best_epoch == b.best_epoch
            for k in a.state:
                np.testing.assert_allclose(a.state[k], b.state[k], rtol=1e-4, atol=1e-6)
            assert [h["valid_recall@20"] for h in a.history] == pytest.approx(
                [h["valid_recall@20"] for h in b.history], abs=1e-3)
        else:  # the same optimisation; DDP's split of the stream may hand out blocks differently
            assert a.best_metrics["valid_recall@20"] == pytest.approx(b.best_metrics["valid_recall@20"], abs=0.03)
    # the two seeds are different runs, not one result twice
    assert not np.array_equal(together[0].state["user_embedding.weight"], together[1].state["user_embedding.weight"])
