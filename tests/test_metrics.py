"""Ranking metrics (MMRec definitions) and full-ranking top-K retrieval."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmrecun_ray.errors import DataError
from mmrecun_ray.evaluation import (
    PAD_ITEM,
    auto_batch_size,
    build_csr,
    evaluate_split,
    evaluate_split_per_user,
    full_ranking_topk,
    metric_keys,
    paired_difference,
    per_user_metrics,
    popularity_embeddings,
    standard_error,
    topk_metrics,
)
from mmrecun_ray.evaluation.ranking import BYTES_PER_SCORE

L3 = 1.0 / math.log2(3)  # discount at rank 2
L4 = 1.0 / math.log2(4)  # discount at rank 3 (= 0.5)


# -- topk_metrics on a hand-computed example ------------------------------------------------
def hand_example() -> tuple[np.ndarray, np.ndarray]:
    """Four users, top-3 lists written out by hand.

    user A: ranked [3, 1, 4], positives {1, 4}        -> hits [F, T, T], m = 2
    user B: ranked [0, 2, 5], positives {0, 5, 7, 8}  -> hits [T, F, T], m = 4
    user C: ranked [6, 8, 9], positives {2}           -> hits [F, F, F], m = 1
    user D: ranked [1, 2, 3], positives {}            -> excluded (m = 0)
    """
    ranked = [[3, 1, 4], [0, 2, 5], [6, 8, 9], [1, 2, 3]]
    positives = [{1, 4}, {0, 5, 7, 8}, {2}, set()]
    hits = np.array([[i in p for i in r] for r, p in zip(ranked, positives)])
    n_pos = np.array([len(p) for p in positives])
    return hits, n_pos


def test_topk_metrics_hand_computed() -> None:
    hits, n_pos = hand_example()
    got = topk_metrics(hits, n_pos, ks=(2, 3))
    assert list(got) == metric_keys((2, 3))
    # K = 2 --------------------------------------------------------------------------------
    # recall:    A 1/2, B 1/4, C 0                       -> (0.5 + 0.25 + 0) / 3
    # precision: A 1/2, B 1/2, C 0                       -> (0.5 + 0.5) / 3
    # ndcg:      A L3 / (1 + L3), B 1 / (1 + L3) (IDCG over min(m, 2) = 2 ranks)
    #            -> (A + B) = 1, mean 1/3
    # map:       A P@2 = 1/2, / min(2, 2)  = 0.25; B P@1 = 1, / min(4, 2) = 0.5
    #            -> (0.25 + 0.5) / 3
    # hit:       A 1, B 1, C 0                           -> 2/3
    expect2 = {
        "recall@2": (0.5 + 0.25 + 0) / 3,
        "precision@2": (0.5 + 0.5 + 0) / 3,
        "ndcg@2": (L3 / (1 + L3) + 1 / (1 + L3)) / 3,
        "map@2": (0.25 + 0.5 + 0) / 3,
        "hit@2": 2 / 3,
    }
    # K = 3 --------------------------------------------------------------------------------
    # recall:    A 2/2, B 2/4                            -> 1.5 / 3
    # precision: A 2/3, B 2/3                            -> (4/3) / 3
    # ndcg:      A (L3 + 0.5) / (1 + L3)        (IDCG over min(2, 3) = 2 ranks)
    #            B (1 + 0.5) / (1 + L3 + 0.5)   (IDCG over min(4, 3) = 3 ranks)
    # map:       A (P@2 + P@3) / min(2, 3) = (1/2 + 2/3) / 2 = 7/12
    #            B (P@1 + P@3) / min(4, 3) = (1 + 2/3) / 3 = 5/9
    expect3 = {
        "recall@3": (1.0 + 0.5 + 0) / 3,
        "precision@3": (2 / 3 + 2 / 3 + 0) / 3,
        "ndcg@3": ((L3 + L4) / (1 + L3) + (1 + L4) / (1 + L3 + L4)) / 3,
        "map@3": (7 / 12 + 5 / 9 + 0) / 3,
        "hit@3": 2 / 3,
    }
    for key, value in {**expect2, **expect3}.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    # the same numbers written as decimals, as a check on the expressions above
    assert got["ndcg@2"] == pytest.approx(1 / 3)
    assert got["ndcg@3"] == pytest.approx((0.693426 + 0.703918) / 3, abs=1e-6)
    assert got["map@3"] == pytest.approx(0.379630, abs=1e-6)


def test_users_without_positives_are_excluded() -> None:
    hits, n_pos = hand_example()
    with_d = topk_metrics(hits, n_pos, ks=(2, 3))
    without_d = topk_metrics(hits[:3], n_pos[:3], ks=(2, 3))
    assert with_d == without_d
    # 3 users averaged, not 4: hit@2 is 2/3, not 2/4
    assert with_d["hit@2"] == pytest.approx(2 / 3)


def test_no_user_with_positives_gives_nan() -> None:
    got = topk_metrics(np.zeros((2, 3), dtype=bool), np.zeros(2, dtype=int), ks=(3,))
    assert all(math.isnan(v) for v in got.values())


def test_topk_metrics_rejects_inconsistent_input() -> None:
    with pytest.raises(ValueError, match="user row 0 has 2 hits"):
        topk_metrics(np.array([[True, True]]), np.array([1]), ks=(2,))
    with pytest.raises(ValueError, match="largest cutoff is 5"):
        topk_metrics(np.zeros((1, 3), dtype=bool), np.array([1]), ks=(2, 5))
    with pytest.raises(ValueError, match="ks"):
        topk_metrics(np.zeros((1, 3), dtype=bool), np.array([1]), ks=(0,))


def reference_metrics(hits: np.ndarray, n_pos: np.ndarray, ks: tuple[int, ...]) -> dict:
    """Plain-loop MMRec metrics, one user and one rank at a time."""
    out = {}
    users = [u for u in range(len(n_pos)) if n_pos[u] > 0]
    for k in ks:
        sums = {"recall": 0.0, "ndcg": 0.0, "precision": 0.0, "map": 0.0, "hit": 0.0}
        for u in users:
            m = int(n_pos[u])
            n_hit, dcg, ap = 0, 0.0, 0.0
            for r in range(1, k + 1):
                if hits[u][r - 1]:
                    n_hit += 1
                    dcg += 1.0 / math.log2(r + 1)
                    ap += n_hit / r
            idcg = sum(1.0 / math.log2(r + 1) for r in range(1, min(m, k) + 1))
            sums["recall"] += n_hit / m
            sums["ndcg"] += dcg / idcg
            sums["precision"] += n_hit / k
            sums["map"] += ap / min(m, k)
            sums["hit"] += 1.0 if n_hit > 0 else 0.0
        for name, s in sums.items():
            out[f"{name}@{k}"] = s / len(users)
    return out


def test_topk_metrics_matches_loop_reference_randomized() -> None:
    rng = np.random.default_rng(7)
    n_users, kmax, ks = 300, 50, (1, 5, 10, 20, 50)
    hits = rng.random((n_users, kmax)) < rng.uniform(0.0, 0.3, size=(n_users, 1))
    # positives: at least the hits, plus extra unranked ones; some users have none at all
    n_pos = hits.sum(axis=1) + rng.integers(0, 60, size=n_users)
    empty = rng.random(n_users) < 0.1
    hits[empty] = False
    n_pos[empty] = 0
    got = topk_metrics(hits, n_pos, ks)
    want = reference_metrics(hits, n_pos, ks)
    assert set(got) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key
    assert 0.0 < got["recall@50"] < 1.0  # the data is not degenerate


def test_per_user_metrics_hand_computed() -> None:
    hits, n_pos = hand_example()
    got = per_user_metrics(hits, n_pos, ks=(2, 3))
    assert list(got) == metric_keys((2, 3))
    # recall@3: A 2/2, B 2/4, C 0, D not measured (NaN)
    assert got["recall@3"][:3].tolist() == [1.0, 0.5, 0.0] and math.isnan(got["recall@3"][3])
    # ndcg@2: A L3 / (1 + L3), B 1 / (1 + L3), C 0
    assert got["ndcg@2"][:3] == pytest.approx([L3 / (1 + L3), 1 / (1 + L3), 0.0])
    assert got["hit@2"][:3].tolist() == [1.0, 1.0, 0.0]
    # the means are topk_metrics, exactly
    means = topk_metrics(hits, n_pos, ks=(2, 3))
    for key, v in got.items():
        assert float(np.mean(v[:3])) == means[key], key


def test_standard_error_and_paired_difference_hand_computed() -> None:
    # [1, 2, 3, 4]: sd (ddof=1) = sqrt(5/3), se = sqrt(5/3) / 2
    assert standard_error(np.array([1.0, 2.0, 3.0, 4.0])) == pytest.approx(math.sqrt(5 / 3) / 2)
    assert standard_error(np.array([1.0, np.nan, 3.0])) == pytest.approx(1.0)   # NaN left out
    assert math.isnan(standard_error(np.array([2.0])))
    # a - b = [1, 0, 1, 2]: mean 1, sd sqrt(2/3), se sqrt(2/3) / 2
    d, se = paired_difference([3, 2, 4, 5], [2, 2, 3, 3])
    assert d == pytest.approx(1.0) and se == pytest.approx(math.sqrt(2 / 3) / 2)
    with pytest.raises(ValueError, match="not aligned"):
        paired_difference([1, 2], [1, 2, 3])


# -- CSR ------------------------------------------------------------------------------------
def test_build_csr_sorts_and_deduplicates() -> None:
    indptr, indices = build_csr(np.array([2, 0, 2, 2, 0]), np.array([5, 3, 1, 5, 3]), 4)
    assert indptr.tolist() == [0, 1, 1, 3, 3]
    assert indices.tolist() == [3, 1, 5]
    with pytest.raises(DataError, match="user id 4 out of range"):
        build_csr(np.array([4]), np.array([0]), 4)
    with pytest.raises(DataError, match="item id 9 out of range"):
        build_csr(np.array([0]), np.array([9]), 4, n_items=9)


# -- ranking --------------------------------------------------------------------------------
def per_user_scores(table: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings whose score matrix is ``table`` (U x I): users one-hot, items = columns."""
    scores = torch.tensor(table, dtype=torch.float32)                  # (U, I)
    return torch.eye(scores.shape[0]), scores.t().contiguous()        # (U, U), (I, U)


