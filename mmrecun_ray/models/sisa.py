"""SISA ensemble (Bourtoule et al., S&P 2021) for recommenders: users are partitioned
into ``shards`` disjoint groups by a seeded permutation; sub-model ``k`` (any registered
model) is trained only on the interactions of group ``k``; a user is served by the
sub-model of their own shard.

Aggregation as embeddings: ``item = concat_k(item_k)`` ``(n_items, K*d)`` and
``user[u] = [0, .., user_k(u)[u], .., 0]`` (only the user's block is non-zero), so
``<user[u], item[i]> = <user_k(u)[u], item_k(u)[i]>`` — the ensemble goes through the same
ranking, evaluation and unlearning code as any other model.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mmrecun_ray.models.base import ModelOutput, Recommender


def shard_of_users(n_users: int, shards: int, seed: int) -> np.ndarray:
    """``(n_users,)`` int64 shard id of every user (balanced, seeded)."""
    perm = np.random.default_rng(seed).permutation(n_users)
    out = np.empty(n_users, dtype=np.int64)
    out[perm] = np.arange(n_users) % shards
    return out


class SISA(Recommender):
    """Params: ``base_model`` (registered name), ``shards`` (K), ``seed``, and the base
    model's own params (passed through)."""

    DEFAULTS: dict[str, Any] = {"base_model": "lightgcn", "shards": 4, "seed": 0}

    def __init__(self, n_users: int, n_items: int, features: dict[str, torch.Tensor] | None = None,
                 params: dict[str, Any] | None = None) -> None:
        super().__init__(n_users, n_items, features, params)
        from mmrecun_ray.models import build_model
        p = {**self.DEFAULTS, **self.params}
        self.k = int(p["shards"])
        base = str(p["base_model"])
        sub = {k: v for k, v in p.items() if k not in ("base_model", "shards", "seed")}
        self.shards = nn.ModuleList(build_model(base, n_users, n_items, dict(features or {}), sub)
                                    for _ in range(self.k))
        self.uses_graph = self.shards[0].uses_graph
        self.uses_features = self.shards[0].uses_features
        self.register_buffer("user_shard",
                             torch.from_numpy(shard_of_users(n_users, self.k, int(p["seed"]))),
                             persistent=False)

    def shard_edges(self, train_edges: torch.Tensor, k: int) -> torch.Tensor:
        """``(2, E_k)`` edges of the users in shard ``k``."""
        return train_edges[:, self.user_shard[train_edges[0]] == k]

    def set_graph(self, train_edges: torch.Tensor) -> None:
        for k, m in enumerate(self.shards):
            m.set_graph(self.shard_edges(train_edges, k))

    def set_item_features(self, features: dict[str, torch.Tensor],
                          active_items: torch.Tensor | None = None) -> None:
        for m in self.shards:
            m.set_item_features(features, active_items)

    def forward(self) -> ModelOutput:
        outs = [m() for m in self.shards]
        d = outs[0].user.shape[1]
        item = torch.cat([o.item for o in outs], dim=1)
        user = item.new_zeros(self.n_users, d * self.k)
        for k, o in enumerate(outs):
            rows = self.user_shard == k
            user[rows, k * d:(k + 1) * d] = o.user[rows]
        return ModelOutput(user=user, item=item)
