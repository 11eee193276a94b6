"""End to end on Ray: prepare -> train (2-worker DDP and local mode) -> unlearn -> audit.

Ray-level tests are few and share one Ray instance and one trained model: a
``TorchTrainer.fit()`` costs ~20 s of start-up on a 2-CPU machine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrecun_ray.cli import main
from mmrecun_ray.data.dataset import load_dataset
from mmrecun_ray.data.synthetic import prepare_synthetic
from mmrecun_ray.evaluation.evaluate import embeddings, evaluate_popularity
from mmrecun_ray.evaluation.ranking import build_csr, full_ranking_topk
from mmrecun_ray.training.export import load_model
from mmrecun_ray.training.runner import Scaling
from mmrecun_ray.training.train import train, train_datasets

TRAIN_SETS = {"epochs": 40, "patience": 5, "batch_size": 512, "seed": 0}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("pipeline") / "data")
    prepare_synthetic("tiny", 0, out)
    return out


@pytest.fixture(scope="module")
def trained(ray_session: None, data: str, tmp_path_factory: pytest.TempPathFactory):
    out = str(tmp_path_factory.mktemp("trained"))
    return train(data, "lightgcn", out, Scaling(workers=2, storage_uri=str(Path(out) / "ray")),
                 sets=TRAIN_SETS)


def test_ddp_training_beats_popularity_and_writes_metrics(trained, data: str) -> None:
    test = trained.metrics["metrics"]["test"]
    pop = evaluate_popularity(load_dataset(data))["test"]
    assert test["recall@20"] > pop["recall@20"] + 0.15, (test["recall@20"], pop["recall@20"])
    assert test["ndcg@20"] > pop["ndcg@20"] + 0.05
    saved = json.loads((Path(trained.model_uri).parent / "metrics.json").read_text())
    assert saved["model"] == "lightgcn" and saved["workers"] == 2
    for key in ("recall@10", "recall@20", "ndcg@20", "precision@20", "map@20", "hit@20", "recall@50"):
        assert 0.0 <= saved["metrics"]["test"][key] <= 1.0
    assert saved["metrics"]["valid"]["recall@20"] > 0 and saved["wall_seconds"] > 0
    assert (Path(trained.model_uri) / "model.json").exists()


def test_local_mode_reaches_the_same_quality(trained, data: str, tmp_path: Path) -> None:
    local = train(data, "lightgcn", str(tmp_path), Scaling(workers=0), sets=TRAIN_SETS)
    a = trained.metrics["metrics"]["test"]["recall@20"]
    b = local.metrics["metrics"]["test"]["recall@20"]
    assert abs(a - b) < 0.06, (a, b)


def test_mmrecun_forgets_users_and_keeps_retain_quality(trained, data: str, tmp_path: Path) -> None:
    # the paper's recipe on the 2-worker DDP loop with sharded forget and retain streams
    out = tmp_path / "unlearn"
    rc = main(["unlearn", "--model-uri", trained.model_uri, "--data", data, "--request", "users:10%",
               "--method", "mmrecun", "--out", str(out), "--workers", "2"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    before, after = m["original"]["metrics"], m["metrics"]
    assert m["steps"] > 0
    # the forgotten users' training items no longer dominate their top-20 ...
    assert after["forget"]["recall@20"] < 0.5 * before["forget"]["recall@20"], (before["forget"], after["forget"])
    assert after["forget"]["recall@20"] <= m["estimated_gold_forget_recall@20"] + 0.05
    # ... while the remaining users keep their quality
    assert after["test"]["recall@20"] >= 0.9 * before["test"]["recall@20"]
    assert m["mia_auc"] < m["original"]["mia_auc"]

    # the ledger hides the forgotten pairs from every later load and stream of the data
    forgotten = _forget_pairs(data, out)
    assert forgotten
    again = load_dataset(data)
    for split in ("train", "valid", "test"):
        x = again.split(split)
        assert not forgotten & set(zip(x.user.tolist(), x.item.tolist()))
    stream = train_datasets(data)["train"].to_pandas()
    assert not forgotten & set(zip(stream.user_id.tolist(), stream.item_id.tolist()))
    assert len(stream) == len(again.train)


def test_redraw_leaves_forgotten_users_where_gold_would(trained, data: str,
                                                         tmp_path: Path) -> None:
    """``redraw`` (exclusive rows re-drawn), local mode: the forgotten pairs rank like
    never-seen items, not below them (MIA AUC near 0.5), with no step taken."""
    data = _fresh(data, tmp_path)
    out = tmp_path / "unlearn-default"
    rc = main(["unlearn", "--model-uri", trained.model_uri, "--data", data, "--request", "users:10%",
               "--method", "redraw", "--out", str(out), "--workers", "0"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    before, after = m["original"]["metrics"], m["metrics"]
    assert m["steps"] == 0  # the forgotten users' rows are re-drawn: nothing left to reverse
    assert m["original"]["mia_auc"] > 0.8
    assert abs(m["mia_auc"] - 0.5) < 0.1, m["mia_auc"]
    assert after["forget"]["recall@20"] <= m["estimated_gold_forget_recall@20"] + 0.05
    assert after["test"]["recall@20"] >= 0.95 * before["test"]["recall@20"]


def test_interactions_request_refits_the_users_and_forgets_to_gold_level(trained, data: str,
                                                                          tmp_path: Path) -> None:
    """Single interactions: the users keep retain data, so their rows are re-drawn and
    refitted alone (50 steps, local mode); forget recall lands near Gold's estimate
    (validation level) while retain quality holds."""
    data = _fresh(data, tmp_path)
    out = tmp_path / "unlearn-interactions"
    rc = main(["unlearn", "--model-uri", trained.model_uri, "--data", data, "--request",
               "interactions:10%", "--method", "redraw", "--out", str(out), "--workers", "0"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    before, after = m["original"]["metrics"], m["metrics"]
    assert m["steps"] == 50
    assert after["forget"]["recall@20"] < before["forget"]["recall@20"] - 0.05, (before["forget"], after["forget"])
    assert after["forget"]["recall@20"] <= m["estimated_gold_forget_recall@20"] + 0.05
    assert after["test"]["recall@20"] >= 0.9 * before["test"]["recall@20"]


def _fresh(data: str, tmp_path: Path) -> str:
    """A copy of the dataset without its ledger: a request here is independent of the
    others (the trained model honours none of them)."""
    import shutil
    dest = tmp_path / "data"
    shutil.copytree(data, dest, ignore=shutil.ignore_patterns("ledger"))
    return str(dest)


def _forget_pairs(data: str, out: Path) -> set[tuple[int, int]]:
    """D_f recomputed independently: original train pairs (raw Parquet, no ledger) that the
    published retain version lacks."""
    import pyarrow.parquet as pq
    t = pq.read_table(Path(data) / "interactions").to_pandas()
    t = t[t.split == "train"]
    retain = load_dataset(str(out / "retain_data"))
    keep = set(zip(retain.train.user.tolist(), retain.train.item.tolist()))
    return {(u, i) for u, i in zip(t.user_id.tolist(), t.item_id.tolist()) if (u, i) not in keep}


def test_items_request_removes_items_from_every_list(trained, data: str, tmp_path: Path) -> None:
    data = _fresh(data, tmp_path)
    ds = load_dataset(data)
    popular = np.argsort(-np.bincount(ds.train.item, minlength=ds.n_items))[:3].tolist()
    out = tmp_path / "items"
    rc = main(["unlearn", "--model-uri", trained.model_uri, "--data", data,
               "--request", "items=" + ",".join(map(str, popular)), "--method", "mmrecun",
               "--out", str(out), "--workers", "0", "--set", "epochs=2"])
    assert rc == 0
    retain = load_dataset(str(out / "retain_data"))
    model, info = load_model(str(out / "model"), retain)
    assert sorted(info.banned_items) == sorted(popular)
    u, i = embeddings(model)
    users = np.arange(retain.n_users)
    top = full_ranking_topk(u, i, users, build_csr(retain.train.user, retain.train.item, retain.n_users),
                            50, banned_items=np.asarray(info.banned_items))
    assert not np.isin(top, popular).any()
    # and `evaluate` (the CLI path users run) masks them too
    rc = main(["evaluate", "--model-uri", str(out / "model"), "--data", str(out / "retain_data"),
               "--out", str(tmp_path / "eval")])
    assert rc == 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]["test"]["recall@20"] > 0.3
    # the popular items were gone before the unlearned model was even built
    assert not np.isin(retain.train.item, popular).any()
    assert torch.all(i[popular] == i[popular])  # finite embeddings


def test_cli_rejects_bad_input_with_a_clear_message(data: str, tmp_path: Path, capsys) -> None:
    rc = main(["train", "--data", data, "--model", "nosuchmodel", "--out", str(tmp_path / "x"), "--workers", "0"])
    assert rc == 2
    assert "nosuchmodel" in capsys.readouterr().err
    rc = main(["train", "--data", str(tmp_path / "nothing"), "--model", "mf", "--out", str(tmp_path / "y"), "--workers", "0"])
    assert rc == 2
    assert "nothing" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_compare_runs_every_method_against_a_gold_band(trained, data: str, tmp_path: Path) -> None:
    """One ``compare`` on tiny data with every method (local mode, a 2-seed Gold band): each
    row is there and audited, Gold forgets what the original remembers, SISA retrains only
    the affected shards, and the report judges every method against the band."""
    data = _fresh(data, tmp_path)
    out = tmp_path / "compare"
    methods = "original,retain-graph,hir,mmrecun,redraw,finetune,neggrad,sisa,gold"
    rc = main(["compare", "--model-uri", trained.model_uri, "--data", data, "--request", "users:10%",
               "--methods", methods, "--out", str(out), "--workers", "0", "--gold-seeds", "2",
               "--set", "max_steps=30", "--set", "shards=2"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    rows = {r["method"]: r for r in m["methods"]}
    assert set(rows) == set(methods.split(",")) - {"gold"} | {"gold", "gold-s1"}
    v = {k: r["audit"]["values"] for k, r in rows.items()}
    for k in rows:
        assert {"retain_recall@20", "forget_recall@20", "mia_auc", "fold_in_recall@20",
                "diff_auc"} <= set(v[k]), k
    assert v["gold"]["forget_recall@20"] < 0.5 * v["original"]["forget_recall@20"]
    assert v["gold"]["fold_in_recall@20"] < v["original"]["fold_in_recall@20"]
    assert rows["sisa"]["affected_shards"] <= 2 and rows["finetune"]["steps"] == 30
    assert rows["neggrad"]["steps"] <= 30 and rows["mmrecun"]["steps"] <= 30
    assert set(m["bands"]) >= {"retain_recall@20", "fold_in_recall@20"}
    assert all(set(r["verdicts"]) == set(m["bands"]) for r in m["methods"])
    assert rows["original"]["passes"] is False  # the untouched model is caught
    report = (out / "report.md").read_text()
    assert "Gold band (K=2)" in report and "Fold-in Recall@20" in report
    # an experiment: nothing recorded, the data still shows the pairs
    assert not (Path(data) / "ledger").exists() or not list((Path(data) / "ledger").glob("*.json"))


def test_a_ddp_gold_band_runs_in_one_worker_group(trained, data: str, tmp_path: Path) -> None:
    """With DDP workers and no room to run the Golds side by side, the band's Golds run one
    after the other in one Ray Train run: two different seeds, two different models, each
    a full retrain (its own early stop, no state carried from the first)."""
    data = _fresh(data, tmp_path)
    out = tmp_path / "band"
    rc = main(["compare", "--model-uri", trained.model_uri, "--data", data, "--request", "users:10%",
               "--methods", "original,gold", "--out", str(out), "--workers", "1",
               "--cpus-per-worker", "1", "--gold-seeds", "2"])
    assert rc == 0
    rows = {r["method"]: r for r in json.loads((out / "metrics.json").read_text())["methods"]}
    g0, g1 = rows["gold"], rows["gold-s1"]
    assert g0["worker_group"] == g1["worker_group"] == "shared"
    assert g0["seed"] != g1["seed"] and g0["epochs_run"] >= 2 and g1["epochs_run"] >= 2
    assert g0["audit"]["values"] != g1["audit"]["values"]
