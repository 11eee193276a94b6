"""Uniform negative sampling over the items a user has not interacted with in train."""

from __future__ import annotations

import numpy as np
import torch


class NegativeSampler:
    """Rejection sampler: draws ``j ~ U(items)`` and redraws while ``(u, j)`` is a train pair.

    Args:
        train_keys: ``(E,)`` int64 pair keys ``user * n_items + item`` of the user's
            known interactions (any order; sorted and deduplicated here).
        n_items: catalogue size.
        allowed_items: optional ``(M,)`` int64 ids negatives are drawn from (items that
            left the catalogue are excluded); default all items.
        seed: RNG seed (make it differ per worker).
    """

    def __init__(self, train_keys: np.ndarray, n_items: int,
                 allowed_items: np.ndarray | None = None, seed: int = 0,
                 max_rounds: int = 50) -> None:
        self.keys = np.unique(np.asarray(train_keys, dtype=np.int64))
        self.n_items = int(n_items)
        self.allowed = None if allowed_items is None else np.asarray(allowed_items, dtype=np.int64)
        self.rng = np.random.default_rng(seed)
        self.max_rounds = max_rounds

    def _draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.allowed is None:
            return rng.integers(0, self.n_items, size=n, dtype=np.int64)
        return self.allowed[rng.integers(0, self.allowed.size, size=n)]

    def _is_known(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        q = users * self.n_items + items
        pos = np.searchsorted(self.keys, q)
        pos = np.minimum(pos, self.keys.size - 1)
        return self.keys[pos] == q if self.keys.size else np.zeros(q.shape, dtype=bool)

    def sample(self, users: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """``(B,)`` int64 users -> ``(B,)`` int64 negatives (one per user), drawn with
        ``rng`` (default: the sampler's own generator).

        A user who interacted with every allowed item keeps a random (known) item after
        ``max_rounds`` redraws rather than looping forever.
        """
        rng = self.rng if rng is None else rng
        users = np.asarray(users, dtype=np.int64)
        neg = self._draw(users.size, rng)
        bad = self._is_known(users, neg)
        for _ in range(self.max_rounds):
            if not bad.any():
                break
            idx = np.flatnonzero(bad)
            neg[idx] = self._draw(idx.size, rng)
            bad[idx] = self._is_known(users[idx], neg[idx])
        return neg

    def sample_torch(self, users: torch.Tensor) -> torch.Tensor:
        """Torch wrapper: ``(B,)`` int64 tensor (any device) -> negatives on the same device."""
        return torch.from_numpy(self.sample(users.detach().cpu().numpy())).to(users.device)
