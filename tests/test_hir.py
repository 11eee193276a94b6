"""HIR (``unlearn --method hir``): its numeric core against closed forms, the method on models
trained briefly on the synthetic ``tiny`` preset (in process, no Ray), and on Last.fm-2K
against a retrained model (skipped when ../shared/data is absent)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrecun_ray.data.dataset import load_dataset
from mmrecun_ray.data.schema import Interactions, Manifest, RecDataset
from mmrecun_ray.data.synthetic import prepare_synthetic
from mmrecun_ray.errors import ConfigError
from mmrecun_ray.evaluation.evaluate import evaluate_embeddings
from mmrecun_ray.models import build_model
from mmrecun_ray.models.base import Recommender
from mmrecun_ray.objectives import NegativeSampler, bpr_loss
from mmrecun_ray.training.config import LoopConfig
from mmrecun_ray.training.export import ModelInfo, build_from_state
from mmrecun_ray.training.runner import Scaling
from mmrecun_ray.unlearning.influence import (DampedRows, ItemsLayout, KnownItems, MembershipShape,
                                              RowCorrection, RowSide, RowSystem, batched_eigh, calibrate,
                                              calibrate_mix, choose_damping, final_embeddings,
                                              forget_gradient, grouped_auc, is_linear_map,
                                              make_calibrator, retain_curvature, weighted_grams)
from mmrecun_ray.unlearning.methods import Job, MethodResult, build_methods
from mmrecun_ray.unlearning.methods.hir import (WEAK_CALIBRATION_SE, HIR, HIRSettings, HIRTwin,
                                                calibration_power, warn_if_weakly_calibrated)
from mmrecun_ray.unlearning.requests import ForgetSet, parse_request, resolve_request


# -- closed forms ------------------------------------------------------------------------------
def test_newton_step_of_a_quadratic_lands_on_the_retain_only_optimum() -> None:
    """At the optimum of ``L_r + L_f`` (quadratics), ``+H_r^-1 grad L_f`` (the undamped step)
    reaches the optimum of ``L_r`` alone exactly; damping shrinks it towards zero."""
    gen = torch.Generator().manual_seed(0)
    d = 5
    qa, qb, a, b = (torch.randn(*shape, generator=gen, dtype=torch.float64)
                    for shape in ((d, d), (d, d), (d,), (d,)))
    a_mat, b_mat = qa @ qa.T + 0.5 * torch.eye(d, dtype=torch.float64), qb @ qb.T
    both = torch.linalg.solve(a_mat + b_mat, a_mat @ a + b_mat @ b)       # argmin L_r + L_f
    g_f = b_mat @ (both - b)                                               # grad L_f there
    step = DampedRows(a_mat[None], g_f[None])
    torch.testing.assert_close(both + step(torch.zeros(1, dtype=torch.float64))[0], a)
    damped = step(torch.tensor([1e6], dtype=torch.float64))[0]
    assert float(damped.norm()) < 1e-4 * float(g_f.norm()) + 1e-12


def _small_problem(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    fu = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    fi = torch.randn(9, 3, generator=gen, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, 6 * 9, 25))
    return fu, fi, keys // 9, keys % 9


def test_forget_gradient_is_the_gradient_of_the_exact_expected_bpr_loss() -> None:
    fu, fi, users, items = _small_problem()
    known = KnownItems(users, items, 6, 9)
    pu, pi = users[::3], items[::3]
    g_u, g_i = forget_gradient(fu, fi, pu, pi, known, chunk=2)
    xu, xi = fu.clone().requires_grad_(True), fi.clone().requires_grad_(True)
    loss = xu.new_zeros(())
    for u, i in zip(pu, pi):
        negs = torch.from_numpy(np.setdiff1d(np.arange(9), known.of(int(u))))
        loss = loss + torch.nn.functional.softplus(xi[negs] @ xu[u] - xi[i] @ xu[u]).mean()
    want_u, want_i = torch.autograd.grad(loss, (xu, xi))
    # float64 out, each chunk's products in float32
    assert g_u.dtype == torch.float64
    torch.testing.assert_close(g_u, want_u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_i, want_i, rtol=1e-5, atol=1e-6)


def test_retain_curvature_is_the_hessian_of_the_sampled_retain_loss_per_row() -> None:
    """For a bilinear score, Gauss-Newton is the exact Hessian of each row with the other
    side fixed; the negatives are the method's own fixed draw."""
    fu, fi, users, items = _small_problem(1)
    known = KnownItems(users, items, 6, 9)
    m, seed = 4, 3
    neg = known.sample(np.unique(users), m, seed)
    row_of = {int(u): r for r, u in enumerate(np.unique(users))}
    item_rows, user_rows = np.array([0, 4, 7]), np.unique(users)[:3]
    h_i, h_u = retain_curvature(fu, fi, users, items, known, m, seed, item_rows, user_rows)

    def loss(eu: torch.Tensor, ei: torch.Tensor) -> torch.Tensor:
        total = eu.new_zeros(())
        for u, k in zip(users, items):
            j = neg[row_of[int(u)]]
            total = total + torch.nn.functional.softplus(ei[j] @ eu[u] - ei[k] @ eu[u]).mean()
        return total

    def row_hessian(side: int, row: int) -> torch.Tensor:
        """Autograd Hessian of the loss w.r.t. one row of ``fu`` (side 0) or ``fi`` (side 1)."""
        def of_row(x: torch.Tensor) -> torch.Tensor:
            tables = [fu.clone(), fi.clone()]
            tables[side][row] = x
            return loss(*tables)
        return torch.autograd.functional.hessian(of_row, (fu, fi)[side][row].clone())

    assert h_i.dtype == h_u.dtype == torch.float32
    for r, i in enumerate(item_rows):
        torch.testing.assert_close(h_i[r].double(), row_hessian(1, int(i)), rtol=1e-4, atol=1e-5)
    for r, u in enumerate(user_rows):
        torch.testing.assert_close(h_u[r].double(), row_hessian(0, int(u)), rtol=1e-4, atol=1e-5)


