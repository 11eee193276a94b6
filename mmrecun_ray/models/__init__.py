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

Each model's hyper-parameters are the typed keyword arguments of its constructor;
:func:`model_param_types` / :func:`model_param_defaults` read them from the signature and
:func:`build_model` refuses keys the constructor does not take. Training settings
(learning rate, L2 weight, epoch cap, patience) are per model in
:mod:`mmrecun_ray.training.defaults`, not here.

Checkpoints hold parameters only: after ``load_state_dict`` call ``set_graph`` (and, for
feature models, ``set_item_features`` if the features changed) again.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from mmrecun_ray.errors import ConfigError
from mmrecun_ray.models.base import BatchRows, ModelOutput, Recommender
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

__all__ = ["MODELS", "BatchRows", "ModelOutput", "Recommender", "build_model",
           "model_param_defaults", "model_param_types", "model_names",
           "MF", "VBPR", "LightGCN", "FREEDOM", "MGCN", "SISA"]


def model_names() -> list[str]:
    """Registered model names, in registry order."""
    return list(MODELS)


def model_class(name: str) -> type[Recommender]:
    """The class registered under ``name`` (case-insensitive).

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    key = str(name).lower()
    if key not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[key]


def model_param_types(name: str) -> dict[str, Any]:
    """Hyper-parameter name -> type annotation of model ``name``'s constructor (resolved:
    ``int``, ``float``, ``bool``, ``str | None``, ``dict[str, float] | None``); what
    ``--set key=value`` strings are coerced to."""
    return model_class(name).param_types()


def model_param_defaults(name: str) -> dict[str, Any]:
    """Hyper-parameter name -> default of model ``name``'s constructor (a copy)."""
    return model_class(name).param_defaults()


def build_model(name: str, n_users: int, n_items: int,
                features: Mapping[str, torch.Tensor] | None = None,
                params: Mapping[str, Any] | None = None) -> Recommender:
    """Instantiate a registered model through its ``from_params``.

    Args:
        name: one of :func:`model_names` (case-insensitive).
        features: modality -> ``(n_items, d_m)`` float tensor (may be empty for models
            that do not use features).
        params: hyper-parameters; missing keys take the constructor defaults. The legacy
            keys ``learning_rate`` / ``reg_weight`` of old ``model.json`` files are dropped.
    Raises:
        ConfigError: unknown name, unknown parameter key or a value of the wrong type,
            or a feature model built without features.
    """
    return model_class(name).from_params(int(n_users), int(n_items), dict(features or {}),
                                         params)
