"""Unlearning methods. All but SISA run the one loop (:mod:`mmrecun_ray.training.loop`)
under Ray Train, differing only in objective, starting point and data:

==========  =================  ==============  ================================
method      objective          starts from     data streamed
==========  =================  ==============  ================================
mmrecun     mmrecun (RBPR)     trained model   forget shard + retain shard
gold        bpr                scratch         retain
finetune    bpr                trained model   retain
neggrad     neggrad (-BPR)     trained model   forget shard + retain shard
sisa        bpr per shard      shard models    affected shards' retain data
==========  =================  ==============  ================================

The propagation graph is always the retain graph (forgotten edges are gone before the
first step), items that left the catalogue are masked everywhere, and modality features
dropped by the request are removed before the model is rebuilt.

MMRecUN by default first re-draws the rows only D_f trained (see
:mod:`mmrecun_ray.unlearning.references`): a ``users`` or ``items`` request then has no
pair left to reverse and starts no worker group. Pairs whose user keeps retain data
(``interactions`` requests) get their users' rows re-drawn and refitted alone on the
workers (``refit_steps``), with the matched reverse term on those pairs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import ray.data

from mmrecun_ray.errors import ConfigError
from mmrecun_ray.training.config import LoopConfig, dataclass_from_mapping
from mmrecun_ray.training.export import ModelInfo, read_model_info, read_optimizer, read_state
from mmrecun_ray.training.loop import preflight
from mmrecun_ray.training.runner import LoopResult, Scaling, run_loop
from mmrecun_ray.training.train import loop_inputs
from mmrecun_ray.unlearning.references import exclusive_ids, matched_references
from mmrecun_ray.unlearning.requests import ForgetSet

logger = logging.getLogger(__name__)

METHODS = ("mmrecun", "gold", "finetune", "neggrad", "sisa")


@dataclass
class UnlearnSettings:
    """Knobs of the unlearning methods (``--set key=value``).

    Attributes:
        alpha: weight of the reverse BPR term on D_f.
        beta: weight of the BPR (+ auxiliary) term on D_r.
        epochs: budget in passes over D_f (mmrecun, neggrad) or over D_r (finetune).
        max_steps: optional hard budget in optimizer steps.
        forget_ratio: forget batch size / retain batch size of each step.
        batch_size: forget batch size (mmrecun, neggrad) or retain batch size (finetune).
        learning_rate: explicit step size; None = ``lr_scale`` x the trained model's.
        lr_scale: multiplier of the training learning rate when ``learning_rate`` is None.
        eval_steps: check the stop rule (forget target, validation floor) about every this
            many optimizer steps.
        forget_target: stop once forget-set Recall@20 <= this; ``"auto"`` = an estimate of
            Gold's forget-set Recall@20 (see
            :func:`mmrecun_ray.unlearning.service.estimate_gold_forget_recall`: never-seen
            positives of known users rank like validation items, forgotten users rank at
            random), None = run the full budget.
        min_valid_ratio: stop if validation Recall@20 falls below this fraction of its
            starting value.
        reverse_side: which side of D_f's pairs the reverse term moves: ``both`` (the plain
            MMRecUN loss), ``user``, ``item``, or ``auto``: ``user`` for ``users`` requests
            (the forgotten users have no retain data; moving the items they share with
            retain users is what costs retain quality), ``item`` for ``items`` requests,
            ``both`` otherwise.
        reverse_reference: ``matched`` (default): each forgotten pair is pushed down to a
            fixed reference item drawn from where Gold would rank it (a never-seen item for
            forgotten users or items, a validation item of the user for single
            interactions) and no further; the run stops once at most ``matched_tolerance``
            of D_f scores above its reference. ``sampled``: the paper's fresh uniform
            negative every step, stopped by ``forget_target`` (drives D_f below never-seen
            items: a low MIA AUC that is a signal in itself). See
            :mod:`mmrecun_ray.unlearning.references`.
        matched_tolerance: stop once at most this share of D_f scores above its reference
            (``matched``). 0.5 is where Gold's own D_f sits: a never-seen pair beats an
            equally never-seen reference half the time.
        reset_exclusive: re-draw from the initial distribution the ID-embedding rows only
            D_f trained (users left with no retain data, items that left the catalogue),
            with their optimizer state, before the first step: Gold holds exactly that
            for them. See :func:`mmrecun_ray.unlearning.references.exclusive_ids`.
        refit_steps: (with ``reset_exclusive``) forgotten pairs whose user keeps retain data
            (``interactions`` requests): their users' rows are re-drawn too and refitted
            alone, every other parameter frozen, for this many steps on those users' retain
            pairs (BPR, ``refit_batch`` pairs per step) with the reverse term on their
            forgotten pairs: the user side as Gold would fit it against the current items.
            0 = leave these pairs to the plain reverse term on all parameters.
        refit_batch: retain pairs per refit step per worker.
        refit_alpha: weight of the reverse term while refitting (it only keeps the refitted
            users from re-learning their forgotten pairs through the items' positions; at
            ``alpha`` = 1 it drags the users away from their own taste).
        refit_lr_scale: refit step size as a multiple of the training learning rate (a
            fresh Adam: the refitted rows start from their initial draw).
        stop_on_auc: (``sampled`` only) also stop once the loop's score attack on D_f (one
            unobserved item per
            pair) reaches AUC 0.5: keeps MIA near Gold's at the price of a higher forget-set
            recall.
        sisa_shards: number of SISA shards.
        seed: RNG seed.
    """

    alpha: float = 1.0
    beta: float = 1.0
    epochs: int = 50
    max_steps: int | None = 400
    forget_ratio: float = 0.5
    batch_size: int = 256
    learning_rate: float | None = None
    lr_scale: float = 5.0
    eval_steps: int = 2
    forget_target: float | str | None = "auto"
    min_valid_ratio: float | None = 0.8
    reverse_side: str = "auto"
    reverse_reference: str = "matched"
    matched_tolerance: float = 0.5
    reset_exclusive: bool = True
    refit_steps: int = 50
    refit_batch: int = 4096
    refit_lr_scale: float = 2.0
    refit_alpha: float = 0.05
    stop_on_auc: bool = False
    sisa_shards: int = 4
    seed: int = 0

    def lr(self, base_lr: float) -> float:
        """Step size: explicit ``learning_rate``, else ``lr_scale`` x the training rate
        (unlearning is a short targeted fine-tune: a few hundred steps at most)."""
        return float(self.learning_rate) if self.learning_rate else float(base_lr) * self.lr_scale

    def eval_every(self, n_pairs: int, workers: int) -> int:
        """Epochs between evaluations so that the stop rule is checked every ~``eval_steps``
        optimizer steps whatever the forget-set size."""
        steps_per_epoch = max(1, -(-int(n_pairs) // (max(1, workers) * self.batch_size)))
        return max(1, round(self.eval_steps / steps_per_epoch))

    @classmethod
    def from_sets(cls, sets: dict[str, Any]) -> "UnlearnSettings":
        return dataclass_from_mapping(cls, sets, "unlearning settings")


@dataclass
class MethodResult:
    """A method's output model (state + metadata) and its cost."""

    method: str
    state: dict[str, Any]
    info: ModelInfo
    wall_seconds: float
    loop: LoopResult | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def pairs_dataset(user: np.ndarray, item: np.ndarray,
                  ref: np.ndarray | None = None) -> ray.data.Dataset:
    """``(F,)`` pairs as a Ray Dataset (``user_id``, ``item_id`` and, when given, each pair's
    reference item ``ref_item``) in the object store."""
    cols = {"user_id": np.asarray(user, dtype=np.int64), "item_id": np.asarray(item, dtype=np.int64)}
    if ref is not None:
        cols["ref_item"] = np.asarray(ref, dtype=np.int64)
    return ray.data.from_arrow(pa.table(cols))


