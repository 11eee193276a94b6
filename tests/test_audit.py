"""Unlearning audit: membership-inference AUC, top-K agreement, memory, and the report."""

from __future__ import annotations

import json
import re
from xml.etree import ElementTree
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrecun_ray.errors import ConfigError, DataError
from mmrecun_ray.unlearning.audit import (
    mia_auc,
    mia_auc_from_scores,
    peak_memory_mb,
    sample_nonmembers,
    topk_jaccard,
    topk_overlap,
    track_peak_rss,
)
from mmrecun_ray.unlearning.report import Criteria, verdicts, write_report


# -- MIA AUC from scores ----------------------------------------------------------------------
def test_auc_hand_computed_with_tie() -> None:
    # pairs (m, n): (3,1) 1, (3,2) 1, (2,1) 1, (2,2) tie 1/2 -> 3.5 / 4
    assert mia_auc_from_scores(np.array([3.0, 2.0]), np.array([1.0, 2.0])) == 0.875


def test_auc_hand_computed_many_ties() -> None:
    # members [1, 1, 0], non-members [1, 0]:
    # m=1 vs n=1 tie 1/2, vs n=0 win 1  (x2 members) -> 3; m=0 vs 1 loss, vs 0 tie 1/2 -> 0.5
    # total 3.5 / 6
    assert mia_auc_from_scores([1, 1, 0], [1, 0]) == pytest.approx(3.5 / 6, abs=0)


def test_auc_separated_reversed_and_all_tied() -> None:
    assert mia_auc_from_scores([5.0, 6.0, 7.0], [1.0, 2.0]) == 1.0
    assert mia_auc_from_scores([1.0, 2.0], [5.0, 6.0, 7.0]) == 0.0
    assert mia_auc_from_scores([4.0, 4.0], [4.0, 4.0, 4.0]) == 0.5


def test_auc_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    pos = rng.integers(0, 6, 40).astype(float)   # heavy ties
    neg = rng.integers(0, 5, 30).astype(float)
    brute = np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :]))
    assert mia_auc_from_scores(pos, neg) == pytest.approx(brute, abs=1e-12)


def test_auc_rejects_empty_and_nan() -> None:
    with pytest.raises(DataError, match="0 members"):
        mia_auc_from_scores([], [1.0])
    with pytest.raises(DataError, match="non-member score #1"):
        mia_auc_from_scores([1.0], [0.0, float("nan")])


