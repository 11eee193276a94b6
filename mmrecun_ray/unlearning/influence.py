"""The numeric core of HIR (:mod:`mmrecun_ray.unlearning.methods.hir`): influence of the
forget set D_f on the final embeddings, its damping calibrated on held-out pairs, and its
realisation back in the ID tables. Plain torch and numpy; no Ray.

Notation: ``F_u`` ``(n_users, d)``, ``F_i`` ``(n_items, d)`` the final embeddings,
``s(u, i) = F_u . F_i`` (every model's score, :mod:`mmrecun_ray.models.base`); ``E`` the ID
tables; ``M`` the model's map ``E -> F`` over its installed graph (linear for MF, LightGCN
and FREEDOM in eval mode).

1. :func:`forget_gradient`: ``g_r``, the gradient w.r.t. final row ``r`` of the D_f part of
   the BPR loss, expected exactly over the uniform negatives the training sampler draws.
2. :func:`retain_curvature`: ``H_r`` ``(d, d)``, the Gauss-Newton curvature of the retain
   BPR loss w.r.t. row ``r`` with the other side fixed (exact for a bilinear score).
3. :class:`DampedRows`: ``dF_r = (H_r + lam_r I)^-1 g_r`` for any damping, from one batched
   eigendecomposition. At a stationary point of ``L_r + L_f`` the retain-only optimum is one
   Newton step of ``L_r`` away: ``-H_r^-1 grad L_r = +H_r^-1 grad L_f``.
4. :class:`Calibrator` / :func:`choose_damping`: the damping scale ``kappa``
   (``lam_r = kappa * c_r``) that makes D_f exchangeable with held-out pairs of the same
   users / items (an attacker's statistic that is 1/2 for a model that never saw D_f).
5. :class:`RowSystem` / :class:`MembershipShape` / :func:`calibrate_mix` (``interactions``):
   the curvature ``H_r(D_r) + mix H_r(D_f)``, ``mix`` set where D_f's score-MIA AUC matches
   that of the same users' validation pairs (the damping re-calibrated at every mix tried).
6. :func:`solve_ego`: ``dE`` with ``M dE = dF`` (CG when ``M`` is symmetric, BiCGSTAB
   otherwise, CG on the normal equations as the fallback).
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
from torch.func import functional_call

from mmrecun_ray.data.schema import RecDataset
from mmrecun_ray.evaluation.membership import sample_nonmembers
from mmrecun_ray.models.base import Recommender
from mmrecun_ray.objectives.sampling import NegativeSampler

logger = logging.getLogger(__name__)

Pair = tuple[torch.Tensor, torch.Tensor]


# -- model plumbing -----------------------------------------------------------------------------
def finals_of(model: Recommender, eu: torch.Tensor, ei: torch.Tensor) -> Pair:
    """Final ``(n_users, d)``, ``(n_items, d)`` embeddings of ``model`` (its installed graph)
    with ID tables ``eu`` ``(n_users, d_u)`` and ``ei`` ``(n_items, d_i)`` in place of its own."""
    out = functional_call(model, {"user_embedding.weight": eu, "item_embedding.weight": ei}, ())
    return out.user, out.item


@torch.no_grad()
def final_embeddings(model: Recommender) -> Pair:
    """The model's final embeddings in eval mode, float64: ``(n_users, d)``, ``(n_items, d)``."""
    model.eval()
    out = model()
    return out.user.detach().double(), out.item.detach().double()


@torch.no_grad()
def is_linear_map(model: Recommender, seed: int = 1, rtol: float = 1e-4) -> bool:
    """Whether ``E -> F`` is linear (``M(a x + b y) = a M x + b M y`` and ``M 0 = 0``),
    probed with random ID tables in eval mode: true for MF, LightGCN, FREEDOM; false for an
    affine or non-linear map (VBPR's feature half, MGCN's gates)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    wu, wi = model.user_embedding.weight, model.item_embedding.weight
    xu, xi, yu, yi = (torch.randn(w.shape, generator=gen, dtype=w.dtype) for w in (wu, wi, wu, wi))
    fx, fy = finals_of(model, xu, xi), finals_of(model, yu, yi)
    fz = finals_of(model, 2.0 * xu - 3.0 * yu, 2.0 * xi - 3.0 * yi)
    f0 = finals_of(model, torch.zeros_like(xu), torch.zeros_like(xi))
    scale = float(sum(a.norm() for a in (*fx, *fy))) + 1e-12
    err = sum(float((c - (2.0 * a - 3.0 * b)).norm()) for a, b, c in zip(fx, fy, fz))
    err += sum(float(z.norm()) for z in f0)
    return err <= rtol * scale


# -- per-user item sets -------------------------------------------------------------------------
class KnownItems:
    """Each user's known items (CSR over keys ``u * n_items + i``) and the negatives they allow.

    Args:
        users, items: ``(E,)`` int64 known pairs (duplicates allowed).
        n_users, n_items: table sizes.
        allowed: ``(n_items,)`` bool, False for items negatives are never drawn from (items
            that left the catalogue); default all.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int,
                 allowed: np.ndarray | None = None) -> None:
        self.keys = np.unique(np.asarray(users, np.int64) * n_items + np.asarray(items, np.int64))
        self.items = (self.keys % n_items).astype(np.int64)
        self.indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(self.keys // n_items, minlength=n_users), out=self.indptr[1:])
        self.n_items = int(n_items)
        self.allowed = (torch.ones(n_items, dtype=torch.bool) if allowed is None
                        else torch.from_numpy(np.asarray(allowed, dtype=bool)))

    def of(self, u: int) -> np.ndarray:
        """``(k,)`` known items of user ``u``."""
        return self.items[self.indptr[u]:self.indptr[u + 1]]

    def sample(self, users: np.ndarray, m: int, seed: int) -> torch.Tensor:
        """``(U, m)`` int64 negatives per user, uniform over the allowed items the user does
        not know (the training sampler, :class:`NegativeSampler`, fixed seed)."""
        users = np.asarray(users, dtype=np.int64)
        allowed = np.flatnonzero(self.allowed.numpy())
        sampler = NegativeSampler(self.keys, self.n_items, allowed, seed=seed)
        return torch.from_numpy(sampler.sample(np.repeat(users, m)).reshape(users.size, m))

    def neg_mask(self, users: np.ndarray) -> torch.Tensor:
        """``(B, n_items)`` bool: the allowed items each of ``users`` ``(B,)`` does not know."""
        users = np.asarray(users, dtype=np.int64)
        mask = self.allowed[None, :].repeat(users.size, 1)
        lens = self.indptr[users + 1] - self.indptr[users]
        rows = np.repeat(np.arange(users.size), lens)
        within = np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens)
        cols = self.items[np.repeat(self.indptr[users], lens) + within]
        mask[torch.from_numpy(rows), torch.from_numpy(cols)] = False
        return mask