def active_mask(fset: ForgetSet, n_items: int) -> np.ndarray | None:
    if fset.banned_items.size == 0 and not fset.dropped_features:
        return None
    mask = np.ones(n_items, dtype=bool)
    mask[fset.banned_items] = False
    return mask


def _retain_inputs(fset: ForgetSet, init_state: dict[str, Any] | None,
                   init_optimizer: dict[str, Any] | None = None):
    inputs = loop_inputs(fset.retain, active_mask(fset, fset.retain.n_items))
    inputs.forget_user = fset.forget.user.astype(np.int64)
    inputs.forget_item = fset.forget.item.astype(np.int64)
    inputs.init_state = init_state
    inputs.init_optimizer = init_optimizer
    return inputs


def _info(base: ModelInfo, fset: ForgetSet, method: str, retain_uri: str,
          loop_config: dict[str, Any]) -> ModelInfo:
    lineage = list(base.lineage) + [{"method": method, "request_id": fset.request_id,
                                     "kind": fset.request.kind, "forget_pairs": len(fset.forget)}]
    return replace(base, data_uri=retain_uri, manifest_hash=fset.retain.manifest.content_hash(),
                   loop_config=loop_config, banned_items=sorted(set(base.banned_items)
                                                                | set(fset.banned_items.tolist())),
                   dropped_features={**base.dropped_features,
                                     **{m: v.tolist() for m, v in fset.dropped_features.items()}},
                   modalities={m: d for m, d in base.modalities.items() if m in fset.retain.features},
                   metrics={}, lineage=lineage)


