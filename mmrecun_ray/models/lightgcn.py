"""LightGCN (He et al., SIGIR 2020): linear propagation over the normalised user-item graph.

``E^(l+1) = D^-1/2 A D^-1/2 E^(l)``; the final embedding is the mean of layers
``0..L``. As in the paper (and MMRec), the L2 penalty is on the layer-0 (ego) embeddings.
"""

from __future__ import annotations

import torch

from mmrecun_ray.models.base import BatchRows, ModelOutput, Recommender
from mmrecun_ray.models.graph import UserItemGraphMixin, light_propagate


class LightGCN(UserItemGraphMixin, Recommender):
    """LightGCN.

    Args:
        n_users: number of users.
        n_items: number of items.
        embedding_dim: ``d``.
        n_layers: propagation layers (default 2, as the ``n_ui_layers`` of FREEDOM/MGCN,
            so graph depth is comparable across models; the paper's best is 3).

    Parameters: ``user_embedding`` ``(n_users, d)``, ``item_embedding`` ``(n_items, d)``,
    xavier-uniform. Call :meth:`set_graph` before :meth:`forward`.
    """

    uses_graph = True

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 64,
                 n_layers: int = 2) -> None:
        super().__init__(n_users, n_items)
        self.embedding_dim = int(embedding_dim)
        self.n_layers = int(n_layers)
        self.init_id_embeddings(self.embedding_dim)

    def forward(self) -> ModelOutput:
        """Returns ``user (n_users, d)``, ``item (n_items, d)`` after propagation."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        final = light_propagate(self.propagator, ego, self.n_layers)
        user, item = torch.split(final, [self.n_users, self.n_items], dim=0)
        return ModelOutput(user, item)

    def regularization(self, out: ModelOutput, users: torch.Tensor, pos: torch.Tensor,
                       neg: torch.Tensor, rows: BatchRows | None = None) -> torch.Tensor:
        """Squared L2 of the batch's ego embeddings, ``/ (2B)`` (scalar)."""
        return self.ego_regularization(users, pos, neg)
