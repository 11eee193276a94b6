"""The one training/unlearning loop, run by every Ray Train worker (or in-process in
local mode). Parametrised by :class:`~mmrecun_ray.training.config.LoopConfig.objective`.

Per step: stream a batch of positive pairs from this worker's Ray Data shard, sample
negatives, compute full-graph embeddings (DDP all-reduces the gradients), apply the
objective. Per epoch: sharded full-ranking validation (each rank ranks a slice of the
users, sums are all-reduced), early stopping, and ``ray.train.report`` with a checkpoint
when validation improves.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
import math
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from mmrecun_ray.evaluation.ranking import build_csr, evaluate_split
from mmrecun_ray.models import build_model
from mmrecun_ray.models.base import ModelOutput, Recommender
from mmrecun_ray.objectives import (bpr_loss, matched_reverse_bpr_loss, negated_bpr_loss,
                                   pair_scores, reverse_bpr_loss)
from mmrecun_ray.training.config import LoopConfig, LoopInputs
from mmrecun_ray.training.sampler import NegativeSampler
from mmrecun_ray.unlearning.audit import mia_auc_from_scores

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


def _fetch(obj: Any) -> Any:
    """Resolve an object-store reference (zero-copy numpy on the same node)."""
    return ray.get(obj) if isinstance(obj, ray.ObjectRef) else obj


def _core(model: torch.nn.Module) -> Recommender:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


def shared_tensor(a: np.ndarray) -> torch.Tensor:
    """Zero-copy tensor over a (read-only, object-store backed) array; never written to."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(a))


def make_model(cfg: LoopConfig, inputs: LoopInputs, device: torch.device) -> Recommender:
    """Build the model on ``device`` with its graph and features installed."""
    feats = {k: shared_tensor(v).float() for k, v in inputs.features.items()}
    model = build_model(cfg.model, inputs.n_users, inputs.n_items, feats, cfg.params)
    if inputs.active_items is not None and model.uses_features:
        model.set_item_features(feats, torch.from_numpy(np.asarray(inputs.active_items)))
    if inputs.init_state is not None:
        state = {k: torch.as_tensor(np.array(v)) for k, v in inputs.init_state.items()}
        model.load_state_dict(state, strict=False)
    model = model.to(device)
    model.set_graph(shared_tensor(inputs.graph_edges).to(device))
    return model


def _cycle(shard: Any, batch_size: int, seed: int, buffer: int) -> Iterator[dict[str, torch.Tensor]]:
    """Endless stream of batches from a Ray Data shard (re-iterated per pass)."""
    while True:
        got = False
        for batch in shard.iter_torch_batches(batch_size=batch_size, dtypes=torch.int64,
                                              local_shuffle_buffer_size=buffer,
                                              local_shuffle_seed=seed):
            got = True
            yield batch
        if not got:
            return
        seed += 1


def _world() -> tuple[int, int]:
    ctx = ray.train.get_context()
    return ctx.get_world_rank(), ctx.get_world_size()