def _base_cfg(info: ModelInfo) -> LoopConfig:
    return LoopConfig.from_dict({**info.loop_config, "model": info.model, "params": info.params})


def forget_target(settings: UnlearnSettings, reference_valid_recall: float | None) -> float | None:
    if settings.forget_target == "auto":
        return reference_valid_recall
    return None if settings.forget_target is None else float(settings.forget_target)


def _reverse_side(settings: UnlearnSettings, fset: ForgetSet) -> str:
    if settings.reverse_side != "auto":
        return settings.reverse_side
    return {"users": "user", "items": "item"}.get(fset.request.kind, "both")


def run_mmrecun(model_uri: str, fset: ForgetSet, retain_data: ray.data.Dataset, retain_uri: str,
                scaling: Scaling, settings: UnlearnSettings, objective: str = "mmrecun",
                reference_valid_recall: float | None = None,
                callbacks: list | None = None) -> MethodResult:
    """MMRecUN (``objective="mmrecun"``) or NegGrad (``"neggrad"``) from the trained model.

    ``callbacks``: Ray Train callbacks passed on to the ``TorchTrainer`` (e.g. Tune's
    ``TuneReportCallback`` when a sweep trial runs this)."""
    t0 = time.perf_counter()
    base = read_model_info(model_uri)
    state = {k: v.numpy() for k, v in read_state(model_uri).items()}
    base_cfg = _base_cfg(base)
    if len(fset.forget) == 0:  # modality requests: nothing to reverse, repair on D_r
        return run_finetune(model_uri, fset, retain_data, retain_uri, scaling, settings,
                            method=objective)
    cfg = replace(base_cfg, objective=objective, epochs=settings.epochs,
                  max_steps=settings.max_steps, alpha=settings.alpha, beta=settings.beta,
                  forget_ratio=settings.forget_ratio, batch_size=settings.batch_size,
                  learning_rate=settings.lr(base_cfg.learning_rate),
                  forget_target_recall=forget_target(settings, reference_valid_recall),
                  min_valid_ratio=settings.min_valid_ratio, seed=settings.seed,
                  eval_every=settings.eval_every(len(fset.forget), scaling.workers),
                  patience=10**6, reverse_side=_reverse_side(settings, fset),
                  stop_on_auc=settings.stop_on_auc,
                  reverse_reference=(settings.reverse_reference if objective == "mmrecun"
                                     else "sampled"),
                  matched_tolerance=settings.matched_tolerance)
    inputs = _retain_inputs(fset, state, read_optimizer(model_uri))
    if cfg.reverse_reference == "matched":
        inputs.forget_ref = matched_references(fset, seed=settings.seed)
    if objective == "mmrecun" and settings.reset_exclusive:
        inputs.reset_users, inputs.reset_items = exclusive_ids(fset)
        # pairs whose user or item row is re-drawn are unlearned exactly: Gold holds that
        # row at its initial draw too. The reverse term works on the other pairs only
        # (none for users/items requests: the rows it would move are the re-drawn ones)
        rest = ~(np.isin(inputs.forget_user, inputs.reset_users)
                 | np.isin(inputs.forget_item, inputs.reset_items))
        inputs.forget_user, inputs.forget_item = inputs.forget_user[rest], inputs.forget_item[rest]
        if inputs.forget_ref is not None:
            inputs.forget_ref = inputs.forget_ref[rest]
        logger.info("mmrecun: %d users and %d items re-drawn; %d of %d forget pairs left to "
                    "the reverse term", inputs.reset_users.size, inputs.reset_items.size,
                    int(rest.sum()), rest.size)
        if settings.refit_steps > 0 and rest.any():
            cfg, inputs, retain_data = _refit_plan(cfg, inputs, fset, settings, base_cfg, scaling)
    res = None
    if objective == "mmrecun" and not callbacks and not cfg.refit_only:
        # the rule may hold before any step (nothing left to reverse, or the pairs already
        # sit where Gold would): then no worker group is started (a Tune trial always runs
        # the loop, to report)
        start, ret = preflight(cfg, inputs)
        logger.info("mmrecun before any step: %s%s", start or "no pair left to reverse",
                    ": no step needed" if ret else "")
        if ret is not None:
            res = LoopResult.of(ret, ret["state"], time.perf_counter() - t0)
    if res is None:
        datasets = {"train": retain_data,
                    "forget": pairs_dataset(inputs.forget_user, inputs.forget_item, inputs.forget_ref)}
        res = run_loop(cfg, inputs, datasets, scaling, name=f"unlearn-{objective}",
                       callbacks=callbacks)
    return MethodResult(objective, res.state or state, _info(base, fset, objective, retain_uri,
                                                             cfg.to_dict()),
                        time.perf_counter() - t0, res)


