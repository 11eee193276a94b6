"""VBPR: Visual Bayesian Personalized Ranking (He & McAuley, AAAI 2016).

Item ``i`` is ``[q_i ; E f_i + b]``: a free id embedding concatenated with a learned
linear projection of its (concatenated) modality features ``f_i``; user ``u`` is
``[p_u ; theta_u]``, two embedding parts stored as one ``(n_users, 2d)`` table. The score
is the dot product of the concatenations, i.e. ``<p_u, q_i> + <theta_u, E f_i + b>``.

Choices (as in MMRec's VBPR): the item/global bias terms and the visual bias
``beta'^T f_i`` are omitted (the score contract is a pure dot product); raw features are
fixed inputs, not trained. The projection of the concatenation is computed as a sum of
per-modality projections ``E f_i = sum_m E_m f_i^m`` (mathematically identical), so a
modality dropped by :meth:`VBPR.set_item_features` simply leaves the sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmrecun_ray.models.base import ModelOutput, Recommender
from mmrecun_ray.models.graph import ItemFeaturesMixin, zero_touch


class VBPR(ItemFeaturesMixin, Recommender):
    """VBPR with any number of modalities; output embeddings have dimension ``2d``.

    Args:
        n_users: number of users.
        n_items: number of items.
        features: modality -> ``(n_items, d_m)`` float tensor (at least one modality).
        embedding_dim: ``d`` (users hold ``2d``: id part and visual-preference part).

    ``set_item_features`` (from :class:`ItemFeaturesMixin`) replaces the features; the
    ``active_items`` mask has no effect here (VBPR has no item-item graph).

    Parameters: ``user_embedding`` ``(n_users, 2d)``, ``item_embedding`` ``(n_items, d)``
    (xavier-uniform), ``projection[m]`` ``Linear(d_m, d, bias=False)`` (xavier-normal) and
    a shared ``projection_bias`` ``(d,)``. Regularisation: the base class's squared L2
    of the final (concatenated) embeddings of the batch.
    """

    uses_features = True

    def __init__(self, n_users: int, n_items: int, features: dict[str, torch.Tensor],
                 embedding_dim: int = 64) -> None:
        super().__init__(n_users, n_items)
        feats = self._init_features(features)
        self.embedding_dim = d = int(embedding_dim)
        self.init_id_embeddings(2 * d, d)
        self.projection = nn.ModuleDict(
            {m: nn.Linear(t.shape[1], d, bias=False) for m, t in feats.items()})
        for lin in self.projection.values():
            nn.init.xavier_normal_(lin.weight)
        self.projection_bias = nn.Parameter(torch.zeros(d))
        self.set_item_features(feats)

    def forward(self) -> ModelOutput:
        """Returns ``user (n_users, 2d)``, ``item (n_items, 2d)``."""
        visual = self.projection_bias.expand(self.n_items, -1)
        for m in self.active_modalities:
            visual = visual + F.linear(self.item_features(m), self.projection[m].weight)
        item = torch.cat([self.item_embedding.weight, visual], dim=1)
        dropped = [self.projection[m].weight for m in self.projection
                   if m not in self.active_modalities]
        user = zero_touch(self.user_embedding.weight, dropped)
        return ModelOutput(user, item)
