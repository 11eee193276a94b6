"""FREEDOM (Zhou & Shen, ACM MM 2023): "A Tale of Two Graphs: Freezing and Denoising Graph
Structures for Multimodal Recommendation".

Definitions (matching MMRec's reference implementation):

- Frozen item-item graph ``S = sum_m w_m S_m``: ``S_m`` is the unweighted cosine kNN graph
  of modality ``m`` (``knn_k`` neighbours, self included), normalised
  ``1/sqrt(d_i d_j)`` by row degree; built once from the features, never trained.
  Weights: ``mm_image_weight`` for a modality named ``image``, the rest shared equally
  (or ``modality_weights`` explicitly), see :func:`graph.modality_weights`.
- Item-side multimodal embedding ``h = S^L_mm q`` over the item id embeddings ``q``.
- Denoised user-item graph: in training mode each forward keeps ``(1 - dropout)`` of the
  edges, drawn without replacement with probability ``~ 1/sqrt(d_u d_i)``
  (degree-sensitive pruning), re-normalised; evaluation mode uses the full graph.
- LightGCN propagation (``n_ui_layers``, mean of layers) over user/item id embeddings;
  final item embedding = propagated + ``h``.
- Modality projections ``f_m = Linear(d_m, d)(features_m)`` with auxiliary BPR losses
  ``mm_loss_weight * sum_m BPR(u, f_m[pos], f_m[neg])`` using the final user embeddings
  (the paper's lambda; MMRec's config calls it ``reg_weight``, renamed here because the
  training loop owns ``reg_weight`` for the L2 term).
- L2: MMRec's FREEDOM has none, so ``reg_weight`` defaults to 0; when set, the penalty is
  on the batch's ego (id) embeddings, as for LightGCN.

Deviations, stated: the pruned graph is re-drawn at every training forward (MMRec draws it
once per epoch; the contract has no epoch hook), and raw features are fixed inputs (MMRec
fine-tunes them as embedding tables; freezing keeps feature unlearning exact).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmrecun_ray.models.base import ModelOutput, Recommender
from mmrecun_ray.models.graph import (ItemFeaturesMixin, UserItemGraphMixin,
                                      combine_sparse, degree_sensitive_prune, edge_norm_values,
                                      light_propagate, modality_weights, sparse_matrix,
                                      zero_touch)


class FREEDOM(UserItemGraphMixin, ItemFeaturesMixin, Recommender):
    """FREEDOM over any number of modalities.

    Parameters: ``user_embedding`` ``(n_users, d)``, ``item_embedding`` ``(n_items, d)``
    (xavier-uniform), ``projection[m]`` ``Linear(d_m, d)``. The projections get their
    gradient from :meth:`auxiliary_loss` (the training loss must include it). Output
    ``extras``: ``modal.<m>`` ``(n_items, d)`` projected features of each active modality.
    """

    uses_graph = True
    uses_features = True
    DEFAULTS: ClassVar[dict[str, Any]] = {
        "embedding_dim": 64,
        "learning_rate": 1e-3,
        "reg_weight": 0.0,  # L2 on ego embeddings: none in the paper / MMRec
        "mm_loss_weight": 1e-4,  # paper's lambda on the modality BPR losses
        "knn_k": 10,
        "n_mm_layers": 1,
        "n_ui_layers": 2,
        "mm_image_weight": 0.1,
        "modality_weights": None,  # optional explicit modality -> weight
        "dropout": 0.8,  # fraction of user-item edges pruned per training forward
    }

    def __init__(self, n_users: int, n_items: int, features: dict[str, torch.Tensor] | None = None,
                 params: dict[str, Any] | None = None) -> None:
        super().__init__(n_users, n_items, features, params)
        self.params = {**self.DEFAULTS, **self.params}
        feats = self._init_features(features)
        d = int(self.params["embedding_dim"])
        self.knn_k = int(self.params["knn_k"])
        self.n_mm_layers = int(self.params["n_mm_layers"])
        self.n_ui_layers = int(self.params["n_ui_layers"])
        self.dropout = float(self.params["dropout"])
        self.mm_loss_weight = float(self.params["mm_loss_weight"])
        self.init_id_embeddings(d)
        self.projection = nn.ModuleDict({m: nn.Linear(t.shape[1], d) for m, t in feats.items()})
        self.set_item_features(feats)

    # -- graphs ------------------------------------------------------------------------
    def set_graph(self, train_edges: torch.Tensor) -> None:
        """Full normalised graph plus the per-edge pruning probabilities ``(E,)``."""
        super().set_graph(train_edges)
        store = self.derived()
        store["edge_probs"] = self.place(
            edge_norm_values(store["edges"], self.n_users, self.n_items))

    @property
    def item_graph(self) -> torch.Tensor:
        """``(n_items, n_items)`` sparse frozen multimodal item-item graph (built lazily)."""
        store = self.derived()
        if "item_graph" not in store:
            names = list(self.active_modalities)
            weights = modality_weights(names, float(self.params["mm_image_weight"]),
                                       self.params.get("modality_weights"))
            if names:
                mats = {m: self.knn_graph(m, self.knn_k, weighted=False) for m in names}
                store["item_graph"] = combine_sparse(mats, weights)
            else:
                empty = torch.zeros((2, 0), dtype=torch.long, device=self.model_device())
                store["item_graph"] = sparse_matrix(
                    empty, torch.zeros(0, device=self.model_device(), dtype=self.model_dtype()),
                    (self.n_items, self.n_items))
        return store["item_graph"]

    def pruned_adjacency(self) -> torch.Tensor:
        """``(N, N)`` normalised adjacency of a fresh degree-sensitive sample of the
        installed edges (the full graph when ``dropout <= 0``)."""
        adj = self.adjacency  # raises a clear error before set_graph
        if self.dropout <= 0.0:
            return adj
        store = self.derived()
        return self.place(degree_sensitive_prune(store["edges"], store["edge_probs"],
                                                 1.0 - self.dropout, self.n_users, self.n_items))

    # -- forward and losses ------------------------------------------------------------
    def forward(self) -> ModelOutput:
        """Returns ``user (n_users, d)``, ``item (n_items, d)`` and ``extras['modal.<m>']``."""
        adj = self.pruned_adjacency() if self.training else self.adjacency
        h = self.item_embedding.weight
        graph = self.item_graph
        for _ in range(self.n_mm_layers):
            h = torch.sparse.mm(graph, h)
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        final = light_propagate(adj, ego, self.n_ui_layers)
        user, item = torch.split(final, [self.n_users, self.n_items], dim=0)
        extras = {f"modal.{m}": self.projection[m](self.item_features(m))
                  for m in self.active_modalities}
        dropped = [p for m in self.projection if m not in self.active_modalities
                   for p in self.projection[m].parameters()]
        return ModelOutput(zero_touch(user, dropped), item + h, extras)

    def auxiliary_loss(self, out: ModelOutput, users: torch.Tensor, pos: torch.Tensor,
                       neg: torch.Tensor) -> torch.Tensor:
        """``mm_loss_weight * sum_m mean softplus(<u, f_m[neg]> - <u, f_m[pos]>)`` (scalar)."""
        u = out.user[users]
        loss = out.user.new_zeros(())
        for key, f in out.extras.items():
            if key.startswith("modal."):
                diff = (u * f[neg]).sum(-1) - (u * f[pos]).sum(-1)
                loss = loss + F.softplus(diff).mean()
        return self.mm_loss_weight * loss

    def regularization(self, out: ModelOutput, users: torch.Tensor, pos: torch.Tensor,
                       neg: torch.Tensor) -> torch.Tensor:
        """Squared L2 of the batch's ego embeddings, ``/ (2B)`` (scalar); the default
        ``reg_weight`` of 0 switches it off, as in the paper."""
        b = max(int(users.numel()), 1)
        return (self.user_embedding(users).pow(2).sum() + self.item_embedding(pos).pow(2).sum()
                + self.item_embedding(neg).pow(2).sum()) / (2 * b)
