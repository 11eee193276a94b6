"""Per-user top-K ranking metrics, with the definitions MMRec uses.

Input is a boolean hit matrix ``hits`` of shape ``(U, Kmax)``: ``hits[u, r]`` is whether the
item ranked at position ``r`` (0-based) for user ``u`` is one of the user's positives in the
evaluated split, and ``n_pos`` of shape ``(U,)`` is how many distinct positives each user has.
For a cutoff ``K`` and a user with ``h`` hits in the top ``K`` and ``m = n_pos`` positives:

- ``recall@K``    = h / m
- ``precision@K`` = h / K   (always K, even when fewer than K items could be ranked)
- ``ndcg@K``      = DCG / IDCG, binary relevance, ``DCG = sum_{hit ranks r} 1/log2(r + 1)``
  (1-based ``r``) and ``IDCG = sum_{r=1}^{min(m, K)} 1/log2(r + 1)``
- ``map@K``       = ``(1 / min(m, K)) * sum_{r <= K, hit at r} precision@r`` (MMRec's AP
  normalisation, which does not penalise users with more positives than K)
- ``hit@K``       = 1 if h > 0 else 0

Each metric is averaged over the users with ``m >= 1``; users without positives are left
out. Unlike MMRec the values are not rounded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

#: metric names in the order they appear in the result dict
METRIC_NAMES: tuple[str, ...] = ("recall", "ndcg", "precision", "map", "hit")
DEFAULT_KS: tuple[int, ...] = (10, 20, 50)


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """Validate cutoffs: a non-empty sequence of positive ints; returned sorted, unique."""
    out = tuple(sorted({int(k) for k in ks}))
    if not out:
        raise ValueError("ks must name at least one cutoff, got an empty sequence")
    if out[0] < 1:
        raise ValueError(f"every cutoff in ks must be >= 1, got {list(ks)}")
    return out


def metric_keys(ks: Sequence[int] = DEFAULT_KS) -> list[str]:
    """Result keys ``"<metric>@<K>"`` for every metric and cutoff, in result order."""
    return [f"{name}@{k}" for name in METRIC_NAMES for k in check_ks(ks)]


def _check_hits(hits: np.ndarray, n_pos: np.ndarray,
                ks: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Validate a ``(U, Kmax)`` hit matrix against ``(U,)`` positive counts (see
    :func:`topk_metrics`); return ``(hits[:, :max(ks)] as bool, n_pos)``."""
    hits = np.asarray(hits)
    n_pos = np.asarray(n_pos)
    if hits.ndim != 2:
        raise ValueError(f"hits must be a (U, Kmax) matrix, got shape {hits.shape}")
    if n_pos.shape != (hits.shape[0],):
        raise ValueError(f"n_pos must have shape ({hits.shape[0]},) to match hits "
                         f"{hits.shape}, got {n_pos.shape}")
    kmax = ks[-1]
    if hits.shape[1] < kmax:
        raise ValueError(f"hits has {hits.shape[1]} ranked columns but the largest cutoff "
                         f"is {kmax}")
    if n_pos.size and n_pos.min() < 0:
        raise ValueError(f"n_pos has a negative count at user row {int(np.argmin(n_pos))}")
    hits = hits[:, :kmax].astype(bool, copy=False)
    n_hits = hits.sum(axis=1)
    bad = np.flatnonzero(n_hits > n_pos)
    if bad.size:
        r = int(bad[0])
        raise ValueError(f"user row {r} has {int(n_hits[r])} hits in its top {kmax} but only "
                         f"{int(n_pos[r])} positives; hits and n_pos disagree")
    return hits, n_pos


