"""Exported model folders: what ``train`` and ``unlearn`` publish and what ``evaluate``,
``unlearn`` and ``compare`` load.

Layout (``model.json`` is written last; a folder without it is not a model)::

    model.pt     state dict (parameters and persistent buffers)
    model.json   model name, params, sizes, modalities, training data URI and manifest
                 hash, loop config, banned items, metrics
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mmrecun_ray.data.schema import RecDataset
from mmrecun_ray.errors import DataError
from mmrecun_ray.models import build_model
from mmrecun_ray.models.base import Recommender
from mmrecun_ray.storage import exists, join, read_bytes, read_json, write_bytes_atomic, write_json_atomic

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
MODEL_META = "model.json"


@dataclass
class ModelInfo:
    """Contents of ``model.json``."""

    model: str
    params: dict[str, Any]
    n_users: int
    n_items: int
    modalities: dict[str, int]
    data_uri: str
    manifest_hash: str
    loop_config: dict[str, Any] = field(default_factory=dict)
    banned_items: list[int] = field(default_factory=list)
    dropped_features: dict[str, list[int]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelInfo":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def export_model(out_uri: str, info: ModelInfo, state: dict[str, Any],
                 optimizer: dict[str, Any] | None = None) -> str:
    """Publish a model folder at ``out_uri``: weights (and the optimizer state that
    unlearning continues from) first, ``model.json`` last."""
    buf = io.BytesIO()
    torch.save({k: torch.as_tensor(np.array(v)) for k, v in state.items()}, buf)
    write_bytes_atomic(join(out_uri, MODEL_FILE), buf.getvalue())
    if optimizer is not None:
        buf = io.BytesIO()
        torch.save(optimizer, buf)
        write_bytes_atomic(join(out_uri, OPTIMIZER_FILE), buf.getvalue())
    write_json_atomic(join(out_uri, MODEL_META), info.to_dict())
    logger.info("exported %s model to %s", info.model, out_uri)
    return out_uri


def read_model_info(model_uri: str) -> ModelInfo:
    meta = join(model_uri, MODEL_META)
    if not exists(meta):
        raise DataError(f"{meta}: not found — {model_uri} is not an exported model folder")
    return ModelInfo.from_dict(read_json(meta))


def read_state(model_uri: str) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(read_bytes(join(model_uri, MODEL_FILE))), map_location="cpu",
                      weights_only=True)


def read_optimizer(model_uri: str) -> dict[str, Any] | None:
    """The optimizer state saved with the model, or None (older exports, SISA)."""
    uri = join(model_uri, OPTIMIZER_FILE)
    if not exists(uri):
        return None
    return torch.load(io.BytesIO(read_bytes(uri)), map_location="cpu", weights_only=False)


def check_compatible(info: ModelInfo, ds: RecDataset, model_uri: str) -> None:
    """The dataset must have the id space and modalities the model was trained with."""
    if (ds.n_users, ds.n_items) != (info.n_users, info.n_items):
        raise DataError(f"{model_uri}: model has {info.n_users} users x {info.n_items} items, "
                        f"dataset {ds.uri} has {ds.n_users} x {ds.n_items}")
    for m, dim in info.modalities.items():
        if m in ds.features and ds.features[m].shape[1] != dim:
            raise DataError(f"{model_uri}: modality {m!r} has dim {dim}, dataset {ds.uri} "
                            f"has {ds.features[m].shape[1]}")


def build_from_state(info: ModelInfo, ds: RecDataset, state: dict[str, Any],
                     device: str | torch.device = "cpu", where: str = "model") -> Recommender:
    """Rebuild a model described by ``info`` with weights ``state`` over ``ds``'s training
    graph and features (banned items out of the modality graphs), in eval mode."""
    check_compatible(info, ds, where)
    feats = {m: torch.from_numpy(np.ascontiguousarray(ds.features[m])).float()
             for m in info.modalities if m in ds.features}
    model = build_model(info.model, info.n_users, info.n_items, feats, info.params)
    if model.uses_features and (info.banned_items or info.dropped_features):
        active = torch.ones(info.n_items, dtype=torch.bool)
        active[torch.as_tensor(info.banned_items, dtype=torch.long)] = False
        model.set_item_features(feats, active)
    model.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in state.items()}, strict=False)
    model = model.to(device)
    edges = torch.from_numpy(np.stack([ds.train.user, ds.train.item]).astype(np.int64)).to(device)
    model.set_graph(edges)
    model.eval()
    return model


def load_model(model_uri: str, ds: RecDataset, device: str | torch.device = "cpu"
               ) -> tuple[Recommender, ModelInfo]:
    """Rebuild an exported model over ``ds``'s training graph, in eval mode."""
    info = read_model_info(model_uri)
    return build_from_state(info, ds, read_state(model_uri), device, where=model_uri), info
