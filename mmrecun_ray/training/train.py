"""``train``: dataset version -> Ray Train run -> exported model + ``metrics.json``.

A training *recipe* is the loop's configuration plus the :class:`~mmrecun_ray.objectives.Fit`
objective (BPR + L2 weight + early-stopping patience). ``model.json`` records both, so Gold
retrains with exactly the recipe the model was trained with.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import ray.data

from mmrecun_ray.config import coerce, field_types
from mmrecun_ray.data.dataset import interactions_dataset, load_dataset
from mmrecun_ray.data.lineage import version_hashes
from mmrecun_ray.data.schema import RecDataset
from mmrecun_ray.errors import ConfigError
from mmrecun_ray.evaluation.evaluate import evaluate_model
from mmrecun_ray.models import model_param_defaults, model_param_types
from mmrecun_ray.objectives import Fit
from mmrecun_ray.storage import exists, join, write_json_atomic
from mmrecun_ray.training.config import LoopConfig, LoopInputs
from mmrecun_ray.training.defaults import training_defaults
from mmrecun_ray.training.export import ModelInfo, build_from_state, export_model
from mmrecun_ray.training.runner import LoopResult, Scaling, ensure_ray, run_loop

logger = logging.getLogger(__name__)

LOOP_KEYS = {f.name for f in fields(LoopConfig)} - {"model", "params"}
FIT_KEYS = {f.name for f in fields(Fit) if not f.name.startswith("_")}
#: settings older exports kept in ``loop_config`` that are no longer the loop's
_LEGACY_UNLEARNING_KEYS = {"objective", "alpha", "beta", "forget_ratio", "forget_target_recall",
                           "min_valid_ratio", "reverse_side", "stop_on_auc", "reverse_reference",
                           "matched_tolerance", "refit_only"}


def recipe(model: str, sets: dict[str, Any] | None = None) -> tuple[LoopConfig, Fit]:
    """The training recipe of ``model`` with ``sets`` (``--set`` strings or JSON values)
    applied: loop settings, :class:`Fit` settings (``reg_weight``, ``patience``) or model
    constructor parameters, each coerced to its declared type.

    Learning rate, L2 weight, epoch cap, patience and batch size default to the model's
    :func:`~mmrecun_ray.training.defaults.training_defaults` (chosen on Last.fm-2K
    validation Recall@20); model parameters to the constructor's defaults.

    Raises:
        ConfigError: an unknown key (naming it) or a value of the wrong type.
    """
    td = training_defaults(model)
    params = model_param_defaults(model)
    loop_types, fit_types, param_types = (field_types(LoopConfig), field_types(Fit),
                                          model_param_types(model))
    loop_kw: dict[str, Any] = {"learning_rate": td.learning_rate, "epochs": td.epochs,
                               "batch_size": td.batch_size}
    fit_kw: dict[str, Any] = {"reg_weight": td.reg_weight, "patience": td.patience}
    for k, v in (sets or {}).items():
        if k in LOOP_KEYS:
            loop_kw[k] = coerce(v, loop_types[k], k)
        elif k in FIT_KEYS:
            fit_kw[k] = coerce(v, fit_types[k], k)
        elif k in param_types:
            params[k] = coerce(v, param_types[k], k)
        else:
            raise ConfigError(f"unknown setting {k!r} for training {model}; known: loop "
                              f"{sorted(LOOP_KEYS)}, objective {sorted(FIT_KEYS)}, model "
                              f"{sorted(param_types)}")
    return LoopConfig(model=model, params=params, **loop_kw), Fit(**fit_kw)


def recipe_of(info: ModelInfo) -> tuple[LoopConfig, Fit]:
    """The recipe a model was trained with (from ``model.json``; exports written before
    objectives kept ``reg_weight``/``patience`` and unlearning keys in ``loop_config``)."""
    lc = dict(info.loop_config)
    fit = dict(info.objective) if info.objective else {}
    fit.pop("name", None)
    for k in FIT_KEYS:
        if k in lc:
            fit.setdefault(k, lc.pop(k))
    for k in _LEGACY_UNLEARNING_KEYS:
        lc.pop(k, None)
    params = {k: v for k, v in info.params.items() if k not in ("learning_rate", "reg_weight")}
    return LoopConfig.from_dict({**lc, "model": info.model, "params": params}), Fit(**fit)


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


#: the twin's seed is the training seed plus this (``train --twin``): far from the seeds
#: of a Gold band (the training seed, +1, +2, ...), so no Gold shares the twin's start
TWIN_SEED_OFFSET = 1000


def train(data_uri: str, model: str, out_uri: str, scaling: Scaling,
          sets: dict[str, Any] | None = None, ds: RecDataset | None = None,
          overwrite: bool = False, twin: bool = False) -> TrainOutcome:
    """Train ``model`` on ``data_uri``; publish ``<out>/model`` and ``<out>/metrics.json``.

    ``twin``: also train the same recipe from seed + :data:`TWIN_SEED_OFFSET` and publish it
    in the model folder as the standby twin (``twin.pt``, described by ``model.json``'s
    ``twin``) that ``unlearn --method hir-twin`` serves in the model's place.

    Raises:
        ConfigError: bad settings, or ``out_uri`` already holds a model and not
            ``overwrite`` (checked before anything runs).
    """
    t0 = time.perf_counter()
    cfg, fit = recipe(model, dict(sets or {}))
    if not overwrite and (exists(join(out_uri, "model", "model.json")) or exists(join(out_uri, "metrics.json"))):
        raise ConfigError(f"{out_uri}: already holds a trained model; pass --overwrite to replace it")
    ds = ds or load_dataset(data_uri)
    ensure_ray()
    inputs = loop_inputs(ds)
    datasets = train_datasets(data_uri)
    result = run_loop(cfg, fit, inputs, datasets, scaling, name=f"train-{model}")
    info = ModelInfo(model=model, params=cfg.params, n_users=ds.n_users, n_items=ds.n_items,
                     modalities={m: int(f.shape[1]) for m, f in ds.features.items()},
                     data_uri=str(data_uri), manifest_hash=inputs.manifest_hash,
                     root_hash=version_hashes(ds.manifest)[0], honoured=sorted(ds.honoured),
                     loop_config=cfg.to_dict(), objective=fit.to_dict())
    model_uri = join(out_uri, "model")
    net = build_from_state(info, ds, result.state or {})
    metrics = evaluate_model(net, ds)
    twin_state, twin_doc = None, None
    if twin:
        tcfg, tfit = recipe(model, {**dict(sets or {}), "seed": cfg.seed + TWIN_SEED_OFFSET})
        tres = run_loop(tcfg, tfit, inputs, datasets, scaling, name=f"train-{model}-twin")
        twin_state = tres.state or {}
        tmetrics = evaluate_model(build_from_state(info, ds, twin_state), ds)
        twin_doc = {"seed": tcfg.seed, "served_seed": cfg.seed, "swaps": 0,
                    "epochs_run": tres.epochs_run, "best_epoch": tres.best_epoch,
                    "train_seconds": tres.train_seconds, "metrics": tmetrics}
        info.twin = dict(twin_doc)
    wall = time.perf_counter() - t0
    payload = {"command": "train", "model": model, "data": str(data_uri), "model_uri": model_uri,
               "wall_seconds": wall, "train_seconds": result.train_seconds,
               "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
               "steps": result.steps, "resumed_from_epoch": result.resumed_from_epoch,
               "seconds_per_epoch": result.train_seconds / max(result.epochs_run, 1),
               "workers": scaling.workers, "loop_config": cfg.to_dict(),
               "objective": fit.to_dict(), "metrics": metrics}
    if twin_doc is not None:
        payload["twin"] = twin_doc
    info.metrics = metrics
    export_model(model_uri, info, result.state or {}, result.optimizer, twin=twin_state)
    write_metrics(out_uri, payload)
    logger.info("trained %s in %.1fs: test recall@20 %.4f ndcg@20 %.4f", model, wall,
                metrics["test"].get("recall@20", float("nan")), metrics["test"].get("ndcg@20", float("nan")))
    return TrainOutcome(model_uri=model_uri, metrics=payload, loop=result)