def _refit_plan(cfg: LoopConfig, inputs: Any, fset: ForgetSet, settings: UnlearnSettings,
                base_cfg: LoopConfig, scaling: Scaling) -> tuple[LoopConfig, Any, ray.data.Dataset]:
    """Switch a run to refitting the users of the remaining forget pairs (see
    ``UnlearnSettings.refit_steps``): their rows join the re-drawn ones, the retain stream
    is their retain pairs, everything else is frozen, the budget is ``refit_steps``."""
    users = np.unique(inputs.forget_user)
    inputs.reset_users = np.union1d(inputs.reset_users, users)
    r = fset.retain
    sel = np.isin(r.train.user, users)
    retain_data = pairs_dataset(r.train.user[sel], r.train.item[sel])
    workers = max(1, scaling.workers)
    steps_per_epoch = max(1, -(-inputs.forget_user.size // (workers * cfg.batch_size)))
    epochs = -(-settings.refit_steps // steps_per_epoch)
    cfg = replace(cfg, refit_only=True, max_steps=settings.refit_steps, epochs=epochs,
                  alpha=settings.refit_alpha,
                  eval_every=epochs, min_valid_ratio=None,
                  forget_ratio=cfg.batch_size / settings.refit_batch,
                  learning_rate=base_cfg.learning_rate * settings.refit_lr_scale)
    logger.info("mmrecun: refitting %d users' rows on %d retain pairs for %d steps",
                users.size, int(sel.sum()), settings.refit_steps)
    return cfg, inputs, retain_data


def run_finetune(model_uri: str, fset: ForgetSet, retain_data: ray.data.Dataset, retain_uri: str,
                 scaling: Scaling, settings: UnlearnSettings, method: str = "finetune") -> MethodResult:
    """Continue BPR training on D_r only (retain graph), ``settings.epochs`` passes."""
    t0 = time.perf_counter()
    base = read_model_info(model_uri)
    state = {k: v.numpy() for k, v in read_state(model_uri).items()}
    base_cfg = _base_cfg(base)
    n_retain = len(fset.retain.train)
    steps_per_epoch = max(1, -(-n_retain // (max(1, scaling.workers) * base_cfg.batch_size)))
    # same step budget as MMRecUN, spent on D_r with the training batch size
    epochs = max(1, min(settings.epochs, -(-(settings.max_steps or 10**9) // steps_per_epoch)))
    cfg = replace(base_cfg, objective="bpr", epochs=epochs, max_steps=settings.max_steps,
                  learning_rate=settings.lr(base_cfg.learning_rate),
                  seed=settings.seed, patience=10**6, eval_every=max(1, epochs // 5))
    res = run_loop(cfg, _retain_inputs(fset, state, read_optimizer(model_uri)), {"train": retain_data},
                   scaling, name=f"unlearn-{method}")
    return MethodResult(method, res.state or state, _info(base, fset, method, retain_uri, cfg.to_dict()),
                        time.perf_counter() - t0, res)


def run_gold(model_uri: str, fset: ForgetSet, retain_data: ray.data.Dataset, retain_uri: str,
             scaling: Scaling, settings: UnlearnSettings) -> MethodResult:
    """Retrain from scratch on D_r with the trained model's original configuration."""
    t0 = time.perf_counter()
    base = read_model_info(model_uri)
    cfg = _base_cfg(base)
    res = run_loop(cfg, _retain_inputs(fset, None), {"train": retain_data}, scaling, name="unlearn-gold")
    return MethodResult("gold", res.state or {}, _info(base, fset, "gold", retain_uri, cfg.to_dict()),
                        time.perf_counter() - t0, res)


def run_method(method: str, model_uri: str, fset: ForgetSet, retain_data: ray.data.Dataset,
               retain_uri: str, scaling: Scaling, settings: UnlearnSettings,
               reference_valid_recall: float | None = None,
               callbacks: list | None = None) -> MethodResult:
    """Dispatch by name (see the table in the module docstring); ``callbacks`` reach the
    ``TorchTrainer`` of mmrecun / neggrad."""
    if method in ("mmrecun", "neggrad"):
        return run_mmrecun(model_uri, fset, retain_data, retain_uri, scaling, settings,
                           objective=method, reference_valid_recall=reference_valid_recall,
                           callbacks=callbacks)
    if method == "finetune":
        return run_finetune(model_uri, fset, retain_data, retain_uri, scaling, settings)
    if method == "gold":
        return run_gold(model_uri, fset, retain_data, retain_uri, scaling, settings)
    if method == "sisa":
        from mmrecun_ray.unlearning.sisa import run_sisa
        return run_sisa(model_uri, fset, retain_uri, scaling, settings, retain_data)
    raise ConfigError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
