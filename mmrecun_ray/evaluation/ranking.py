"""Full-ranking top-K retrieval and split evaluation.

Every item of the catalogue is scored for every evaluated user (``user_emb @ item_emb.T``),
the user's training items and any globally banned items (items that left the catalogue) are
masked out, and the top K remain. Users are processed in batches whose size follows from a
memory budget, so a Baby-scale evaluation (19,445 users x 7,050 items) never holds the full
score matrix. Works on whatever device the embeddings live on (CPU or CUDA); results come
back as numpy arrays.

Ties are broken deterministically: a higher score ranks first, and among equal scores the
lower item id ranks first, independent of batch size and device.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mmrecun_ray.errors import DataError
from mmrecun_ray.evaluation.metrics import (
    DEFAULT_KS,
    check_ks,
    per_user_metrics,
    standard_error,
    topk_metrics,
)

log = logging.getLogger(__name__)

#: ``(indptr, indices)``: row ``u``'s column ids are ``indices[indptr[u]:indptr[u + 1]]``
CSR = tuple[np.ndarray, np.ndarray]

#: default working-memory budget of one ranking batch (scores plus selection masks)
DEFAULT_MEMORY_BUDGET_BYTES = 256 * 1024 ** 2
#: bytes of working memory per (user, item) score in a batch: the float32 score, the
#: comparison masks and the int32 tie counter, with headroom for temporaries
BYTES_PER_SCORE = 24
#: item id written where fewer than K items could be ranked (all others masked)
PAD_ITEM = -1


# -- CSR ------------------------------------------------------------------------------------
def build_csr(user: np.ndarray, item: np.ndarray, n_users: int,
              n_items: int | None = None) -> CSR:
    """Per-user item lists in CSR form, sorted and deduplicated.

    Args:
        user: ``(N,)`` int user ids in ``[0, n_users)``.
        item: ``(N,)`` int item ids ``>= 0`` (and ``< n_items`` when ``n_items`` is given).
        n_users: number of rows.
        n_items: optional catalogue size, only used to validate ``item``.

    Returns:
        ``indptr`` ``(n_users + 1,)`` int64 and ``indices`` ``(nnz,)`` int64; row ``u``'s
        items ``indices[indptr[u]:indptr[u+1]]`` are strictly increasing.

    Raises:
        DataError: mismatched lengths or an id out of range (the message names it).
    """
    user = np.asarray(user, dtype=np.int64).ravel()
    item = np.asarray(item, dtype=np.int64).ravel()
    if user.shape != item.shape:
        raise DataError(f"build_csr: user column has {user.size} ids but item column has "
                        f"{item.size}")
    n_users = int(n_users)
    if user.size:
        if user.min() < 0 or user.max() >= n_users:
            bad = int(user[(user < 0) | (user >= n_users)][0])
            raise DataError(f"build_csr: user id {bad} out of range [0, {n_users})")
        hi = n_items if n_items is not None else np.iinfo(np.int64).max
        if item.min() < 0 or item.max() >= hi:
            bad = int(item[(item < 0) | (item >= hi)][0])
            raise DataError(f"build_csr: item id {bad} out of range [0, {hi})")
        width = int(item.max()) + 1
        keys = np.unique(user * width + item)               # sorted by (user, item), unique
        rows, cols = keys // width, keys % width
    else:
        rows = cols = np.zeros(0, dtype=np.int64)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
    return indptr, cols.astype(np.int64, copy=False)


def _check_csr(csr: CSR, n_rows: int, n_cols: int, what: str) -> CSR:
    """Validate a CSR against ``n_rows`` rows and ``n_cols`` columns; return int64 arrays."""
    indptr, indices = (np.asarray(a, dtype=np.int64) for a in csr)
    if indptr.shape != (n_rows + 1,):
        raise DataError(f"{what}: indptr has shape {indptr.shape}, expected ({n_rows + 1},) "
                        f"for {n_rows} users")
    if indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0):
        raise DataError(f"{what}: indptr is not a valid row pointer for {indices.size} "
                        f"indices")
    if indices.size and (indices.min() < 0 or indices.max() >= n_cols):
        bad = int(indices[(indices < 0) | (indices >= n_cols)][0])
        raise DataError(f"{what}: item id {bad} out of range [0, {n_cols})")
    return indptr, indices


def _csr_gather(indptr: np.ndarray, indices: np.ndarray,
                rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entries of the given CSR rows as coordinates.

    Args:
        indptr, indices: a CSR.
        rows: ``(B,)`` row ids.

    Returns:
        ``(pos, cols)``, each ``(nnz_B,)`` int64: ``pos`` is the position in ``rows`` (0..B-1)
        and ``cols`` the column id of each entry.
    """
    starts = indptr[rows]
    lens = indptr[rows + 1] - starts
    total = int(lens.sum())
    pos = np.repeat(np.arange(rows.size, dtype=np.int64), lens)
    within = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    return pos, indices[np.repeat(starts, lens) + within]


