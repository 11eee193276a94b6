"""BPR-MF: matrix factorisation trained with the BPR objective (Rendle et al., 2009)."""

from __future__ import annotations

from mmrecun_ray.models.base import ModelOutput, Recommender


class MF(Recommender):
    """Free user and item embeddings; ``s(u, i) = <p_u, q_i>``.

    Args:
        n_users: number of users.
        n_items: number of items.
        embedding_dim: ``d``.

    Parameters: ``user_embedding`` ``(n_users, d)`` and ``item_embedding`` ``(n_items, d)``,
    xavier-uniform initialised. Regularisation is the base class's squared L2 of the
    batch's embeddings (final = ego here).
    """

    def __init__(self, n_users: int, n_items: int, embedding_dim: int = 64) -> None:
        super().__init__(n_users, n_items)
        self.embedding_dim = int(embedding_dim)
        self.init_id_embeddings(self.embedding_dim)

    def forward(self) -> ModelOutput:
        """Returns ``ModelOutput(user=(n_users, d), item=(n_items, d))``."""
        return ModelOutput(self.user_embedding.weight, self.item_embedding.weight)