def test_train_items_are_masked() -> None:
    user_emb, item_emb = per_user_scores([
        [9.0, 5.0, 4.0, 3.0, 2.0, 1.0],   # user 0: train item 0 scores highest
        [1.0, 2.0, 3.0, 4.0, 5.0, 9.0],   # user 1: train items 5 and 4 score highest
    ])
    train = build_csr(np.array([0, 1, 1]), np.array([0, 5, 4]), 2)
    top = full_ranking_topk(user_emb, item_emb, np.array([0, 1]), train, k=3)
    assert top.tolist() == [[1, 2, 3], [3, 2, 1]]
    # without masking the train items come first
    assert full_ranking_topk(user_emb, item_emb, np.array([0, 1]), None, k=1).tolist() == [
        [0], [5]]


def test_evaluate_split_hand_computed_with_masking() -> None:
    user_emb, item_emb = per_user_scores([
        [9.0, 5.0, 4.0, 3.0, 2.0, 1.0],   # user 0 ranks (after masking item 0) 1,2,3,4,5
        [1.0, 2.0, 3.0, 4.0, 5.0, 9.0],   # user 1 ranks (after masking 5, 4) 3,2,1,0
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],   # user 2 has no test items: not evaluated
    ])
    train = build_csr(np.array([0, 1, 1]), np.array([0, 5, 4]), 3)
    # user 0 test {2, 5} (2 at rank 2); user 1 test {0, 5} (0 at rank 4, 5 is masked);
    # the duplicate (0, 2) counts once
    target = (np.array([0, 0, 0, 1, 1]), np.array([2, 5, 2, 0, 5]))
    got = evaluate_split(user_emb, item_emb, train, target, 3, 6, ks=(2, 3))
    assert got["n_users"] == 2
    # recall@2: user 0 1/2, user 1 0/2 -> 0.25;  recall@3 the same (user 0's item 5 is 5th)
    assert got["recall@2"] == pytest.approx(0.25)
    assert got["recall@3"] == pytest.approx(0.25)
    # ndcg@2: user 0 hit at rank 2: L3 / (1 + L3); user 1 0 -> mean / 2
    assert got["ndcg@2"] == pytest.approx(L3 / (1 + L3) / 2)
    # map@3: user 0 P@2 = 1/2 over min(2, 3) = 2 -> 1/4; user 1 0 -> 1/8
    assert got["map@3"] == pytest.approx(1 / 8)
    assert got["hit@3"] == pytest.approx(0.5)
    # users_subset keeps only user 1 (and ignores user 2, who has no target)
    only1 = evaluate_split(user_emb, item_emb, train, target, 3, 6, ks=(2, 3),
                           users_subset=np.array([1, 2]))
    assert only1["n_users"] == 1 and only1["hit@3"] == 0.0