def test_damping_choice_reads_the_curve_from_the_top_down_to_the_first_crossing() -> None:
    """What the lazy scan of ``calibrate`` relies on: points below the first crossing (from
    the most damping down) never change the choice; without a crossing the floor rule."""
    ks = [0.1, 0.2, 0.4, 0.8, 1.6]
    stats, ses = [0.45, 0.40, 0.48, 0.60, 0.70], [0.01] * 5
    kappa, how = choose_damping(ks, stats, ses, 0.5)
    assert how == "crossing"
    # log-linear between 0.4 (0.48) and 0.8 (0.60): 0.02 / 0.12 of the way down from 0.8
    assert kappa == pytest.approx(float(np.exp(np.log(0.8) + (0.10 / 0.12) * np.log(0.5))))
    assert choose_damping(ks[2:], stats[2:], ses[2:], 0.5) == (kappa, how)
    assert choose_damping(ks, [0.9] + stats[1:], ses, 0.5) == (kappa, how)
    assert choose_damping(ks, [0.2] * 5, ses, 0.5)[0] == 1.6     # top already at the target
    kappa, how = choose_damping(ks, [0.60, 0.55, 0.56, 0.57, 0.70], ses, 0.5)
    assert how.startswith("no crossing") and kappa == 0.4      # within 1 s.e. of 0.55


def test_weighted_grams_sum_each_rows_weighted_outer_products_across_padded_blocks() -> None:
    """Rows of different lengths, repeated entries, an empty row, and a budget so small that
    rows are split over several padded blocks: the same sums as a plain loop."""
    gen = torch.Generator().manual_seed(4)
    table = torch.randn(7, 3, generator=gen, dtype=torch.float64)
    seg = torch.tensor([2, 0, 2, 2, 4, 0, 2, 4, 2, 2])            # row 1 and 3 empty
    idx = torch.tensor([1, 6, 1, 3, 0, 5, 2, 0, 4, 6])
    w = torch.rand(10, generator=gen, dtype=torch.float64) - 0.2  # any sign
    want = torch.zeros(5, 3, 3, dtype=torch.float64)
    for r, i, wt in zip(seg.tolist(), idx.tolist(), w.tolist()):
        want[r] += wt * torch.outer(table[i], table[i])
    for budget in (1, 3, 1 << 15):
        torch.testing.assert_close(weighted_grams(seg, idx, w, table, 5, budget), want)


def test_batched_eigh_splits_the_batch_without_changing_any_block() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(9, 6, 8, generator=gen)
    h = x @ x.transpose(1, 2)
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        e, q = batched_eigh(h)
    finally:
        torch.set_num_threads(n)
    e1, q1 = torch.linalg.eigh(h)
    assert torch.equal(e, e1) and torch.equal(q, q1)
    assert torch.get_num_threads() == n


def _scan(values: dict[float, float], se: float = 0.01, patience: int = 2):
    """``calibrate`` over a statistic that reads kappa back from the corrected embedding:
    one item row, ``H = 0``, ``g = 1``, ``c = 1``, so ``dF = 1 / kappa``."""
    rows = DampedRows(torch.zeros(1, 1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64))
    corr = RowCorrection(np.array([0]), np.zeros(0, np.int64), rows,
                         DampedRows(torch.zeros(0, 1, 1), torch.zeros(0, 1)),
                         torch.ones(1, dtype=torch.float64), torch.zeros(0))
    seen: list[float] = []

    def statistic(f_u: torch.Tensor, f_i: torch.Tensor) -> tuple[float, float]:
        kappa = min(values, key=lambda k: abs(1.0 / k - float(f_i[0, 0])))
        seen.append(kappa)
        return values[kappa], se

    kappa, how, curve = calibrate(corr, torch.zeros(1, 1, dtype=torch.float64),
                                  torch.zeros(1, 1, dtype=torch.float64), statistic,
                                  sorted(values), 0.5, 0.0, patience)
    return kappa, how, curve, seen


