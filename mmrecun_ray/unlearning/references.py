"""Per-pair reference items for the reverse term: where Gold would rank each forgotten pair.

The paper's RBPR pushes a forgotten pair ``(u, i)`` below a fresh uniform negative at
every step. Repeated over a few hundred steps that drives D_f *below* the never-seen
items: forget-set recall is zero, but a score attacker now sees forgotten pairs as
conspicuously low (MIA AUC 0.1-0.15 where Gold sits at 0.5), which is a membership
signal of its own.

Here each forgotten pair gets one reference item ``r``, fixed for the whole run, drawn
from where Gold (retrained without D_f) would place the pair:

- the user has no retain training data left (``users`` requests) or the item left the
  catalogue (``items`` requests): Gold knows nothing of the pair and scores it like any
  never-seen item, so ``r`` is a uniform never-seen item of ``u``;
- otherwise (``interactions`` requests) Gold scores the pair like a held-out positive of
  a known user, so ``r`` is one of ``u``'s validation items (a never-seen item when the
  user has none).

The reverse term ``-ln sigmoid(s(u,r) - s(u,i))`` with ``s(u,r)`` held fixed is applied
only while ``s(u,i) > s(u,r)``: each pair stops once it is no better placed than its
reference, so D_f ends distributed like Gold's scores instead of below them.

:func:`exclusive_ids` names the parameters only D_f ever trained: the ID-embedding rows of
users with no retain data and of items that left the catalogue. Gold never trains them
(no retain pair reaches them), so they keep their initial draw there; MMRecUN re-draws
them the same way (exact for those rows). A forgotten pair whose user or item row is
re-drawn is then unlearned as Gold would have it, and the reverse term works on the other
pairs only: none for ``users`` and ``items`` requests, all for ``interactions`` requests.
"""

from __future__ import annotations

import numpy as np

from mmrecun_ray.objectives.sampling import NegativeSampler
from mmrecun_ray.unlearning.requests import ForgetSet


def _all_keys(fset: ForgetSet) -> np.ndarray:
    """``(E,)`` keys ``u * n_items + i`` of every pair the original data held (all splits of
    the retain version, D_f and the held-out pairs the request removed)."""
    r, n = fset.retain, fset.retain.n_items
    parts = [r.split(s).keys(n) for s in ("train", "valid", "test")] + [fset.forget.keys(n)]
    if fset.held_out_removed is not None:
        parts.append(fset.held_out_removed.keys(n))
    return np.concatenate(parts)


def matched_references(fset: ForgetSet, seed: int = 0) -> np.ndarray:
    """One reference item per forgotten pair (see the module docstring).

    Returns ``(F,)`` int64 item ids aligned with ``fset.forget.user`` / ``.item``. Never a
    banned item, never an item the user interacted with in train or test.
    """
    r = fset.retain
    users = fset.forget.user.astype(np.int64)
    items = fset.forget.item.astype(np.int64)
    allowed = np.setdiff1d(np.arange(r.n_items), fset.banned_items) if fset.banned_items.size else None
    refs = NegativeSampler(_all_keys(fset), r.n_items, allowed, seed=seed).sample(users)

    held_out = (np.isin(users, r.train.user) & ~np.isin(items, fset.banned_items)
                & np.isin(users, r.valid.user))
    if held_out.any():
        rng = np.random.default_rng(seed + 1)
        order = np.argsort(r.valid.user, kind="stable")
        v_user, v_item = r.valid.user[order].astype(np.int64), r.valid.item[order].astype(np.int64)
        start = np.searchsorted(v_user, users[held_out], side="left")
        count = np.searchsorted(v_user, users[held_out], side="right") - start
        pick = start + (rng.random(start.size) * count).astype(np.int64)
        refs[held_out] = v_item[pick]
    return refs


def exclusive_ids(fset: ForgetSet) -> tuple[np.ndarray, np.ndarray]:
    """``(users, items)``, each ``(k,)`` int64: users of D_f with no retain training pair
    left, and the items that left the catalogue."""
    users = np.unique(fset.forget.user.astype(np.int64))
    users = users[~np.isin(users, fset.retain.train.user)]
    return users, np.asarray(fset.banned_items, dtype=np.int64)


def estimate_gold_forget_recall(fset: ForgetSet, ref_valid_recall: float, k: int = 20) -> float:
    """What Gold's forget-set Recall@K should be, without running Gold.

    Per forgotten pair: if its user keeps retain training data, Gold ranks the pair like any
    never-seen positive of a known user (``ref_valid_recall``: the trained model's
    validation Recall@K on retain users); if the user has no retain data left (``users``
    requests), Gold knows nothing of them and ranks at random: ``K / n_rankable`` with
    ``n_rankable`` the active items. Pairs of banned items rank nowhere (0). Averaged per
    user, as the metric is.
    """
    if len(fset.forget) == 0:
        return ref_valid_recall
    n_active = fset.retain.n_items - int(fset.banned_items.size)
    keeps = np.isin(np.unique(fset.forget.user), fset.retain.train.user)
    banned_share = np.isin(fset.forget.item, fset.banned_items).mean() if fset.banned_items.size else 0.0
    per_user = np.where(keeps, ref_valid_recall, min(1.0, k / max(n_active, 1)))
    return float(per_user.mean() * (1.0 - banned_share))
