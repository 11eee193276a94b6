"""Membership inference: is a (user, item) pair one the model was trained on?

The attacks here score pairs (a model's ``<user_emb[u], item_emb[i]>``, or how much that
score moved between two models) and guess "member" when the score is high. Their strength
is the AUC of members against non-members:

- :func:`mia_auc_from_scores`: the exact AUC (Mann-Whitney U / (n1 * n0), ties 1/2);
- :func:`auc_placements` / :func:`auc_standard_error`: DeLong's placement values
  (DeLong, DeLong & Clarke-Pearson, 1988) and the standard error they give. DeLong rather
  than Hanley-McNeil because it makes no assumption on the score distributions and because
  its placements extend to clustered pairs and paired comparisons;
- :func:`auc_cluster_pseudo_values`: the same with pairs clustered (by user): per-cluster
  pseudo-values whose mean is the AUC and whose s.e. is Obuchowski's clustered DeLong s.e.;
  two models' pseudo-values on the same draws pair up for a paired s.e.;
- :func:`sample_nonmembers`: never-seen pairs of the same users (the non-member side);
- :func:`mia_auc`: the score attack on a forget set.

Pure numpy / torch.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from mmrecun_ray.errors import DataError

log = logging.getLogger(__name__)

#: rejection-sampling rounds before the remaining non-members are drawn from the exact
#: complement of the user's known items (only users who know most of the catalogue get there)
_REJECTION_ROUNDS = 32
#: pairs scored per torch batch in :func:`pair_scores_np`
_SCORE_BATCH = 1 << 16


# -- AUC and its standard error ---------------------------------------------------------------
def _check_scores(member_scores: np.ndarray,
                  nonmember_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(n1,)`` and ``(n0,)`` float64 copies; DataError on an empty side or a non-finite one."""
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise DataError(f"mia_auc: need members and non-members, got {pos.size} members and "
                        f"{neg.size} non-members")
    for name, arr in (("member", pos), ("non-member", neg)):
        if not np.all(np.isfinite(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise DataError(f"mia_auc: {name} score #{bad} is {arr[bad]} (not finite)")
    return pos, neg


def _twice_counts(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer placement counts, doubled so that ties stay integers.

    Returns:
        ``c10`` ``(n1,)``: per member, ``2 * #(non-members below) + #(non-members tied)``;
        ``c01`` ``(n0,)``: per non-member, ``2 * #(members above) + #(members tied)``.
    """
    neg_sorted, pos_sorted = np.sort(neg), np.sort(pos)
    c10 = (np.searchsorted(neg_sorted, pos, side="left")
           + np.searchsorted(neg_sorted, pos, side="right")).astype(np.int64)
    n1 = pos.size
    c01 = (2 * n1 - np.searchsorted(pos_sorted, neg, side="left")
           - np.searchsorted(pos_sorted, neg, side="right")).astype(np.int64)
    return c10, c01


def mia_auc_from_scores(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Exact AUC of the attack "score high => member" (Mann-Whitney U / (n1 * n0)).

    Every (member, non-member) pair counts 1 when the member scores higher, 1/2 on a tie and
    0 otherwise. The pair count is summed in integers (twice the count, so ties stay exact)
    and divided once, so the result is exact for any number of ties.

    Args:
        member_scores: ``(n1,)`` finite scores of the members.
        nonmember_scores: ``(n0,)`` finite scores of the non-members.

    Returns:
        AUC in ``[0, 1]``.

    Raises:
        DataError: an empty side or a non-finite score.
    """
    pos, neg = _check_scores(member_scores, nonmember_scores)
    c10, _ = _twice_counts(pos, neg)
    return int(c10.sum()) / (2.0 * pos.size * neg.size)


def auc_placements(member_scores: np.ndarray,
                   nonmember_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placement values of members and non-members.

    Args:
        member_scores: ``(n1,)`` finite scores; nonmember_scores: ``(n0,)``.

    Returns:
        ``(v10, v01)``: ``v10`` ``(n1,)``, per member the share of non-members it beats
        (ties 1/2); ``v01`` ``(n0,)``, per non-member the share of members that beat it.
        ``mean(v10) == mean(v01) ==`` :func:`mia_auc_from_scores` (up to float rounding).
    """
    _, v10, v01 = auc_with_placements(member_scores, nonmember_scores)
    return v10, v01


def auc_with_placements(member_scores: np.ndarray, nonmember_scores: np.ndarray
                        ) -> tuple[float, np.ndarray, np.ndarray]:
    """``(auc, v10, v01)``: the exact AUC of :func:`mia_auc_from_scores` and the
    placements of :func:`auc_placements`, from one sort."""
    pos, neg = _check_scores(member_scores, nonmember_scores)
    c10, c01 = _twice_counts(pos, neg)
    return (int(c10.sum()) / (2.0 * pos.size * neg.size), c10 / (2.0 * neg.size),
            c01 / (2.0 * pos.size))


def _var(x: np.ndarray) -> float:
    """Sample variance (ddof=1); 0 for fewer than 2 values (no spread to estimate)."""
    return float(np.var(x, ddof=1)) if x.size >= 2 else 0.0


def auc_se_from_placements(v10: np.ndarray, v01: np.ndarray) -> float:
    """DeLong standard error of an AUC: ``sqrt(var(v10) / n1 + var(v01) / n0)``."""
    return float(np.sqrt(_var(np.asarray(v10)) / max(np.size(v10), 1)
                         + _var(np.asarray(v01)) / max(np.size(v01), 1)))


def auc_standard_error(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """DeLong standard error of :func:`mia_auc_from_scores` (same arguments).

    ``var(AUC) = var(v10) / n1 + var(v01) / n0`` over the placements of
    :func:`auc_placements` (sample variances; a side with one score contributes 0).
    """
    return auc_se_from_placements(*auc_placements(member_scores, nonmember_scores))


def auc_cluster_pseudo_values(member_scores: np.ndarray, nonmember_scores: np.ndarray,
                              member_cluster: np.ndarray, nonmember_cluster: np.ndarray
                              ) -> tuple[float, np.ndarray, np.ndarray]:
    """The AUC as a mean of per-cluster pseudo-values, for clustered members / non-members.

    Pairs of one user are not independent (they share the user's vector), so DeLong's
    per-pair variance understates the noise when a user has many pairs. Following
    Obuchowski (1997), the AUC's linearisation is summed per cluster:
    ``Z_c = (X_c - m_c A) / M + (Y_c - n_c A) / N`` with ``X_c``, ``Y_c`` the sums of the
    cluster's member / non-member placements (:func:`auc_placements`), ``m_c``, ``n_c`` their
    counts and ``M``, ``N`` the totals. The pseudo-values ``p_c = A + C Z_c`` (``C``
    clusters) average to ``A`` exactly, ``sd(p) / sqrt(C)`` is Obuchowski's clustered
    standard error, and the per-cluster differences of two models' pseudo-values (same
    draws) give the paired standard error of their AUC difference.

    Args:
        member_scores: ``(n1,)``; nonmember_scores: ``(n0,)`` finite scores.
        member_cluster: ``(n1,)`` int cluster id (e.g. user) of each member;
            nonmember_cluster: ``(n0,)`` of each non-member.

    Returns:
        ``(auc, clusters (C,) sorted ids, pseudo (C,) float64)``.
    """
    auc, v10, v01 = auc_with_placements(member_scores, nonmember_scores)
    mc = np.asarray(member_cluster, dtype=np.int64).ravel()
    nc = np.asarray(nonmember_cluster, dtype=np.int64).ravel()
    if mc.shape != v10.shape or nc.shape != v01.shape:
        raise DataError(f"AUC clusters: {mc.size} / {nc.size} cluster ids for {v10.size} "
                        f"members / {v01.size} non-members")
    clusters, inv = np.unique(np.concatenate([mc, nc]), return_inverse=True)
    c, n1 = clusters.size, v10.size
    x = np.bincount(inv[:n1], weights=v10, minlength=c)
    y = np.bincount(inv[n1:], weights=v01, minlength=c)
    m = np.bincount(inv[:n1], minlength=c)
    n = np.bincount(inv[n1:], minlength=c)
    z = (x - m * auc) / v10.size + (y - n * auc) / v01.size
    return auc, clusters, auc + c * z


# -- non-members and the score attack ---------------------------------------------------------
def sample_nonmembers(users: np.ndarray, all_known_keys: np.ndarray, n_items: int,
                      n_neg: int = 1, seed: int = 0) -> np.ndarray:
    """For each user, ``n_neg`` items drawn uniformly among those they never interacted with.

    Args:
        users: ``(F,)`` user ids (one per forgotten pair; repeats are fine).
        all_known_keys: ``(N,)`` int64 keys ``u * n_items + i`` of every known interaction of
            the original data (train, valid and test; duplicates are fine).
        n_items: catalogue size.
        n_neg: non-members per entry of ``users``.
        seed: seed of the generator.

    Returns:
        ``(F, n_neg)`` int64 item ids; ``u * n_items + item`` is never in ``all_known_keys``.
        Draws are with replacement, independently per entry.

    Raises:
        DataError: a user who interacted with every item (no non-member exists), or bad ids.
    """
    users = np.asarray(users, dtype=np.int64).ravel()
    if n_items <= 0 or n_neg <= 0:
        raise DataError(f"sample_nonmembers: n_items={n_items} and n_neg={n_neg} must be > 0")
    if users.size and users.min() < 0:
        raise DataError(f"sample_nonmembers: user id {int(users.min())} is negative")
    known = np.unique(np.asarray(all_known_keys, dtype=np.int64).ravel())
    rng = np.random.default_rng(seed)
    out = rng.integers(0, n_items, size=(users.size, n_neg), dtype=np.int64)
    todo = np.flatnonzero(_is_known(users[:, None] * int(n_items) + out, known).ravel())
    for _ in range(_REJECTION_ROUNDS):
        if todo.size == 0:
            break
        out.flat[todo] = rng.integers(0, n_items, size=todo.size, dtype=np.int64)
        redraw = _is_known(users[todo // n_neg] * int(n_items) + out.flat[todo], known)
        todo = todo[redraw]
    if todo.size:
        _fill_from_complement(out, todo, users, known, n_items, n_neg, rng)
    return out


def _is_known(keys: np.ndarray, known_sorted: np.ndarray) -> np.ndarray:
    """Boolean mask of ``keys`` (any shape) present in the sorted unique ``known_sorted``."""
    if known_sorted.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    pos = np.searchsorted(known_sorted, keys)
    pos = np.minimum(pos, known_sorted.size - 1)
    return known_sorted[pos] == keys


def _fill_from_complement(out: np.ndarray, todo: np.ndarray, users: np.ndarray,
                          known: np.ndarray, n_items: int, n_neg: int,
                          rng: np.random.Generator) -> None:
    """Draw the flat positions ``todo`` of ``out`` ``(F, n_neg)`` from each user's exact
    complement of known items (for users who know almost the whole catalogue)."""
    rows = todo // n_neg
    for u in np.unique(users[rows]):
        lo, hi = np.searchsorted(known, [u * n_items, (u + 1) * n_items])
        free = np.setdiff1d(np.arange(n_items, dtype=np.int64), known[lo:hi] - u * n_items,
                            assume_unique=True)
        if free.size == 0:
            raise DataError(f"mia_auc: user {int(u)} interacted with all {n_items} items; "
                            "no non-member item exists for the attack")
        sel = todo[users[rows] == u]
        out.flat[sel] = rng.choice(free, size=sel.size, replace=True)


def pair_scores_np(user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray,
                   items: np.ndarray) -> np.ndarray:
    """Scores ``<user_emb[u], item_emb[i]>`` of ``(P,)`` pairs, batched, as float64 numpy.

    Args:
        user_emb: ``(n_users, d)`` tensor (any device / float dtype).
        item_emb: ``(n_items, d)`` tensor on the same device.
        users, items: ``(P,)`` int ids.

    Returns:
        ``(P,)`` float64 scores.
    """
    users = np.asarray(users, dtype=np.int64).ravel()
    items = np.asarray(items, dtype=np.int64).ravel()
    if users.shape != items.shape:
        raise DataError(f"pair scores: {users.size} users but {items.size} items")
    for name, ids, n in (("user", users, user_emb.shape[0]), ("item", items, item_emb.shape[0])):
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            bad = int(ids[(ids < 0) | (ids >= n)][0])
            raise DataError(f"pair scores: {name} id {bad} out of range [0, {n})")
    out = np.empty(users.size, dtype=np.float64)
    dev = user_emb.device
    with torch.no_grad():
        for s in range(0, users.size, _SCORE_BATCH):
            u = torch.tensor(users[s:s + _SCORE_BATCH], device=dev)     # copies: input may
            i = torch.tensor(items[s:s + _SCORE_BATCH], device=dev)     # be read-only
            sc = (user_emb[u].double() * item_emb[i].double()).sum(-1)
            out[s:s + u.numel()] = sc.cpu().numpy()
    return out


def mia_auc(user_emb: torch.Tensor, item_emb: torch.Tensor, forget_user: np.ndarray,
            forget_item: np.ndarray, all_known_keys: np.ndarray, n_items: int, seed: int = 0,
            n_neg: int = 1) -> float:
    """AUC of the score-based membership-inference attack on the forget set.

    Members: the ``(F,)`` forgotten pairs ``(forget_user, forget_item)``. Non-members: for
    each forgotten pair, ``n_neg`` items drawn uniformly among those the same user never
    interacted with in any split of the original data (see :func:`sample_nonmembers`), so
    both sides have the same user distribution and only membership differs.

    Args:
        user_emb: ``(n_users, d)`` final user embeddings.
        item_emb: ``(n_items, d)`` final item embeddings.
        forget_user, forget_item: ``(F,)`` int ids of D_f.
        all_known_keys: int64 keys ``u * n_items + i`` of every original interaction.
        n_items: catalogue size (the key base; must equal ``item_emb.shape[0]``).
        seed: seed of the non-member draw.
        n_neg: non-members per member.

    Returns:
        AUC in ``[0, 1]`` (0.5: members indistinguishable from non-members).
    """
    if item_emb.shape[0] != n_items:
        raise DataError(f"mia_auc: item_emb has {item_emb.shape[0]} rows but n_items={n_items}")
    fu = np.asarray(forget_user, dtype=np.int64).ravel()
    fi = np.asarray(forget_item, dtype=np.int64).ravel()
    if fu.size == 0:
        raise DataError("mia_auc: the forget set is empty")
    member = pair_scores_np(user_emb, item_emb, fu, fi)
    neg_items = sample_nonmembers(fu, all_known_keys, n_items, n_neg=n_neg, seed=seed)
    nonmember = pair_scores_np(user_emb, item_emb, np.repeat(fu, n_neg), neg_items.ravel())
    auc = mia_auc_from_scores(member, nonmember)
    log.debug("mia_auc: %d members, %d non-members -> %.4f", member.size, nonmember.size, auc)
    return auc