# -- gradient and curvature ---------------------------------------------------------------------
@torch.no_grad()
def forget_gradient(fu: torch.Tensor, fi: torch.Tensor, pu: np.ndarray, pi: np.ndarray,
                    known: KnownItems, chunk: int = 1024) -> Pair:
    """Gradient of ``sum_{(u,i) in D_f} mean_j softplus(s_uj - s_ui)`` w.r.t. the final rows,
    ``j`` uniform over the allowed items ``u`` does not know (exact, no sampling).

    Args:
        fu, fi: ``(n_users, d)``, ``(n_items, d)`` final embeddings (float64).
        pu, pi: ``(F,)`` int64 D_f pairs.
        known: the pairs of the ORIGINAL training data (what the sampler excluded).

    Returns:
        ``(gU (n_users, d), gI (n_items, d))`` in ``fu``'s dtype, each chunk's products
        computed in float32; items reach it as positives and, through the negative term,
        as negatives.
    """
    g_u, g_i = torch.zeros_like(fu), torch.zeros_like(fi)
    fu32, fi32 = fu.float(), fi.float()
    order = np.argsort(pu, kind="stable")
    pu, pi = np.asarray(pu, np.int64)[order], np.asarray(pi, np.int64)[order]
    for s in range(0, pu.size, chunk):
        u = torch.from_numpy(pu[s:s + chunk])
        i = torch.from_numpy(pi[s:s + chunk])
        rows = fu32[u]                                             # (B, d)
        scores = rows @ fi32.T                                     # (B, n_items)
        uniq, inv = np.unique(pu[s:s + chunk], return_inverse=True)
        ok = known.neg_mask(uniq).to(scores.dtype)[torch.from_numpy(inv)]
        w = torch.sigmoid(scores - scores.gather(1, i[:, None])) * ok
        w = w / ok.sum(1, keepdim=True).clamp_min(1)               # (B, n_items) d loss / d s_uj
        cp = w.sum(1)                                              # (B,) -d loss / d s_ui
        g_u.index_add_(0, u, (w @ fi32 - cp[:, None] * fi32[i]).double())
        g_i.index_add_(0, i, (-cp[:, None] * rows).double())
        g_i += (w.T @ rows).double()
    return g_u, g_i


def row_blocks(seg: torch.Tensor, n_seg: int, budget: int = 1 << 15,
               max_rows: int = 1024) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Entries ``seg`` ``(T,)`` (the row of each, any order) grouped by row for batched
    per-row products.

    Returns ``order`` ``(T,)`` (entries sorted by row) and blocks ``(rows (B,), pos (B, L),
    valid (B, L))``: ``order[pos[b, l]]`` is the ``l``-th entry of row ``rows[b]`` where
    ``valid``, padding (index 0) elsewhere. Rows of similar length share a block (longest
    first, about ``budget`` padded entries and at most ``max_rows`` rows each, so a block's
    per-row ``(d, d)`` products stay small); rows without entries are in none."""
    order = torch.argsort(seg, stable=True)
    counts = torch.bincount(seg, minlength=n_seg)
    start = torch.cumsum(counts, 0) - counts
    by_len = torch.argsort(counts, descending=True, stable=True)
    by_len = by_len[counts[by_len] > 0]
    lens = counts[by_len]
    blocks, a = [], 0
    while a < by_len.numel():
        lmax = int(lens[a])
        b = min(by_len.numel(), a + max(1, min(max_rows, budget // lmax)))
        rows, ar = by_len[a:b], torch.arange(lmax)
        valid = ar[None, :] < lens[a:b, None]
        blocks.append((rows, torch.where(valid, start[rows, None] + ar[None, :], 0), valid))
        a = b
    return order, blocks


def weighted_grams(seg: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, table: torch.Tensor,
                   n_seg: int, budget: int = 1 << 15) -> torch.Tensor:
    """``(n_seg, d, d)`` ``G_r = sum_{t: seg[t] = r} w[t] x_t x_t^T``, ``x_t = table[idx[t]]``
    (``seg``, ``idx``, ``w`` ``(T,)``, repeats allowed; ``table`` ``(N, d)``): one ``bmm``
    per :func:`row_blocks` block, dense BLAS instead of a sparse product."""
    out = torch.zeros(n_seg, table.shape[1], table.shape[1], dtype=table.dtype)
    order, blocks = row_blocks(seg, n_seg, budget)
    idx, w = idx[order], w[order].to(table.dtype)
    for rows, pos, valid in blocks:
        x = table[idx[pos]]                                        # (B, L, d)
        out[rows] = torch.bmm((x * (w[pos] * valid)[..., None]).transpose(1, 2), x)
    return out


@torch.no_grad()
def retain_curvature(fu: torch.Tensor, fi: torch.Tensor, ru: np.ndarray, ri: np.ndarray,
                     known: KnownItems, m: int, seed: int, item_rows: np.ndarray,
                     user_rows: np.ndarray) -> Pair:
    """Per-row Gauss-Newton curvature of ``sum_{(u,k) in D_r} mean_j softplus(s_uj - s_uk)``.

    Item row ``i`` (users fixed): ``sum_u C[u, i] F_u F_u^T``, ``C`` the weights
    ``sigma'`` of every retain triple with ``i`` as positive or negative. User row ``u``
    (items fixed): ``sum_{(k, j)} sigma'_kj (F_j - F_k)(F_j - F_k)^T``. The expectation
    over negatives uses ``m`` uniform draws per user shared by the user's pairs (fixed
    seed). Computed in float32.

    Args:
        fu, fi: ``(n_users, d)``, ``(n_items, d)`` final embeddings.
        ru, ri: ``(P,)`` int64 retain training pairs; ``known``: their item sets.
        item_rows: ``(R_i,)`` item rows wanted; ``user_rows``: ``(R_u,)`` user rows.

    Returns:
        ``(HI (R_i, d, d), HU (R_u, d, d))``, float32.
    """
    d, n_users, n_items = fu.shape[1], fu.shape[0], fi.shape[0]
    fu32, fi32 = fu.float(), fi.float()
    users = np.unique(ru)
    neg = known.sample(users, m, seed)                             # (U, m)
    upos = torch.full((n_users,), -1, dtype=torch.long)
    upos[torch.from_numpy(users)] = torch.arange(users.size)
    users_t = torch.from_numpy(users)
    u_t, k_t = torch.from_numpy(np.asarray(ru, np.int64)), torch.from_numpy(np.asarray(ri, np.int64))
    pr = upos[u_t]                                                 # (P,) row of neg per pair
    s_neg = torch.einsum("ud,umd->um", fu32[users_t], fi32[neg])   # (U, m)
    s_pos = (fu32[u_t] * fi32[k_t]).sum(1)                         # (P,)
    sg = torch.sigmoid(s_neg[pr] - s_pos[:, None])
    cw = sg * (1 - sg) / m                                         # (P, m) sigma' / m
    h_i = torch.zeros(0, d, d)
    h_u = torch.zeros(0, d, d)
    if item_rows.size:
        ipos = torch.full((n_items,), -1, dtype=torch.long)
        ipos[torch.from_numpy(item_rows)] = torch.arange(item_rows.size)
        cneg = torch.zeros(users.size, m, dtype=cw.dtype).index_add_(0, pr, cw)
        rows = torch.cat([k_t, neg.reshape(-1)])
        cols = torch.cat([u_t, users_t.repeat_interleave(m)])
        vals = torch.cat([cw.sum(1), cneg.reshape(-1)])
        keep = ipos[rows] >= 0
        h_i = weighted_grams(ipos[rows[keep]], cols[keep], vals[keep], fu32, item_rows.size)
    if user_rows.size:
        # H_u = sum_j a_uj F_j F_j^T + sum_k b_uk F_k F_k^T - (Z_u FJ_u + (Z_u FJ_u)^T),
        # a_uj = sum_k c_kj, b_uk = sum_j c_kj, Z_u = sum_k F_k c_k^T (d x m), FJ_u (m, d)
        rpos = torch.full((n_users,), -1, dtype=torch.long)
        rpos[torch.from_numpy(user_rows)] = torch.arange(user_rows.size)
        sel = torch.nonzero(rpos[u_t] >= 0).flatten()
        ur, c = rpos[u_t[sel]], cw[sel]                            # (P',), (P', m)
        a_u = torch.zeros(user_rows.size, m, dtype=c.dtype).index_add_(0, ur, c)
        neg_r = neg[upos[torch.from_numpy(user_rows)]]             # (R_u, m)
        rows = torch.cat([ur, torch.arange(user_rows.size).repeat_interleave(m)])
        cols = torch.cat([k_t[sel], neg_r.reshape(-1)])
        vals = torch.cat([c.sum(1), a_u.reshape(-1)])
        h_u = weighted_grams(rows, cols, vals, fi32, user_rows.size)
        # Z_u FJ_u = X_u^T (C_u FJ_u), X_u (L_u, d) the rows of u's positives, C_u (L_u, m)
        cross = torch.zeros(user_rows.size, d, d)
        order, blocks = row_blocks(ur, user_rows.size)
        k_s, c_s = k_t[sel][order], c[order]
        for rows, pos, valid in blocks:
            y = torch.bmm(c_s[pos] * valid[..., None], fi32[neg_r[rows]])   # (B, L, d)
            cross[rows] = torch.bmm(fi32[k_s[pos]].transpose(1, 2), y)
        h_u -= cross + cross.transpose(1, 2)
    return h_i, h_u


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch's intra-op threads set to one for the block (restored after)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def batched_eigh(h: torch.Tensor) -> Pair:
    """``(e (R, d), q (R, d, d))`` = ``torch.linalg.eigh(h)`` of ``(R, d, d)`` symmetric
    blocks, the batch split over ``torch.get_num_threads()`` Python threads that each run
    LAPACK on one intra-op thread (every block is decomposed exactly as in one call).

    A second *intra-op* thread only splits each tiny block and pays a synchronisation per
    block; on a busy CPU the waits dominate (measured on this 2-CPU machine under load:
    9,000 blocks 2.1 s on one thread, 230 s on two). Whole sub-batches per thread have no
    such waits: 8,621 blocks of 64x64 (float32) 1.46 s on one thread, 0.75 s on two."""
    workers = max(1, min(torch.get_num_threads(), h.shape[0]))
    with one_thread():
        if workers == 1:
            return torch.linalg.eigh(h)
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(torch.linalg.eigh, torch.tensor_split(h, workers)))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def mixed_eigh(h: torch.Tensor, h_f: torch.Tensor, mix: float, chunk: int = 2048) -> Pair:
    """:func:`batched_eigh` of ``h + mix h_f`` (both ``(R, d, d)``), formed chunk by chunk so
    that no third ``(R, d, d)`` block array is held beside the two and the result."""
    e = torch.empty(h.shape[:2], dtype=h.dtype)
    q = torch.empty_like(h)
    for s in range(0, h.shape[0], chunk):
        e[s:s + chunk], q[s:s + chunk] = batched_eigh(torch.add(h[s:s + chunk], h_f[s:s + chunk],
                                                                alpha=float(mix)))
    return e, q


class DampedRows:
    """``(H_r + lam_r I)^-1 g_r`` for every row and any damping, from one batched
    eigendecomposition ``H_r = Q_r diag(e_r) Q_r^T``.

    Args:
        h: ``(R, d, d)`` symmetric positive semi-definite curvature blocks.
        g: ``(R, d)`` right-hand sides.
        h_f, mix: decompose ``h + mix h_f`` instead (:func:`mixed_eigh`).
    """

    def __init__(self, h: torch.Tensor, g: torch.Tensor, h_f: torch.Tensor | None = None,
                 mix: float = 0.0) -> None:
        self.g = g
        self.e = self.q = self.qg = None
        if h.shape[0]:
            e, q = batched_eigh(h) if h_f is None or not mix else mixed_eigh(h, h_f, mix)
            self.e, self.q = e.clamp_min(0.0), q
            self.qg = torch.einsum("rdk,rd->rk", q, g.to(q.dtype))

    def __call__(self, lam: torch.Tensor) -> torch.Tensor:
        """``(R, d)`` damped steps for ``lam`` ``(R,)``, in ``g``'s dtype (the
        decomposition's arithmetic in ``h``'s)."""
        if self.q is None:
            return self.g.clone()
        step = torch.einsum("rdk,rk->rd", self.q, self.qg / (self.e + lam.to(self.e.dtype)[:, None]))
        return step.to(self.g.dtype)


def damping_scale(h: torch.Tensor, how: str) -> torch.Tensor:
    """``c_r`` ``(R,)`` of curvature blocks ``h`` ``(R, d, d)``: ``global`` (mean over rows
    of ``trace(H_r)/d``), ``row`` (the row's own ``trace/d``) or ``sqrt`` (their geometric
    mean)."""
    if h.shape[0] == 0:
        return torch.zeros(0, dtype=h.dtype)
    return scale_of_traces(torch.diagonal(h, dim1=1, dim2=2).mean(1), how)


def scale_of_traces(tr: torch.Tensor, how: str) -> torch.Tensor:
    """:func:`damping_scale` from the rows' ``trace(H_r)/d`` ``(R,)``."""
    if tr.numel() == 0:
        return tr.clone()
    tr = tr.clamp_min(1e-12)
    glob = tr.mean().expand_as(tr).clone()
    if how == "global":
        return glob
    if how == "row":
        return tr
    if how == "sqrt":
        return (tr * glob).sqrt()
    raise ValueError(f"damping {how!r}: expected global, row or sqrt")


