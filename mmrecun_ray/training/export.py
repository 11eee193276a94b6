"""Exported model folders: what ``train`` and ``unlearn`` publish and what ``evaluate``,
``unlearn`` and ``compare`` load.

Layout (``model.json`` is written last; a folder without it is not a model)::

    model.pt     state dict (parameters and persistent buffers)
    twin.pt      optional: the weights of a standby twin, the same recipe trained from
                 another seed on the same data (``train --twin``; ``hir-twin`` serves it)
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
from mmrecun_ray.training.arrays import shared_tensor, to_torch

logger = logging.getLogger(__name__)

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
MODEL_META = "model.json"
TWIN_FILE = "twin.pt"


@dataclass
class ModelInfo:
    """Contents of ``model.json``.

    ``manifest_hash`` is the content hash of the dataset version the model was trained (or
    unlearned) on, ``root_hash`` that of its lineage root, ``honoured`` the forget requests
    the model honours (the model never saw their data); ``lineage`` lists the unlearning
    runs that produced it."""

    model: str
    params: dict[str, Any]
    n_users: int
    n_items: int
    modalities: dict[str, int]
    data_uri: str
    manifest_hash: str
    root_hash: str = ""
    honoured: list[str] = field(default_factory=list)
    loop_config: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, Any] = field(default_factory=dict)
    banned_items: list[int] = field(default_factory=list)
    dropped_features: dict[str, list[int]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    lineage: list[dict[str, Any]] = field(default_factory=list)
    twin: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "model.json") -> "ModelInfo":
        """From ``model.json``'s object; DataError naming ``where`` and the key at fault."""
        if not isinstance(d, dict):
            raise DataError(f"{where}: expected a JSON object")
        known = set(cls.__dataclass_fields__)
        missing = [k for k in ("model", "params", "n_users", "n_items", "modalities", "data_uri",
                               "manifest_hash") if k not in d]
        if missing:
            raise DataError(f"{where}: missing key(s) {missing}")
        checks = {"model": str, "params": dict, "n_users": int, "n_items": int, "modalities": dict,
                  "loop_config": dict, "objective": dict, "banned_items": list, "honoured": list,
                  "twin": dict}
        for k, t in checks.items():
            if k in d and not isinstance(d[k], t):
                raise DataError(f"{where}: key {k!r} must be a {t.__name__}, got {type(d[k]).__name__}")
        for k in ("n_users", "n_items"):
            if d[k] <= 0:
                raise DataError(f"{where}: key {k!r} must be positive, got {d[k]}")
        from mmrecun_ray.models import MODELS
        if d["model"] not in MODELS:
            raise DataError(f"{where}: unknown model {d['model']!r}; known: {', '.join(MODELS)}")
        return cls(**{k: v for k, v in d.items() if k in known})


def export_model(out_uri: str, info: ModelInfo, state: dict[str, Any],
                 optimizer: dict[str, Any] | None = None,
                 twin: dict[str, Any] | None = None) -> str:
    """Publish a model folder at ``out_uri``: ``model.json`` of a previous model removed
    first (a half-replaced folder is then no model at all), weights (and the optimizer
    state that unlearning continues from, and the standby ``twin``'s weights) next,
    ``model.json`` last. Without ``twin`` a previous folder's ``twin.pt`` is removed.

    Raises:
        ValueError: ``info.twin`` describes a twin and none is given, or the reverse.
    """
    from mmrecun_ray.storage import delete
    if info.twin and twin is None:
        raise ValueError(f"{out_uri}: model.json describes a twin but no twin weights were given")
    if twin is not None and not info.twin:
        raise ValueError(f"{out_uri}: model.json describes no twin but twin weights were given")
    delete(join(out_uri, MODEL_META))
    write_bytes_atomic(join(out_uri, MODEL_FILE), _tensor_bytes(state))
    if optimizer is not None:
        buf = io.BytesIO()
        torch.save(to_torch(optimizer), buf)  # tensors and plain values: loads weights_only
        write_bytes_atomic(join(out_uri, OPTIMIZER_FILE), buf.getvalue())
    if twin is not None:
        write_bytes_atomic(join(out_uri, TWIN_FILE), _tensor_bytes(twin))
    else:
        delete(join(out_uri, TWIN_FILE))
    write_json_atomic(join(out_uri, MODEL_META), info.to_dict())
    logger.info("exported %s model to %s", info.model, out_uri)
    return out_uri


def _tensor_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save({k: torch.as_tensor(np.array(v)) for k, v in state.items()}, buf)
    return buf.getvalue()


def read_model_info(model_uri: str) -> ModelInfo:
    meta = join(model_uri, MODEL_META)
    if not exists(meta):
        raise DataError(f"{meta}: not found — {model_uri} is not an exported model folder")
    try:
        d = read_json(meta)
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{meta}: not valid JSON ({e})") from None
    return ModelInfo.from_dict(d, meta)


def _load_safe(uri: str) -> Any:
    """``torch.load`` of ``uri`` with ``weights_only=True``: tensors and plain values only,
    never code. A file that is anything else is a DataError naming it."""
    try:
        return torch.load(io.BytesIO(read_bytes(uri)), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling raises many types
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise DataError(f"{uri}: refused: not a plain tensor file ({type(e).__name__}: {first})") from e


def _tensor_dict(uri: str, missing: str) -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` file; DataError ``"<uri>: not found — <missing>"`` when absent or
    naming the file when it is not a dict of tensors."""
    if not exists(uri):
        raise DataError(f"{uri}: not found — {missing}")
    state = _load_safe(uri)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise DataError(f"{uri}: expected a dict of tensors (a state dict)")
    return state


def read_state(model_uri: str) -> dict[str, torch.Tensor]:
    """The model's weights; DataError when ``model.pt`` is not a dict of tensors."""
    return _tensor_dict(join(model_uri, MODEL_FILE), f"{model_uri} is not a complete model folder")


def read_optimizer(model_uri: str) -> dict[str, Any] | None:
    """The optimizer state saved with the model, or None (older exports, SISA)."""
    uri = join(model_uri, OPTIMIZER_FILE)
    if not exists(uri):
        return None
    state = _load_safe(uri)
    if not isinstance(state, dict) or "state" not in state or "param_groups" not in state:
        raise DataError(f"{uri}: expected an optimizer state dict (keys state, param_groups)")
    return state


def read_twin(model_uri: str, info: ModelInfo, as_numpy: bool = False) -> dict[str, Any] | None:
    """The standby twin's weights (``twin.pt``; tensors, or numpy arrays with ``as_numpy``),
    or None when ``info`` (the folder's ``model.json``, already read by the caller) names no
    twin; DataError when it names one and the file is missing or not a dict of tensors."""
    if not info.twin:
        return None
    state = _tensor_dict(join(model_uri, TWIN_FILE), "model.json describes a twin")
    return {k: v.numpy() for k, v in state.items()} if as_numpy else state


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
    feats = {m: shared_tensor(ds.features[m]).float() for m in info.modalities if m in ds.features}
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
