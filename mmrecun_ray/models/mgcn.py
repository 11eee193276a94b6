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
modality left (all dropped) the side view is zero.

Deviation, measured: raw features are fixed inputs by default; MMRec fine-tunes them
(``train_features=True``). On Last.fm-2K validation Recall@20 (seeds 0, 1; batch 2 x 2048,
patience 20) with the training defaults (lr 2e-3, L2 1e-3) fixed features give
0.4380 / 0.4382 and trained ones 0.4360 / 0.4383, inside the seed noise (with L2 1e-4:
0.4361 / 0.4373 against 0.4386 / 0.4390). Fixed features keep modality unlearning exact:
a forgotten feature is not held in trained parameters or their optimizer state.

Speed (exact, same loss and gradients): a batch of 2048 pairs holds ~1,200 distinct
users and ~750 distinct items on Last.fm-2K, so InfoNCE runs on the distinct rows with
their multiplicities (``(U, U)`` logits instead of ``(B, B)``); the temperature divides the
normalised ``(U, d)`` view rather than the logits; the cross-entropy makes fewer passes
over the logits than autograd's (:func:`info_nce`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from mmrecun_ray.models.base import BatchRows, ModelOutput, Recommender
from mmrecun_ray.models.graph import (ItemFeaturesMixin, SparseOperator, UserItemGraphMixin,
                                      light_propagate, user_item_block, zero_touch)


class _AlignedCrossEntropy(torch.autograd.Function):
    """``sum_r w_r [log sum_c w_c exp<q_r, k_c> - <q_r, k_r>] / sum_r w_r`` for ``(U, d)``
    ``q``, ``k`` and ``(U,)`` multiplicities ``w``: the mean cross-entropy, targets on the
    diagonal, of the ``(B, B)`` logits of a batch in which row/column ``r`` occurs ``w_r``
    times (``B = sum w``), computed on the ``(U, U)`` block of distinct rows only.

    Exact, and in fewer passes over the logits than autograd's log-softmax + NLL: when
    ``max|q| * max|k|`` bounds every logit below 80 (always, for InfoNCE's unit views over a
    temperature above 1/80) ``exp`` cannot overflow and no row maximum is subtracted; the
    backward reuses the saved exponentials.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor,  # type: ignore[override]
                w: torch.Tensor) -> torch.Tensor:
        bound = float(q.norm(dim=1).max() * k.norm(dim=1).max()) if q.numel() else 0.0
        logits = q @ k.T  # (U, U)
        top = None if bound < 80.0 else torch.amax(logits, dim=1, keepdim=True)
        expd = (logits if top is None else logits.sub_(top)).exp_()
        total = expd @ w.unsqueeze(1)  # (U, 1): sum_c w_c exp(.)
        lse = total.log().squeeze(1) + (0.0 if top is None else top.squeeze(1))
        n = w.sum()
        ctx.save_for_backward(q, k, w, expd, total, n)
        return (w * (lse - (q * k).sum(dim=1))).sum() / n

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        q, k, w, expd, total, n = ctx.saved_tensors
        row = w * (grad / n)  # (U,): dL/dloss_r
        # dL/dlogits_rc = row_r * (w_c exp_rc / total_r - [r == c]); a new tensor
        g = expd * (row.unsqueeze(1) / total) * w.unsqueeze(0)
        g.diagonal().sub_(row)
        return g @ k, g.T @ q, None


def info_nce(view1: torch.Tensor, view2: torch.Tensor, temperature: float,
             counts: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE between row-aligned ``(B, d)`` views: row ``b`` of ``view2`` is the positive
    of row ``b`` of ``view1``, all other rows its negatives; cosine similarity / temperature.
    Returns the mean loss (scalar), equal to MMRec's
    ``mean(-log(exp(s_bb / t) / sum_j exp(s_bj / t)))`` and to
    ``cross_entropy(v1 v2^T / t, arange(B))``.

    ``counts`` (``(B,)``): row ``b`` stands for ``counts[b]`` identical rows of the batch
    (the same user or item drawn several times): the result is the InfoNCE of the batch
    with every row repeated that often, at the cost of the distinct rows only.

    The temperature scales the normalised ``(B, d)`` view, not the ``(B, B)`` logits, and
    the cross-entropy is the exact one of :class:`_AlignedCrossEntropy`.
    """
    v1 = F.normalize(view1, dim=1) / temperature
    v2 = F.normalize(view2, dim=1)
    w = (torch.ones(v1.shape[0], device=v1.device, dtype=v1.dtype) if counts is None
         else counts.to(device=v1.device, dtype=v1.dtype))
    return _AlignedCrossEntropy.apply(v1, v2, w)


def batch_info_nce(view1: torch.Tensor, view2: torch.Tensor, ids: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """MMRec's InfoNCE over the batch rows ``view1[ids]`` / ``view2[ids]`` (``ids``: ``(B,)``
    int64, repeats allowed), computed once per distinct id (:func:`info_nce` with counts)."""
    uniq, counts = torch.unique(ids, return_counts=True)
    return info_nce(view1[uniq], view2[uniq], temperature, counts)


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
    def _modality_view(self, m: str, graph: SparseOperator, r: SparseOperator) -> torch.Tensor:
        """``(N, d)`` view of modality ``m``: purified item embeddings propagated over its
        kNN graph, users aggregated through ``r``."""
        feats = self.projection[m](self.item_features(m))
        items = self.item_embedding.weight * self.purifier_gate[m](feats)
        for _ in range(self.n_layers):
            items = graph @ items
        users = r @ items
        return torch.cat([users, items], dim=0)

    def forward(self) -> ModelOutput:
        """Returns ``user (n_users, d)``, ``item (n_items, d)``, ``extras['side'|'content']``."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight], dim=0)
        content = light_propagate(self.propagator, ego, self.n_ui_layers)
        r = self.operator("user_item")
        self.item_graphs  # noqa: B018 - built on first use
        views = {m: self._modality_view(m, self.operator(f"knn.{m}"), r)
                 for m in self.active_modalities}
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
        loss = (batch_info_nce(side[nu:], content[nu:], pos, self.temperature)
                + batch_info_nce(side[:nu], content[:nu], users, self.temperature))
        return self.cl_loss * loss
