"""SISA unlearning: retrain only the shards whose users' data was forgotten, from scratch
on their retain data, and re-aggregate (see :class:`mmrecun_ray.models.sisa.SISA`).

Timing is honest to the deployed setting: shards the request does not touch would already
exist in a SISA deployment, so they are trained in an untimed set-up phase
(``setup_seconds``); the timed unlearning is the retraining of affected shards plus the
aggregation (``aggregation_seconds``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np
import ray.data
import torch

from mmrecun_ray.models.sisa import SISA, shard_of_users
from mmrecun_ray.training.config import LoopConfig
from mmrecun_ray.training.export import read_model_info
from mmrecun_ray.training.runner import Scaling, run_loop
from mmrecun_ray.unlearning.methods import MethodResult, UnlearnSettings, _info, _retain_inputs
from mmrecun_ray.unlearning.requests import ForgetSet

logger = logging.getLogger(__name__)


def _shard_data(retain_data: ray.data.Dataset, shard: np.ndarray, k: int) -> ray.data.Dataset:
    def keep(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        m = shard[batch["user_id"]] == k
        return {"user_id": batch["user_id"][m], "item_id": batch["item_id"][m]}
    return retain_data.map_batches(keep, batch_format="numpy").materialize()


def _train_shard(k: int, cfg: LoopConfig, fset: ForgetSet, shard: np.ndarray,
                 retain_data: ray.data.Dataset, scaling: Scaling) -> dict[str, Any]:
    r = fset.retain
    inputs = _retain_inputs(fset, None)
    tm = shard[r.train.user] == k
    vm = shard[r.valid.user] == k
    inputs.graph_edges = np.stack([r.train.user[tm], r.train.item[tm]]).astype(np.int64)
    inputs.known_keys = r.train.keys(r.n_items)[tm]
    inputs.valid_user, inputs.valid_item = r.valid.user[vm].astype(np.int64), r.valid.item[vm].astype(np.int64)
    inputs.forget_user = inputs.forget_item = None
    res = run_loop(cfg, inputs, {"train": _shard_data(retain_data, shard, k)}, scaling,
                   name=f"sisa-shard{k}")
    return res.state or {}


def run_sisa(model_uri: str, fset: ForgetSet, retain_uri: str, scaling: Scaling,
             settings: UnlearnSettings, retain_data: ray.data.Dataset | None = None) -> MethodResult:
    """Train the SISA ensemble's untouched shards (untimed set-up), retrain the affected
    shards on D_r (timed) and aggregate."""
    from mmrecun_ray.data.dataset import interactions_dataset
    base = read_model_info(model_uri)
    cfg = LoopConfig.from_dict({**base.loop_config, "model": base.model, "params": base.params})
    K, seed = int(settings.sisa_shards), int(settings.seed)
    r = fset.retain
    shard = shard_of_users(r.n_users, K, seed)
    retain_data = retain_data or interactions_dataset(retain_uri, "train").materialize()
    affected = sorted(set(shard[fset.forget.user].tolist())) if len(fset.forget) else list(range(K))
    states: dict[int, dict[str, Any]] = {}
    t_setup = time.perf_counter()
    for k in range(K):
        if k not in affected:
            states[k] = _train_shard(k, cfg, fset, shard, retain_data, scaling)
    setup = time.perf_counter() - t_setup
    t0 = time.perf_counter()
    for k in affected:
        states[k] = _train_shard(k, cfg, fset, shard, retain_data, scaling)
    t_agg = time.perf_counter()
    state = {f"shards.{k}.{name}": v for k, s in states.items() for name, v in s.items()}
    params = {**base.params, "base_model": base.model, "shards": K, "seed": seed}
    feats = {m: torch.from_numpy(np.ascontiguousarray(f)).float() for m, f in r.features.items()}
    ens = SISA(r.n_users, r.n_items, feats, params)
    ens.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}, strict=False)
    ens.set_graph(torch.from_numpy(np.stack([r.train.user, r.train.item]).astype(np.int64)))
    with torch.no_grad():
        ens.eval()
        ens()  # the aggregation a SISA deployment pays to serve the new ensemble
    agg = time.perf_counter() - t_agg
    info = _info(replace(base, model="sisa", params=params), fset, "sisa", retain_uri, cfg.to_dict())
    return MethodResult("sisa", state, info, time.perf_counter() - t0,
                        extra={"setup_seconds": setup, "aggregation_seconds": agg,
                               "shards": K, "affected_shards": len(affected)})
