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

from typing import Any, Mapping, Self

import numpy as np
import torch
from torch import nn

from mmrecun_ray.models.base import LEGACY_PARAM_KEYS, ModelOutput, Recommender


def shard_of_users(n_users: int, shards: int, seed: int) -> np.ndarray:
    """``(n_users,)`` int64 shard id of every user (balanced, seeded)."""
    perm = np.random.default_rng(seed).permutation(n_users)
    out = np.empty(n_users, dtype=np.int64)
    out[perm] = np.arange(n_users) % shards
    return out


class SISA(Recommender):
    """SISA ensemble of ``shards`` copies of one registered model.

    Args:
        n_users: number of users.
        n_items: number of items.
        features: modality -> ``(n_items, d_m)`` (passed to every sub-model).
        base_model: registered name of the sub-model.
        shards: ``K``.
        seed: seed of the user partition.
        base_params: the sub-model's own parameters (checked by its ``from_params``).

    :attr:`params` is flat, ``{base_model, shards, seed, **base_params}``, and
    :meth:`from_params` takes the same flat mapping: keys that are not SISA's own go to the
    sub-model.
    """

    def __init__(self, n_users: int, n_items: int, features: dict[str, torch.Tensor] | None = None,
                 base_model: str = "lightgcn", shards: int = 4, seed: int = 0,
                 base_params: dict[str, Any] | None = None) -> None:
        super().__init__(n_users, n_items)
        from mmrecun_ray.models import build_model
        self.base_model = str(base_model)
        self.k = int(shards)
        self.seed = int(seed)
        self.shards = nn.ModuleList(
            build_model(self.base_model, n_users, n_items, dict(features or {}), base_params)
            for _ in range(self.k))
        self.base_params = self.shards[0].params
        self.uses_graph = self.shards[0].uses_graph
        self.uses_features = self.shards[0].uses_features
        self.register_buffer("user_shard",
                             torch.from_numpy(shard_of_users(n_users, self.k, self.seed)),
                             persistent=False)

    @classmethod
    def from_params(cls, n_users: int, n_items: int,
                    features: Mapping[str, torch.Tensor] | None = None,
                    params: Mapping[str, Any] | None = None) -> Self:
        """Flat params: ``base_model``, ``shards``, ``seed``; the rest are the sub-model's
        (unknown keys are refused by the sub-model's :meth:`from_params`)."""
        own = {"base_model", "shards", "seed"}
        p = dict(params or {})
        sub = {k: v for k, v in p.items() if k not in own and k != "base_params"}
        sub.update(p.get("base_params") or {})
        kwargs = cls.check_params({k: v for k, v in p.items() if k in own})
        return cls(n_users, n_items, dict(features or {}), base_params=sub, **kwargs)

    @classmethod
    def param_signature(cls):  # type: ignore[override]
        """SISA's own parameters (``base_params`` is flattened into :attr:`params`)."""
        sig = super().param_signature()
        return {k: v for k, v in sig.items() if k != "base_params"}

    @property
    def params(self) -> dict[str, Any]:
        """``{base_model, shards, seed, **sub-model params}`` (JSON-able, flat)."""
        sub = {k: v for k, v in self.base_params.items() if k not in LEGACY_PARAM_KEYS}
        return {**sub, "base_model": self.base_model, "shards": self.k, "seed": self.seed}

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

    def on_epoch_start(self, epoch: int, seed: int) -> None:
        for k, m in enumerate(self.shards):
            m.on_epoch_start(epoch, seed * 1000 + k)

    def forward(self) -> ModelOutput:
        outs = [m() for m in self.shards]
        d = outs[0].user.shape[1]
        item = torch.cat([o.item for o in outs], dim=1)
        user = item.new_zeros(self.n_users, d * self.k)
        for k, o in enumerate(outs):
            rows = self.user_shard == k
            user[rows, k * d:(k + 1) * d] = o.user[rows]
        return ModelOutput(user=user, item=item)