def _allreduce(values: np.ndarray, device: torch.device) -> np.ndarray:
    """Sum a float vector over workers (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        t = torch.as_tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.cpu().numpy()
    return values


@dataclass
class EvalMasks:
    """What ranking masks, built once per run: each user's training items (CSR) and the
    items that left the catalogue."""

    csr: tuple[np.ndarray, np.ndarray]
    banned: np.ndarray | None

    @classmethod
    def of(cls, inputs: LoopInputs) -> "EvalMasks":
        csr = build_csr(inputs.known_keys // inputs.n_items, inputs.known_keys % inputs.n_items,
                        inputs.n_users)
        banned = (None if inputs.active_items is None
                  else np.flatnonzero(~np.asarray(inputs.active_items)))
        return cls(csr, banned)


@torch.no_grad()
def sharded_evaluate(out: ModelOutput, inputs: LoopInputs, masks: EvalMasks,
                     target_user: np.ndarray, target_item: np.ndarray, ks: tuple[int, ...],
                     rank: int, world: int, device: torch.device) -> dict[str, float]:
    """Full-ranking metrics on ``target`` pairs, users split over ranks, exact after the
    all-reduce (each rank contributes ``mean * n_users`` sums)."""
    users_all = np.unique(target_user)
    mine = users_all[users_all % world == rank]
    sel = np.isin(target_user, mine)
    if mine.size:
        m = evaluate_split(out.user, out.item, masks.csr, (target_user[sel], target_item[sel]),
                           inputs.n_users, inputs.n_items, ks=ks, banned_items=masks.banned)
        n = float(m.get("n_users", mine.size))
    else:
        m, n = {}, 0.0
    keys = [f"{name}@{k}" for k in ks for name in ("recall", "ndcg", "precision", "map", "hit")]
    vec = np.array([m.get(k, 0.0) * n for k in keys] + [n], dtype=np.float64)
    vec = _allreduce(vec, device)
    total = max(vec[-1], 1.0)
    res = {k: float(v / total) for k, v in zip(keys, vec[:-1])}
    res["n_users"] = float(vec[-1])
    return res


@torch.no_grad()
def forget_auc(out: ModelOutput, inputs: LoopInputs, sampler: NegativeSampler,
               device: torch.device) -> float:
    """AUC of "score high => forgotten pair" against one sampled unobserved item per pair
    (all forget pairs, identical on every rank: same model, fixed seed)."""
    u = torch.from_numpy(inputs.forget_user).to(device)
    i = torch.from_numpy(inputs.forget_item).to(device)
    training_rng, sampler.rng = sampler.rng, np.random.default_rng(12345)
    try:
        j = sampler.sample_torch(u)
    finally:
        sampler.rng = training_rng
    pos, neg = pair_scores(out, u, i, j)
    return mia_auc_from_scores(pos.cpu().numpy(), neg.cpu().numpy())


@torch.no_grad()
def forget_above_reference(out: ModelOutput, inputs: LoopInputs, device: torch.device) -> float:
    """Share of forget pairs still scoring above their fixed reference item (``matched``
    reverse term; identical on every rank)."""
    u = torch.from_numpy(inputs.forget_user).to(device)
    pos, ref = pair_scores(out, u, torch.from_numpy(inputs.forget_item).to(device),
                           torch.from_numpy(inputs.forget_ref).to(device))
    return float((pos > ref).double().mean())


def matched_threshold(tolerance: float, n_pairs: int) -> float:
    """Stop threshold on the share of D_f above its reference: ``tolerance`` plus two
    binomial standard errors over ``n_pairs`` (a share not significantly above the
    tolerance counts as met: Gold's own D_f lands within that noise of 0.5)."""
    return tolerance + 2.0 * math.sqrt(tolerance * (1.0 - tolerance) / max(int(n_pairs), 1))


def forget_state(out: ModelOutput, inputs: LoopInputs, masks: EvalMasks, cfg: LoopConfig,
                 sampler: NegativeSampler, rank: int, world: int,
                 device: torch.device) -> tuple[dict[str, float], bool]:
    """Forget-set metrics (``forget_<metric>@K``, ``forget_auc`` and, with
    ``cfg.matched_reverse``, ``forget_above_reference``) and whether the forgetting stop
    rule holds:

    - matched reverse term: the share of D_f scoring above its reference is not
      significantly above ``matched_tolerance`` (:func:`matched_threshold`): D_f sits
      where Gold would place it;
    - else: forget Recall@20 at or below ``forget_target_recall`` or, with ``stop_on_auc``,
      the score attack's AUC at or below 0.5 (pushing further makes the pairs
      conspicuously *low*, a signal in itself).
    """
    forget = sharded_evaluate(out, inputs, masks, inputs.forget_user, inputs.forget_item,
                              cfg.eval_ks, rank, world, device)
    metrics = {f"forget_{k}": v for k, v in forget.items()}
    metrics["forget_auc"] = forget_auc(out, inputs, sampler, device)
    if cfg.matched_reverse:
        metrics["forget_above_reference"] = forget_above_reference(out, inputs, device)
        return metrics, metrics["forget_above_reference"] <= matched_threshold(
            cfg.matched_tolerance, inputs.forget_user.size)
    target = cfg.forget_target_recall
    return metrics, target is not None and (forget["recall@20"] <= target or (
        cfg.stop_on_auc and metrics["forget_auc"] <= 0.5))


def make_sampler(inputs: LoopInputs, seed: int) -> NegativeSampler:
    """Negatives over the items still in the catalogue, never a training pair."""
    allowed = None if inputs.active_items is None else np.flatnonzero(np.asarray(inputs.active_items))
    return NegativeSampler(inputs.known_keys, inputs.n_items, allowed, seed=seed)


def _reinit_exclusive(model: Recommender, inputs: LoopInputs,
                      seed: int) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Re-draw ``inputs.reset_users`` / ``reset_items`` rows (before DDP wraps the model, so
    every rank holds the same draw)."""
    def rows(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.asarray(a, dtype=np.int64))
    return model.reinit_id_rows(rows(inputs.reset_users), rows(inputs.reset_items), seed=seed)


def train_only_rows(model: torch.nn.Module,
                     reset: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
    """Freeze every parameter but the re-drawn rows (``refit_only``): other tensors stop
    requiring gradients, and the tables holding re-drawn rows get a row mask on theirs."""
    for p in model.parameters():
        p.requires_grad_(False)
    for param, rows in reset:
        mask = torch.zeros((param.shape[0],) + (1,) * (param.dim() - 1), device=param.device)
        mask[rows.to(param.device)] = 1.0
        param.requires_grad_(True)
        param.register_hook(lambda g, m=mask: g * m)


def _make_optimizer(model: torch.nn.Module, cfg: LoopConfig, inputs: LoopInputs,
                    reset: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> torch.optim.Adam:
    """Adam at ``cfg.learning_rate``, continuing ``inputs.init_optimizer`` when given (not
    with ``refit_only``: frozen rows must not drift on old moments); the moments of
    re-drawn rows are cleared (as for parameters that were never trained)."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    if inputs.init_optimizer is not None and not cfg.refit_only:
        try:
            opt.load_state_dict(_to_torch(inputs.init_optimizer))
            for group in opt.param_groups:
                group["lr"] = cfg.learning_rate
        except (ValueError, KeyError) as e:  # a different parameter layout: start fresh
            logger.warning("optimizer state not reused (%s)", e)
    for param, rows in reset:
        for moment in opt.state.get(param, {}).values():
            if torch.is_tensor(moment) and moment.shape == param.shape:
                moment[rows.to(moment.device)] = 0
    return opt


def preflight(cfg: LoopConfig, inputs: LoopInputs) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Check the forgetting stop rule on the starting model, in this process (no workers).

    The starting model is the trained one on the retain graph with the exclusive rows
    re-drawn. Returns ``(forget metrics, result)``: ``result`` is a finished run's return
    value (same keys as :func:`train_loop`'s, zero steps) when the rule already holds or no
    forget pair is left to the reverse term (metrics then empty), so the caller need not
    start a worker group; else None.
    """
    t0 = time.perf_counter()
    device = torch.device("cpu")
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, inputs, device)
    reset = _reinit_exclusive(model, inputs, cfg.seed)
    opt = _make_optimizer(model, cfg, inputs, reset)
    sampler = make_sampler(inputs, seed=cfg.seed * 1000)  # rank 0's seed in the loop
    metrics: dict[str, Any] = {}
    done = inputs.forget_user is None or inputs.forget_user.size == 0  # nothing to reverse
    if not done:
        model.eval()
        with torch.no_grad():
            out = model()
        metrics, done = forget_state(out, inputs, EvalMasks.of(inputs), cfg, sampler,
                                     0, 1, device)
    if not done:
        return metrics, None
    return metrics, {"best_score": None, "best_epoch": -1, "best_metrics": metrics, "epochs_run": 0,
                     "steps": 0, "train_seconds": time.perf_counter() - t0,
                     "state": {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()},
                     "history": [], "optimizer": _to_numpy(opt.state_dict())}


def _save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     cfg: LoopConfig, epoch: int, best: dict[str, Any], metrics: dict[str, Any],
                     manifest_hash: str) -> None:
    torch.save({"model_state": _core(model).state_dict(), "optimizer_state": opt.state_dict(),
                "loop_config": cfg.to_dict(), "epoch": epoch, "best": best, "metrics": metrics,
                "manifest_hash": manifest_hash}, path / CHECKPOINT_FILE)


def train_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker function.

    ``config``: ``{"loop": LoopConfig.to_dict(), "inputs": ObjectRef[LoopInputs] | LoopInputs}``.
    Datasets: ``"train"`` (retain) and, for unlearning objectives, ``"forget"``; columns
    ``user_id``, ``item_id``.

    Returns (rank 0's value reaches the driver): best validation metrics, epochs run, and
    the best model state (numpy) so local mode needs no checkpoint storage.
    """
    cfg = LoopConfig.from_dict(config["loop"])
    inputs: LoopInputs = _fetch(config["inputs"])
    rank, world = _world()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.seed)
    np_seed = cfg.seed * 1000 + rank

    model = make_model(cfg, inputs, device)
    reset = _reinit_exclusive(model, inputs, cfg.seed)
    if cfg.refit_only:
        train_only_rows(model, reset)
    model = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": getattr(model, "find_unused_parameters", False)})
    opt = _make_optimizer(model, cfg, inputs, reset)
    start_epoch, best = 0, {"score": -math.inf, "epoch": -1, "metrics": {}, "state": None}
    resumed = ray.train.get_checkpoint()
    if resumed is not None:
        with resumed.as_directory() as d:
            ck = torch.load(Path(d) / CHECKPOINT_FILE, map_location=device, weights_only=False)
        _core(model).load_state_dict(ck["model_state"], strict=False)
        opt.load_state_dict(ck["optimizer_state"])
        start_epoch, best = ck["epoch"] + 1, ck["best"]
        logger.info("resumed from checkpoint at epoch %d", ck["epoch"])

    unlearning = cfg.objective in ("mmrecun", "neggrad")
    initial_valid: float | None = None
    sampler = make_sampler(inputs, seed=np_seed)
    masks = EvalMasks.of(inputs)
    train_shard = ray.train.get_dataset_shard("train")
    if unlearning:
        forget_shard = ray.train.get_dataset_shard("forget")
        retain_bs = max(1, int(round(cfg.batch_size / cfg.forget_ratio)))
        retain_stream = _cycle(train_shard, retain_bs, np_seed, cfg.shuffle_buffer)
    matched = cfg.matched_reverse
    if matched and inputs.forget_ref is None:
        raise ValueError("reverse_reference='matched' needs LoopInputs.forget_ref and a "
                         "'ref_item' column in the forget dataset")
    reverse = {"mmrecun": matched_reverse_bpr_loss if matched else reverse_bpr_loss,
               "neggrad": negated_bpr_loss}.get(cfg.objective)

    has_forget = unlearning and inputs.forget_user is not None and inputs.forget_user.size > 0
    done_at_start = False
    if unlearning and start_epoch == 0:
        # the utility floor is relative to the model before any unlearning step, and that
        # model is the fallback if even the first steps break the floor
        model.eval()
        with torch.no_grad():
            out0 = _core(model)()
        initial_valid = sharded_evaluate(out0, inputs, masks, inputs.valid_user, inputs.valid_item,
                                         (20,), rank, world, device)["recall@20"]
        # a target met before any step (e.g. once the rows only D_f trained are re-drawn)
        # needs no step: the first evaluation below then stops the run
        if has_forget and not cfg.refit_only:
            start_metrics, done_at_start = forget_state(out0, inputs, masks, cfg, sampler,
                                                        rank, world, device)
            if rank == 0:
                logger.info("before unlearning: valid recall@20 %.4f, forget recall@20 %.4f, "
                            "forget AUC %.3f, above reference %s%s", initial_valid,
                            start_metrics["forget_recall@20"], start_metrics["forget_auc"],
                            start_metrics.get("forget_above_reference", "-"),
                            " (target met: no step needed)" if done_at_start else "")
        if rank == 0:
            best["state"] = {k: v.detach().cpu().numpy().copy()
                             for k, v in _core(model).state_dict().items()}
    steps, stale, t0, last_log = 0, 0, time.perf_counter(), 0.0
    epoch, history = start_epoch - 1, []
    report_t = 0.0
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        ep_loss, ep_batches, ep_t = 0.0, 0, time.perf_counter()
        driver = forget_shard if unlearning else train_shard
        batches = [] if done_at_start else driver.iter_torch_batches(
            batch_size=cfg.batch_size, dtypes=torch.int64,
            local_shuffle_buffer_size=cfg.shuffle_buffer, local_shuffle_seed=np_seed + epoch)
        for batch in batches:
            out = model()
            core = _core(model)
            if unlearning:
                fu, fi = batch["user_id"].to(device), batch["item_id"].to(device)
                fj = batch["ref_item"].to(device) if matched else sampler.sample_torch(fu)
                fout = out
                if cfg.reverse_side == "user":
                    fout = ModelOutput(user=out.user, item=out.item.detach())
                elif cfg.reverse_side == "item":
                    fout = ModelOutput(user=out.user.detach(), item=out.item)
                fps, fns = pair_scores(fout, fu, fi, fj)
                rb = next(retain_stream)
                u, i = rb["user_id"].to(device), rb["item_id"].to(device)
            else:
                u, i = batch["user_id"].to(device), batch["item_id"].to(device)
            j = sampler.sample_torch(u)
            ps, ns = pair_scores(out, u, i, j)
            loss = cfg.beta * (bpr_loss(ps, ns) + core.auxiliary_loss(out, u, i, j)) \
                + cfg.reg_weight * core.regularization(out, u, i, j)
            if unlearning:
                loss = loss + cfg.alpha * reverse(fps, fns)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ep_loss += float(loss.detach())
            ep_batches += 1
            steps += 1
            if cfg.max_steps is not None and steps >= cfg.max_steps:
                break
        budget_done = cfg.max_steps is not None and steps >= cfg.max_steps
        last_epoch = epoch == cfg.epochs - 1 or budget_done
        if (epoch + 1) % cfg.eval_every and not last_epoch and not done_at_start:
            continue

        train_t = time.perf_counter() - ep_t
        model.eval()
        with torch.no_grad():
            out = _core(model)()
        metrics: dict[str, Any] = {"epoch": epoch, "steps": steps,
                                   "loss": ep_loss / max(ep_batches, 1),
                                   "epoch_seconds": train_t, "last_report_seconds": report_t}
        valid = sharded_evaluate(out, inputs, masks, inputs.valid_user, inputs.valid_item,
                                 cfg.eval_ks, rank, world, device)
        metrics.update({f"valid_{k}": v for k, v in valid.items()})
        score = valid.get("recall@20", 0.0)
        stop = False
        if has_forget:
            # stop once forgotten pairs sit where Gold would place them
            forget_metrics, stop = forget_state(out, inputs, masks, cfg, sampler,
                                                rank, world, device)
            metrics.update(forget_metrics)
            stop = stop and not cfg.refit_only
            # unlearning keeps the latest state that respects the utility floor: forgetting
            # is the goal, but never at more than (1 - min_valid_ratio) of the start's recall
            improved = True
            if (cfg.min_valid_ratio is not None and initial_valid
                    and score < cfg.min_valid_ratio * initial_valid):
                logger.warning("validation recall %.4f fell below %.2f x its start %.4f; stopping "
                               "and keeping the last state above the floor", score,
                               cfg.min_valid_ratio, initial_valid)
                stop, improved = True, False
        else:
            improved = score > best["score"]
        if improved:
            best = {"score": score, "epoch": epoch, "metrics": dict(metrics), "state": None}
            stale = 0
        else:
            stale += cfg.eval_every
            if stale >= cfg.patience:
                stop = True
        metrics["eval_seconds"] = time.perf_counter() - ep_t - train_t
        metrics["best_valid_recall@20"] = best["score"]
        metrics["best_epoch"] = best["epoch"]
        history.append(metrics)

        if rank == 0 and (time.perf_counter() - last_log >= cfg.log_every_s or stop or last_epoch):
            per = (time.perf_counter() - t0) / max(epoch + 1 - start_epoch, 1)
            logger.info("epoch %d/%d loss %.4f valid recall@20 %.4f (best %.4f @%d) "
                        "%.2fs/epoch ETA<=%.0fs", epoch + 1, cfg.epochs, metrics["loss"],
                        score, best["score"], best["epoch"] + 1, per,
                        per * (cfg.epochs - epoch - 1))
            last_log = time.perf_counter()
        if improved and rank == 0:
            best["state"] = {k: v.detach().cpu().numpy().copy()
                             for k, v in _core(model).state_dict().items()}
        # Persisting a checkpoint costs ~1 s here (Ray Train syncs it to storage): do it at
        # the end and every `checkpoint_every` evaluations; the best state travels inside
        # it, so a resumed run still exports the best model.
        final = stop or budget_done or last_epoch
        checkpoint_now = final or len(history) % cfg.checkpoint_every == 0
        # every ray.train.report is a cross-worker sync through an actor (~1-2 s on a busy
        # 2-CPU node, more than an lfm2k epoch): report every `report_every` evaluations
        if not (checkpoint_now or len(history) % cfg.report_every == 0):
            continue
        rep_t = time.perf_counter()
        if checkpoint_now:
            with tempfile.TemporaryDirectory(prefix="mmrecun-ckpt-") as d:
                checkpoint = None
                if rank == 0:
                    _save_checkpoint(Path(d), model, opt, cfg, epoch, best, metrics,
                                     inputs.manifest_hash)
                    checkpoint = ray.train.Checkpoint.from_directory(d)
                ray.train.report(metrics, checkpoint=checkpoint)
        else:
            ray.train.report(metrics)
        report_t = time.perf_counter() - rep_t
        if stop or budget_done:
            break

    return {"best_score": best["score"], "best_epoch": best["epoch"],
            "best_metrics": best["metrics"], "epochs_run": epoch + 1 - start_epoch,
            "steps": steps, "train_seconds": time.perf_counter() - t0,
            "state": best["state"], "history": history,
            "optimizer": _to_numpy(opt.state_dict()) if rank == 0 else None}


def _to_numpy(x: Any) -> Any:
    """Tensors -> numpy, recursively (Ray Train refuses tensors in return values)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_numpy(v) for v in x)
    return x


def _to_torch(x: Any) -> Any:
    """Inverse of :func:`_to_numpy` for optimizer states."""
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x))
    if isinstance(x, dict):
        return {k: _to_torch(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_torch(v) for v in x)
    return x