@dataclass
class RowCorrection:
    """The damped influence step ``dF_r = (H_r + kappa c_r I)^-1 g_r`` of the corrected rows.

    Attributes:
        item_rows: ``(R_i,)`` int64 item rows corrected; ``user_rows``: ``(R_u,)`` user rows.
        items, users: their :class:`DampedRows`.
        c_items, c_users: ``(R_i,)``, ``(R_u,)`` damping scales ``c_r``.
    """

    item_rows: np.ndarray
    user_rows: np.ndarray
    items: DampedRows
    users: DampedRows
    c_items: torch.Tensor
    c_users: torch.Tensor

    def dense(self, kappa: float, n_users: int, n_items: int) -> Pair:
        """``(dFu (n_users, d), dFi (n_items, d))``, zero outside the corrected rows."""
        d = self.items.g.shape[1] if self.item_rows.size else self.users.g.shape[1]
        d_fu = torch.zeros(n_users, d, dtype=torch.float64)
        d_fi = torch.zeros(n_items, d, dtype=torch.float64)
        if self.item_rows.size:
            d_fi[torch.from_numpy(self.item_rows)] = self.items(kappa * self.c_items)
        if self.user_rows.size:
            d_fu[torch.from_numpy(self.user_rows)] = self.users(kappa * self.c_users)
        return d_fu, d_fi

    def apply(self, f_u: torch.Tensor, f_i: torch.Tensor, kappa: float) -> Pair:
        """``F + dF`` for final embeddings ``(n_users, d)``, ``(n_items, d)``."""
        d_fu, d_fi = self.dense(kappa, f_u.shape[0], f_i.shape[0])
        return f_u + d_fu, f_i + d_fi


