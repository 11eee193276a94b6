"""The contract every recommender implements.

Models are plain ``torch.nn.Module`` objects that know nothing of Ray. The score of a
(user, item) pair is always the dot product of the final user and item embeddings, so
training objectives, evaluation and unlearning work on :class:`ModelOutput` alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class ModelOutput:
    """Final embeddings for the current training graph.

    Attributes:
        user: ``(n_users, d)`` float tensor.
        item: ``(n_items, d)`` float tensor.
        extras: model-specific intermediate tensors needed by :meth:`Recommender.auxiliary_loss`
            (e.g. per-modality embeddings); empty for models without auxiliary losses.
    """

    user: torch.Tensor
    item: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class Recommender(nn.Module):
    """Base class.

    Args:
        n_users: number of users (ids ``0..n_users-1``).
        n_items: number of items (ids ``0..n_items-1``).
        features: modality name -> ``(n_items, d_m)`` float32 tensor (may be empty).
        params: model hyper-parameters (``embedding_dim``, ``n_layers``, ``knn_k``, ...);
            unknown keys are ignored, missing keys take the model's defaults.

    Life cycle: ``model = build_model(name, ...)``; ``model.set_graph(train_edges)`` before the
    first forward (graph models build their normalised user-item propagation graph from it;
    other models ignore it); then ``out = model()`` gives :class:`ModelOutput`.
    """

    #: whether the model propagates over the user-item graph (needs ``set_graph``)
    uses_graph: bool = False
    #: whether the model reads item features
    uses_features: bool = False

    def __init__(self, n_users: int, n_items: int, features: dict[str, torch.Tensor] | None = None,
                 params: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.params = dict(params or {})

    def init_id_embeddings(self, user_dim: int, item_dim: int | None = None) -> None:
        """Create ``user_embedding`` ``(n_users, user_dim)`` and ``item_embedding``
        ``(n_items, item_dim or user_dim)``, Xavier-uniform initialised (MMRec's init)."""
        self.user_embedding = nn.Embedding(self.n_users, int(user_dim))
        self.item_embedding = nn.Embedding(self.n_items, int(item_dim or user_dim))
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    @torch.no_grad()
    def reinit_id_rows(self, users: torch.Tensor | None = None, items: torch.Tensor | None = None,
                       seed: int = 0) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """Re-draw the ID-embedding rows of ``users`` / ``items`` (``(k,)`` int64) from the
        initial distribution (Xavier-uniform bound of the whole table), as a model trained
        without them would hold them: rows no training pair ever reaches keep their init.

        Returns ``(parameter, rows)`` pairs so that a caller can clear the optimizer's
        per-row state too. Same ``seed`` -> same draw on every worker.
        """
        gen = torch.Generator().manual_seed(int(seed))
        touched = []
        for table, rows in ((getattr(self, "user_embedding", None), users),
                            (getattr(self, "item_embedding", None), items)):
            if table is None or rows is None or rows.numel() == 0:
                continue
            w = table.weight
            bound = (6.0 / (w.shape[0] + w.shape[1])) ** 0.5
            fresh = (torch.rand((rows.numel(), w.shape[1]), generator=gen) * 2 - 1) * bound
            w[rows.to(w.device)] = fresh.to(w.device, w.dtype)
            touched.append((w, rows))
        return touched

    # -- graph and features -------------------------------------------------------------
    def set_graph(self, train_edges: torch.Tensor) -> None:
        """Install the user-item training graph.

        Args:
            train_edges: ``(2, E)`` int64 tensor, row 0 user ids, row 1 item ids (each
                interaction once; the model adds the reverse direction itself).
        Unlearning calls this again with the retain edges, so forgotten edges leave the
        propagation graph. Must be cheap enough to call once per run; stored as buffers
        (not parameters), on the model's device.
        """

    def set_item_features(self, features: dict[str, torch.Tensor],
                          active_items: torch.Tensor | None = None) -> None:
        """Replace item features (modality unlearning, item removal) and rebuild any
        feature-derived structure such as modality kNN item-item graphs.

        Args:
            features: modality -> ``(n_items, d_m)``; rows of forgotten features are zero.
                A modality absent from the dict is dropped entirely.
            active_items: optional ``(n_items,)`` bool mask; inactive items (left the
                catalogue) get no kNN neighbours and are no one's neighbour.
        """

    # -- forward and losses -------------------------------------------------------------
    def forward(self) -> ModelOutput:  # pragma: no cover - abstract
        """Compute final user and item embeddings over the installed graph."""
        raise NotImplementedError

    def auxiliary_loss(self, out: ModelOutput, users: torch.Tensor, pos: torch.Tensor,
                       neg: torch.Tensor) -> torch.Tensor:
        """Model-specific extra loss on a batch of retain triples (scalar).

        ``users``, ``pos``, ``neg``: ``(B,)`` int64. Default: zero.
        """
        return out.user.new_zeros(())

    def regularization(self, out: ModelOutput, users: torch.Tensor, pos: torch.Tensor,
                       neg: torch.Tensor) -> torch.Tensor:
        """L2 penalty of the batch's (ego) embeddings, averaged over the batch (scalar).

        The training loss adds ``reg_weight * regularization(...)``. Default: squared norm of
        the final embeddings used by the batch, ``/ B``.
        """
        b = max(int(users.numel()), 1)
        return (out.user[users].pow(2).sum() + out.item[pos].pow(2).sum()
                + out.item[neg].pow(2).sum()) / (2 * b)
