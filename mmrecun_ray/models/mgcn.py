"""MGCN (Yu et al., ACM MM 2023): "Multi-View Graph Convolutional Network for Multimedia
Recommendation".

Definitions (matching MMRec's reference implementation), for every modality ``m``:

- Behaviour-guided purifier: ``x_m = q * sigmoid(W_g^m f_m + b)`` with ``f_m =
  Linear(d_m, d)(features_m)`` and ``q`` the item id embeddings.
- Item-item view: ``n_layers`` propagations of ``x_m`` over the modality's weighted
  cosine kNN graph (``knn_k`` neighbours, weights = similarity, ``1/sqrt(d_i d_j)``
  row-degree normalisation); users aggregate items through the normalised user-item block
  ``R``: view ``V_m = [R x_m ; x_m]`` ``(N, d)``.
- User-item view: LightGCN propagation (``n_ui_layers``, mean of layers) of the id
  embeddings: ``C`` ``(N, d)``.
- Behaviour-aware fuser: attention ``a = softmax_m(w^T tanh(W V_m + b))`` gives the common
  part ``P = sum_m a_m V_m``; specific parts ``sigmoid(W_p^m C + b) * (V_m - P)``; side
  ``S = (sum_m specific_m + P) / (M + 1)``; final ``C + S``.
- Self-supervised auxiliary loss: ``cl_loss * (InfoNCE(S_items[pos], C_items[pos]) +
  InfoNCE(S_users[u], C_users[u]))`` with temperature ``temperature`` (0.2 in MMRec).
- L2: the base class's squared norm of the final batch embeddings (as MMRec).

With one modality the fuser's attention is 1 and only the common part remains; with no
modality left (all dropped) the side view is zero. Raw features are fixed inputs (MMRec
fine-tunes them: ``train_features=True``; fixed by default, which keeps feature
unlearning exact).

Speed: the InfoNCE temperature divides the normalised ``(B, d)`` view rather than the
``(B, B)`` logits, and the cross-entropy is a fused exact one that keeps a single softmax
for its backward (:func:`info_nce`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from mmrecun_ray.models.base import BatchRows, ModelOutput, Recommender
from mmrecun_ray.models.graph import (ItemFeaturesMixin, UserItemGraphMixin, light_propagate,
                                      user_item_block, zero_touch)


class _AlignedCrossEntropy(torch.autograd.Function):
    """``mean_b [logsumexp_j <q_b, k_j> - <q_b, k_b>]`` for ``(B, d)`` ``q``, ``k``: the
    cross-entropy of the ``(B, B)`` logits ``q k^T`` with targets on the diagonal, with one
    softmax pass kept for the backward (``dL/dlogits = (softmax - I) / B``) instead of
    autograd's log-softmax output, NLL gradient fill and log-softmax backward."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        logits = q @ k.T  # (B, B)
        top = logits.max(dim=1, keepdim=True).values
        prob = logits.sub_(top).exp_()
        total = prob.sum(dim=1, keepdim=True)
        lse = total.log().add_(top).squeeze(1)
        prob.div_(total)  # softmax, saved for the backward
        ctx.save_for_backward(q, k, prob)
        return (lse - (q * k).sum(dim=1)).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        q, k, prob = ctx.saved_tensors
        scale = grad / q.shape[0]
        g = prob * scale  # a new tensor: the saved softmax stays intact (retain_graph)
        g.diagonal().sub_(scale)
        return g @ k, g.T @ q


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE between row-aligned ``(B, d)`` views: row ``b`` of ``view2`` is the positive
    of row ``b`` of ``view1``, all other rows its negatives; cosine similarity / temperature.
    Returns the mean loss (scalar), equal to MMRec's
    ``mean(-log(exp(s_bb / t) / sum_j exp(s_bj / t)))`` and to
    ``cross_entropy(v1 v2^T / t, arange(B))``.

    The temperature scales the normalised ``(B, d)`` view, not the ``(B, B)`` logits, and
    the cross-entropy is the fused exact one of :class:`_AlignedCrossEntropy`.
    """
    v1 = F.normalize(view1, dim=1) / temperature
    v2 = F.normalize(view2, dim=1)
    return _AlignedCrossEntropy.apply(v1, v2)


class MGCN(UserItemGraphMixin, ItemFeaturesMixin, Recommender):
    """MGCN over any number of modalities.

    Args:
        n_users: number of users.
        n_items: number of items.
        features: modality -> ``(n_items, d_m)`` float tensor (at least one modality).
        embedding_dim: ``d``.
        knn_k: neighbours per item in each modality's weighted kNN graph.
        n_layers: propagations over the item-item graphs.
        n_ui_layers: LightGCN layers over the user-item graph.
        cl_loss: weight of the contrastive (InfoNCE) auxiliary loss.
        temperature: InfoNCE temperature (0.2 in MMRec).
        train_features: train the raw features too (MMRec fine-tunes them), or keep them
            fixed (default: fixed, so feature unlearning is exact).

    Parameters: ``user_embedding``, ``item_embedding`` (xavier-uniform); per modality
    ``projection[m]`` ``Linear(d_m, d)``, ``purifier_gate[m]`` and ``preference_gate[m]``
    (``Linear(d, d)`` + sigmoid); shared ``attention_query`` (``Linear(d, d)``, tanh,
    ``Linear(d, 1, bias=False)``); with ``train_features`` ``raw_features[m]``. Output
    ``extras``: ``side`` and ``content``, ``(N, d)`` with ``N = n_users + n_items`` (users
    first).
    """

    uses_graph = True
    uses_features = True

    def __init__(self, n_users: int, n_items: int, features: dict[str, torch.Tensor],
                 embedding_dim: int = 64, knn_k: int = 10, n_layers: int = 1,
                 n_ui_layers: int = 2, cl_loss: float = 0.01, temperature: float = 0.2,
                 train_features: bool = False) -> None:
        super().__init__(n_users, n_items)
        feats = self._init_features(features, train_features)
        self.embedding_dim = d = int(embedding_dim)
        self.knn_k = int(knn_k)
        self.n_layers = int(n_layers)
        self.n_ui_layers = int(n_ui_layers)
        self.cl_loss = float(cl_loss)
        self.temperature = float(temperature)
        self.init_id_embeddings(d)
        self.projection = nn.ModuleDict({m: nn.Linear(t.shape[1], d) for m, t in feats.items()})
        self.purifier_gate = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in feats})
        self.preference_gate = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, d), nn.Sigmoid()) for m in feats})
        self.attention_query = nn.Sequential(nn.Linear(d, d), nn.Tanh(),
                                             nn.Linear(d, 1, bias=False))
        self.set_item_features(feats)

    # -- graphs ------------------------------------------------------------------------
    def set_graph(self, train_edges: torch.Tensor) -> None:
        """Normalised adjacency plus its ``(n_users, n_items)`` user-item block ``R``."""
        super().set_graph(train_edges)
        store = self.derived()
        store["user_item"] = self.place(
            user_item_block(store["edges"], self.n_users, self.n_items))

    @property
    def item_graphs(self) -> dict[str, torch.Tensor]:
        """Active modality -> ``(n_items, n_items)`` sparse weighted kNN graph (lazy)."""
        return {m: self.knn_graph(m, self.knn_k, weighted=True) for m in self.active_modalities}

    # -- forward and losses ------------------------------------------------------------
    def _modality_view(self, m: str, graph: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """``(N, d)`` view of modality ``m``: purified item embeddings propagated over its
        kNN graph, users aggregated through ``r``."""
        feats = self.projection[m](self.item_features(m))
        items = self.item_embedding.weight * self.purifier_gate[m](feats)
        for _ in range(self.n_layers):
            items = torch.sparse.mm(graph, items)
        users = torch.sparse.mm(r, items)
        return torch.cat([users, items], dim=0)

    def forward(self) -> ModelOutput:
        """Returns ``user (n_users, d)``, ``item (n_items, d)``, ``extras['side'|'content']``."""
        adj = self.adjacency
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        content = light_propagate(adj, ego, self.n_ui_layers)
        r = self.derived()["user_item"]
        graphs = self.item_graphs
        views = {m: self._modality_view(m, graphs[m], r) for m in self.active_modalities}
        if views:
            stacked = torch.stack(list(views.values()), dim=1)  # (N, M, d)
            attn = torch.softmax(self.attention_query(stacked).squeeze(-1), dim=1)  # (N, M)
            common = (attn.unsqueeze(-1) * stacked).sum(dim=1)
            side = common
            for m, view in views.items():
                side = side + self.preference_gate[m](content) * (view - common)
            side = side / (len(views) + 1)
        else:
            side = torch.zeros_like(content)
        final = content + side
        unused = [p for name in ("projection", "purifier_gate", "preference_gate")
                  for m, mod in getattr(self, name).items() if m not in views
                  for p in mod.parameters()] + self.dropped_feature_params()
        if not views:
            unused += list(self.attention_query.parameters())
        final = zero_touch(final, unused)
        user, item = torch.split(final, [self.n_users, self.n_items], dim=0)
        return ModelOutput(user, item, {"side": side, "content": content})

    def auxiliary_loss(self, out: ModelOutput, users: torch.Tensor, pos: torch.Tensor,
                       neg: torch.Tensor, rows: BatchRows | None = None) -> torch.Tensor:
        """``cl_loss * (InfoNCE(side_i[pos], content_i[pos]) + InfoNCE(side_u[users],
        content_u[users]))`` (scalar)."""
        side, content = out.extras["side"], out.extras["content"]
        nu = self.n_users
        loss = (info_nce(side[nu:][pos], content[nu:][pos], self.temperature)
                + info_nce(side[:nu][users], content[:nu][users], self.temperature))
        return self.cl_loss * loss
