"""Model registry: plain ``torch.nn.Module`` recommenders (see :mod:`.base` for the contract).

==========  =====================================================  =========  ==========
name        model                                                  graph      features
==========  =====================================================  =========  ==========
mf          BPR-MF (Rendle et al. 2009)                            no         no
vbpr        VBPR (He & McAuley, AAAI 2016)                         no         yes
lightgcn    LightGCN (He et al., SIGIR 2020)                       yes        no
freedom     FREEDOM (Zhou & Shen, ACM MM 2023)                     yes        yes
mgcn        MGCN (Yu et al., ACM MM 2023)                          yes        yes
sisa        SISA ensemble of one of the above (Bourtoule 2021)     as base    as base
==========  =====================================================  =========  ==========

Checkpoints hold parameters only: after ``load_state_dict`` call ``set_graph`` (and, for
feature models, ``set_item_features`` if the features changed) again.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from mmrecun_ray.errors import ConfigError
from mmrecun_ray.models.base import ModelOutput, Recommender
from mmrecun_ray.models.freedom import FREEDOM
from mmrecun_ray.models.lightgcn import LightGCN
from mmrecun_ray.models.mf import MF
from mmrecun_ray.models.mgcn import MGCN
from mmrecun_ray.models.sisa import SISA
from mmrecun_ray.models.vbpr import VBPR

MODELS: dict[str, type[Recommender]] = {
    "mf": MF,
    "vbpr": VBPR,
    "lightgcn": LightGCN,
    "freedom": FREEDOM,
    "mgcn": MGCN,
    # SISA ensemble of any model above (users sharded); built by `unlearn --method sisa`
    "sisa": SISA,
}

__all__ = ["MODELS", "ModelOutput", "Recommender", "build_model", "default_params",
           "model_names", "MF", "VBPR", "LightGCN", "FREEDOM", "MGCN"]


def model_names() -> list[str]:
    """Registered model names, in registry order."""
    return list(MODELS)


def _model_class(name: str) -> type[Recommender]:
    key = str(name).lower()
    if key not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[key]


def default_params(name: str) -> dict[str, Any]:
    """A copy of the model's default hyper-parameters (paper/MMRec defaults), including
    ``embedding_dim``, ``learning_rate`` and ``reg_weight`` read by the training loop."""
    return copy.deepcopy(getattr(_model_class(name), "DEFAULTS", {}))


def build_model(name: str, n_users: int, n_items: int, features: dict[str, torch.Tensor],
                params: dict[str, Any] | None = None) -> Recommender:
    """Instantiate a registered model.

    Args:
        name: one of :func:`model_names` (case-insensitive).
        features: modality -> ``(n_items, d_m)`` float tensor (may be empty for models
            that do not use features).
        params: overrides of :func:`default_params`; unknown keys are ignored.
    Raises:
        ConfigError: unknown name, or a feature model built without features.
    """
    cls = _model_class(name)
    if n_users <= 0 or n_items <= 0:
        raise ConfigError(f"model {name!r} needs n_users > 0 and n_items > 0, got "
                          f"{n_users} and {n_items}")
    merged = {**default_params(name), **(params or {})}
    return cls(int(n_users), int(n_items), dict(features or {}), merged)
