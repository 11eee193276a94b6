"""FREEDOM (Zhou & Shen, ACM MM 2023): "A Tale of Two Graphs: Freezing and Denoising Graph
Structures for Multimodal Recommendation".

Definitions (matching MMRec's reference implementation):

- Frozen item-item graph ``S = sum_m w_m S_m``: ``S_m`` is the unweighted cosine kNN graph
  of modality ``m`` (``knn_k`` neighbours, self included), normalised
  ``1/sqrt(d_i d_j)`` by row degree; built once from the features, never trained.
  Weights as MMRec's ``mm_image_weight * S_v + (1 - mm_image_weight) * S_t``: MMRec has
  two feature slots, vision (``v_feat``) and text (``t_feat``); ``image_modality`` names
  the modality in the vision slot (default: ``image`` if present, else the first
  non-``text`` modality, e.g. ``audio`` on Last.fm-2K, whose text is in the text slot), it
  gets ``mm_image_weight`` and the rest share ``1 - mm_image_weight``
  (see :func:`graph.modality_weights`; ``modality_weights`` overrides explicitly).
- Item-side multimodal embedding ``h = S^L_mm q`` over the item id embeddings ``q``.
- Denoised user-item graph, drawn once per epoch (MMRec's ``pre_epoch_processing``) in
  :meth:`FREEDOM.on_epoch_start`: keep ``(1 - dropout)`` of the edges, drawn without
  replacement with probability ``~ 1/sqrt(d_u d_i)`` (degree-sensitive pruning),
  re-normalised; the draw is seeded by ``(seed, epoch)`` so every DDP rank holds the same
  graph. Evaluation mode uses the full graph.
- LightGCN propagation (``n_ui_layers``, mean of layers) over user/item id embeddings;
  final item embedding = propagated + ``h``.
- Modality projections ``f_m = Linear(d_m, d)(x_m)`` with auxiliary BPR losses
  ``mm_loss_weight * sum_m BPR(u, f_m[pos], f_m[neg])`` using the final user embeddings
  (the paper's lambda; MMRec's config calls it ``reg_weight``, renamed here because the
  training loop owns ``reg_weight`` for the L2 term).
- Raw features ``x_m``: with ``train_features`` they are trained parameters initialised
  from the features (MMRec: ``nn.Embedding.from_pretrained(feat, freeze=False)``),
  otherwise fixed inputs. The kNN graph is built from the original features either way.
- L2: MMRec's FREEDOM has none (the training default ``reg_weight`` is 0); when set, the
  penalty is on the batch's ego (id) embeddings, as for LightGCN.

Defaults, measured on Last.fm-2K (lr 0.005, batch 2 x 2048, patience 20, seeds 0/1/2):

- ``dropout`` 0.9: MMRec's FREEDOM config searches ``dropout`` in {0.8, 0.9}; validation
  Recall@20 0.4268 / 0.4209 / 0.4178 (mean 0.4218) against 0.4196 / 0.4214 / 0.4141
  (0.4184) for 0.8.
- ``train_features`` False, a deviation from MMRec: training the raw features changed
  validation Recall@20 by 0.0000 and 0.0000 (seeds 0, 1; test by 0.0000 and -0.0001),
  far inside the seed spread (0.0073), at 1.9x the step time. The raw features reach the
  ranking only through the frozen kNN graph and the ``mm_loss_weight`` (1e-4) BPR terms
  on the user embeddings, so fine-tuning them barely moves anything; frozen features keep
  modality unlearning exact (a forgotten feature is gone, not still inside trained
  parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmrecun_ray.errors import ConfigError
from mmrecun_ray.models.base import BatchRows, ModelOutput, Recommender
from mmrecun_ray.models.graph import (ItemFeaturesMixin, UserItemGraphMixin,
                                      combine_sparse, degree_sensitive_prune, derive_seed,
                                      edge_norm_values, light_propagate, modality_weights,
                                      sparse_matrix, vision_slot_modality, zero_touch)


class FREEDOM(UserItemGraphMixin, ItemFeaturesMixin, Recommender):
    """FREEDOM over any number of modalities.

    Args:
        n_users: number of users.
        n_items: number of items.
        features: modality -> ``(n_items, d_m)`` float tensor (at least one modality).
        embedding_dim: ``d`` of the id embeddings and of the modality projections.
        mm_loss_weight: weight of the per-modality BPR losses (paper's lambda).
        knn_k: neighbours per item in each modality's kNN graph.
        n_mm_layers: propagations over the item-item graph.
        n_ui_layers: LightGCN layers over the (pruned) user-item graph.
        mm_image_weight: weight of the vision-slot modality's kNN graph.
        image_modality: the modality in MMRec's vision slot (``None``: resolved from the
            features by :func:`graph.vision_slot_modality`; stored resolved).
        modality_weights: optional explicit modality -> weight (wins over the two above).
        dropout: fraction of user-item edges pruned in each epoch's training graph.
        train_features: train the raw features too (MMRec), or keep them fixed (default,
            see the module notes).

    Parameters: ``user_embedding`` ``(n_users, d)``, ``item_embedding`` ``(n_items, d)``
    (xavier-uniform), ``projection[m]`` ``Linear(d_m, d)``, and with ``train_features``
    ``raw_features[m]`` ``(n_items, d_m)``. The projections get their gradient from
    :meth:`auxiliary_loss` (the training loss must include it). Output ``extras`` (training
    mode): ``modal.<m>`` ``(n_items, d)`` projected features of each active modality.
    """

    uses_graph = True
    uses_features = True

    def __init__(self, n_users: int, n_items: int, features: dict[str, torch.Tensor],
                 embedding_dim: int = 64, mm_loss_weight: float = 1e-4, knn_k: int = 10,
                 n_mm_layers: int = 1, n_ui_layers: int = 2, mm_image_weight: float = 0.1,
                 image_modality: str | None = None,
                 modality_weights: dict[str, float] | None = None, dropout: float = 0.9,
                 train_features: bool = False) -> None:
        super().__init__(n_users, n_items)
        feats = self._init_features(features, train_features)
        self.embedding_dim = int(embedding_dim)
        self.mm_loss_weight = float(mm_loss_weight)
        self.knn_k = int(knn_k)
        self.n_mm_layers = int(n_mm_layers)
        self.n_ui_layers = int(n_ui_layers)
        self.mm_image_weight = float(mm_image_weight)
        if image_modality is not None and image_modality not in feats:
            raise ConfigError(f"freedom parameter image_modality={image_modality!r} is not a "
                              f"modality of the features (known: {', '.join(feats)})")
        self.image_modality = image_modality or vision_slot_modality(feats)
        self.modality_weights = (None if modality_weights is None
                                 else {str(k): float(v) for k, v in modality_weights.items()})
        self.dropout = float(dropout)
        self._epoch_key = (0, 0)
        d = self.embedding_dim
        self.init_id_embeddings(d)
        self.projection = nn.ModuleDict({m: nn.Linear(t.shape[1], d) for m, t in feats.items()})
        self.set_item_features(feats)

    # -- graphs ------------------------------------------------------------------------
    def set_graph(self, train_edges: torch.Tensor) -> None:
        """Full normalised graph plus the per-edge pruning probabilities ``(E,)``; the
        epoch's pruned graph is re-drawn from the new edges on next use."""
        super().set_graph(train_edges)
        store = self.derived()
        store["edge_probs"] = self.place(
            edge_norm_values(store["edges"], self.n_users, self.n_items))
        store.pop("epoch_adj", None)

    @property
    def item_graph(self) -> torch.Tensor:
        """``(n_items, n_items)`` sparse frozen multimodal item-item graph (built lazily)."""
        store = self.derived()
        if "item_graph" not in store:
            names = list(self.active_modalities)
            weights = modality_weights(names, self.mm_image_weight, self.modality_weights,
                                       self.image_modality)
            if names:
                mats = {m: self.knn_graph(m, self.knn_k, weighted=False) for m in names}
                store["item_graph"] = combine_sparse(mats, weights)
            else:
                empty = torch.zeros((2, 0), dtype=torch.long, device=self.model_device())
                store["item_graph"] = sparse_matrix(
                    empty, torch.zeros(0, device=self.model_device(), dtype=self.model_dtype()),
                    (self.n_items, self.n_items))
        return store["item_graph"]

    def on_epoch_start(self, epoch: int, seed: int) -> None:
        """Draw this epoch's degree-pruned user-item graph from ``(seed, epoch)`` (the same
        on every rank and device for the same arguments)."""
        self._epoch_key = (int(seed), int(epoch))
        self.derived().pop("epoch_adj", None)
        if "adj" in self.derived():
            self.epoch_adjacency()

    def epoch_adjacency(self) -> torch.Tensor:
        """``(N, N)`` normalised adjacency of the current epoch's degree-sensitive sample of
        the installed edges (drawn on first use from the last :meth:`on_epoch_start`
        arguments, ``(0, 0)`` if it was never called); the full graph when
        ``dropout <= 0``."""
        adj = self.adjacency  # raises a clear error before set_graph
        if self.dropout <= 0.0:
            return adj
        store = self.derived()
        if "epoch_adj" not in store:
            gen = torch.Generator().manual_seed(derive_seed(*self._epoch_key))
            store["epoch_adj"] = self.place(degree_sensitive_prune(
                store["edges"], store["edge_probs"], 1.0 - self.dropout, self.n_users,
                self.n_items, generator=gen))
        return store["epoch_adj"]

    # -- forward and losses ------------------------------------------------------------
    def forward(self) -> ModelOutput:
        """Returns ``user (n_users, d)``, ``item (n_items, d)`` and, in training mode,
        ``extras['modal.<m>']``."""
        if self.training and self.dropout > 0.0:
            self.epoch_adjacency()
            adj = self.operator("epoch_adj")
        else:
            adj = self.propagator
        h = self.item_embedding.weight
        self.item_graph  # noqa: B018 - built on first use
        graph = self.operator("item_graph")
        for _ in range(self.n_mm_layers):
            h = graph @ h
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        final = light_propagate(adj, ego, self.n_ui_layers)
        user, item = torch.split(final, [self.n_users, self.n_items], dim=0)
        if not self.training:
            return ModelOutput(user, item + h)
        extras = {f"modal.{m}": self.projection[m](self.item_features(m))
                  for m in self.active_modalities}
        dropped = [p for m in self.projection if m not in self.active_modalities
                   for p in self.projection[m].parameters()] + self.dropped_feature_params()
        return ModelOutput(zero_touch(user, dropped), item + h, extras)

    def auxiliary_loss(self, out: ModelOutput, users: torch.Tensor, pos: torch.Tensor,
                       neg: torch.Tensor, rows: BatchRows | None = None) -> torch.Tensor:
        """``mm_loss_weight * sum_m mean softplus(<u, f_m[neg]> - <u, f_m[pos]>)`` (scalar)."""
        u = rows.user if rows is not None else out.user[users]
        loss = out.user.new_zeros(())
        for key, f in out.extras.items():
            if key.startswith("modal."):
                diff = (u * f[neg]).sum(-1) - (u * f[pos]).sum(-1)
                loss = loss + F.softplus(diff).mean()
        return self.mm_loss_weight * loss

    def regularization(self, out: ModelOutput, users: torch.Tensor, pos: torch.Tensor,
                       neg: torch.Tensor, rows: BatchRows | None = None) -> torch.Tensor:
        """Squared L2 of the batch's ego embeddings, ``/ (2B)`` (scalar); the training
        default ``reg_weight`` of 0 switches it off, as in the paper."""
        return self.ego_regularization(users, pos, neg)