# -- ranking --------------------------------------------------------------------------------
def auto_batch_size(n_items: int,
                    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES) -> int:
    """Users per ranking batch so that ``batch * n_items * BYTES_PER_SCORE <= budget``
    (at least 1)."""
    return max(1, int(memory_budget_bytes) // (BYTES_PER_SCORE * max(1, int(n_items))))


def _deterministic_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` columns of every row, ties broken by lower column id.

    Args:
        scores: ``(B, I)`` float scores (``-inf`` = masked), ``1 <= k <= I``.

    Returns:
        ``(idx, vals)``, each ``(B, k)``: column ids in rank order and their scores.
    """
    vals, idx = torch.topk(scores, k, dim=1, largest=True, sorted=True)        # (B, k)
    kth = vals[:, -1:]                                                          # (B, 1)
    # rows where more than k columns reach the k-th score: topk's pick among the columns
    # tied with the k-th score is arbitrary, so choose the lowest ids explicitly
    tied = ((scores >= kth).sum(dim=1) > k).nonzero().view(-1)
    if tied.numel():
        sub, sub_kth = scores[tied], kth[tied]                                  # (T, I), (T, 1)
        above = sub > sub_kth
        need = k - above.sum(dim=1, keepdim=True)                               # (T, 1)
        at = sub == sub_kth
        chosen = above | (at & (torch.cumsum(at, dim=1, dtype=torch.int32) <= need))
        del above, at
        idx[tied] = chosen.nonzero()[:, 1].view(tied.numel(), k)   # row-major: ids ascending
    # order the chosen set by (score descending, id ascending)
    idx = torch.sort(idx, dim=1).values
    vals = scores.gather(1, idx)
    order = torch.sort(vals, dim=1, descending=True, stable=True).indices
    return idx.gather(1, order), vals.gather(1, order)


def full_ranking_topk(user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray,
                      exclude: CSR | None, k: int, banned_items: np.ndarray | None = None,
                      batch_size: int | None = None,
                      memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES) -> np.ndarray:
    """Top-``k`` items of each user over the whole catalogue.

    Args:
        user_emb: ``(U, d)`` float tensor (any device).
        item_emb: ``(I, d)`` float tensor on the same device.
        users: ``(B_total,)`` int user ids to rank for.
        exclude: CSR over all ``U`` users of items never to return for that user (their
            training items), or ``None``.
        k: list length.
        banned_items: ``(n_banned,)`` int item ids never returned to anyone (items that left
            the catalogue), or ``None``.
        batch_size: users scored at once; ``None`` derives it from ``memory_budget_bytes``.
        memory_budget_bytes: working-memory budget of one batch when ``batch_size`` is None.

    Returns:
        ``(B_total, k)`` int64 numpy array of item ids in rank order (best first). A row is
        padded with ``PAD_ITEM`` (-1) when fewer than ``k`` items are left after masking.
    """
    if user_emb.dim() != 2 or item_emb.dim() != 2 or user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(f"user_emb (U, d) and item_emb (I, d) must share d, got "
                         f"{tuple(user_emb.shape)} and {tuple(item_emb.shape)}")
    if user_emb.device != item_emb.device:
        raise ValueError(f"user_emb is on {user_emb.device} but item_emb on {item_emb.device}")
    if not (user_emb.is_floating_point() and item_emb.is_floating_point()):
        raise ValueError(f"embeddings must be floating point, got {user_emb.dtype} and "
                         f"{item_emb.dtype}")
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_users, n_items = int(user_emb.shape[0]), int(item_emb.shape[0])
    users = np.asarray(users, dtype=np.int64).ravel()
    if users.size and (users.min() < 0 or users.max() >= n_users):
        bad = int(users[(users < 0) | (users >= n_users)][0])
        raise DataError(f"full_ranking_topk: user id {bad} out of range [0, {n_users})")
    out = np.full((users.size, k), PAD_ITEM, dtype=np.int64)
    if users.size == 0 or n_items == 0:
        return out
    if exclude is not None:
        indptr, indices = _check_csr(exclude, n_users, n_items, "full_ranking_topk exclude")
    device = item_emb.device
    banned_t = None
    if banned_items is not None and np.asarray(banned_items).size:
        banned = np.unique(np.asarray(banned_items, dtype=np.int64))
        if banned[0] < 0 or banned[-1] >= n_items:
            bad = int(banned[(banned < 0) | (banned >= n_items)][0])
            raise DataError(f"full_ranking_topk: banned item id {bad} out of range "
                            f"[0, {n_items})")
        banned_t = torch.from_numpy(banned).to(device)
    k_eff = min(k, n_items)
    bs = int(batch_size) if batch_size is not None else auto_batch_size(n_items,
                                                                        memory_budget_bytes)
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    with torch.no_grad():
        u_all, i_all = user_emb.detach(), item_emb.detach()
        if not (torch.isfinite(u_all).all() and torch.isfinite(i_all).all()):
            raise DataError("full_ranking_topk: embeddings contain NaN or inf; cannot rank")
        item_t = i_all.t()                                                  # (d, I)
        for start in range(0, users.size, bs):
            rows = users[start:start + bs]
            scores = u_all[torch.from_numpy(rows).to(device)] @ item_t      # (B, I)
            if exclude is not None:
                pos, cols = _csr_gather(indptr, indices, rows)
                if pos.size:
                    scores[torch.from_numpy(pos).to(device),
                           torch.from_numpy(cols).to(device)] = float("-inf")
            if banned_t is not None:
                scores[:, banned_t] = float("-inf")
            idx, vals = _deterministic_topk(scores, k_eff)
            del scores
            idx[torch.isneginf(vals)] = PAD_ITEM
            out[start:start + rows.size, :k_eff] = idx.cpu().numpy()
    return out


# -- evaluation -----------------------------------------------------------------------------
def _user_item_arrays(target: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(user, item)`` arrays of an Interactions-like object or a ``(user, item)`` pair."""
    if hasattr(target, "user") and hasattr(target, "item"):
        return np.asarray(target.user), np.asarray(target.item)
    user, item = target
    return np.asarray(user), np.asarray(item)


def hit_matrix(topk: np.ndarray, users: np.ndarray, target: CSR, n_items: int) -> np.ndarray:
    """Which ranked items are target positives.

    Args:
        topk: ``(B, K)`` int item ids (``PAD_ITEM`` never hits).
        users: ``(B,)`` user id of each row.
        target: CSR of every user's target items (sorted within rows, as from
            :func:`build_csr`).
        n_items: catalogue size.

    Returns:
        ``(B, K)`` bool.
    """
    indptr, indices = target
    counts = np.diff(indptr)
    owner = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    target_keys = owner * n_items + indices                 # sorted: rows, then items
    keys = users.astype(np.int64)[:, None] * n_items + topk  # (B, K)
    if target_keys.size == 0:
        return np.zeros(topk.shape, dtype=bool)
    where = np.minimum(np.searchsorted(target_keys, keys), target_keys.size - 1)
    return (target_keys[where] == keys) & (topk >= 0)


@dataclass
class UserMetrics:
    """Per-user metric vectors of one split.

    Attributes:
        users: ``(U,)`` int64 ids of the evaluated users (those with a target item), sorted.
        values: ``{"recall@20": (U,) float64, ...}``, row ``j`` belongs to ``users[j]``.
    """

    users: np.ndarray
    values: dict[str, np.ndarray]

    def mean(self, key: str) -> float:
        """Mean of ``values[key]`` over the users (what :func:`evaluate_split` reports)."""
        v = self.values[key]
        return float(np.mean(v)) if v.size else float("nan")

    def se(self, key: str) -> float:
        """Standard error of that mean (:func:`~mmrecun_ray.evaluation.metrics.standard_error`)."""
        return standard_error(self.values[key])


def _split_hits(user_emb: torch.Tensor, item_emb: torch.Tensor, train_csr: CSR | None,
                target: Any, n_users: int, n_items: int, ks: tuple[int, ...],
                banned_items: np.ndarray | None, users_subset: np.ndarray | None,
                batch_size: int | None, memory_budget_bytes: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank a split's users; return ``(users (U,), hits (U, max(ks)), n_pos (U,))``."""
    if user_emb.shape[0] != n_users or item_emb.shape[0] != n_items:
        raise ValueError(f"embeddings {tuple(user_emb.shape)}, {tuple(item_emb.shape)} do not "
                         f"match n_users={n_users}, n_items={n_items}")
    t_user, t_item = _user_item_arrays(target)
    tgt = build_csr(t_user, t_item, n_users, n_items)
    n_pos_all = np.diff(tgt[0])                                 # (n_users,)
    users = np.flatnonzero(n_pos_all > 0)
    if users_subset is not None:
        subset = np.asarray(users_subset, dtype=np.int64)
        if subset.size and (subset.min() < 0 or subset.max() >= n_users):
            bad = int(subset[(subset < 0) | (subset >= n_users)][0])
            raise DataError(f"evaluate_split: users_subset id {bad} out of range "
                            f"[0, {n_users})")
        users = np.intersect1d(users, subset)
    topk = full_ranking_topk(user_emb, item_emb, users, train_csr, ks[-1],
                             banned_items=banned_items, batch_size=batch_size,
                             memory_budget_bytes=memory_budget_bytes)
    return users, hit_matrix(topk, users, tgt, n_items), n_pos_all[users]


def evaluate_split(user_emb: torch.Tensor, item_emb: torch.Tensor, train_csr: CSR | None,
                   target: Any, n_users: int, n_items: int,
                   ks: Sequence[int] = DEFAULT_KS, banned_items: np.ndarray | None = None,
                   users_subset: np.ndarray | None = None, batch_size: int | None = None,
                   memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES) -> dict[str, float]:
    """Full-ranking metrics of a split.

    Args:
        user_emb: ``(n_users, d)`` float tensor; item_emb: ``(n_items, d)``, same device.
        train_csr: CSR (see :func:`build_csr`) of items masked per user (training items),
            or ``None`` for no masking.
        target: Interactions-like (``.user``, ``.item`` ``(N,)`` arrays) or a ``(user, item)``
            pair: the split's positives. Duplicates count once. Target items are counted as
            given: drop banned items from ``target`` beforehand if they should not count.
        n_users, n_items: id ranges.
        ks: cutoffs.
        banned_items: item ids never recommended to anyone.
        users_subset: optional user ids; only these (among users with a target item) count.
        batch_size, memory_budget_bytes: see :func:`full_ranking_topk`.

    Returns:
        :func:`~mmrecun_ray.evaluation.metrics.topk_metrics` for the users with at least one
        target item, plus ``"n_users"``: how many users were evaluated.
    """
    ks = check_ks(ks)
    users, hits, n_pos = _split_hits(user_emb, item_emb, train_csr, target, n_users, n_items,
                                     ks, banned_items, users_subset, batch_size,
                                     memory_budget_bytes)
    result: dict[str, float] = topk_metrics(hits, n_pos, ks)
    result["n_users"] = int(users.size)
    log.debug("evaluate_split: %d users, %s", users.size, result)
    return result


def evaluate_split_per_user(user_emb: torch.Tensor, item_emb: torch.Tensor,
                            train_csr: CSR | None, target: Any, n_users: int, n_items: int,
                            ks: Sequence[int] = DEFAULT_KS,
                            banned_items: np.ndarray | None = None,
                            users_subset: np.ndarray | None = None,
                            batch_size: int | None = None,
                            memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES
                            ) -> UserMetrics:
    """The per-user vectors behind :func:`evaluate_split` (same arguments, same users).

    Returns:
        :class:`UserMetrics`: ``users`` ``(U,)`` (every user with a target item, within
        ``users_subset`` if given) and ``values[key]`` ``(U,)`` for every
        :func:`~mmrecun_ray.evaluation.metrics.metric_keys` key; ``mean(key)`` equals
        ``evaluate_split(...)[key]``. Which users are evaluated depends only on ``target``
        and ``users_subset``, so two models evaluated on the same split give aligned
        vectors (for paired comparisons).
    """
    ks = check_ks(ks)
    users, hits, n_pos = _split_hits(user_emb, item_emb, train_csr, target, n_users, n_items,
                                     ks, banned_items, users_subset, batch_size,
                                     memory_budget_bytes)
    return UserMetrics(users=users, values=per_user_metrics(hits, n_pos, ks))


def popularity_embeddings(train_user: np.ndarray, train_item: np.ndarray, n_users: int,
                          n_items: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The most-popular baseline as embeddings, so it shares the evaluation path.

    Args:
        train_user, train_item: ``(N,)`` training interactions (``train_user`` is only
            checked for length; every user gets the same ranking).
        n_users, n_items: id ranges.

    Returns:
        ``user`` ``(n_users, 1)`` float32 ones and ``item`` ``(n_items, 1)`` float32 train
        interaction counts: ``score(u, i) = count(i)``. Equal counts tie and fall back to
        the lower item id.
    """
    train_user = np.asarray(train_user).ravel()
    train_item = np.asarray(train_item, dtype=np.int64).ravel()
    if train_user.shape != train_item.shape:
        raise DataError(f"popularity_embeddings: {train_user.size} users but "
                        f"{train_item.size} items in the training interactions")
    if train_item.size and (train_item.min() < 0 or train_item.max() >= n_items):
        bad = int(train_item[(train_item < 0) | (train_item >= n_items)][0])
        raise DataError(f"popularity_embeddings: item id {bad} out of range [0, {n_items})")
    counts = np.bincount(train_item, minlength=n_items).astype(np.float32)
    return (torch.ones(int(n_users), 1, dtype=torch.float32),
            torch.from_numpy(counts).view(-1, 1))