def test_scan_without_a_crossing_stops_once_the_curve_has_turned() -> None:
    """No point reaches 1/2: the scan stops after two points above the minimum's floor
    (minimum + 1 s.e.) and picks what the whole grid picks; a point within the floor resets
    the count."""
    ks = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    turned = dict(zip(ks, [0.90, 0.80, 0.70, 0.60, 0.515, 0.52, 0.60]))   # minimum at 2.0
    kappa, how, curve, seen = _scan(turned)
    full = _scan(turned, patience=0)
    assert (kappa, how) == full[:2] and how.startswith("no crossing") and kappa == 4.0
    assert seen == [8.0, 4.0, 2.0, 1.0, 0.5] and [c[0] for c in curve] == seen[::-1]
    assert full[3] == ks[::-1]
    within = dict(zip(ks, [0.90, 0.80, 0.56, 0.515, 0.60, 0.51, 0.70]))  # 1.0 within the floor
    assert _scan(within)[3] == [8.0, 4.0, 2.0, 1.0, 0.5, 0.25]
    # the stated limit: a curve that comes back down to the target past the turn
    back = {**turned, 0.125: 0.45}
    assert _scan(back)[0] == kappa and _scan(back, patience=0)[1] == "crossing"


def test_items_layout_counts_candidates_strictly_below_each_pairs_threshold() -> None:
    """The ``items`` statistic's exact count, laid out by row (rows with most pairs first):
    ties do not count, masked candidates (+inf) never do."""
    inf = float("inf")
    cand = torch.tensor([[0.1, 0.5, 0.9, inf],
                         [0.3, 0.3, inf, 0.7],
                         [2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    # pairs in any order: row 0 has three, row 1 two, row 2 one
    pair_row = torch.tensor([1, 0, 2, 0, 1, 0])
    slot = torch.tensor([0, 0, 0, 1, 1, 2])
    t = torch.tensor([0.3, 0.5, 1.5, 10.0, 0.31, -5.0], dtype=torch.float64)
    lay = ItemsLayout(inv=torch.arange(3), row=torch.arange(3), draws=None,
                      mask=torch.isfinite(cand), n_cand=torch.tensor([3, 3, 4]),
                      pair_row=pair_row, slot=slot, prefix=[3, 2, 1])
    assert lay.count_below(cand, t).tolist() == [0, 1, 3, 3, 2, 0]


def test_grouped_auc_counts_within_group_wins_with_half_ties() -> None:
    gp, sp = torch.tensor([0, 0, 1]), torch.tensor([2.0, 0.5, 1.0])
    gn, sn = torch.tensor([0, 0, 1, 1]), torch.tensor([1.0, 0.5, 1.0, 3.0])
    num, den = grouped_auc(gp, sp, gn, sn, 2)
    # group 0: 2.0 beats both (2), 0.5 ties one (0.5); group 1: 1.0 ties 1.0 (0.5)
    torch.testing.assert_close(num, torch.tensor([2.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(den, torch.tensor([4.0, 2.0], dtype=torch.float64))


def _hand_retain() -> RecDataset:
    """3 users, 6 items: retain train 0:{0} 1:{0} 2:{1}; validation 0:{3} 1:{5}."""
    def inter(pairs: list[tuple[int, int]]) -> Interactions:
        a = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        return Interactions(user=a[:, 0].copy(), item=a[:, 1].copy())
    man = Manifest(name="hand", n_users=3, n_items=6, counts={}, modalities={})
    return RecDataset(3, 6, inter([(0, 0), (1, 0), (2, 1)]), inter([(0, 3), (1, 5)]),
                      inter([]), {}, man, uri="memory://hand")


def test_membership_shape_compares_forget_and_weighted_validation_pairs_by_hand() -> None:
    """User u's scores are coordinate u of the item rows; every item a user could draw as a
    non-member scores 0, so a pair counts 1 when its score is > 0, else 0.
    User 0: D_f items 1 (+1), 2 (-1) -> 1; validation item 3 (+1) weighted 2/1 -> 2.
    User 1: D_f item 4 (+1) -> 1; validation 5 (+1) -> 1. User 2 holds no validation pair
    and is left out (its D_f pair scores +100). d = ((1 - 2) + (1 - 1)) / 3 = -1/3;
    clustered s.e. sqrt((1/3)^2 + (1/3)^2) / 3 * sqrt(2) = 2/9."""
    f_u = torch.eye(3, dtype=torch.float64)
    f_i = torch.tensor([[0, 0, 100], [1, 0, 0], [-1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]],
                       dtype=torch.float64)
    shape = MembershipShape(_hand_retain(), np.array([0, 0, 1, 2]), np.array([1, 2, 4, 0]), n_neg=5)
    assert shape.n_units == 2
    d, se = shape(f_u, f_i)
    assert d == pytest.approx(-1 / 3) and se == pytest.approx(2 / 9)
    # the D_f side alone moves it: user 0's item 2 above the non-members -> (2 - 2 + 0) / 3 = 0
    f_i[2, 0] = 0.5
    assert shape(f_u, f_i)[0] == pytest.approx(0.0)


def test_curvature_mix_search_stops_near_the_checks_zero_and_keeps_mix_0_when_not_needed() -> None:
    """One item row, ``H(mix) = A + mix B`` (checked against a direct solve); the calibrator
    reads 'at target' everywhere (the most damping is taken) and the check is ``c - |dF|``,
    which rises with the mix."""
    gen = torch.Generator().manual_seed(3)
    qa, qb = (torch.randn(4, 4, generator=gen, dtype=torch.float64) for _ in range(2))
    a_m = qa @ qa.T + torch.eye(4, dtype=torch.float64)
    b_m = qb @ qb.T
    g = torch.randn(1, 4, generator=gen, dtype=torch.float64)
    none = torch.zeros(0, 4, 4, dtype=torch.float64)
    system = RowSystem(np.array([0]), np.zeros(0, np.int64), RowSide(g, a_m[None], b_m[None]),
                       RowSide(torch.zeros(0, 4, dtype=torch.float64), none, none), "global")
    corr = system.correction(0.4)
    c = float(torch.diagonal(a_m + 0.4 * b_m).mean())                 # global scale: trace / d
    torch.testing.assert_close(corr.items(2.0 * corr.c_items)[0],
                               torch.linalg.solve(a_m + 0.4 * b_m + 2.0 * c * torch.eye(4), g[0]))
    f_u, f_i = torch.zeros(1, 4, dtype=torch.float64), torch.zeros(1, 4, dtype=torch.float64)
    norms = {m: float(system.correction(m).apply(f_u, f_i, 1.0)[1].norm()) for m in (0.0, 0.4, 1.0)}
    assert norms[0.0] > norms[0.4] > norms[1.0]
    cal = lambda fu, fi: (0.5, 0.0)                         # noqa: E731
    check = lambda fu, fi: (norms[0.4] - float(fi.norm()), 0.0)   # noqa: E731  zero at mix 0.4
    best, tried = calibrate_mix(system, f_u, f_i, cal, check, [1.0], steps=5)
    assert [t.mix for t in tried[:2]] == [0.0, 0.25] and len(tried) == 7
    assert abs(best.mix - 0.4) < 0.01, [t.record() for t in tried]
    assert abs(best.shape) < 0.02 * min(abs(tried[0].shape), abs(tried[1].shape))
    assert best.correction is not None and all(t.correction is None for t in tried if t is not best)
    # a root past the trained model's own curvature: the search stops at mix 1
    beyond = lambda fu, fi: (0.5 * norms[1.0] - float(fi.norm()), 0.0)   # noqa: E731
    best, tried = calibrate_mix(system, f_u, f_i, cal, beyond, [1.0], steps=5)
    assert best.mix == 1.0 and len(tried) == 3
    # a check already >= 0 at mix 0: the plain step, one point tried
    best, tried = calibrate_mix(system, f_u, f_i, cal, lambda fu, fi: (0.01, 0.0), [1.0])
    assert best.mix == 0.0 and len(tried) == 1


# -- the method on trained models --------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> RecDataset:
    out = str(tmp_path_factory.mktemp("hir") / "data")
    prepare_synthetic("tiny", 0, out)
    return load_dataset(out)


def _train(ds: RecDataset, name: str, steps: int = 300, seed: int = 0) -> Recommender:
    """A short in-process BPR fit (batch 1024, Adam 0.01): enough to memorise the tiny set."""
    torch.manual_seed(seed)
    feats = {m: torch.from_numpy(f.copy()).float() for m, f in ds.features.items()}
    model = build_model(name, ds.n_users, ds.n_items, feats, {"embedding_dim": 32})
    model.set_graph(torch.from_numpy(np.stack([ds.train.user, ds.train.item]).astype(np.int64)))
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    sampler = NegativeSampler(ds.train.keys(ds.n_items), ds.n_items, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        model.train()
        idx = rng.integers(0, len(ds.train), 1024)
        u, p = ds.train.user[idx].astype(np.int64), ds.train.item[idx].astype(np.int64)
        ut, pt, nt = (torch.from_numpy(a) for a in (u, p, sampler.sample(u)))
        out = model()
        rows = out.user[ut]
        loss = bpr_loss((rows * out.item[pt]).sum(1), (rows * out.item[nt]).sum(1))
        opt.zero_grad()
        (loss + 1e-4 * model.regularization(out, ut, pt, nt)).backward()
        opt.step()
    return model.eval()


def _job(ds: RecDataset, model: Recommender, name: str, spec: str) -> Job:
    cfg = LoopConfig(model=name, params=model.params, learning_rate=0.01, seed=0)
    info = ModelInfo(model=name, params=model.params, n_users=ds.n_users, n_items=ds.n_items,
                     modalities={m: int(f.shape[1]) for m, f in ds.features.items()},
                     data_uri=ds.uri, manifest_hash="", loop_config=cfg.to_dict())
    fset = resolve_request(parse_request(spec), ds)
    return Job(model_uri=ds.uri, info=info,
               state={k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
               optimizer=None, fset=fset, retain_uri=ds.uri, retain_data=None,
               scaling=Scaling(workers=0), reference_valid_recall=0.0)


def _finals(job: Job, state: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    return final_embeddings(build_from_state(job.info, job.fset.retain, state))


def _statistic(fset: ForgetSet, f_u: torch.Tensor, f_i: torch.Tensor) -> tuple[float, float]:
    """The calibration statistic, rebuilt independently of the method's diagnostics."""
    held = fset.held_out_removed
    cal = make_calibrator(fset.retain, fset.forget.user, fset.forget.item, fset.request.kind,
                          fset.banned_items, (held.user, held.item))
    return cal(f_u, f_i)


def _valid_recall(fset: ForgetSet, f_u: torch.Tensor, f_i: torch.Tensor) -> float:
    r = fset.retain
    banned = fset.banned_items if fset.banned_items.size else None
    return evaluate_embeddings(f_u.float(), f_i.float(), r, r.valid, (20,), banned)["recall@20"]


@pytest.fixture(scope="module")
def lightgcn(tiny: RecDataset) -> Recommender:
    return _train(tiny, "lightgcn")


@pytest.fixture(scope="module")
def users_run(tiny: RecDataset, lightgcn: Recommender) -> tuple[Job, MethodResult]:
    job = _job(tiny, lightgcn, "lightgcn", "users:10%")
    return job, HIR().run(job)


def test_users_request_redraws_the_forgotten_users_rows(users_run) -> None:
    job, res = users_run
    gone = np.unique(job.fset.forget.user)
    fresh = build_model("lightgcn", job.info.n_users, job.info.n_items, {}, job.info.params)
    fresh.reinit_id_rows(torch.from_numpy(gone), None, seed=0)
    rows = res.state["user_embedding.weight"][gone]
    np.testing.assert_array_equal(rows, fresh.user_embedding.weight.detach().numpy()[gone])
    assert np.all(rows != job.state["user_embedding.weight"][gone])
    assert res.extra["reset_users"] == gone.size and res.extra["hir"]["user_rows"] == 0


def test_users_request_calibration_brings_the_statistic_to_one_half(users_run) -> None:
    job, res = users_run
    before = _statistic(job.fset, *_finals(job, job.state))
    after = _statistic(job.fset, *_finals(job, res.state))
    diag = res.extra["hir"]
    assert before[0] > 0.5 + 2 * before[1] and before[0] > 0.56, before
    assert abs(after[0] - 0.5) < 0.03, after
    assert diag["kappa_how"] == "crossing"
    assert abs(diag["stat_after"] - after[0]) < 1e-9
    # the scan ran from the most damping down and stopped at its first point at the target
    ks, stats = [c[0] for c in diag["curve"]], [c[1] for c in diag["curve"]]
    assert ks == sorted(ks) and 2 <= len(ks) < 16 and ks[-1] == pytest.approx(20.0)
    assert stats[0] <= 0.5 < min(stats[1:]), stats
    assert ks[0] <= diag["kappa"] <= ks[1]


def test_users_request_moves_item_rows_only_and_keeps_retain_users(users_run) -> None:
    """Retain users' final rows are untouched up to the CG tolerance; item rows moved."""
    job, res = users_run
    fset = job.fset
    keep = np.setdiff1d(np.unique(fset.retain.train.user), fset.forget.user)
    u0, i0 = _finals(job, job.state)
    u1, i1 = _finals(job, res.state)
    rel_users = float((u1[keep] - u0[keep]).norm() / u0[keep].norm())
    rel_items = float((i1 - i0).norm() / i0.norm())
    assert res.extra["hir"]["cg_rel_residual"] < 1e-4
    assert rel_users < 1e-3, rel_users
    assert rel_items > 0.01, rel_items


def test_users_request_keeps_retain_quality(users_run) -> None:
    job, res = users_run
    before = _valid_recall(job.fset, *_finals(job, job.state))
    after = _valid_recall(job.fset, *_finals(job, res.state))
    assert before > 0.5
    assert after >= before - 0.02, (before, after)


def test_a_model_that_never_saw_the_forgotten_data_is_flagged_as_weakly_calibrated(
        tiny, users_run, caplog: pytest.LogCaptureFixture) -> None:
    """The same request on two models: the one that memorised D_f sits several standard errors
    above 1/2 before the correction and runs without a warning; one trained on the retain set
    alone sits at 1/2, so its damping is not set by the data: HIR records that power and says
    so (unless the damping was fixed by hand)."""
    job, memorised = users_run
    hir_log = "mmrecun_ray.unlearning.methods.hir"
    assert memorised.extra["hir"]["calibration_power"] >= WEAK_CALIBRATION_SE + 1
    with caplog.at_level(logging.WARNING, logger=hir_log):
        HIR().run(job)
    assert "Gold band" not in caplog.text
    never_saw = replace(_job(tiny, _train(job.fset.retain, "lightgcn"), "lightgcn", "users:10%"),
                        fset=job.fset)
    with caplog.at_level(logging.WARNING, logger=hir_log):
        res = HIR().run(never_saw)
    diag = res.extra["hir"]
    assert abs(diag["stat_before"] - 0.5) < 2 * diag["stat_before_se"]
    assert diag["calibration_power"] < WEAK_CALIBRATION_SE
    assert "check this result against a Gold band" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=hir_log):
        HIR(HIRSettings(fixed_kappa=1.0)).run(never_saw)
    assert "Gold band" not in caplog.text


@pytest.mark.parametrize("stat, se, units, how, expected", [
    (0.563, 0.053, 25, "crossing", "only 1.2 standard errors above 0.50"),  # Last.fm-2K items seed 1
    (0.698, 0.024, 23, "crossing", None),                                   # 8.2 s.e.: no warning
    (0.441, 0.027, 15, "at or below target", "not above 0.50"),            # the demo's tiny users
    (float("nan"), float("nan"), 0, "no calibration units", "nothing to calibrate on"),
    (0.700, 0.0, 1, "crossing", "has no standard error (1 units)"),        # one unit: se 0
    (0.51, 0.05, 25, "fixed", None),                                        # damping set by hand
])
def test_weak_calibration_warning_names_how_far_the_statistic_is_from_one_half(
        stat, se, units, how, expected, caplog: pytest.LogCaptureFixture) -> None:
    diag = {"kappa": 4.67, "kappa_how": how, "stat_before": stat, "stat_before_se": se,
            "calibration_units": units, "calibration_power": calibration_power(stat, se, 0.5)}
    with caplog.at_level(logging.WARNING, logger="mmrecun_ray.unlearning.methods.hir"):
        warn_if_weakly_calibrated("items", diag, 0.5)
    if expected is None:
        assert caplog.text == ""
    else:
        assert expected in caplog.text and "Gold band" in caplog.text


@pytest.mark.parametrize("spec", ["items:5%", "interactions:10%"])
def test_items_and_interactions_requests_are_calibrated(tiny, lightgcn, spec) -> None:
    job = _job(tiny, lightgcn, "lightgcn", spec)
    res = HIR().run(job)
    diag = res.extra["hir"]
    before = _statistic(job.fset, *_finals(job, job.state))
    after = _statistic(job.fset, *_finals(job, res.state))
    assert before[0] > 0.56 and abs(after[0] - 0.5) < 0.03, (before, after)
    assert diag["item_rows"] > 0 and diag["user_rows"] > 0
    quality = (_valid_recall(job.fset, *_finals(job, job.state)),
               _valid_recall(job.fset, *_finals(job, res.state)))
    assert quality[1] >= quality[0] - 0.02, quality
    if spec.startswith("items"):
        banned = job.fset.banned_items
        assert res.extra["reset_items"] == banned.size
        assert not np.allclose(res.state["item_embedding.weight"][banned],
                               job.state["item_embedding.weight"][banned])


def test_interactions_curvature_mix_brings_the_membership_check_towards_zero(tiny, lightgcn) -> None:
    """On ``interactions`` the default sets the curvature mix from held-out data: D_f's
    score-MIA AUC against the same users' validation pairs (the check, rebuilt here apart from
    the method) moves from well below 0 at mix 0 towards 0, and the damping calibration
    still holds the statistic at 1/2. ``users``/``items`` requests keep mix 0."""
    job = _job(tiny, lightgcn, "lightgcn", "interactions:10%")
    check = MembershipShape(job.fset.retain, job.fset.forget.user, job.fset.forget.item, seed=5)
    plain = HIR(build_methods(["hir"], {"curvature_mix": "0"})[0].settings).run(job)
    auto = HIR().run(job)
    d_plain = check(*_finals(job, plain.state))[0]
    d_auto = check(*_finals(job, auto.state))[0]
    assert d_plain < -0.015 and abs(d_auto) < 0.5 * abs(d_plain), (d_plain, d_auto)
    assert 0 < auto.extra["hir"]["curvature_mix"] <= 1 and len(auto.extra["hir"]["mix_curve"]) == 3
    assert abs(_statistic(job.fset, *_finals(job, auto.state))[0] - 0.5) < 0.03
    users = HIR().run(_job(tiny, lightgcn, "lightgcn", "users:10%")).extra["hir"]
    assert users["curvature_mix"] == 0.0 and users["mix_curve"] == []


def test_items_statistic_on_sampled_candidates_tracks_the_exact_one(tiny, lightgcn) -> None:
    """``max_candidates`` (off by default): a user's percentile among uniform catalogue draws
    instead of every item. On the trained model and on HIR's result the sampled statistic
    (m = 64 of 200 items) stays within a quarter of the exact one's distance to 1/2, and it
    is not the exact computation in disguise."""
    job = _job(tiny, lightgcn, "lightgcn", "items:5%")
    fset, held = job.fset, job.fset.held_out_removed

    def stat(state: dict[str, np.ndarray], m: int) -> float:
        cal = make_calibrator(fset.retain, fset.forget.user, fset.forget.item, "items",
                              fset.banned_items, (held.user, held.item), max_candidates=m)
        return cal(*_finals(job, state))[0]
    trained = (stat(job.state, 0), stat(job.state, 64))
    assert trained[0] > 0.56 and trained[0] != trained[1], trained
    assert abs(trained[1] - trained[0]) < 0.25 * (trained[0] - 0.5), trained
    assert stat(job.state, 1000) == trained[0]                 # no smaller than the catalogue
    fixed = HIR(HIR.Settings(calibration_candidates=64)).run(job)
    after = (stat(fixed.state, 0), stat(fixed.state, 64))
    assert abs(after[1] - 0.5) < 0.03 and abs(after[0] - 0.5) < 0.03, after


def test_freedom_is_realised_through_its_non_symmetric_map(tiny) -> None:
    model = _train(tiny, "freedom", steps=200)
    job = _job(tiny, model, "freedom", "users:10%")
    res = HIR().run(job)
    diag = res.extra["hir"]
    assert diag["cg"] in ("bicgstab", "normal equations") and diag["cg_rel_residual"] < 1e-3
    after = _statistic(job.fset, *_finals(job, res.state))
    assert abs(after[0] - 0.5) < 0.03, after


def test_linear_map_probe_and_unsupported_models(tiny) -> None:
    feats = {m: torch.from_numpy(f.copy()).float() for m, f in tiny.features.items()}
    edges = torch.from_numpy(np.stack([tiny.train.user, tiny.train.item]).astype(np.int64))
    probed = {}
    for name in ("mf", "lightgcn", "freedom", "vbpr", "mgcn"):
        torch.manual_seed(0)
        m = build_model(name, tiny.n_users, tiny.n_items, feats, {"embedding_dim": 8})
        m.set_graph(edges)
        probed[name] = is_linear_map(m)
    assert probed == {"mf": True, "lightgcn": True, "freedom": True, "vbpr": False, "mgcn": False}
    job = _job(tiny, build_model("mgcn", tiny.n_users, tiny.n_items, feats, {"embedding_dim": 8}),
               "mgcn", "users:10%")
    with pytest.raises(ConfigError, match="hir: model 'mgcn' is not supported"):
        HIR().run(job)


def test_settings_come_from_set_strings() -> None:
    (method,) = build_methods(["hir"], {"kappa_points": "5", "damping": "row", "fixed_kappa": "null"})
    assert method.settings.kappas()[0] == pytest.approx(0.02) and len(method.settings.kappas()) == 5
    assert method.settings.damping == "row" and method.settings.fixed_kappa is None
    (method,) = build_methods(["hir"], {"curvature_mix": "0.3", "mix_steps": "2"})
    assert method.settings.curvature_mix == 0.3 and method.settings.mix_steps == 2
    assert build_methods(["hir"], {})[0].settings.curvature_mix is None
    with pytest.raises(ConfigError):
        build_methods(["hir"], {"damping": "diagonal"})
    with pytest.raises(ConfigError, match=r"curvature_mix must be in \[0, 1\].*got 1.5"):
        build_methods(["hir"], {"curvature_mix": "1.5"})[0].check(
            ModelInfo(model="lightgcn", params={}, n_users=1, n_items=1, modalities={},
                      data_uri="", manifest_hash="", loop_config={}))


# -- real data -----------------------------------------------------------------------------------
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_lfm2k_users_request_foldin_is_closer_to_a_retrained_model_than_redraw(tmp_path) -> None:
    """Last.fm-2K, LightGCN, users:5%: the fold-in attack's recall on the forgotten users
    (a fresh vector fitted on half of a user's former items, the other half ranked) after
    HIR is closer to a model retrained from scratch without them than after ``redraw``
    (which leaves the item rows they shaped as they were). ~30-60 s on 2 shared CPUs."""
    src = SHARED / "lfm2k"
    if not (src / "lfm2k.inter").exists():
        pytest.skip(f"real data {src} absent (tests read ../shared/data beside the checkout)")
    from mmrecun_ray.data.mmrec_import import prepare_mmrec
    from mmrecun_ray.unlearning.audit import AuditContext, fold_in_users
    from mmrecun_ray.unlearning.methods.redraw import Redraw
    prepare_mmrec(src, tmp_path / "lfm2k")
    ds = load_dataset(tmp_path / "lfm2k")
    job = _job(ds, _train(ds, "lightgcn", steps=300), "lightgcn", "users:5%@0")
    gold = _train(job.fset.retain, "lightgcn", steps=300)
    ctx = AuditContext.build(job.fset, ds, seed=0)

    def foldin(item_emb: torch.Tensor) -> float:
        return float(fold_in_users(item_emb, ctx).values.mean())
    hir, redraw = HIR().run(job), Redraw().run(job)
    g = foldin(final_embeddings(gold)[1])
    h, r = foldin(_finals(job, hir.state)[1]), foldin(_finals(job, redraw.state)[1])
    assert abs(h - g) < abs(r - g) - 0.005, (g, h, r)
    assert abs(hir.extra["hir"]["stat_after"] - 0.5) < 0.01


def test_the_influence_core_imports_no_ray() -> None:
    import subprocess
    import sys
    code = "import sys, mmrecun_ray.unlearning.influence; sys.exit('ray' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_unlearn_defaults_to_hir_and_refuses_an_unsupported_model_before_any_side_effect(
        tiny, lightgcn, tmp_path, capsys) -> None:
    """``unlearn`` without ``--method`` runs hir; a model hir cannot handle is refused with
    one line (exit 2) before the request is accepted or anything is written."""
    from mmrecun_ray.cli import main
    from mmrecun_ray.storage import ledger
    from mmrecun_ray.training.export import export_model
    info = replace(_job(tiny, lightgcn, "lightgcn", "users:10%").info, model="mgcn")
    model_dir = export_model(str(tmp_path / "model"), info,
                             {k: v.detach().numpy() for k, v in lightgcn.state_dict().items()})
    before = ledger.read_entries(str(Path(tiny.uri) / "ledger"))
    out = tmp_path / "forget"
    rc = main(["unlearn", "--model-uri", model_dir, "--data", tiny.uri, "--request", "users:10%",
               "--out", str(out), "--workers", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not out.exists()
    assert err[-1].startswith("error: hir: model 'mgcn' is not supported"), err[-1:]
    assert ledger.read_entries(str(Path(tiny.uri) / "ledger")) == before


def test_modality_request_is_the_retain_graph_model_without_correction(tiny, lightgcn) -> None:
    job = _job(tiny, lightgcn, "lightgcn", "modality:image")
    res = HIR().run(job)
    assert "skipped" in res.extra["hir"] and res.extra["reset_users"] == 0
    for k, v in job.state.items():
        np.testing.assert_array_equal(res.state[k], v)


# -- hir-twin --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def twin_lightgcn(tiny: RecDataset) -> Recommender:
    return _train(tiny, "lightgcn", seed=1000)


def _twin_job(tiny: RecDataset, lightgcn: Recommender, twin: Recommender, spec: str) -> Job:
    job = _job(tiny, lightgcn, "lightgcn", spec)
    info = replace(job.info, twin={"seed": 1000, "served_seed": 0, "swaps": 0})
    return replace(job, info=info,
                   twin_state={k: v.detach().numpy().copy() for k, v in twin.state_dict().items()})


def test_hir_twin_serves_the_corrected_twin_and_keeps_the_corrected_model_as_standby(
        tiny, lightgcn, twin_lightgcn) -> None:
    job = _twin_job(tiny, lightgcn, twin_lightgcn, "users:10%")
    res = HIRTwin().run(job)
    served = HIR().run(replace(job, state=job.twin_state))
    standby = HIR().run(job)
    for k in served.state:
        np.testing.assert_array_equal(res.state[k], served.state[k])
        np.testing.assert_array_equal(res.twin_state[k], standby.state[k])
    assert res.info.twin == {"seed": 0, "served_seed": 1000, "swaps": 1}
    assert res.extra["hir"]["kappa"] == served.extra["hir"]["kappa"]
    # the served rows are the twin's, not the model's: every retain user's row differs
    keep = np.setdiff1d(np.arange(tiny.n_users), job.fset.forget.user)
    assert np.all(np.abs(res.state["user_embedding.weight"][keep]
                         - job.state["user_embedding.weight"][keep]).sum(1) > 0)


def test_lfm2k_hir_twin_brings_the_differencing_attack_to_a_retrains_level(tmp_path) -> None:
    """Last.fm-2K, LightGCN, interactions:10%: an attacker holding the model before and after
    scores each pair by how much its score dropped. After HIR's in-place edit D_f stands out
    (the never-seen pairs barely move); after the swap to the corrected twin the attack's AUC
    is that of original -> a model retrained without D_f. ~60-140 s on 2 shared CPUs."""
    src = SHARED / "lfm2k"
    if not (src / "lfm2k.inter").exists():
        pytest.skip(f"real data {src} absent (tests read ../shared/data beside the checkout)")
    from mmrecun_ray.data.mmrec_import import prepare_mmrec
    from mmrecun_ray.unlearning.audit import AuditContext, differencing_auc
    prepare_mmrec(src, tmp_path / "lfm2k")
    ds = load_dataset(tmp_path / "lfm2k")
    job = _twin_job(ds, _train(ds, "lightgcn"), _train(ds, "lightgcn", seed=1000),
                    "interactions:10%@0")
    ctx = AuditContext.build(job.fset, ds, seed=0)
    before = final_embeddings(build_from_state(job.info, ds, job.state))
    d_gold = differencing_auc(before, final_embeddings(_train(job.fset.retain, "lightgcn", seed=2)),
                              ctx)[0]
    d_hir = differencing_auc(before, _finals(job, HIR().run(job).state), ctx)[0]
    d_twin = differencing_auc(before, _finals(job, HIRTwin().run(job).state), ctx)[0]
    assert d_hir > d_gold + 0.05, (d_hir, d_gold)          # measured: 0.817 against 0.664-0.668
    assert abs(d_twin - d_gold) < 0.25 * (d_hir - d_gold), (d_twin, d_hir, d_gold)  # 0.669


def test_hir_twin_refuses_a_model_trained_without_a_twin(tiny, lightgcn) -> None:
    job = _job(tiny, lightgcn, "lightgcn", "users:10%")
    with pytest.raises(ConfigError, match=r"hir-twin: model 'lightgcn' has no standby twin \(train it "
                                          r"with `train --twin`\)"):
        HIRTwin().check(job.info)


def test_a_model_folder_keeps_its_twin_only_while_model_json_describes_one(
        tiny, lightgcn, twin_lightgcn, tmp_path) -> None:
    from mmrecun_ray.errors import DataError
    from mmrecun_ray.training.export import TWIN_FILE, export_model, read_model_info, read_twin
    job = _twin_job(tiny, lightgcn, twin_lightgcn, "users:10%")
    folder = str(tmp_path / "model")
    export_model(folder, job.info, job.state, twin=job.twin_state)
    twin = read_twin(folder, read_model_info(folder), as_numpy=True)
    for k, v in job.twin_state.items():
        np.testing.assert_array_equal(twin[k], v)
    plain = replace(job.info, twin={})
    export_model(folder, plain, job.state)        # re-published without a twin: the file goes
    assert read_twin(folder, read_model_info(folder)) is None
    assert not (tmp_path / "model" / TWIN_FILE).exists()
    with pytest.raises(ValueError, match="model.json describes a twin but no twin weights were given"):
        export_model(folder, job.info, job.state)
    with pytest.raises(ValueError, match="model.json describes no twin but twin weights were given"):
        export_model(folder, plain, job.state, twin=job.twin_state)
    export_model(folder, job.info, job.state, twin=job.twin_state)
    (tmp_path / "model" / TWIN_FILE).unlink()      # model.json names a twin that is not there
    with pytest.raises(DataError, match=r"twin\.pt: not found — model\.json describes a twin"):
        read_twin(folder, read_model_info(folder))
