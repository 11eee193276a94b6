"""numpy <-> torch for nested states (Ray Train return values hold numpy; ``torch.load``
with ``weights_only=True`` takes tensors)."""

from __future__ import annotations

from typing import Any

import warnings

import numpy as np
import torch


def to_numpy(x: Any) -> Any:
    """Tensors -> numpy, recursively (Ray Train refuses tensors in return values)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_numpy(v) for v in x)
    return x


def to_torch(x: Any) -> Any:
    """Inverse of :func:`to_numpy` (optimizer states)."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x))
    if isinstance(x, dict):
        return {k: to_torch(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_torch(v) for v in x)
    return x


def shared_tensor(a: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor over a (read-only, object-store backed) array; never written to."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(a))
