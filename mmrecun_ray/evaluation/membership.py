"""Membership inference from scores: the exact AUC of "score high => member"."""

from __future__ import annotations

import numpy as np

from mmrecun_ray.errors import DataError


def mia_auc_from_scores(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """Exact AUC of the attack "score high => member" (Mann-Whitney U / (n1 * n0)).

    Every (member, non-member) pair counts 1 when the member scores higher, 1/2 on a tie and
    0 otherwise. Computed from average ranks in integer arithmetic (twice the ranks), so the
    result is exact for any number of ties.

    Args:
        member_scores: ``(n1,)`` finite scores of the members.
        nonmember_scores: ``(n0,)`` finite scores of the non-members.

    Returns:
        AUC in ``[0, 1]``.

    Raises:
        DataError: an empty side or a non-finite score.
    """
    pos = np.asarray(member_scores, dtype=np.float64).ravel()
    neg = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise DataError(f"mia_auc: need members and non-members, got {pos.size} members and "
                        f"{neg.size} non-members")
    for name, arr in (("member", pos), ("non-member", neg)):
        if not np.all(np.isfinite(arr)):
            bad = int(np.flatnonzero(~np.isfinite(arr))[0])
            raise DataError(f"mia_auc: {name} score #{bad} is {arr[bad]} (not finite)")
    allv = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(allv, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)                                  # 1-based rank of group's last
    twice_avg_rank = 2 * ends - counts + 1                    # first + last rank, an integer
    n1, n0 = pos.size, neg.size
    twice_rank_sum = int(twice_avg_rank[inverse[:n1]].sum())
    twice_u = twice_rank_sum - n1 * (n1 + 1)
    return twice_u / (2.0 * n1 * n0)