def test_per_user_split_vectors_match_the_split_means() -> None:
    user_emb, item_emb = per_user_scores([
        [9.0, 5.0, 4.0, 3.0, 2.0, 1.0],
        [1.0, 2.0, 3.0, 4.0, 5.0, 9.0],
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    ])
    train = build_csr(np.array([0, 1, 1]), np.array([0, 5, 4]), 3)
    target = (np.array([0, 0, 0, 1, 1]), np.array([2, 5, 2, 0, 5]))
    per = evaluate_split_per_user(user_emb, item_emb, train, target, 3, 6, ks=(2, 3))
    # users with a target item, in id order: recall@2 user 0 1/2, user 1 0/2
    assert per.users.tolist() == [0, 1]
    assert per.values["recall@2"].tolist() == [0.5, 0.0]
    assert per.values["ndcg@2"] == pytest.approx([L3 / (1 + L3), 0.0])
    assert per.se("recall@2") == pytest.approx(0.25)       # sd sqrt(1/8) / sqrt(2)
    means = evaluate_split(user_emb, item_emb, train, target, 3, 6, ks=(2, 3))
    for key in metric_keys((2, 3)):
        assert per.mean(key) == means[key], key
    # a random, larger case: the vectors average to the split's means
    rng = np.random.default_rng(5)
    u = torch.from_numpy(rng.normal(size=(40, 4)).astype(np.float32))
    i = torch.from_numpy(rng.normal(size=(30, 4)).astype(np.float32))
    tr = build_csr(rng.integers(0, 40, 200), rng.integers(0, 30, 200), 40)
    tgt = (rng.integers(0, 40, 80), rng.integers(0, 30, 80))
    per = evaluate_split_per_user(u, i, tr, tgt, 40, 30, ks=(5, 10))
    means = evaluate_split(u, i, tr, tgt, 40, 30, ks=(5, 10))
    assert per.users.size == means["n_users"]
    for key in metric_keys((5, 10)):
        assert per.mean(key) == pytest.approx(means[key], abs=1e-15), key