# -- MIA attack on embeddings -----------------------------------------------------------------
def test_random_embeddings_give_chance_auc() -> None:
    gen = torch.Generator().manual_seed(0)
    n_users, n_items = 300, 400
    user_emb = torch.randn(n_users, 16, generator=gen)
    item_emb = torch.randn(n_items, 16, generator=gen)
    rng = np.random.default_rng(1)
    keys = np.unique(rng.integers(0, n_users * n_items, 6000))
    f = keys[:3000]
    auc = mia_auc(user_emb, item_emb, f // n_items, f % n_items, keys, n_items, seed=0, n_neg=2)
    assert abs(auc - 0.5) < 0.04


def test_nonmembers_never_known_even_for_dense_users() -> None:
    n_users, n_items = 6, 50
    rng = np.random.default_rng(0)
    known_mask = rng.random((n_users, n_items)) < 0.3
    known_mask[2, :] = True
    known_mask[2, 17] = False          # user 2 knows every item but one
    known_mask[3, :] = True
    known_mask[3, [4, 9]] = False      # user 3 knows all but two
    u, i = np.nonzero(known_mask)
    keys = u * n_items + i
    users = np.array([0, 1, 2, 2, 3, 4, 5, 3])
    neg = sample_nonmembers(users, keys, n_items, n_neg=5, seed=4)
    assert neg.shape == (8, 5)
    assert not known_mask[users[:, None], neg].any()
    assert (neg[2] == 17).all() and (neg[3] == 17).all()
    assert set(neg[4].tolist()) | set(neg[7].tolist()) <= {4, 9}


def test_attack_on_model_that_scores_known_items_highest() -> None:
    """Score 1 for every known pair, 0 otherwise: members all score 1; a non-member scoring
    1 would be a known pair, so AUC is exactly 1 iff no known pair is drawn."""
    n_users, n_items = 40, 30
    rng = np.random.default_rng(2)
    known_mask = rng.random((n_users, n_items)) < 0.6
    known_mask[:, 0] = True                       # every user has a pair to forget
    user_emb = torch.tensor(known_mask, dtype=torch.float32)   # (n_users, d = n_items)
    item_emb = torch.eye(n_items)                               # score(u, i) = known[u, i]
    u, i = np.nonzero(known_mask)
    keys = u * n_items + i
    pick = rng.choice(keys.size, 200, replace=False)
    auc = mia_auc(user_emb, item_emb, u[pick], i[pick], keys, n_items, seed=7, n_neg=3)
    assert auc == 1.0


def test_mia_errors_name_the_problem() -> None:
    user_emb, item_emb = torch.zeros(2, 3), torch.zeros(4, 3)
    full = np.arange(4, dtype=np.int64)           # user 0 knows items 0..3 (all)
    with pytest.raises(DataError, match="user 0 interacted with all 4 items"):
        mia_auc(user_emb, item_emb, np.array([0]), np.array([1]), full, 4)
    with pytest.raises(DataError, match="item id 9 out of range"):
        mia_auc(user_emb, item_emb, np.array([1]), np.array([9]), full, 4)
    with pytest.raises(DataError, match="n_items=5"):
        mia_auc(user_emb, item_emb, np.array([1]), np.array([1]), full, 5)


# -- top-K agreement --------------------------------------------------------------------------
def test_topk_overlap_and_jaccard_hand_computed() -> None:
    a = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    b = np.array([[3, 2, 10], [11, 12, 13], [9, 8, 7]])
    # |A∩B|/K: 2/3, 0, 1 -> mean 5/9; jaccard: 2/4, 0/6, 3/3 -> mean 1.5/3
    assert topk_overlap(a, b) == pytest.approx(5 / 9)
    assert topk_jaccard(a, b) == pytest.approx(0.5)
    # first 2 columns: {1,2}/{3,2} -> 1/2, 0, {7,8}/{9,8} -> 1/2  => mean 1/3
    assert topk_overlap(a, b, k=2) == pytest.approx(1 / 3)


def test_topk_overlap_ignores_padding() -> None:
    a = np.array([[5, -1, -1]])
    b = np.array([[5, 6, -1]])
    # only item 5 is shared; the two -1 pads never match
    assert topk_overlap(a, b) == pytest.approx(1 / 3)
    assert topk_jaccard(a, b) == pytest.approx(1 / 2)
    with pytest.raises(DataError, match="one shape"):
        topk_overlap(a, np.zeros((2, 3), dtype=int))


# -- memory -----------------------------------------------------------------------------------
def test_peak_rss_sees_an_allocation() -> None:
    with track_peak_rss(interval_s=0.005) as mem:
        block = np.ones(200 * 1024 ** 2 // 8)    # 200 MiB, touched
        del block
    assert mem.samples >= 1
    assert mem.peak_mb > 150
    assert mem.peak_abs_mb >= mem.start_mb + mem.peak_mb - 1e-6
    assert peak_memory_mb() >= mem.peak_abs_mb - 1.0


# -- report -----------------------------------------------------------------------------------
META = {"title": "LFM2K users:5%", "dataset": "lfm2k", "k": 20, "forget_recall_tolerance": 0.01,
        "retain_ratio_min": 0.95, "mia_tolerance": 0.05, "speedup_min": 5}


def rows() -> list[dict]:
    return [
        {"method": "gold", "wall_seconds": 120.0, "peak_rss_mb": 812.4, "mia_auc": 0.52,
         "metrics": {"test": {"recall@20": 0.2000, "ndcg@20": 0.1000},
                     "forget": {"recall@20": 0.0500, "ndcg@20": 0.0250}}},
        {"method": "mmrecun", "wall_seconds": 12.0, "speedup_vs_gold": 10.0, "peak_rss_mb": 900,
         "mia_auc": 0.55, "overlap@20_vs_gold": 0.7123,
         "metrics": {"test": {"recall@20": 0.19512, "ndcg@20": 0.09876},
                     "forget": {"recall@20": 0.0550, "ndcg@20": 0.0300}}},
        # too slow, forgets too little, retains too little, MIA far from Gold
        {"method": "finetune", "wall_seconds": 60.0, "mia_auc": 0.80,
         "metrics": {"test": {"recall@20": 0.1800},
                     "forget": {"recall@20": 0.0700}}},
        # speed-up computed from wall time (120 / 20 = 6), MIA and test metrics missing
        {"method": "neggrad", "wall_seconds": 20.0,
         "metrics": {"forget": {"recall@20": 0.0100}}},
    ]


def test_verdicts_on_constructed_rows() -> None:
    v = verdicts(rows(), META)
    assert set(v) == {"mmrecun", "finetune", "neggrad"}
    # mmrecun: 0.055 <= 0.05 + 0.01; 0.19512 >= 0.19; |0.55 - 0.52| <= 0.05; 10 >= 5
    assert {c: v["mmrecun"][c]["pass"] for c in v["mmrecun"]} == {
        "forget": True, "retain": True, "mia": True, "speedup": True}
    # finetune: 0.07 > 0.06; 0.18 < 0.19; 0.28 > 0.05; 120/60 = 2 < 5
    assert {c: v["finetune"][c]["pass"] for c in v["finetune"]} == {
        "forget": False, "retain": False, "mia": False, "speedup": False}
    assert v["finetune"]["speedup"]["value"] == pytest.approx(2.0)
    assert v["neggrad"]["forget"]["pass"] is True
    assert v["neggrad"]["retain"]["pass"] is None and v["neggrad"]["mia"]["pass"] is None
    assert v["neggrad"]["speedup"]["value"] == pytest.approx(6.0)
    # boundary: exactly at the tolerance passes; a tighter tolerance fails mmrecun
    assert verdicts(rows(), {**META, "forget_recall_tolerance": 0.005})["mmrecun"]["forget"][
        "pass"] is True
    assert verdicts(rows(), {**META, "forget_recall_tolerance": 0.004})["mmrecun"]["forget"][
        "pass"] is False
    assert verdicts(rows(), {**META, "mia_tol": 0.02})["mmrecun"]["mia"]["pass"] is False


def test_verdicts_need_gold_and_valid_meta() -> None:
    with pytest.raises(ConfigError, match="no Gold row"):
        verdicts(rows()[1:], META)
    with pytest.raises(ConfigError, match="speedup_min"):
        Criteria.from_meta({"speedup_min": "fast"})
    gold_flag = [{**r, "method": "retrain", "is_gold": True} if r["method"] == "gold" else r
                 for r in rows()]
    assert verdicts(gold_flag, META)["mmrecun"]["retain"]["pass"] is True


def test_write_report_files(tmp_path: Path) -> None:
    out = write_report(str(tmp_path / "report"), rows(), META)
    assert set(out) == {"md", "html", "json"}
    md = Path(out["md"]).read_text()
    assert md.startswith("# LFM2K users:5%")
    assert ("| mmrecun | 0.1951 | 0.0988 | 0.0550 | 0.0300 | 0.550 | 0.712 | 12.0 | 10.0× | "
            "900 |") in md
    assert ("| gold (Gold) | 0.2000 | 0.1000 | 0.0500 | 0.0250 | 0.520 | 1.000 | 120 | 1.0× | "
            "812 |") in md
    # missing values are dashes; neggrad's speed-up comes from wall time
    assert "| neggrad | — | — | 0.0100 | — | — | — | 20.0 | 6.0× | — |" in md
    assert "| finetune | 0.1800 | — | 0.0700 | — | 0.800 | — | 60.0 | 2.0× | — |" in md
    assert "finetune: FAIL (forget Recall@20 0.0700 > Gold 0.0500 + 0.01 = 0.0600)" in md
    assert "finetune: FAIL (retain Recall@20 0.1800 < 0.95 x Gold 0.2000 = 0.1900)" in md
    assert "mmrecun: PASS (speed-up 10.0x >= 5x)" in md
    assert "Methods meeting every criterion: mmrecun." in md

    page = Path(out["html"]).read_text()
    assert page.count("<svg") == 4
    for name in ("gold", "mmrecun", "finetune", "neggrad"):
        assert f">{name}</text>" in page
    assert "0.5 = chance" in page
    assert "Wall time (s) (log scale)" in page          # 12 s .. 120 s spans a decade
    for svg in re.findall(r"<svg.*?</svg>", page, flags=re.S):
        ElementTree.fromstring(svg)                      # each chart is well-formed XML

    data = json.loads(Path(out["json"]).read_text())
    assert data["verdicts"]["finetune"]["retain"]["pass"] is False
    assert data["criteria"]["k"] == 20


def test_report_without_gold_and_log_scale(tmp_path: Path) -> None:
    rs = [{"method": "a<b", "wall_seconds": 1.0}, {"method": "c", "wall_seconds": 500.0}]
    out = write_report(str(tmp_path), rs, {"k": 10})
    md = Path(out["md"]).read_text()
    assert "Retain Recall@10" in md and "criteria not evaluated" in md
    page = Path(out["html"]).read_text()
    assert "a&lt;b" in page and "a<b" not in page
    assert "(log scale)" in page
    close = [{**rs[0], "wall_seconds": 2.0}, {**rs[1], "wall_seconds": 3.0}]
    out = write_report(str(tmp_path), close, {})
    assert "(log scale)" not in Path(out["html"]).read_text()
    with pytest.raises(ConfigError, match="appears twice"):
        write_report(str(tmp_path), rs + [{"method": "c"}], {})