@dataclass
class RowSide:
    """One side's rows for :class:`RowSystem`: gradients ``g`` ``(R, d)``, retain curvature
    blocks ``h`` ``(R, d, d)`` and D_f's ``h_f`` (None when not computed)."""

    g: torch.Tensor
    h: torch.Tensor
    h_f: torch.Tensor | None = None

    def at(self, mix: float, damping: str) -> tuple[DampedRows, torch.Tensor]:
        """The rows and their damping scales at curvature ``H_r(D_r) + mix H_r(D_f)`` (one
        batched eigendecomposition per call)."""
        if not mix:
            return DampedRows(self.h, self.g), damping_scale(self.h, damping)
        if self.h_f is None:
            raise ValueError("curvature mix > 0 needs the D_f curvature (row_system(forget_part=True))")
        c = scale_of_traces(torch.diagonal(self.h, dim1=1, dim2=2).mean(1)
                            + float(mix) * torch.diagonal(self.h_f, dim1=1, dim2=2).mean(1), damping)
        return DampedRows(self.h, self.g, self.h_f, mix), c


@dataclass
class RowSystem:
    """What the damped step of every corrected row is built from, for any curvature mix
    ``t``: ``H_r = H_r(D_r) + t H_r(D_f)``, ``H_r(D_f)`` the row's curvature over its D_f
    pairs. ``t`` 0 is the Newton step of the retain objective at the trained model; 1 uses the
    trained model's own curvature; in between, a secant curvature along the way from the one
    optimum to the other.

    Attributes:
        item_rows, user_rows: ``(R_i,)``, ``(R_u,)`` int64 rows corrected.
        items, users: their :class:`RowSide`.
        damping: how ``c_r`` is taken (:func:`damping_scale`).
    """

    item_rows: np.ndarray
    user_rows: np.ndarray
    items: RowSide
    users: RowSide
    damping: str

    def correction(self, mix: float = 0.0) -> RowCorrection:
        """The damped steps at curvature mix ``mix``."""
        items, c_i = self.items.at(mix, self.damping)
        users, c_u = self.users.at(mix, self.damping)
        return RowCorrection(self.item_rows, self.user_rows, items, users, c_i, c_u)


def row_system(fo_u: torch.Tensor, fo_i: torch.Tensor, retain: RecDataset,
               forget_user: np.ndarray, forget_item: np.ndarray, kind: str,
               redrawn_users: np.ndarray, active: np.ndarray, neg_per_user: int = 64,
               damping: str = "global", seed: int = 0, forget_part: bool = False) -> RowSystem:
    """Gradient and curvature of every row D_f taught that is not re-drawn.

    Args:
        fo_u, fo_i: ``(n_users, d)``, ``(n_items, d)`` final embeddings of the trained model
            over the ORIGINAL graph (float64).
        retain: the retain dataset (its train split is D_r).
        forget_user, forget_item: ``(F,)`` D_f pairs.
        kind: the request kind; ``users`` requests correct item rows only (the users are
            re-drawn), the others item rows and the rows of D_f users who keep data.
        redrawn_users: ``(k,)`` user rows re-drawn; active: ``(n_items,)`` bool catalogue.
        forget_part: also the rows' curvature over D_f (for a curvature mix > 0).
    """
    n_users, n_items = retain.n_users, retain.n_items
    ru, ri = retain.train.user.astype(np.int64), retain.train.item.astype(np.int64)
    fu, fi = np.asarray(forget_user, np.int64), np.asarray(forget_item, np.int64)
    known_o = KnownItems(np.concatenate([ru, fu]), np.concatenate([ri, fi]), n_users, n_items)
    g_u, g_i = forget_gradient(fo_u, fo_i, fu, fi, known_o)
    item_rows = np.flatnonzero((g_i.norm(dim=1) > 0).numpy() & active)
    user_rows = (np.zeros(0, np.int64) if kind == "users"
                 else np.setdiff1d(np.unique(fu), redrawn_users))
    known_r = KnownItems(ru, ri, n_users, n_items, active)
    h_i, h_u = retain_curvature(fo_u, fo_i, ru, ri, known_r, neg_per_user, seed, item_rows, user_rows)
    f_i = f_u = None
    if forget_part and fu.size:
        known_f = KnownItems(np.concatenate([ru, fu]), np.concatenate([ri, fi]), n_users, n_items,
                             active)
        f_i, f_u = retain_curvature(fo_u, fo_i, fu, fi, known_f, neg_per_user, seed + 1,
                                    item_rows, user_rows)
    return RowSystem(item_rows, user_rows, RowSide(g_i[torch.from_numpy(item_rows)], h_i, f_i),
                     RowSide(g_u[torch.from_numpy(user_rows)], h_u, f_u), damping)


# -- calibration statistic ----------------------------------------------------------------------
def grouped_auc(gp: torch.Tensor, sp: torch.Tensor, gn: torch.Tensor, sn: torch.Tensor,
                n_groups: int, wp: torch.Tensor | None = None) -> Pair:
    """Per-group numerator and denominator of the within-group AUC of scores ``sp`` ``(P,)``
    (group ids ``gp``, weights ``wp``, default 1) against ``sn`` ``(N,)`` (group ids ``gn``):
    ``num_g = sum_p w_p #{n in g: s_n < s_p} (+1/2 ties)``, ``den_g = sum_p w_p n_n(g)``;
    both ``(n_groups,)`` float64. The pooled statistic is ``sum num / sum den``."""
    num = torch.zeros(n_groups, dtype=torch.float64)
    den = torch.zeros(n_groups, dtype=torch.float64)
    if sp.numel() == 0 or sn.numel() == 0:
        return num, den
    sp, sn = sp.double(), sn.double()
    span = 2.0 * float(torch.cat([sp.abs(), sn.abs()]).max()) + 1.0
    kn = torch.sort(gn.double() * span + sn).values
    kp = gp.double() * span + sp
    lo = torch.searchsorted(kn, kp, right=False)
    hi = torch.searchsorted(kn, kp, right=True)
    start = torch.searchsorted(kn, gp.double() * span - span / 2)   # the group's first negative
    below = (lo - start).double() + 0.5 * (hi - lo).double()
    n_neg = torch.bincount(gn, minlength=n_groups).double()
    w = torch.ones_like(sp) if wp is None else wp.double()
    num.index_add_(0, gp, w * below)
    den.index_add_(0, gp, w * n_neg[gp])
    return num, den


def ratio_and_se(num: torch.Tensor, den: torch.Tensor) -> tuple[float, float]:
    """``R = sum num / sum den`` over groups ``(G,)`` and its ratio-estimator standard error."""
    keep = den > 0
    num, den = num[keep], den[keep]
    if den.numel() == 0:
        return float("nan"), float("nan")
    r = float(num.sum() / den.sum())
    g = den.numel()
    se = float(((num - r * den) ** 2).sum().sqrt() / den.sum()) * (g / max(g - 1, 1)) ** 0.5
    return r, se


@dataclass
class _Halving:
    """One random halving of every unit's train members: ``n`` units; fit half (unit ids
    ``ua``, members ``a``), scored half (``ub``, ``b``), held-out members (``uh``, ``h``)."""

    n: int
    ua: torch.Tensor
    a: torch.Tensor
    ub: torch.Tensor
    b: torch.Tensor
    uh: torch.Tensor
    h: torch.Tensor


