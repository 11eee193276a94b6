"""The SISA ensemble: user shards, own-shard serving through block embeddings."""

from __future__ import annotations

import numpy as np
import torch

from mmrecun_ray.models import build_model
from mmrecun_ray.models.sisa import shard_of_users


def test_shards_are_balanced_and_seeded() -> None:
    s = shard_of_users(10, 3, seed=0)
    assert sorted(np.bincount(s).tolist()) == [3, 3, 4]
    assert (shard_of_users(10, 3, seed=0) == s).all()
    assert not (shard_of_users(10, 3, seed=1) == s).all()


def test_ensemble_scores_are_the_own_shard_models_scores() -> None:
    torch.manual_seed(0)
    n_users, n_items = 12, 7
    ens = build_model("sisa", n_users, n_items, {}, {"base_model": "lightgcn", "shards": 3, "seed": 2,
                                                    "embedding_dim": 4})
    users = torch.arange(n_users).repeat_interleave(2)
    items = torch.randint(0, n_items, (2 * n_users,))
    edges = torch.stack([users, items])
    ens.set_graph(edges)
    out = ens()
    scores = out.user @ out.item.T  # (12, 7)
    for k, sub in enumerate(ens.shards):
        sub_out = sub()
        mine = ens.user_shard == k
        torch.testing.assert_close(scores[mine], (sub_out.user @ sub_out.item.T)[mine])
    # a shard's graph holds only its own users' edges: forgetting user 0 changes only that shard
    k0 = int(ens.user_shard[0])
    before = [s().item.detach().clone() for s in ens.shards]
    ens.set_graph(edges[:, edges[0] != 0])
    after = [s().item.detach() for s in ens.shards]
    for k in range(3):
        same = torch.allclose(before[k], after[k])
        assert same != (k == k0)
