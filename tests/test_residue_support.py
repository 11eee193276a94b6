"""The retain-support percentile of ``bench/residue.py`` (the diagnostic that locates the
``interactions`` residue), against a hand-computed item-kNN case."""

from __future__ import annotations

import numpy as np
import pytest

from bench.residue import support_percentiles
from mmrecun_ray.data.schema import Interactions, Manifest, RecDataset


def _retain() -> RecDataset:
    """3 users, 4 items; retain train 0:{0,1} 1:{0,1} 2:{1,2}; item 3 never trained."""
    a = np.asarray([(0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (2, 2)], dtype=np.int64)
    empty = Interactions(user=np.zeros(0, np.int64), item=np.zeros(0, np.int64))
    man = Manifest(name="hand", n_users=3, n_items=4, counts={}, modalities={})
    return RecDataset(3, 4, Interactions(user=a[:, 0].copy(), item=a[:, 1].copy()), empty,
                      empty, {}, man, uri="memory://hand")


@pytest.mark.parametrize("batch", [1, 512])
def test_support_percentile_ranks_each_pair_by_cosine_co_occurrence_with_the_users_items(batch: int) -> None:
    """Degrees 2, 3, 1, 0; co-occurrence 0-1 twice, 1-2 once: cos(0,1) = 2/sqrt(6),
    cos(1,2) = 1/sqrt(3), the rest 0 (diagonal zeroed). User 0 (items 0, 1) scores items
    0..3 as c01, c01, c12, 0; user 2 (items 1, 2) as c01, c12, c12, 0. Pair (0, 2) scores c12
    against candidates 0, 3, 3, 1 (c01, 0, 0, c01): 2 of 4 below -> 1/2. Pair (2, 0) scores
    c01 against 1, 2, 3, 0 (c12, c12, 0, c01 tie): 3.5 / 4. Pair (2, 3) scores 0 against
    1, 3, 2, 3 (c12, 0 tie, c12, 0 tie): 1 / 4."""
    pu = np.array([0, 2, 2])
    pi = np.array([2, 0, 3])
    cand = np.array([[0, 3, 3, 1], [1, 2, 3, 0], [1, 3, 2, 3]])
    got = support_percentiles(_retain(), pu, pi, cand, batch=batch)
    np.testing.assert_allclose(got, [0.5, 0.875, 0.25])
