"""``tune``: Pareto front and choice rule (pure), Gold targets, and one real sweep."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from mmrecun_ray.data.synthetic import prepare_synthetic
from mmrecun_ray.errors import ConfigError, DataError
from mmrecun_ray.training.runner import Scaling
from mmrecun_ray.tuning.sweep import (OBJECTIVES, SEARCHED, TuneOptions, choose_best, dominates,
                                      gold_target, objectives, pareto_front, run_sweep, trial_settings)
from mmrecun_ray.unlearning.methods import build_methods
from mmrecun_ray.unlearning.methods.mmrecun import MMRecUNSettings
from mmrecun_ray.unlearning.service import apply_request

MODES = [d for _, d in OBJECTIVES]  # valid recall: max, forget gap: min


# --- pure ------------------------------------------------------------------------------------

def test_pareto_front_hand_made_points_with_ties_duplicates_and_nan() -> None:
    pts = [(0.50, 0.10),   # 0 front
           (0.40, 0.05),   # 1 front: lower gap
           (0.40, 0.10),   # 2 dominated by 0 (and 1)
           (0.50, 0.10),   # 3 duplicate of 0: duplicates do not dominate each other
           (0.30, 0.20),   # 4 dominated
           (0.60, 0.30),   # 5 front: best valid
           (0.60, 0.35),   # 6 tie on valid, worse gap -> dominated by 5
           (math.nan, 0.0)]  # 7 never on the front
    assert pareto_front(pts, MODES) == [0, 1, 3, 5]
    assert pareto_front([], MODES) == []
    assert pareto_front([(0.2, 0.4)], MODES) == [0]
    # direction matters: maximising both keeps only the top-right corner
    assert pareto_front(pts[:7], ["max", "max"]) == [6]
    assert dominates((0.5, 0.1), (0.4, 0.1), MODES) and not dominates((0.5, 0.1), (0.5, 0.1), MODES)
    with pytest.raises(ConfigError, match="modes"):
        pareto_front(pts, ["max", "down"])


def test_choose_best_rule() -> None:
    target, tol = 0.10, 0.01

    def row(tid: str, valid: float, forget: float, wall: float = 1.0) -> dict:
        return {"trial_id": tid, "valid_recall@20": valid, "forget_recall@20": forget,
                "forget_gap": abs(forget - target), "wall_seconds": wall}
    front = [row("a", 0.60, 0.30), row("b", 0.50, 0.105), row("c", 0.45, 0.05), row("d", 0.50, 0.098)]
    # a misses the forget level; b and d tie on valid recall, d is closer to the target
    # (gap 0.002 vs 0.005)
    assert choose_best(front, target, tol)["trial_id"] == "d"
    assert choose_best(front[:3], target, tol)["trial_id"] == "b"
    # nothing reaches target + tolerance: the smallest gap wins
    assert choose_best([row("x", 0.6, 0.40), row("y", 0.3, 0.20)], target, tol)["trial_id"] == "y"
    assert choose_best([], target, tol) is None
    o = objectives(0.5, 0.25, 0.1, lam=2.0)
    assert o["forget_gap"] == pytest.approx(0.15) and o["score"] == pytest.approx(0.5 - 0.3)
    assert objectives(0.5, 0.05, 0.1, 1.0)["forget_excess"] == 0.0


def test_trial_settings_and_options() -> None:
    cfg = {"alpha": 2.5, "beta": 0.7, "learning_rate": 0.02, "epochs": 3, "forget_ratio": 0.25}
    s = trial_settings("mmrecun", cfg, {"batch_size": 64, "max_steps": None}, target=0.12, seed=4)
    assert isinstance(s, MMRecUNSettings)
    assert (s.alpha, s.beta, s.learning_rate, s.epochs, s.forget_ratio) == (2.5, 0.7, 0.02, 3, 0.25)
    assert (s.batch_size, s.max_steps, s.forget_target, s.seed) == (64, None, 0.12, 4)
    with pytest.raises(ConfigError, match="searched"):
        TuneOptions(fixed={"alpha": 1.0})
    with pytest.raises(ConfigError, match=r"unknown settings \['alpah'\]"):
        TuneOptions(fixed={"alpah": 1.0})
    with pytest.raises(ConfigError, match="no .* to search"):
        TuneOptions(method="finetune")
    with pytest.raises(ConfigError, match="--mode"):
        TuneOptions(mode="grid")


# --- with data (no Ray) ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("tune") / "data")
    prepare_synthetic("tiny", 0, out)
    return out


def test_gold_target_sources(data: str, tmp_path: Path) -> None:
    prep = apply_request(data, "users:5%", str(tmp_path / "req"), seed=0, record=False)
    rid = prep.fset.request_id
    assert gold_target("unused", prep, target=0.25) == (0.25, "given")
    unlearn = tmp_path / "gold_unlearn" / "metrics.json"
    unlearn.parent.mkdir()
    unlearn.write_text(json.dumps({"command": "unlearn", "method": "gold", "request": {"id": rid},
                                   "metrics": {"forget": {"recall@20": 0.0875}}}))
    assert gold_target("unused", prep, gold_uri=str(unlearn))[0] == pytest.approx(0.0875)
    assert gold_target("unused", prep, gold_uri=str(unlearn.parent))[0] == pytest.approx(0.0875)
    compare = tmp_path / "compare.json"
    compare.write_text(json.dumps({"request": {"id": rid}, "methods": [
        {"method": "mmrecun", "metrics": {"forget": {"recall@20": 0.3}}},
        {"method": "gold", "metrics": {"forget": {"recall@20": 0.11}}}]}))
    assert gold_target("unused", prep, gold_uri=str(compare))[0] == pytest.approx(0.11)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"request": {"id": "not-this-one"}, "metrics": {"forget": {"recall@20": 0.1}}}))
    with pytest.raises(DataError, match="not-this-one"):
        gold_target("unused", prep, gold_uri=str(other))
    with pytest.raises(DataError, match="neither"):
        gold_target("unused", prep, gold_uri=str(tmp_path / "nothing-here"))


def test_tune_rejects_local_mode_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--workers >= 1"):
        run_sweep("m", "d", "users:5%", str(tmp_path / "out"), Scaling(workers=0), TuneOptions())
    assert not (tmp_path / "out").exists()


# --- one real sweep --------------------------------------------------------------------------

def test_tune_sweep_end_to_end(ray_session: None, data: str, tmp_path: Path) -> None:
    from mmrecun_ray.cli import main
    from mmrecun_ray.training.train import train
    model = train(data, "lightgcn", str(tmp_path / "model"), Scaling(workers=0), sets={"epochs": 10})
    out = tmp_path / "tune"
    rc = main(["tune", "--model-uri", model.model_uri, "--data", data, "--request", "users:5%",
               "--samples", "2", "--out", str(out), "--workers", "1", "--cpus-per-worker", "0.5",
               "--max-concurrent", "2", "--max-epochs", "3", "--set", "batch_size=128",
               "--set", "max_steps=30", "--tune-verbose", "0"])
    assert rc == 0
    for name in ("trials.csv", "trials.json", "pareto.json", "best_config.json", "metrics.json"):
        assert (out / name).is_file(), name
    trials = json.loads((out / "trials.json").read_text())
    with open(out / "trials.csv") as f:
        assert len(list(csv.DictReader(f))) == len(trials) == 2
    done = [t for t in trials if t["status"] == "completed"]
    assert len(done) == 2, trials
    assert len({tuple(t[k] for k in SEARCHED) for t in done}) == 2  # distinct configs
    m = json.loads((out / "metrics.json").read_text())
    assert m["command"] == "tune" and m["model"] == "lightgcn" and m["n_trials"] == 2
    # users requests: the forgotten users keep no data, Gold ranks them at random (K / n_items)
    assert m["target"] == pytest.approx(20 / 200)
    front = m["pareto"]
    assert front and {t["trial_id"] for t in front} <= {t["trial_id"] for t in done}
    for f in front:  # non-dominated among all completed trials
        assert not any(dominates([t[k] for k, _ in OBJECTIVES], [f[k] for k, _ in OBJECTIVES], MODES)
                       for t in done)
    # unlearning happened: every trial ranks the forgotten pairs lower than the original model
    orig_forget = m["original"]["forget_recall@20"]
    assert all(t["forget_recall@20"] < orig_forget for t in done), (orig_forget, done)
    best = json.loads((out / "best_config.json").read_text())
    assert best["trial_id"] in {t["trial_id"] for t in front}
    assert best["method"] == "mmrecun"
    settings = build_methods([best["method"]], best["settings"])[0].settings  # `unlearn --config`
    assert settings.forget_target == pytest.approx(m["target"]) and settings.batch_size == 128
    assert m["best"]["trial_id"] == best["trial_id"]
    d = m["default"]
    assert d["status"] == "completed" and (d["alpha"], d["beta"]) == (1.0, 1.0)
    assert d["forget_recall@20"] < orig_forget and d["wall_seconds"] > 0
    # a Gold *model* folder is evaluated on the request's forget set (here: the original model)
    prep = apply_request(data, "users:5%", str(tmp_path / "req"), seed=0, record=False)
    assert gold_target(model.model_uri, prep, gold_uri=model.model_uri)[0] == pytest.approx(orig_forget)