def test_banned_items_never_appear_and_short_lists_are_padded() -> None:
    rng = np.random.default_rng(3)
    n_users, n_items = 20, 8
    user_emb = torch.from_numpy(rng.normal(size=(n_users, 4)).astype(np.float32))
    item_emb = torch.from_numpy(rng.normal(size=(n_items, 4)).astype(np.float32))
    item_emb[6] = 0.0
    item_emb[6, 0] = 1e3      # item 6 is everyone's top item ...
    user_emb[:, 0] = 1.0
    banned = np.array([6, 2])  # ... but has left the catalogue
    train = build_csr(np.array([0, 0, 1]), np.array([0, 1, 7]), n_users)
    users = np.arange(n_users)
    assert (full_ranking_topk(user_emb, item_emb, users, train, k=1) == 6).all()
    top = full_ranking_topk(user_emb, item_emb, users, train, k=n_items + 2,
                            banned_items=banned)
    assert top.shape == (n_users, n_items + 2)
    assert not np.isin(top, banned).any()
    # user 0: 8 items - 2 banned - 2 train = 4 ranked, then padding
    assert (top[0, :4] >= 0).all() and (top[0, 4:] == PAD_ITEM).all()
    assert set(top[0, :4].tolist()) == {3, 4, 5, 7}
    assert (top[5, :6] >= 0).all() and (top[5, 6:] == PAD_ITEM).all()