def per_user_metrics(hits: np.ndarray, n_pos: np.ndarray,
                     ks: Sequence[int] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Recall, NDCG, Precision, MAP and HitRate of every user at every cutoff.

    Same arguments and definitions as :func:`topk_metrics` (module doc); nothing averaged.

    Returns:
        ``{"recall@10": (U,) float64, ...}`` (keys as :func:`metric_keys`), row ``u`` is
        user row ``u`` of ``hits``; users with ``n_pos == 0`` hold NaN (they are not
        measured).
    """
    ks = check_ks(ks)
    hits, n_pos = _check_hits(hits, n_pos, ks)
    kmax = ks[-1]
    keep = n_pos > 0
    h = hits[keep].astype(np.float64)                       # (U', kmax)
    m = n_pos[keep].astype(np.int64)                        # (U',)
    ranks = np.arange(1, kmax + 1, dtype=np.float64)        # (kmax,) 1-based ranks
    discount = 1.0 / np.log2(ranks + 1.0)                   # (kmax,)
    ideal = np.cumsum(discount)                             # (kmax,) IDCG for r relevant

    cum_hits = np.cumsum(h, axis=1)                         # (U', kmax) hits in top r
    dcg = np.cumsum(h * discount, axis=1)                   # (U', kmax)
    prec_at_r = cum_hits / ranks                            # (U', kmax) precision@r
    ap_sum = np.cumsum(prec_at_r * h, axis=1)               # (U', kmax) sum of P@r at hits

    out: dict[str, np.ndarray] = {}
    for name in METRIC_NAMES:
        for k in ks:
            col = k - 1
            denom = np.minimum(m, k)                        # (U',) min(|pos|, K) >= 1
            if name == "recall":
                v = cum_hits[:, col] / m
            elif name == "ndcg":
                v = dcg[:, col] / ideal[denom - 1]
            elif name == "precision":
                v = cum_hits[:, col] / k
            elif name == "map":
                v = ap_sum[:, col] / denom
            else:
                v = (cum_hits[:, col] > 0).astype(np.float64)
            full = np.full(n_pos.shape, np.nan)
            full[keep] = v
            out[f"{name}@{k}"] = full
    return out


def topk_metrics(hits: np.ndarray, n_pos: np.ndarray,
                 ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Recall, NDCG, Precision, MAP and HitRate at every cutoff, averaged over users.

    Args:
        hits: ``(U, Kmax)`` bool; row u, column r: the rank-r item (0-based) of user u is a
            positive. ``Kmax`` must be ``>= max(ks)``; columns past ``max(ks)`` are ignored.
        n_pos: ``(U,)`` int; number of distinct positives of each user. Users with 0 are
            excluded from every average.
        ks: cutoffs K.

    Returns:
        ``{"recall@10": ..., "ndcg@10": ..., "precision@10": ..., "map@10": ...,
        "hit@10": ..., ...}`` (see :func:`metric_keys`): the means of
        :func:`per_user_metrics` over the users with a positive. When no user has a
        positive every value is NaN (and a warning is logged): there is nothing to measure.

    Raises:
        ValueError: wrong shapes, a cutoff beyond ``Kmax``, a negative ``n_pos``, or a user
            with more hits in the top ``max(ks)`` than positives.
    """
    ks = check_ks(ks)
    per_user = per_user_metrics(hits, n_pos, ks)
    keep = np.asarray(n_pos) > 0
    if not keep.any():
        log.warning("topk_metrics: none of %d users has a positive; all metrics are NaN",
                    keep.size)
        return {key: float("nan") for key in metric_keys(ks)}
    return {key: float(np.mean(per_user[key][keep])) for key in metric_keys(ks)}


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of ``(n,)`` per-unit values: ``sd(ddof=1) / sqrt(n)``.

    NaN entries (units not measured) are left out. Returns NaN for fewer than 2 values
    (no spread can be estimated from one).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[~np.isnan(v)]
    if v.size < 2:
        return float("nan")
    return float(np.std(v, ddof=1) / np.sqrt(v.size))


def paired_difference(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the per-unit differences ``a - b``.

    Args:
        a, b: ``(n,)`` per-unit values of two models on the same units (same order).
            Units where either is NaN are left out.

    Returns:
        ``(mean(a - b), standard_error(a - b))``.

    Raises:
        ValueError: shapes differ (the vectors are not aligned).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired difference: per-unit vectors of {a.size} and {b.size} units "
                         "are not aligned")
    d = a - b
    d = d[~np.isnan(d)]
    if d.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(d)), standard_error(d)
