"""BPR-MF: matrix factorisation trained with the BPR objective (Rendle et al., 2009)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from mmrecun_ray.models.base import ModelOutput, Recommender


class MF(Recommender):
    """Free user and item embeddings; ``s(u, i) = <p_u, q_i>``.

    Parameters: ``user_embedding`` ``(n_users, d)`` and ``item_embedding`` ``(n_items, d)``,
    xavier-uniform initialised. Regularisation is the base class's squared L2 of the
    batch's embeddings (final = ego here).
    """

    DEFAULTS: ClassVar[dict[str, Any]] = {
        "embedding_dim": 64,
        "learning_rate": 1e-3,
        "reg_weight": 1e-4,
    }

    def __init__(self, n_users: int, n_items: int, features: dict[str, torch.Tensor] | None = None,
                 params: dict[str, Any] | None = None) -> None:
        super().__init__(n_users, n_items, features, params)
        self.params = {**self.DEFAULTS, **self.params}
        d = int(self.params["embedding_dim"])
        self.init_id_embeddings(d)

    def forward(self) -> ModelOutput:
        """Returns ``ModelOutput(user=(n_users, d), item=(n_items, d))``."""
        return ModelOutput(self.user_embedding.weight, self.item_embedding.weight)
