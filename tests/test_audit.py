"""Unlearning audit: membership inference, the fold-in / differencing / probe attacks on
planted and hand-built cases, top-K agreement and memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mmrecun_ray.data.schema import Interactions, Manifest, RecDataset
from mmrecun_ray.data.synthetic import generate_synthetic
from mmrecun_ray.errors import DataError
from mmrecun_ray.evaluation import membership
from mmrecun_ray.models import MF
from mmrecun_ray.objectives.bpr import bpr_loss
from mmrecun_ray.unlearning.audit import (
    AuditContext,
    audit_model,
    auc_standard_error,
    differencing_auc,
    fold_in_items,
    fold_in_users,
    mia_auc,
    mia_auc_from_scores,
    peak_memory_mb,
    probe_r2,
    sample_nonmembers,
    topk_jaccard,
    topk_overlap,
    topk_overlap_per_user,
    track_peak_rss,
)
from mmrecun_ray.unlearning.band import paired
from mmrecun_ray.unlearning.requests import parse_request, resolve_request


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


def test_mia_now_lives_in_evaluation_and_is_reexported() -> None:
    assert mia_auc_from_scores is membership.mia_auc_from_scores
    assert mia_auc is membership.mia_auc


# -- AUC standard errors (DeLong) -------------------------------------------------------------
def test_delong_se_hand_computed() -> None:
    # members [2, 0.5, 2] vs non-members [0.5, 0.5, 1]:
    # placements v10 = [1, 1/3, 1] (0.5 ties two non-members, loses to 1), v01 = [5/6, 5/6, 2/3]
    # AUC = 7/9; var(v10) = 4/27, var(v01) = 1/108 (ddof=1)
    # var(AUC) = (4/27) / 3 + (1/108) / 3 = 17/324  ->  se = sqrt(17) / 18
    members, nonmembers = [2.0, 0.5, 2.0], [0.5, 0.5, 1.0]
    v10, v01 = membership.auc_placements(members, nonmembers)
    assert v10 == pytest.approx([1, 1 / 3, 1]) and v01 == pytest.approx([5 / 6, 5 / 6, 2 / 3])
    assert mia_auc_from_scores(members, nonmembers) == pytest.approx(7 / 9)
    assert auc_standard_error(members, nonmembers) == pytest.approx(math.sqrt(17) / 18)


def test_clustered_pseudo_values() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1.0, 400), rng.normal(0.0, 1.0, 500)
    delong = auc_standard_error(pos, neg)
    # every score its own cluster: the pseudo-values average to the AUC and their s.e. is
    # DeLong's (up to the C / (C - 1) vs per-side ddof factors)
    auc, ids, pseudo = membership.auc_cluster_pseudo_values(pos, neg, np.arange(400),
                                                            np.arange(400, 900))
    assert ids.size == 900 and np.mean(pseudo) == pytest.approx(auc)
    assert auc == mia_auc_from_scores(pos, neg)
    assert np.std(pseudo, ddof=1) / math.sqrt(900) == pytest.approx(delong, rel=0.01)
    # 20 users, each remembered to its own degree (a shift shared by all its member pairs):
    # the pairs are not independent and the per-pair s.e. is far too small (0.018 vs 0.057)
    user_m, user_n = rng.integers(0, 20, 400), rng.integers(0, 20, 500)
    pos_c = pos + rng.normal(0, 1.0, 20)[user_m]
    _, ids, pseudo = membership.auc_cluster_pseudo_values(pos_c, neg, user_m, user_n)
    assert ids.tolist() == list(range(20))
    assert np.std(pseudo, ddof=1) / math.sqrt(20) > 2.5 * auc_standard_error(pos_c, neg)
    with pytest.raises(DataError, match="cluster ids"):
        membership.auc_cluster_pseudo_values(pos, neg, user_m[:10], user_n)


# -- hand-built datasets ----------------------------------------------------------------------
def make_ds(n_users: int, n_items: int, train: list[tuple[int, int]],
            valid: list[tuple[int, int]] = (), test: list[tuple[int, int]] = (),
            features: dict[str, np.ndarray] | None = None) -> RecDataset:
    def inter(pairs) -> Interactions:
        arr = np.asarray(list(pairs), dtype=np.int64).reshape(-1, 2)
        return Interactions(user=arr[:, 0].copy(), item=arr[:, 1].copy())
    feats = features or {}
    man = Manifest(name="hand", n_users=n_users, n_items=n_items, counts={},
                   modalities={m: f.shape[1] for m, f in feats.items()})
    return RecDataset(n_users, n_items, inter(train), inter(valid), inter(test), feats, man,
                      uri="memory://hand")


def synthetic_ds(preset: str = "tiny", seed: int = 0) -> RecDataset:
    d = generate_synthetic(preset, seed)
    man = Manifest(name=d["name"], n_users=d["n_users"], n_items=d["n_items"], counts={},
                   modalities={m: f.shape[1] for m, f in d["features"].items()})
    return RecDataset(d["n_users"], d["n_items"], d["train"], d["valid"], d["test"],
                      d["features"], man, uri=f"synthetic://{preset}")


# -- differencing attack ----------------------------------------------------------------------
def test_differencing_auc_hand_computed() -> None:
    # user 0 knows items 0-3, user 1 items 0-3: item 4 is the only never-seen item of both,
    # so every non-member draw is (u, 4)
    ds = make_ds(2, 5, train=[(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 3)],
                 valid=[(0, 3), (1, 2)])
    fset = resolve_request(parse_request("interactions=0:1,0:2,1:3"), ds)
    ctx = AuditContext.build(fset, ds, seed=0)
    assert ctx.nonmember_items.tolist() == [4, 4, 4]
    users = torch.tensor([[1.0], [2.0]])
    before = (users, torch.tensor([[0.0], [3.0], [2.0], [1.0], [1.0]]))
    after = (users, torch.tensor([[0.0], [1.0], [1.5], [0.0], [0.5]]))
    # moved (before - after): members (0,1) 3-1 = 2, (0,2) 2-1.5 = 0.5, (1,3) 2-0 = 2;
    # non-members (0,4) 1-0.5 = 0.5 twice, (1,4) 2-1 = 1
    # -> the member/non-member comparisons of test_delong_se_hand_computed: AUC 7/9.
    # Clustered by user (v10 = [1, 1/3, 1], v01 = [5/6, 5/6, 2/3], M = N = 3, C = 2):
    # user 0: Z = (4/3 - 2 * 7/9) / 3 + (5/3 - 2 * 7/9) / 3 = -1/27; user 1: Z = +1/27;
    # pseudo-values 7/9 + 2 Z = [19/27, 23/27] -> s.e. = sd / sqrt(2) = 2/27
    auc, se = differencing_auc(before, after, ctx)
    assert auc == pytest.approx(7 / 9)
    assert se == pytest.approx(2 / 27)
    # nothing moved: every score difference ties -> 0.5
    assert differencing_auc(before, before, ctx)[0] == 0.5
    # and audit_model records it with its placements
    res = audit_model(*after, ctx, before=before)
    assert res.values["diff_auc"] == pytest.approx(7 / 9)
    assert res.per_unit["diff_auc"] == pytest.approx([19 / 27, 23 / 27])


# -- fold-in on planted data ------------------------------------------------------------------
def fit_mf(train: Interactions, n_users: int, n_items: int, seed: int = 1,
           epochs: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """A small BPR-MF fit (plain torch, minibatches of 512, Adam 0.01)."""
    torch.manual_seed(seed)
    model = MF(n_users, n_items, embedding_dim=32)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    u, i = torch.from_numpy(train.user), torch.from_numpy(train.item)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(u.numel(), generator=gen)
        for s in range(0, u.numel(), 512):
            b = perm[s:s + 512]
            neg = torch.randint(0, n_items, (b.numel(),), generator=gen)
            out = model()
            pu, pi, ni = out.user[u[b]], out.item[i[b]], out.item[neg]
            reg = (pu.square().sum() + pi.square().sum() + ni.square().sum()) / b.numel()
            loss = bpr_loss((pu * pi).sum(-1), (pu * ni).sum(-1)) + 1e-4 * reg
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        out = model()
    return out.user.detach(), out.item.detach()


@pytest.fixture(scope="module")
def planted() -> dict:
    """Planted data (tiny synthetic), 12% of the users forgotten, one MF trained WITH them
    and one WITHOUT (the retain set), same seed."""
    ds = synthetic_ds()
    fset = resolve_request(parse_request("users:12%"), ds)
    ctx = AuditContext.build(fset, ds, seed=0)
    with_users = fit_mf(ds.train, ds.n_users, ds.n_items)
    without = fit_mf(fset.retain.train, ds.n_users, ds.n_items)
    return {"ds": ds, "fset": fset, "ctx": ctx, "with": with_users, "without": without}


def test_fold_in_separates_a_model_trained_with_the_users(planted: dict) -> None:
    ctx = planted["ctx"]
    assert len(ctx.fold_users) == 36 and len(ctx.fold_controls) == 36
    assert not np.isin(ctx.fold_controls.units, ctx.fold_users.units).any()
    w = fold_in_users(planted["with"][1], ctx)
    wo = fold_in_users(planted["without"][1], ctx)
    assert (w.ids == ctx.fold_users.units).all() and (wo.ids == w.ids).all()
    diff = w.values - wo.values
    se = diff.std(ddof=1) / math.sqrt(diff.size)
    # the model that saw the users ranks their held-out half far higher (> 3 paired s.e.);
    # the one that never saw them still beats chance (other users' tastes): 20/200 items
    assert diff.mean() > 3 * se and diff.mean() > 0.1, (w.mean, wo.mean, se)
    assert wo.mean > 0.2
    # on retain controls (both models trained on them) they are equal within noise
    cw = fold_in_users(planted["with"][1], ctx, group="control")
    cwo = fold_in_users(planted["without"][1], ctx, group="control")
    cdiff = cw.values - cwo.values
    assert abs(cdiff.mean()) < 2 * cdiff.std(ddof=1) / math.sqrt(cdiff.size)
    # deterministic: the same model gives the same vector
    assert (fold_in_users(planted["with"][1], ctx).values == w.values).all()


def test_audit_model_on_planted_data(planted: dict) -> None:
    ctx = planted["ctx"]
    rw = audit_model(*planted["with"], ctx)
    ro = audit_model(*planted["without"], ctx, before=planted["with"], gold_top=rw.top20)
    for r in (rw, ro):
        assert set(r.values) >= {"retain_recall@20", "retain_ndcg@20", "forget_recall@20",
                                 "forget_ndcg@20", "mia_auc", "fold_in_recall@20",
                                 "fold_in_control_recall@20"}
        assert "item_fold_in_hit@20" not in r.values and "probe_r2" not in r.values
        for m, v in r.per_unit.items():
            assert np.mean(v) == pytest.approx(r.values[m]), m
    assert "diff_auc" not in rw.values and "overlap@20_vs_gold" in ro.values
    # the MIA draws are today's (mia_auc with the context's seed): the same AUC, exactly
    ds, fset = planted["ds"], planted["fset"]
    known = np.concatenate([ds.split(s).keys(ds.n_items) for s in ("train", "valid", "test")])
    assert rw.values["mia_auc"] == mia_auc(*planted["with"], fset.forget.user, fset.forget.item,
                                           known, ds.n_items, seed=0)
    # the original remembers D_f (MIA, forget recall), the retrain does not
    assert rw.values["mia_auc"] > 0.9 and abs(ro.values["mia_auc"] - 0.5) < 0.1
    assert rw.values["forget_recall@20"] > 3 * ro.values["forget_recall@20"]
    # forget metrics and MIA pseudo-values per D_f user, aligned across models
    n_f_users = np.unique(planted["fset"].forget.user).size
    assert rw.per_unit["forget_recall@20"].shape == ro.per_unit["forget_recall@20"].shape \
        == (n_f_users,)
    assert rw.per_unit["mia_auc"].shape == ro.per_unit["mia_auc"].shape == (n_f_users,)
    # paired comparisons line up with the direct attack
    d, se = paired(rw, ro, "fold_in_recall@20")
    assert d > 3 * se
    assert rw.top20.shape == (ctx.top_users.size, 20)
    assert 0.0 < ro.values["overlap@20_vs_gold"] < 1.0
    assert set(rw.to_json()) == {"values", "se", "seconds"}


# -- item fold-in on a constructed case -------------------------------------------------------
def test_item_fold_in_finds_items_whose_users_share_a_direction() -> None:
    """Users 0-39 point along e_0 and like items 0-9 (which point along e_0 too); the other
    users and items 10-59 are random. Item 60 was liked by 20 users of the cluster, item 61
    by 20 random users; both are withdrawn."""
    rng = np.random.default_rng(0)
    n_users, n_cat, d = 200, 60, 16
    n_items = n_cat + 2
    e0 = np.eye(d)[0]
    user_emb = rng.normal(0, 1, (n_users, d)) / math.sqrt(d)
    cluster = np.arange(40)
    user_emb[cluster] = e0 + rng.normal(0, 0.05, (40, d))
    item_emb = rng.normal(0, 0.5, (n_items, d)) / math.sqrt(d)
    item_emb[:10] = e0 + rng.normal(0, 0.05, (10, d))
    train = [(int(u), int(i)) for u in cluster for i in rng.choice(10, 3, replace=False)]
    train += [(u, int(i)) for u in range(40, n_users)
              for i in rng.choice(np.arange(10, n_cat), 3, replace=False)]
    train += [(int(u), 60) for u in cluster[:20]]
    train += [(int(u), 61) for u in rng.choice(np.arange(40, n_users), 20, replace=False)]
    ds = make_ds(n_users, n_items, train)
    ctx = AuditContext.build(resolve_request(parse_request("items=60,61"), ds), ds)
    assert ctx.fold_items.units.tolist() == [60, 61]
    assert np.diff(ctx.fold_items.held[0]).tolist() == [10, 10]
    u_t, i_t = torch.tensor(user_emb), torch.tensor(item_emb)
    res = fold_in_items(u_t, ctx, i_t)
    # item 60: fitted to score like the fit users' own items (~1) along e_0, it scores ~1 for
    # the 10 held-out cluster users, whose 20th-best active item is a random one (~0.1):
    # every one is a hit. Item 61: its users share nothing, and they score their own items
    # like any random item, so the fresh vector is small and rarely reaches a top 20.
    assert res.values[0] == 1.0
    assert res.values[1] <= 0.3
    assert res.ids.tolist() == [60, 61]
    # the same attack with every score doubled (user vectors x2) gives the same hits: it is
    # on the model's own scale
    assert (fold_in_items(2 * u_t, ctx, i_t).values == res.values).all()
    # controls are active items with their own users split the same way
    ctrl = fold_in_items(u_t, ctx, i_t, group="control")
    assert ctrl.ids.size == 2 and not np.isin(ctrl.ids, [60, 61]).any()
    out = audit_model(u_t, i_t, ctx)
    assert out.values["item_fold_in_hit@20"] == pytest.approx(res.mean)
    assert out.values["item_fold_in_control_hit@20"] == pytest.approx(ctrl.mean)
    assert "fold_in_recall@20" not in out.values
    with pytest.raises(DataError, match="no forget units"):
        fold_in_users(i_t, ctx)


# -- probe attack -----------------------------------------------------------------------------
def test_probe_r2_near_one_for_a_linear_map_and_near_zero_for_noise() -> None:
    rng = np.random.default_rng(1)
    n_items, d_m, d = 300, 8, 16
    feats = rng.normal(0, 1, (n_items, d_m)).astype(np.float32)
    train = [(u, int(i)) for u in range(50) for i in rng.choice(n_items, 6, replace=False)]
    ds = make_ds(50, n_items, train, features={"image": feats})
    ctx = AuditContext.build(resolve_request(parse_request("modality:image"), ds), ds)
    assert ctx.probe.test.size == 90 and np.intersect1d(ctx.probe.test, ctx.probe.train).size == 0
    linear = torch.tensor(feats @ rng.normal(0, 1, (d_m, d)))     # features recoverable
    r2, se = probe_r2(linear, feats, ctx)
    assert r2 > 0.99 and se < 0.01
    noise = torch.tensor(rng.normal(0, 1, (n_items, d)))
    r2_noise, se_noise = probe_r2(noise, feats, ctx)
    assert abs(r2_noise) < 0.1 and se_noise > 0
    res = audit_model(torch.tensor(rng.normal(0, 1, (50, d))), linear, ctx)
    assert res.values["probe_r2"] == pytest.approx(r2)
    assert res.per_unit["probe_r2"].shape == (90,)
    assert np.mean(res.per_unit["probe_r2"]) == pytest.approx(r2)
    # a subset drop: the probe is scored on the dropped items, fitted on the others
    sub = AuditContext.build(resolve_request(parse_request("modality:image=3,5,7,9"), ds), ds)
    assert sub.probe.test.tolist() == [3, 5, 7, 9] and sub.probe.train.size == n_items - 4
    with pytest.raises(DataError, match="features have shape"):
        probe_r2(linear, feats[:10], ctx)


# -- top-K agreement per user -----------------------------------------------------------------
def test_topk_overlap_per_user_hand_computed() -> None:
    a = np.array([[1, 2, 3], [4, 5, 6]])
    b = np.array([[3, 2, 10], [4, -1, -1]])
    assert topk_overlap_per_user(a, b).tolist() == pytest.approx([2 / 3, 1 / 3])