def test_ties_break_by_lower_item_id() -> None:
    # every item scores the same except item 4 (top) and item 1 (bottom)
    user_emb, item_emb = per_user_scores([[1.0, 0.0, 1.0, 1.0, 2.0, 1.0, 1.0]])
    assert full_ranking_topk(user_emb, item_emb, np.array([0]), None, k=7).tolist() == [
        [4, 0, 2, 3, 5, 6, 1]]
    # the cut at k falls inside the tie: the lowest ids win
    assert full_ranking_topk(user_emb, item_emb, np.array([0]), None, k=3).tolist() == [
        [4, 0, 2]]


def reference_topk(scores: np.ndarray, users: np.ndarray, masked: list[set[int]],
                   banned: set[int], k: int) -> np.ndarray:
    """Sort every candidate by (-score, item id) in Python."""
    out = np.full((users.size, k), PAD_ITEM, dtype=np.int64)
    for row, u in enumerate(users):
        cand = [i for i in range(scores.shape[1]) if i not in masked[u] and i not in banned]
        ranked = sorted(cand, key=lambda i: (-scores[u, i], i))[:k]
        out[row, :len(ranked)] = ranked
    return out


def test_batched_ranking_equals_unbatched_and_reference() -> None:
    rng = np.random.default_rng(11)
    n_users, n_items, k = 57, 40, 12
    # small integer embeddings: exact scores with many ties
    user_np = rng.integers(-1, 2, size=(n_users, 3)).astype(np.float32)
    item_np = rng.integers(-1, 2, size=(n_items, 3)).astype(np.float32)
    user_emb, item_emb = torch.from_numpy(user_np), torch.from_numpy(item_np)
    tu = rng.integers(0, n_users, size=300)
    ti = rng.integers(0, n_items, size=300)
    train = build_csr(tu, ti, n_users)
    masked = [set(train[1][train[0][u]:train[0][u + 1]].tolist()) for u in range(n_users)]
    banned = np.array([3, 17, 29])
    users = rng.permutation(n_users)[:50]
    want = reference_topk(user_np @ item_np.T, users, masked, set(banned.tolist()), k)
    for bs in (1, 7, 50, None):
        got = full_ranking_topk(user_emb, item_emb, users, train, k, banned_items=banned,
                                batch_size=bs)
        np.testing.assert_array_equal(got, want, err_msg=f"batch_size={bs}")
    # float embeddings: batching must not change the result either
    uf = torch.from_numpy(rng.normal(size=(n_users, 16)).astype(np.float32))
    vf = torch.from_numpy(rng.normal(size=(n_items, 16)).astype(np.float32))
    full = full_ranking_topk(uf, vf, users, train, k, banned_items=banned, batch_size=50)
    np.testing.assert_array_equal(
        full_ranking_topk(uf, vf, users, train, k, banned_items=banned, batch_size=4), full)