def _halvings(train: dict[int, np.ndarray], held: dict[int, np.ndarray], splits: int,
              seed: int) -> list[_Halving]:
    """``splits`` random halvings of the units that have >= 2 train and >= 1 held-out members."""
    rng = np.random.default_rng(seed + 7)
    keys = [k for k, t in train.items() if t.size >= 2 and held.get(k, np.zeros(0)).size]

    def cat(xs: list[np.ndarray]) -> torch.Tensor:
        if not xs:
            return torch.zeros(0, dtype=torch.long)
        return torch.from_numpy(np.concatenate(xs).astype(np.int64))
    out = []
    for _ in range(splits):
        parts = []
        for key in keys:
            perm = rng.permutation(train[key])
            parts.append((key, perm[:perm.size // 2], perm[perm.size // 2:]))
        out.append(_Halving(
            n=len(parts), ua=cat([np.full(a.size, k) for k, (_, a, _) in enumerate(parts)]),
            a=cat([a for _, a, _ in parts]),
            ub=cat([np.full(b.size, k) for k, (_, _, b) in enumerate(parts)]),
            b=cat([b for _, _, b in parts]),
            uh=cat([np.full(held[key].size, k) for k, (key, _, _) in enumerate(parts)]),
            h=cat([held[key] for key, _, _ in parts])))
    return out


def _group(keys: np.ndarray, members: np.ndarray) -> dict[int, np.ndarray]:
    """``key -> (k,)`` unique members, for ``(P,)`` aligned arrays."""
    order = np.argsort(keys, kind="stable")
    keys, members = keys[order], members[order]
    uk, start = np.unique(keys, return_index=True)
    return {int(k): np.unique(v) for k, v in zip(uk, np.split(members, start[1:]))}


@dataclass
class ItemsLayout:
    """What the ``items`` statistic fixes once: the users it scores ``inv`` ``(U,)`` (rows
    ordered by their number of pairs, most first), their row map ``row`` ``(n_users,)``,
    optional candidate ``draws`` ``(U, m)``, the candidate ``mask`` and counts ``n_cand``
    ``(U,)``, and every (halving, side) pair's row ``pair_row`` ``(P,)`` and its slot among
    the row's pairs ``slot`` ``(P,)``; ``prefix[j]``: rows with more than ``j`` pairs."""

    inv: torch.Tensor
    row: torch.Tensor
    draws: torch.Tensor | None
    mask: torch.Tensor
    n_cand: torch.Tensor
    pair_row: torch.Tensor
    slot: torch.Tensor
    prefix: list[int]

    def count_below(self, cand: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``(P,)`` exact ``#{j : cand[pair_row[p], j] < t[p]}`` for ``cand`` ``(U, n)``.

        Laid out as a ``(U, K)`` table of thresholds; column ``j``'s pass compares the first
        ``prefix[j]`` rows of ``cand`` (a view, rows with most pairs first) with one
        threshold each, so no row of ``cand`` is copied per pair."""
        table = torch.zeros(cand.shape[0], len(self.prefix), dtype=t.dtype)
        table[self.pair_row, self.slot] = t
        counts = torch.zeros(cand.shape[0], len(self.prefix), dtype=torch.long)
        for j, n in enumerate(self.prefix):
            counts[:n, j] = (cand[:n] < table[:n, j:j + 1]).sum(1)
        return counts[self.pair_row, self.slot]


class Calibrator:
    """The exchangeability statistic of a request kind.

    ``__call__(Fu, Fi)`` -> P(the train part of D_f beats held-out pairs of the same units)
    under an attacker's fresh vector fitted on half of each unit's train members; 1/2 for a
    model that never saw D_f. Units: forgotten users (``users``: their D_f items vs their
    held-out items), withdrawn items (``items``: their former train users vs their held-out
    users, as a percentile among each user's candidate items), or users with forgotten
    pairs (``interactions``: the D_f pair's score vs the same user's validation pairs).

    Args:
        kind: ``users``, ``items`` or ``interactions``.
        fu, fi: ``(F,)`` D_f pairs; hu, hi: ``(H,)`` held-out pairs.
        retain_known: the retain train pairs (candidates of the ``items`` statistic).
        active: ``(n_items,)`` bool, items still in the catalogue.
        splits, foldin_ridge, seed: halvings averaged, attacker ridge relative to mean
            ``|F|^2``, seed of the halvings.
        user_weight: ``(n_users,)`` weights of the train users of ``items`` units.
        max_candidates: ``items`` only: a user's percentile is taken among this many
            uniform draws of the catalogue (known and withdrawn draws discarded; fixed per
            calibrator) instead of every item; 0 or a catalogue no larger: every item.
    """

    def __init__(self, kind: str, fu: np.ndarray, fi: np.ndarray, hu: np.ndarray, hi: np.ndarray,
                 retain_known: KnownItems, active: np.ndarray, splits: int, foldin_ridge: float,
                 seed: int, user_weight: np.ndarray | None = None,
                 max_candidates: int = 0) -> None:
        self.kind, self.active, self.seed = kind, torch.from_numpy(active), seed
        self.max_candidates = max_candidates
        self.known, self.ridge = retain_known, foldin_ridge
        self.user_weight = None if user_weight is None else torch.from_numpy(user_weight)
        self.pairs = tuple(torch.from_numpy(np.asarray(x, np.int64)) for x in (fu, fi, hu, hi))
        self.halves: list[_Halving] = []
        if kind in ("users", "items"):
            train = _group(fu, fi) if kind == "users" else _group(fi, fu)
            held = _group(hu, hi) if kind == "users" else _group(hi, hu)
            self.halves = _halvings(train, held, splits, seed)
            self.n_units = self.halves[0].n if self.halves else 0
        else:
            self.n_units = int(np.intersect1d(fu, hu).size)
        self._items_cache: ItemsLayout | None = None

    def __call__(self, f_u: torch.Tensor, f_i: torch.Tensor) -> tuple[float, float]:
        """``(statistic, standard error over units)`` for final embeddings
        ``(n_users, d)``, ``(n_items, d)``."""
        if self.kind == "users":
            return self._users(f_i)
        if self.kind == "items":
            return self._items(f_u, f_i)
        fu, fi, hu, hi = self.pairs
        return ratio_and_se(*grouped_auc(fu, (f_u[fu] * f_i[fi]).sum(1), hu,
                                         (f_u[hu] * f_i[hi]).sum(1), f_u.shape[0]))

    def _fresh(self, v: torch.Tensor, fit: torch.Tensor, n: int, ua: torch.Tensor) -> torch.Tensor:
        """``(n, d)`` attacker vectors, one per unit: one Newton step of BPR against every row
        of ``v`` ``(N, d)`` from zero = whitened centroid of the fit rows ``fit`` (unit ids ``ua``)."""
        mean = v.mean(0)
        cov = (v - mean).T @ (v - mean) / v.shape[0]
        ridge = self.ridge * float(v.pow(2).sum(1).mean())
        g_inv = torch.linalg.inv(cov + ridge * torch.eye(v.shape[1], dtype=v.dtype))
        cent = torch.zeros(n, v.shape[1], dtype=v.dtype).index_add_(0, ua, fit)
        cent = cent / torch.bincount(ua, minlength=n).clamp_min(1)[:, None].to(v.dtype)
        return (cent - mean) @ g_inv.T

    def _users(self, f_i: torch.Tensor) -> tuple[float, float]:
        num = den = 0.0
        for hv in self.halves:
            w = self._fresh(f_i[self.active], f_i[hv.a], hv.n, hv.ua)
            nu, de = grouped_auc(hv.ub, (w[hv.ub] * f_i[hv.b]).sum(1), hv.uh,
                                 (w[hv.uh] * f_i[hv.h]).sum(1), hv.n)
            num, den = num + nu, den + de
        return ratio_and_se(num, den) if self.halves else (float("nan"), float("nan"))

    def _candidates(self, n_users: int) -> ItemsLayout:
        """The fixed layout of the ``items`` statistic (built once, :class:`ItemsLayout`)."""
        if self._items_cache is None:
            users = torch.cat([torch.cat([hv.b, hv.h]) for hv in self.halves])  # (P,) every pair
            uniq, mult = torch.unique(users, return_counts=True)
            by_mult = torch.argsort(mult, descending=True, stable=True)
            inv, mult = uniq[by_mult], mult[by_mult]              # rows: most pairs first
            row = torch.full((n_users,), -1, dtype=torch.long)
            row[inv] = torch.arange(inv.numel())
            mask = self.active[None, :].repeat(inv.numel(), 1)
            for r, u in enumerate(inv.tolist()):
                mask[r, torch.from_numpy(self.known.of(u))] = False
            draws = None
            if 0 < self.max_candidates < mask.shape[1]:
                gen = torch.Generator().manual_seed(self.seed + 11)
                draws = torch.randint(0, mask.shape[1], (inv.numel(), self.max_candidates),
                                      generator=gen)
                mask = mask.gather(1, draws)
            pair_row = row[users]
            srt = torch.argsort(pair_row, stable=True)
            first = torch.searchsorted(pair_row[srt], torch.arange(inv.numel()))
            slot = torch.empty_like(pair_row)
            slot[srt] = torch.arange(pair_row.numel()) - first[pair_row[srt]]
            prefix = [int((mult > j).sum()) for j in range(int(mult.max()) if mult.numel() else 0)]
            self._items_cache = ItemsLayout(inv, row, draws, mask, mask.sum(1).clamp_min(1),
                                             pair_row, slot, prefix)
        return self._items_cache

    def _items(self, f_u: torch.Tensor, f_i: torch.Tensor) -> tuple[float, float]:
        if not self.halves:
            return float("nan"), float("nan")
        lay = self._candidates(f_u.shape[0])
        us = f_u[lay.inv]
        scores = us @ f_i.T                                        # (U, n_items)
        if lay.draws is not None:
            scores = scores.gather(1, lay.draws)                   # (U, m)
        cand = torch.where(lay.mask, scores, torch.tensor(float("inf"), dtype=f_u.dtype))
        weight = self.user_weight if self.user_weight is not None else torch.ones(f_u.shape[0])
        parts, thresholds = [], []
        for hv in self.halves:
            v = self._fresh(f_u, f_u[hv.a], hv.n, hv.ua)
            for units, users in ((hv.ub, hv.b), (hv.uh, hv.h)):
                thresholds.append((us[lay.row[users]] * v[units]).sum(1))
                parts.append(users.numel())
        pct = (lay.count_below(cand, torch.cat(thresholds)).to(f_u.dtype)
               / lay.n_cand[lay.pair_row].to(f_u.dtype)).split(parts)
        num = den = 0.0
        for k, hv in enumerate(self.halves):
            nu, de = grouped_auc(hv.ub, pct[2 * k], hv.uh, pct[2 * k + 1], hv.n, weight[hv.b])
            num, den = num + nu, den + de
        return ratio_and_se(num, den)


def make_calibrator(retain: RecDataset, forget_user: np.ndarray, forget_item: np.ndarray,
                    kind: str, banned_items: np.ndarray, held_out: tuple[np.ndarray, np.ndarray] | None,
                    splits: int = 4, foldin_ridge: float = 1e-3, seed: int = 0,
                    max_candidates: int = 0) -> Calibrator:
    """The calibration statistic of a request (usable on any model's final embeddings, e.g.
    to check that a retrained model sits at 1/2).

    Held-out reference: for ``users`` / ``items`` requests ``held_out`` = the valid/test pairs
    the request removes anyway (``ForgetSet.held_out_removed``); for ``interactions`` the
    retain validation split. No test pair of a retain user is read (not even the test
    split's sizes: the ``items`` user weights use validation counts). ``max_candidates``: see
    :class:`Calibrator`.

    Raises:
        ValueError: ``users`` / ``items`` request without ``held_out``.
    """
    n_u, n_items = retain.n_users, retain.n_items
    active = np.ones(n_items, dtype=bool)
    active[np.asarray(banned_items, np.int64)] = False
    known = KnownItems(retain.train.user, retain.train.item, n_u, n_items, active)
    fu, fi = np.asarray(forget_user, np.int64), np.asarray(forget_item, np.int64)
    if kind == "interactions":
        hu, hi = retain.valid.user.astype(np.int64), retain.valid.item.astype(np.int64)
    elif held_out is None:
        raise ValueError("held_out pairs are needed to calibrate users/items requests")
    else:
        hu, hi = np.asarray(held_out[0], np.int64), np.asarray(held_out[1], np.int64)
    weight = None
    if kind == "items":
        # a withdrawn item's train users and held-out users differ in mix: the per-user split
        # holds out a larger share of a light user's items. Weight each train user by its odds
        # of holding a pair out (split sizes: validation and the request's held-out pairs)
        n_train = np.bincount(retain.train.user, minlength=n_u) + np.bincount(fu, minlength=n_u)
        n_held = np.bincount(retain.valid.user, minlength=n_u) + np.bincount(hu, minlength=n_u)
        weight = n_held / np.maximum(n_train, 1)
    return Calibrator(kind, fu, fi, hu, hi, known, active, splits, foldin_ridge, seed, weight,
                      max_candidates)


def target_level(se: float, target: float, tolerance_se: float) -> float:
    """The level a calibration point must reach: ``target + tolerance_se * se`` (a
    non-finite standard error counts as 0)."""
    return target + tolerance_se * (se if math.isfinite(se) else 0.0)


def floor_level(stat: float, se: float) -> float:
    """The no-crossing fallback's floor: ``stat + se`` of the curve's minimum (a
    non-finite standard error counts as 0)."""
    return stat + (se if math.isfinite(se) else 0.0)


def choose_damping(kappas: list[float], stats: list[float], ses: list[float], target: float,
                   tolerance_se: float = 0.0) -> tuple[float, str]:
    """The damping scale from the calibration curve (``kappas`` ascending).

    Scan from the largest damping (least correction) down and take the first crossing of
    ``target + tolerance_se * se`` (log-linear interpolation). If the curve never gets there,
    the largest damping whose statistic is within one standard error of the curve's minimum
    (as little correction as reaches the floor). Returns ``(kappa, how it was chosen)``.
    """
    ks, st, se = list(kappas)[::-1], list(stats)[::-1], list(ses)[::-1]
    tg = [target_level(e, target, tolerance_se) for e in se]
    if st[0] <= tg[0]:
        return ks[0], "at or below target with the most damping"
    for a in range(1, len(ks)):
        if st[a] <= tg[a]:
            la, lb = math.log(ks[a - 1]), math.log(ks[a])
            d0, d1 = st[a - 1] - tg[a - 1], st[a] - tg[a]
            t = d0 / max(d0 - d1, 1e-12)
            return math.exp(la + t * (lb - la)), "crossing"
    best = int(np.nanargmin(stats))
    floor = floor_level(stats[best], ses[best])
    for a in range(len(kappas) - 1, best - 1, -1):
        if stats[a] <= floor:
            return kappas[a], "no crossing: least correction within 1 s.e. of the minimum"
    return kappas[best], "no crossing: minimum"


def calibrate(correction: RowCorrection, f_u: torch.Tensor, f_i: torch.Tensor,
              calibrator: Callable[[torch.Tensor, torch.Tensor], tuple[float, float]],
              kappas: list[float], target: float = 0.5, tolerance_se: float = 0.0,
              patience: int = 2) -> tuple[float, str, list[tuple[float, float, float]]]:
    """Scan the damping grid ``kappas`` (ascending) on the corrected finals ``F + dF(kappa)``
    (``f_u`` ``(n_users, d)``, ``f_i`` ``(n_items, d)``: the model after the re-draw) and
    pick ``kappa`` (:func:`choose_damping`). ``calibrator``: ``(F_u, F_i) -> (statistic,
    standard error)``, a :class:`Calibrator`.

    The grid is evaluated from the largest damping down. The scan stops
    - at the first point at or below the target: :func:`choose_damping` reads the curve
      from the top and never looks past that point, so the choice is the full scan's;
    - when the curve never got there, once ``patience`` consecutive points after its
      minimum so far lie above that minimum plus its standard error (the fallback's
      floor; 0: scan on). The fallback then picks what the full scan picks unless the
      rest of the grid (more correction, past an overshoot) comes back down below the
      minimum or to the target.

    Returns:
        ``(kappa, how, [(kappa, stat, se)])``, the curve ascending in ``kappa`` over the
        points evaluated.
    """
    curve: list[tuple[float, float, float]] = []
    low, rising = math.inf, 0
    for k in sorted(kappas, reverse=True):
        stat, se = calibrator(*correction.apply(f_u, f_i, k))
        curve.insert(0, (float(k), stat, se))
        if not math.isfinite(stat):
            break                      # no calibration units: every point is NaN
        if stat <= target_level(se, target, tolerance_se):
            break
        if stat < low:
            low, floor, rising = stat, floor_level(stat, se), 0
        else:
            rising = rising + 1 if stat > floor else 0
            if patience and rising >= patience:
                break
    stats, ses = [c[1] for c in curve], [c[2] for c in curve]
    if not all(math.isfinite(x) for x in stats):
        return float(max(kappas)), "no calibration units: the most damping", curve
    kappa, how = choose_damping([c[0] for c in curve], stats, ses, target, tolerance_se)
    return kappa, how, curve


class MembershipShape:
    """Gold-free check of the spread of D_f's scores (``interactions`` requests).

    ``__call__(Fu, Fi)`` -> ``(d, se)``: the score-MIA AUC of D_f against non-members minus
    the same AUC of the same users' validation pairs, each user's validation pairs weighted
    to the user's D_f count, both sides against one set of non-members drawn per D_f pair
    (``n_neg`` each, never a train, D_f or validation pair of the user; no test pair is
    read). For a model that never saw D_f, a user's D_f and validation pairs are
    exchangeable, so ``d`` is 0 up to the split's noise; the calibration statistic (the
    within-user AUC of D_f against the validation pairs) pins the centre of D_f's scores, this
    their lower tail, which the score-MIA attacker reads. Standard error clustered by user.

    Args:
        retain: the retain dataset (its validation split is the reference).
        fu, fi: ``(F,)`` D_f pairs.
        n_neg, seed: non-members per D_f pair and their seed.
    """

    def __init__(self, retain: RecDataset, fu: np.ndarray, fi: np.ndarray, n_neg: int = 8,
                 seed: int = 0) -> None:
        n_users, n_items = retain.n_users, retain.n_items
        fu, fi = np.asarray(fu, np.int64), np.asarray(fi, np.int64)
        hu, hi = retain.valid.user.astype(np.int64), retain.valid.item.astype(np.int64)
        n_f, n_v = np.bincount(fu, minlength=n_users), np.bincount(hu, minlength=n_users)
        kf, kv = n_v[fu] > 0, n_f[hu] > 0
        self.fu, self.fi = torch.from_numpy(fu[kf]), torch.from_numpy(fi[kf])
        self.hu, self.hi = torch.from_numpy(hu[kv]), torch.from_numpy(hi[kv])
        self.w = torch.from_numpy(n_f[hu[kv]] / n_v[hu[kv]]).double()
        self.n_users = n_users
        self.n_units = int(np.unique(fu[kf]).size)
        keys = np.concatenate([retain.train.keys(n_items), fu * n_items + fi,
                               retain.valid.keys(n_items)])
        users = fu[kf]
        self.nu = torch.from_numpy(np.repeat(users, n_neg))
        self.ni = torch.from_numpy(sample_nonmembers(users, keys, n_items, n_neg, seed).ravel()
                                   if users.size else np.zeros(0, np.int64))

    def __call__(self, f_u: torch.Tensor, f_i: torch.Tensor) -> tuple[float, float]:
        if self.fu.numel() == 0:
            return float("nan"), float("nan")
        neg = torch.sort((f_u[self.nu] * f_i[self.ni]).sum(1).double()).values
        n = float(neg.numel())

        def below(u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            return torch.searchsorted(neg, (f_u[u] * f_i[i]).sum(1).double()).double() / n
        num = torch.zeros(self.n_users, dtype=torch.float64)
        num.index_add_(0, self.fu, below(self.fu, self.fi))
        num.index_add_(0, self.hu, -self.w * below(self.hu, self.hi))
        den = torch.zeros(self.n_users, dtype=torch.float64).index_add_(
            0, self.fu, torch.ones(self.fu.numel(), dtype=torch.float64))
        return ratio_and_se(num, den)


@dataclass
class MixPoint:
    """One curvature mix tried: its damping choice and the shape check there."""

    mix: float
    correction: RowCorrection | None
    kappa: float
    how: str
    curve: list[tuple[float, float, float]]
    shape: float
    shape_se: float

    def record(self) -> list[float]:
        """``[mix, kappa, shape, shape_se]`` for the diagnostics."""
        return [self.mix, self.kappa, self.shape, self.shape_se]


def calibrate_mix(system: RowSystem, f_u: torch.Tensor, f_i: torch.Tensor,
                  calibrator: Callable[[torch.Tensor, torch.Tensor], tuple[float, float]],
                  shape: Callable[[torch.Tensor, torch.Tensor], tuple[float, float]],
                  kappas: list[float], target: float = 0.5, tolerance_se: float = 0.0,
                  patience: int = 2, steps: int = 1,
                  probe: float = 0.25) -> tuple[MixPoint, list[MixPoint]]:
    """Set the curvature mix (:meth:`RowSystem.correction`) in ``[0, 1]`` where the shape
    check reaches 0, the damping at each mix by :func:`calibrate`.

    The check rises with the mix (more curvature, less correction of the rows D_f pulled
    hardest). Mix 0 is kept when its check is already >= 0. Otherwise ``probe`` is tried,
    then ``steps`` secant steps clipped to ``[0, 1]`` (regula falsi, Illinois variant, once
    the root is bracketed); the point tried whose check is nearest 0 is returned, with every
    point tried (in the order tried; only the returned one keeps its correction). Each point
    costs one batched eigendecomposition and one damping scan.
    """
    def at(mix: float) -> MixPoint:
        corr = system.correction(mix)
        kappa, how, curve = calibrate(corr, f_u, f_i, calibrator, kappas, target, tolerance_se,
                                      patience)
        d, se = shape(*corr.apply(f_u, f_i, kappa))
        return MixPoint(float(mix), corr, kappa, how, curve, d, se)
    tried = [at(0.0)]
    if not math.isfinite(tried[0].shape) or tried[0].shape >= 0:
        return tried[0], tried
    best = tried[0]

    def add(point: MixPoint) -> MixPoint:
        """Record a point; keep only the best point's decomposition (each ``(R, d, d)``)."""
        nonlocal best
        tried.append(point)
        best = min(best, point, key=lambda m: abs(m.shape))
        for m in tried:
            if m is not best:
                m.correction = None
        return point
    add(at(probe))
    (t_lo, d_lo), (t_hi, d_hi) = [(m.mix, m.shape) for m in tried]
    side = 0
    for _ in range(steps):
        if d_hi < 0:                       # not bracketed yet: secant, clipped to [t_hi, 1]
            if t_hi >= 1.0:
                break                      # even the trained model's own curvature is below
            t = t_hi + (t_hi - t_lo) * (-d_hi) / max(d_hi - d_lo, 1e-12)
            mid = add(at(min(max(t, t_hi), 1.0)))
            (t_lo, d_lo), (t_hi, d_hi) = (t_hi, d_hi), (mid.mix, mid.shape)
            continue
        mid = add(at(t_lo + (t_hi - t_lo) * (-d_lo) / max(d_hi - d_lo, 1e-12)))
        if mid.shape < 0:                  # regula falsi, Illinois: halve the kept end's value
            t_lo, d_lo, d_hi = mid.mix, mid.shape, d_hi / 2 if side == -1 else d_hi
            side = -1
        else:
            t_hi, d_hi, d_lo = mid.mix, mid.shape, d_lo / 2 if side == 1 else d_lo
            side = 1
    return best, tried


# -- realisation in the ID tables ---------------------------------------------------------------
Vec = Pair  # a vector of the two tables (user part, item part)


def _dot(a: Vec, b: Vec) -> float:
    return float((a[0] * b[0]).sum() + (a[1] * b[1]).sum())


def _axpy(alpha: float, x: Vec, y: Vec) -> Vec:
    """``y + alpha x``."""
    return y[0] + alpha * x[0], y[1] + alpha * x[1]


def _conjugate_gradients(op: Callable[[Vec], Vec], b: Vec, iters: int, tol: float) -> tuple[Vec, int]:
    """CG for a symmetric positive definite ``op``; stops at ``|r| <= tol |b|``."""
    x = (torch.zeros_like(b[0]), torch.zeros_like(b[1]))
    r, p = b, b
    rs = rs0 = _dot(r, r)
    it = 0
    for it in range(1, iters + 1):
        q = op(p)
        alpha = rs / max(_dot(p, q), 1e-30)
        x, r = _axpy(alpha, p, x), _axpy(-alpha, q, r)
        rs_new = _dot(r, r)
        if rs_new <= tol * tol * rs0:
            break
        p = _axpy(rs_new / rs, p, r)
        rs = rs_new
    return x, it


def _bicgstab(op: Callable[[Vec], Vec], b: Vec, iters: int, tol: float) -> tuple[Vec, int]:
    """BiCGSTAB for a non-symmetric ``op`` (FREEDOM's directed kNN item graph): products
    ``op(x)`` only, no transpose."""
    zero = (torch.zeros_like(b[0]), torch.zeros_like(b[1]))
    x, r, rhat, v, p = zero, b, b, zero, zero
    rho = alpha = omega = 1.0
    nb = _dot(b, b) ** 0.5
    it = 0
    for it in range(1, iters + 1):
        rho_new = _dot(rhat, r)
        if abs(rho_new) < 1e-30:
            break
        beta = (rho_new / rho) * (alpha / omega)
        p = _axpy(beta, _axpy(-omega, v, p), r)
        v = op(p)
        alpha = rho_new / _dot(rhat, v)
        h, s = _axpy(alpha, p, x), _axpy(-alpha, v, r)
        if _dot(s, s) ** 0.5 <= tol * nb:
            return h, it
        t = op(s)
        omega = _dot(t, s) / max(_dot(t, t), 1e-30)
        x, r = _axpy(omega, s, h), _axpy(-omega, t, s)
        rho = rho_new
        if _dot(r, r) ** 0.5 <= tol * nb:
            break
    return x, it


def solve_ego(model: Recommender, d_fu: torch.Tensor, d_fi: torch.Tensor, iters: int = 80,
              tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, dict[str, float | int | str]]:
    """``(dEu (n_users, d_u), dEi (n_items, d_i))`` with ``M dE ~= dF`` for
    ``dF = (d_fu (n_users, d), d_fi (n_items, d))``.

    ``M`` is the model's map ID tables -> final embeddings over its installed graph (eval
    mode, linear: :func:`is_linear_map`). Symmetric ``M`` (MF, LightGCN): CG; otherwise
    BiCGSTAB, and CG on the normal equations ``M^T M dE = M^T dF`` (``M^T`` by autograd)
    when BiCGSTAB stalls. The info holds the iterations, the solver and the relative
    residual ``|M dE - dF| / |dF|``.
    """
    model.eval()
    wu, wi = model.user_embedding.weight, model.item_embedding.weight
    b = (d_fu.to(wu.dtype), d_fi.to(wi.dtype))

    def m_op(x: Vec) -> Vec:
        with torch.no_grad():
            return finals_of(model, x[0], x[1])

    def mt_op(y: Vec) -> Vec:
        with torch.enable_grad():
            xu = torch.zeros_like(wu, requires_grad=True)
            xi = torch.zeros_like(wi, requires_grad=True)
            fu, fi = finals_of(model, xu, xi)
            gu, gi = torch.autograd.grad((fu * y[0]).sum() + (fi * y[1]).sum(), (xu, xi))
        return gu, gi

    def residual(x: Vec) -> float:
        mx = m_op(x)
        return _dot(_axpy(-1.0, b, mx), _axpy(-1.0, b, mx)) ** 0.5 / max(_dot(b, b) ** 0.5, 1e-30)

    gen = torch.Generator().manual_seed(1)
    probe = (torch.randn(wu.shape, generator=gen), torch.randn(wi.shape, generator=gen))
    fwd, bwd = m_op(probe), mt_op(probe)
    diff = _axpy(-1.0, bwd, fwd)
    if _dot(diff, diff) <= 1e-10 * _dot(fwd, fwd):
        x, it = _conjugate_gradients(m_op, b, iters, tol)
        return x[0], x[1], {"cg_iters": it, "cg": "symmetric", "cg_rel_residual": residual(x)}
    x, it = _bicgstab(m_op, b, iters, tol)
    res = residual(x)
    if res <= 10 * tol:
        return x[0], x[1], {"cg_iters": it, "cg": "bicgstab", "cg_rel_residual": res}
    logger.info("solve_ego: BiCGSTAB residual %.2e after %d iterations; CG on the normal equations",
                res, it)
    x, it = _conjugate_gradients(lambda v: mt_op(m_op(v)), mt_op(b), iters, tol)
    return x[0], x[1], {"cg_iters": it, "cg": "normal equations", "cg_rel_residual": residual(x)}
