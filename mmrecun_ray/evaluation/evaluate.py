"""Evaluate a model (or popularity) on a dataset's splits with full ranking."""

from __future__ import annotations

import numpy as np
import torch

from mmrecun_ray.data.schema import Interactions, RecDataset
from mmrecun_ray.evaluation.ranking import build_csr, evaluate_split, popularity_embeddings
from mmrecun_ray.models.base import Recommender

KS = (10, 20, 50)


def train_csr(ds: RecDataset) -> tuple[np.ndarray, np.ndarray]:
    """CSR of each user's train items (masked at ranking time)."""
    return build_csr(ds.train.user, ds.train.item, ds.n_users)


@torch.no_grad()
def embeddings(model: Recommender) -> tuple[torch.Tensor, torch.Tensor]:
    """Final ``(n_users, d)`` and ``(n_items, d)`` embeddings in eval mode."""
    model.eval()
    out = model()
    return out.user, out.item


def evaluate_embeddings(user_emb: torch.Tensor, item_emb: torch.Tensor, ds: RecDataset,
                        target: Interactions, ks: tuple[int, ...] = KS,
                        banned_items: np.ndarray | None = None,
                        exclude: Interactions | None = None) -> dict[str, float]:
    """Metrics on ``target`` pairs, masking ``exclude`` (default: the train split)."""
    ex = exclude if exclude is not None else ds.train
    csr = build_csr(ex.user, ex.item, ds.n_users)
    return evaluate_split(user_emb, item_emb, csr, (target.user, target.item), ds.n_users,
                          ds.n_items, ks=ks, banned_items=banned_items)


def evaluate_model(model: Recommender, ds: RecDataset, splits: tuple[str, ...] = ("valid", "test"),
                   ks: tuple[int, ...] = KS, banned_items: np.ndarray | None = None
                   ) -> dict[str, dict[str, float]]:
    """``{split: metrics}`` for a model over ``ds`` (train items masked)."""
    u, i = embeddings(model)
    return {s: evaluate_embeddings(u, i, ds, ds.split(s), ks, banned_items) for s in splits}


def evaluate_popularity(ds: RecDataset, splits: tuple[str, ...] = ("valid", "test"),
                        ks: tuple[int, ...] = KS) -> dict[str, dict[str, float]]:
    """The popularity ranking (train counts) through the same full-ranking path."""
    u, i = popularity_embeddings(ds.train.user, ds.train.item, ds.n_users, ds.n_items)
    return {s: evaluate_embeddings(u, i, ds, ds.split(s), ks) for s in splits}
