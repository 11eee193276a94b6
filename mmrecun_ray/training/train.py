"""``train``: dataset version -> Ray Train run -> exported model + ``metrics.json``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray.data

from mmrecun_ray.data.dataset import interactions_dataset, load_dataset
from mmrecun_ray.data.schema import RecDataset
from mmrecun_ray.evaluation.evaluate import evaluate_model
from mmrecun_ray.models import default_params
from mmrecun_ray.storage import join, write_json_atomic
from mmrecun_ray.training.config import LoopConfig, LoopInputs
from mmrecun_ray.training.export import ModelInfo, build_from_state, export_model
from mmrecun_ray.training.runner import LoopResult, Scaling, ensure_ray, run_loop

logger = logging.getLogger(__name__)

LOOP_KEYS = set(LoopConfig.__dataclass_fields__) - {"model", "params"}


def split_settings(model: str, sets: dict[str, Any]) -> LoopConfig:
    """Split ``--set key=value`` pairs into loop settings and model params.

    ``learning_rate`` and ``reg_weight`` default to the model's paper values.
    """
    params = default_params(model)
    loop_kw: dict[str, Any] = {}
    for k, v in sets.items():
        (loop_kw if k in LOOP_KEYS else params).__setitem__(k, v)
    loop_kw.setdefault("learning_rate", params.get("learning_rate", 1e-3))
    loop_kw.setdefault("reg_weight", params.get("reg_weight", 1e-4))
    return LoopConfig(model=model, params=params, **loop_kw)


def loop_inputs(ds: RecDataset, active_items: np.ndarray | None = None) -> LoopInputs:
    """Arrays every worker needs whole (graph, masks, features, validation pairs)."""
    return LoopInputs(
        n_users=ds.n_users, n_items=ds.n_items,
        graph_edges=np.stack([ds.train.user, ds.train.item]).astype(np.int64),
        known_keys=ds.train.keys(ds.n_items), features=ds.features,
        valid_user=ds.valid.user.astype(np.int64), valid_item=ds.valid.item.astype(np.int64),
        active_items=active_items, manifest_hash=ds.manifest.content_hash())


def train_datasets(data_uri: str, materialize: bool = True) -> dict[str, ray.data.Dataset]:
    """The training pairs as a Ray Dataset read from Parquet (``user_id``, ``item_id``),
    with every row the lineage's forget ledger hides filtered out of the stream."""
    ds = interactions_dataset(data_uri, "train")
    return {"train": ds.materialize() if materialize else ds}


@dataclass
class TrainOutcome:
    model_uri: str
    metrics: dict[str, Any]
    loop: LoopResult


def write_metrics(out_uri: str, payload: dict[str, Any]) -> None:
    write_json_atomic(join(out_uri, "metrics.json"), payload)


def train(data_uri: str, model: str, out_uri: str, scaling: Scaling,
          sets: dict[str, Any] | None = None, ds: RecDataset | None = None) -> TrainOutcome:
    """Train ``model`` on ``data_uri``; publish ``<out>/model`` and ``<out>/metrics.json``."""
    t0 = time.perf_counter()
    cfg = split_settings(model, dict(sets or {}))
    ds = ds or load_dataset(data_uri)
    ensure_ray()
    inputs = loop_inputs(ds)
    result = run_loop(cfg, inputs, train_datasets(data_uri), scaling, name=f"train-{model}")
    info = ModelInfo(model=model, params=cfg.params, n_users=ds.n_users, n_items=ds.n_items,
                     modalities={m: int(f.shape[1]) for m, f in ds.features.items()},
                     data_uri=str(data_uri), manifest_hash=inputs.manifest_hash,
                     loop_config=cfg.to_dict())
    model_uri = join(out_uri, "model")
    net = build_from_state(info, ds, result.state or {})
    metrics = evaluate_model(net, ds)
    wall = time.perf_counter() - t0
    payload = {"command": "train", "model": model, "data": str(data_uri), "model_uri": model_uri,
               "wall_seconds": wall, "train_seconds": result.train_seconds,
               "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "seconds_per_epoch": result.train_seconds / max(result.epochs_run, 1),
               "workers": scaling.workers, "loop_config": cfg.to_dict(),
               "metrics": metrics}
    info.metrics = metrics
    export_model(model_uri, info, result.state or {}, result.optimizer)
    write_metrics(out_uri, payload)
    logger.info("trained %s in %.1fs: test recall@20 %.4f ndcg@20 %.4f", model, wall,
                metrics["test"].get("recall@20", float("nan")), metrics["test"].get("ndcg@20", float("nan")))
    return TrainOutcome(model_uri=model_uri, metrics=payload, loop=result)
