"""SISA unlearning (Bourtoule et al., S&P 2021): retrain only the shards whose users' data
was forgotten, from scratch on their retain data, and re-aggregate (see
:class:`mmrecun_ray.models.sisa.SISA`).

Timing is honest to the deployed setting: shards the request does not touch would already
exist in a SISA deployment, so they are trained in an untimed set-up phase
(``setup_seconds``); the timed unlearning is the retraining of affected shards plus the
aggregation (``aggregation_seconds``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import ray.data
import torch

from mmrecun_ray.models.sisa import SISA, shard_of_users
from mmrecun_ray.objectives import Fit
from mmrecun_ray.training.config import LoopConfig
from mmrecun_ray.training.runner import run_loop
from mmrecun_ray.unlearning.methods.base import (Job, Method, MethodResult, method_info, register,
                                                 retain_inputs, settings_dict)

logger = logging.getLogger(__name__)


@dataclass
class SisaSettings:
    """Attributes:
        shards: number of user shards.
        seed: seed of the user partition.
    """

    shards: int = 4
    seed: int = 0


def _shard_data(retain_data: ray.data.Dataset, shard: np.ndarray, k: int) -> ray.data.Dataset:
    def keep(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        m = shard[batch["user_id"]] == k
        return {"user_id": batch["user_id"][m], "item_id": batch["item_id"][m]}
    return retain_data.map_batches(keep, batch_format="numpy").materialize()


def _train_shard(k: int, cfg: LoopConfig, fit: Fit, job: Job, shard: np.ndarray) -> dict[str, Any]:
    r = job.fset.retain
    inputs = retain_inputs(job, None)
    tm = shard[r.train.user] == k
    vm = shard[r.valid.user] == k
    inputs.graph_edges = np.stack([r.train.user[tm], r.train.item[tm]]).astype(np.int64)
    inputs.known_keys = r.train.keys(r.n_items)[tm]
    inputs.valid_user, inputs.valid_item = r.valid.user[vm].astype(np.int64), r.valid.item[vm].astype(np.int64)
    inputs.forget_user = inputs.forget_item = None
    res = run_loop(cfg, fit, inputs, {"train": _shard_data(job.retain_dataset(), shard, k)}, job.scaling,
                   name=f"sisa-shard{k}")
    return res.state or {}


@register
class Sisa(Method):
    """Shard retraining (see the module docstring)."""

    name = "sisa"
    Settings = SisaSettings
    summary = "SISA: retrain the affected user shards from scratch"

    def run(self, job: Job) -> MethodResult:
        s: SisaSettings = self.settings
        cfg, fit = job.recipe()
        K, seed = int(s.shards), int(s.seed)
        r = job.fset.retain
        shard = shard_of_users(r.n_users, K, seed)
        forget = job.fset.forget
        affected = sorted(set(shard[forget.user].tolist())) if len(forget) else list(range(K))
        states: dict[int, dict[str, Any]] = {}
        t_setup = time.perf_counter()
        for k in range(K):
            if k not in affected:
                states[k] = _train_shard(k, cfg, fit, job, shard)
        setup = time.perf_counter() - t_setup
        t0 = time.perf_counter()
        for k in affected:
            states[k] = _train_shard(k, cfg, fit, job, shard)
        t_agg = time.perf_counter()
        state = {f"shards.{k}.{name}": v for k, st in states.items() for name, v in st.items()}
        params = {**job.info.params, "base_model": job.info.model, "shards": K, "seed": seed}
        feats = {m: torch.from_numpy(np.ascontiguousarray(f)).float() for m, f in r.features.items()}
        ens = SISA.from_params(r.n_users, r.n_items, feats, params)
        ens.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}, strict=False)
        ens.set_graph(torch.from_numpy(np.stack([r.train.user, r.train.item]).astype(np.int64)))
        with torch.no_grad():
            ens.eval()
            ens()  # the aggregation a SISA deployment pays to serve the new ensemble
        agg = time.perf_counter() - t_agg
        base = replace(job, info=replace(job.info, model="sisa", params=params))
        info = method_info(base, self.name, {"loop": cfg.to_dict(), "objective": fit.to_dict(),
                                             "settings": settings_dict(s)})
        return MethodResult(self.name, state, info, time.perf_counter() - t0,
                            extra={"setup_seconds": setup, "aggregation_seconds": agg,
                                   "shards": K, "affected_shards": len(affected)})