def test_auto_batch_size_respects_budget() -> None:
    budget = 256 * 1024 ** 2
    bs = auto_batch_size(7050, budget)
    assert bs * 7050 * BYTES_PER_SCORE <= budget < (bs + 1) * 7050 * BYTES_PER_SCORE
    assert auto_batch_size(10 ** 9, 1) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_ranking_equals_cpu() -> None:
    rng = np.random.default_rng(5)
    user_np = rng.integers(-2, 3, size=(64, 8)).astype(np.float32)
    item_np = rng.integers(-2, 3, size=(300, 8)).astype(np.float32)
    train = build_csr(rng.integers(0, 64, 500), rng.integers(0, 300, 500), 64)
    users = np.arange(64)
    cpu = full_ranking_topk(torch.from_numpy(user_np), torch.from_numpy(item_np), users,
                            train, 20, banned_items=np.array([0, 5]), batch_size=9)
    gpu = full_ranking_topk(torch.from_numpy(user_np).cuda(), torch.from_numpy(item_np).cuda(),
                            users, train, 20, banned_items=np.array([0, 5]), batch_size=9)
    np.testing.assert_array_equal(cpu, gpu)


def test_ranking_rejects_bad_input() -> None:
    user_emb, item_emb = torch.zeros(2, 3), torch.zeros(4, 3)
    with pytest.raises(DataError, match="user id 2 out of range"):
        full_ranking_topk(user_emb, item_emb, np.array([2]), None, 1)
    with pytest.raises(DataError, match="banned item id 4"):
        full_ranking_topk(user_emb, item_emb, np.array([0]), None, 1, banned_items=[4])
    with pytest.raises(DataError, match="NaN"):
        full_ranking_topk(torch.full((2, 3), float("nan")), item_emb, np.array([0]), None, 1)
    with pytest.raises(ValueError, match="share d"):
        full_ranking_topk(user_emb, torch.zeros(4, 2), np.array([0]), None, 1)


# -- popularity -----------------------------------------------------------------------------
def test_popularity_baseline_hand_computed() -> None:
    # train: u0 {0, 1}, u1 {0, 2}, u2 {0, 1, 3}, u3 {1}
    # counts: item0 3, item1 3, item2 1, item3 1, item4 0 -> order 0, 1, 2, 3, 4 (ties by id)
    tu = np.array([0, 0, 1, 1, 2, 2, 2, 3])
    ti = np.array([0, 1, 0, 2, 0, 1, 3, 1])
    user_emb, item_emb = popularity_embeddings(tu, ti, 4, 5)
    assert item_emb.view(-1).tolist() == [3.0, 3.0, 1.0, 1.0, 0.0]
    train = build_csr(tu, ti, 4)
    # after masking train items: u0 [2, 3, 4], u1 [1, 3, 4], u2 [2, 4, pad]
    top = full_ranking_topk(user_emb, item_emb, np.array([0, 1, 2]), train, k=3)
    assert top.tolist() == [[2, 3, 4], [1, 3, 4], [2, 4, PAD_ITEM]]
    # test: u0 {2}, u1 {1, 4}, u2 {4}, u3 none (excluded)
    target = (np.array([0, 1, 1, 2]), np.array([2, 1, 4, 4]))
    got = evaluate_split(user_emb, item_emb, train, target, 4, 5, ks=(1, 2))
    assert got["n_users"] == 3
    # recall@1: u0 1/1, u1 1/2, u2 0/1 -> 1.5 / 3
    assert got["recall@1"] == pytest.approx(0.5)
    # recall@2: u0 1, u1 1/2, u2 1 (item 4 at rank 2) -> 2.5 / 3
    assert got["recall@2"] == pytest.approx(2.5 / 3)
