"""The one training/unlearning loop, run by every Ray Train worker (or in-process in
local mode). What it optimises and when it stops is an objective object
(:mod:`mmrecun_ray.objectives`); the loop itself is a plain torch loop:

- start (:func:`build_start`): build the model over the run's graph and features, load
  the starting weights, re-draw the rows the method names, let the objective freeze what
  must not train; the same function gives the driver a run's starting point
  (:func:`start_on_driver`) when a method checks, before starting any worker, whether a
  step is needed at all;
- per step: a batch of the objective's epoch stream (this worker's Ray Data shard), a
  forward over the full graph (DDP all-reduces the gradients), the objective's loss;
- per evaluation: sharded full-ranking validation (each rank ranks a slice of the users;
  sums are all-reduced, so the metrics are exact), the objective's verdict (keep this
  state? stop?), ``ray.train.report`` with a checkpoint on the evaluations the cadence
  picks. Checkpoints hold tensors and JSON-able values only and load with
  ``weights_only=True``; a resumed run continues the step and epoch counts and the
  objective's state.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from mmrecun_ray.errors import DataError
from mmrecun_ray.evaluation.ranking import build_csr, evaluate_split
from mmrecun_ray.models import build_model
from mmrecun_ray.models.base import ModelOutput, Recommender
from mmrecun_ray.objectives import ForgetPairs, NegativeSampler, Objective, Verdict
from mmrecun_ray.training.arrays import shared_tensor, to_numpy, to_torch
from mmrecun_ray.training.config import LoopConfig, LoopInputs

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
#: metric cut-offs of every evaluation's metrics
_METRICS = ("recall", "ndcg", "precision", "map", "hit")


def _fetch(obj: Any) -> Any:
    """Resolve an object-store reference (zero-copy numpy on the same node)."""
    return ray.get(obj) if isinstance(obj, ray.ObjectRef) else obj


def _core(model: torch.nn.Module) -> Recommender:
    return model.module if hasattr(model, "module") else model  # type: ignore[return-value]


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


def make_sampler(inputs: LoopInputs, seed: int) -> NegativeSampler:
    """Negatives over the items still in the catalogue, never a training pair."""
    allowed = None if inputs.active_items is None else np.flatnonzero(np.asarray(inputs.active_items))
    return NegativeSampler(inputs.known_keys, inputs.n_items, allowed, seed=seed)


def build_start(cfg: LoopConfig, objective: Objective, inputs: LoopInputs,
                device: torch.device) -> tuple[Recommender, list[tuple[torch.nn.Parameter, torch.Tensor]]]:
    """The run's starting model (not yet wrapped by DDP) and the ``(parameter, rows)`` it
    re-drew: ``inputs.reset_users`` / ``reset_items`` rows re-drawn from the initial
    distribution (same seed on every rank), then :meth:`Objective.prepare`."""
    torch.manual_seed(cfg.seed)
    model = make_model(cfg, inputs, device)

    def rows(a: np.ndarray | None) -> torch.Tensor | None:
        return None if a is None else torch.from_numpy(np.asarray(a, dtype=np.int64))
    reset = model.reinit_id_rows(rows(inputs.reset_users), rows(inputs.reset_items), seed=cfg.seed)
    objective.prepare(model, reset)
    return model, reset


def make_optimizer(model: torch.nn.Module, cfg: LoopConfig, objective: Objective,
                   inputs: LoopInputs,
                   reset: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> torch.optim.Adam:
    """Adam at ``cfg.learning_rate``, continuing ``inputs.init_optimizer`` when the
    objective says so (a converged model's moment estimates keep steps at the training
    scale); the moments of re-drawn rows are cleared (as for parameters never trained)."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    if inputs.init_optimizer is not None and objective.continue_optimizer:
        try:
            opt.load_state_dict(to_torch(inputs.init_optimizer))
            for group in opt.param_groups:
                group["lr"] = cfg.learning_rate
        except (ValueError, KeyError) as e:  # a different parameter layout: start fresh
            logger.warning("optimizer state not reused (%s)", e)
    for param, rows in reset:
        for moment in opt.state.get(param, {}).values():
            if torch.is_tensor(moment) and moment.shape == param.shape:
                moment[rows.to(moment.device)] = 0
    return opt


def _allreduce(values: np.ndarray, device: torch.device) -> np.ndarray:
    """Sum a float vector over workers (identity in a single process)."""
    if dist.is_available() and dist.is_initialized():
        t = torch.as_tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.cpu().numpy()
    return values


@dataclass
class View:
    """The loop as an objective sees it (:class:`~mmrecun_ray.objectives.LoopView`): this
    worker's rank (``worker``) of ``world``, its negative sampler, its dataset shards as streams, and exact sharded
    ranking metrics."""

    inputs: LoopInputs
    cfg: LoopConfig
    worker: int
    world: int
    device: torch.device
    sampler: NegativeSampler
    shards: dict[str, Any] = field(default_factory=dict)
    forget: ForgetPairs | None = None
    _streams: dict[tuple[str, int], Iterator[dict[str, torch.Tensor]]] = field(default_factory=dict)
    _cache: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        i = self.inputs
        self.csr = build_csr(i.known_keys // i.n_items, i.known_keys % i.n_items, i.n_users)
        self.banned = None if i.active_items is None else np.flatnonzero(~np.asarray(i.active_items))
        if i.forget_user is not None:
            self.forget = ForgetPairs(np.asarray(i.forget_user, np.int64),
                                      np.asarray(i.forget_item, np.int64),
                                      None if i.forget_ref is None else np.asarray(i.forget_ref, np.int64))

    @property
    def eval_ks(self) -> tuple[int, ...]:
        return self.cfg.eval_ks

    def _batches(self, name: str, batch_size: int, seed: int) -> Iterator[dict[str, torch.Tensor]]:
        """Batches of this worker's shard of ``name``, shuffled with ``seed``.

        The first full pass streams the shard through Ray Data (local shuffle buffer) and,
        when it has at most ``cfg.cache_rows`` rows, keeps its columns on ``device``;
        later passes draw a full permutation of the kept rows (``torch.randperm`` seeded
        with ``seed``): no Ray Data execution per epoch. The rows a worker keeps are the
        ones Ray Train's split gave it on that pass (equal counts on every rank, so every
        rank takes the same number of steps)."""
        cached = self._cache.get(name)
        if cached is not None:
            yield from self._cached_batches(cached, batch_size, seed)
            return
        keep, rows = self.cfg.cache_rows > 0, 0
        parts: dict[str, list[torch.Tensor]] = {}
        for batch in self.shards[name].iter_torch_batches(
                batch_size=batch_size, dtypes=torch.int64,
                local_shuffle_buffer_size=self.cfg.shuffle_buffer, local_shuffle_seed=seed):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            if keep:
                rows += next(iter(batch.values())).shape[0]
                keep = rows <= self.cfg.cache_rows
                if keep:  # a copy: Ray Data's buffers may be reused once handed on
                    for k, v in batch.items():
                        parts.setdefault(k, []).append(v.clone())
                else:
                    parts.clear()
            yield batch
        if keep and parts:
            self._cache[name] = {k: torch.cat(v) for k, v in parts.items()}

    def _cached_batches(self, cols: dict[str, torch.Tensor], batch_size: int,
                        seed: int) -> Iterator[dict[str, torch.Tensor]]:
        """``ceil(n / batch_size)`` batches of a random permutation of the ``(n,)`` columns."""
        n = next(iter(cols.values())).shape[0]
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).to(self.device)
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            yield {k: v[idx] for k, v in cols.items()}

    def epoch(self, name: str, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        """One pass over this worker's shard of ``name`` (reshuffled per epoch)."""
        return self._batches(name, self.cfg.batch_size, self.cfg.seed * 1000 + self.worker + epoch)

    def stream(self, name: str, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        key = (name, int(batch_size))
        if key not in self._streams:
            self._streams[key] = self._cycle(name, int(batch_size))
        return self._streams[key]

    def close(self) -> None:
        """End the endless streams (their Ray Data iterators shut down now, not when the
        garbage collector finds them after Ray is gone)."""
        for gen in self._streams.values():
            gen.close()
        self._streams.clear()
        self._cache.clear()

    def _cycle(self, name: str, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
        seed = self.cfg.seed * 1000 + self.worker
        while True:
            got = False
            for batch in self._batches(name, batch_size, seed):
                got = True
                yield batch
            if not got:
                raise DataError(f"dataset {name!r}: this worker's shard is empty")
            seed += 1

    @torch.no_grad()
    def rank(self, out: ModelOutput, users: np.ndarray, items: np.ndarray,
             ks: tuple[int, ...], mask_banned: bool = True) -> dict[str, float]:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        mine_users = np.unique(users)
        mine_users = mine_users[mine_users % self.world == self.worker]
        sel = np.isin(users, mine_users)
        m: dict[str, float] = {}
        n = 0.0
        if mine_users.size:
            m = evaluate_split(out.user, out.item, self.csr, (users[sel], items[sel]),
                               self.inputs.n_users, self.inputs.n_items, ks=ks,
                               banned_items=self.banned if mask_banned else None)
            n = float(m.get("n_users", mine_users.size))
        keys = [f"{name}@{k}" for k in ks for name in _METRICS]
        vec = _allreduce(np.array([m.get(k, 0.0) * n for k in keys] + [n], dtype=np.float64),
                         self.device)
        total = max(vec[-1], 1.0)
        res = {k: float(v / total) for k, v in zip(keys, vec[:-1])}
        res["n_users"] = float(vec[-1])
        return res

    def validate(self, out: ModelOutput) -> dict[str, float]:
        """Validation metrics of ``out`` (items that left the catalogue masked)."""
        return self.rank(out, self.inputs.valid_user, self.inputs.valid_item, self.cfg.eval_ks)


def _state_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in _core(model).state_dict().items()}


def _evaluate_start(model: Recommender, objective: Objective, view: View) -> tuple[dict[str, float], Verdict]:
    model.eval()
    with torch.no_grad():
        out = model()
    valid = view.validate(out)
    return valid, objective.start(view, out, valid)


def zero_step_result(model: Recommender, opt: torch.optim.Optimizer, metrics: dict[str, Any],
                     seconds: float) -> dict[str, Any]:
    """A finished run's result (same keys as :func:`train_loop`'s) that took no step."""
    return {"best_score": metrics.get("valid_recall@20"), "best_epoch": -1, "best_metrics": metrics,
            "start_metrics": metrics, "epochs_run": 0, "steps": 0, "train_seconds": seconds,
            "state": _state_numpy(model), "history": [], "optimizer": to_numpy(opt.state_dict()),
            "resumed_from_epoch": None}


def start_on_driver(cfg: LoopConfig, objective: Objective, inputs: LoopInputs,
                    evaluate: bool = True) -> dict[str, Any] | None:
    """The run's start in this process (no Ray): the same :func:`build_start` the workers
    run. With ``evaluate``, the objective's verdict on the starting model decides: a
    finished zero-step result when it says stop, else None (the caller then starts the
    workers). Without, the zero-step result (the starting state) is returned as is."""
    t0 = time.perf_counter()
    device = torch.device("cpu")
    model, reset = build_start(cfg, objective, inputs, device)
    opt = make_optimizer(model, cfg, objective, inputs, reset)
    metrics: dict[str, Any] = {"steps": 0}
    if evaluate:
        view = View(inputs, cfg, 0, 1, device, make_sampler(inputs, cfg.seed * 1000))
        valid, verdict = _evaluate_start(model, objective, view)
        if not verdict.stop:
            return None
        metrics.update({**{f"valid_{k}": v for k, v in valid.items()}, **verdict.metrics})
    return zero_step_result(model, opt, metrics, time.perf_counter() - t0)


def _save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     run: dict[str, Any]) -> None:
    """Tensors and JSON-able values only (``weights_only=True`` loads it)."""
    best = dict(run["best"])
    best["state"] = None if best["state"] is None else {k: torch.from_numpy(v) for k, v in best["state"].items()}
    torch.save({"model_state": _core(model).state_dict(), "optimizer_state": opt.state_dict(),
                **{k: v for k, v in run.items() if k != "best"}, "best": best},
               path / CHECKPOINT_FILE)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint written by the loop, refusing anything but tensors and plain values.

    Raises:
        DataError: not a loop checkpoint (or one holding arbitrary objects).
    """
    try:
        ck = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise DataError(f"{path}: not a loadable checkpoint ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]})") from e
    if not isinstance(ck, dict) or "model_state" not in ck:
        raise DataError(f"{path}: not a loop checkpoint (no model_state)")
    return ck


def train_loop(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker function.

    ``config``: ``{"loop": LoopConfig.to_dict(), "objective": Objective,
    "inputs": ObjectRef[LoopInputs] | LoopInputs}`` and optionally ``"datasets"``
    (stream -> Ray Train dataset name, default the stream's own), ``"job"`` (a tag: a
    checkpoint with another tag is not this run's to resume) and ``"progress"`` (rank 0
    calls it with each evaluation's metrics; :mod:`mmrecun_ray.console`). Datasets: the
    objective's ``streams`` (``"train"`` and, for forgetting objectives, ``"forget"``),
    columns ``user_id``, ``item_id`` (and ``ref_item``).

    Returns (rank 0's value reaches the driver): the kept state (numpy) and its metrics,
    epochs and steps run (totals over restarts), the history of evaluations and the final
    optimizer state.
    """
    cfg = LoopConfig.from_dict(config["loop"])
    objective: Objective = config["objective"]
    inputs: LoopInputs = _fetch(config["inputs"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()

    model, reset = build_start(cfg, objective, inputs, device)
    model = ray.train.torch.prepare_model(
        model, parallel_strategy_kwargs={"find_unused_parameters": getattr(model, "find_unused_parameters", False)})
    opt = make_optimizer(model, cfg, objective, inputs, reset)
    names = config.get("datasets") or {}
    view = View(inputs, cfg, rank, world, device, make_sampler(inputs, cfg.seed * 1000 + rank),
                shards={name: ray.train.get_dataset_shard(names.get(name, name)) for name in objective.streams})
    progress = config.get("progress") if rank == 0 else None
    run: dict[str, Any] = {"epoch": -1, "steps": 0, "train_seconds": 0.0, "history": [],
                           "objective_state": {}, "start_metrics": {}, "resumed_from_epoch": None,
                           "best": {"score": None, "epoch": -1, "metrics": {}, "state": None},
                           "manifest_hash": inputs.manifest_hash, "job": config.get("job")}
    done = False
    resumed, ck = ray.train.get_checkpoint(), None
    if resumed is not None:
        with resumed.as_directory() as d:
            ck = load_checkpoint(Path(d) / CHECKPOINT_FILE, device)
        if ck.get("job") != run["job"]:  # another job's of the same Ray Train run
            ck = None
    if ck is not None:
        _core(model).load_state_dict(ck["model_state"], strict=False)
        opt.load_state_dict(ck["optimizer_state"])
        objective.load_state_dict(ck["objective_state"])
        best = dict(ck["best"])
        if best["state"] is not None:
            best["state"] = {k: v.cpu().numpy() for k, v in best["state"].items()}
        run.update({k: ck[k] for k in ("epoch", "steps", "train_seconds", "history",
                                        "objective_state", "start_metrics")}, best=best,
                   resumed_from_epoch=int(ck["epoch"]))
        logger.info("resumed from the checkpoint of epoch %d (%d steps)", ck["epoch"] + 1, ck["steps"])
    else:
        valid0, verdict0 = _evaluate_start(_core(model), objective, view)
        run["start_metrics"] = {**{f"valid_{k}": v for k, v in valid0.items()}, **verdict0.metrics}
        if verdict0.keep:
            run["best"] = {"score": valid0.get("recall@20"), "epoch": -1,
                           "metrics": dict(run["start_metrics"]),
                           "state": _state_numpy(model) if rank == 0 else None}
        done = verdict0.stop
        if progress is not None:
            progress({**run["start_metrics"], "epoch": -1, "epochs": cfg.epochs})

    t0, last_log = time.perf_counter(), 0.0
    seconds_before = float(run["train_seconds"])
    report_t = 0.0
    for epoch in range(int(run["epoch"]) + 1, cfg.epochs):
        if done:
            break
        model.train()
        on_epoch = getattr(_core(model), "on_epoch_start", None)
        if on_epoch is not None:
            on_epoch(epoch, cfg.seed)
        ep_loss, ep_batches, ep_t = 0.0, 0, time.perf_counter()
        for batch in view.epoch(objective.epoch_stream, epoch):
            out = model()
            loss = objective.loss(_core(model), out, batch, view)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ep_loss += float(loss.detach())
            ep_batches += 1
            run["steps"] += 1
            if cfg.max_steps is not None and run["steps"] >= cfg.max_steps:
                break
        run["epoch"] = epoch
        budget_done = cfg.max_steps is not None and run["steps"] >= cfg.max_steps
        last_epoch = epoch == cfg.epochs - 1 or budget_done
        if (epoch + 1) % cfg.eval_every and not last_epoch:
            continue

        train_t = time.perf_counter() - ep_t
        model.eval()
        with torch.no_grad():
            out = _core(model)()
        valid = view.validate(out)
        verdict = objective.judge(view, out, valid, epoch)
        metrics: dict[str, Any] = {"epoch": epoch, "steps": run["steps"],
                                   "loss": ep_loss / max(ep_batches, 1),
                                   "epoch_seconds": train_t, "last_report_seconds": report_t,
                                   **{f"valid_{k}": v for k, v in valid.items()}, **verdict.metrics}
        if verdict.keep:
            run["best"] = {"score": valid.get("recall@20"), "epoch": epoch, "metrics": dict(metrics),
                           "state": _state_numpy(model) if rank == 0 else None}
        metrics["eval_seconds"] = time.perf_counter() - ep_t - train_t
        metrics["best_valid_recall@20"] = run["best"]["score"]
        metrics["best_epoch"] = run["best"]["epoch"]
        run["history"].append(metrics)
        run["objective_state"] = objective.state_dict()
        run["train_seconds"] = seconds_before + time.perf_counter() - t0
        stop = verdict.stop or budget_done or last_epoch
        if progress is not None:
            progress({**metrics, "epochs": cfg.epochs})

        if rank == 0 and (time.perf_counter() - last_log >= cfg.log_every_s or stop):
            per = (time.perf_counter() - t0) / max(epoch - int(run["resumed_from_epoch"] or -1), 1)
            best = run["best"]["score"]
            logger.info("epoch %d/%d loss %.4f valid recall@20 %.4f (kept %s @%d) %.2fs/epoch",
                        epoch + 1, cfg.epochs, metrics["loss"], valid.get("recall@20", math.nan),
                        "-" if best is None else f"{best:.4f}", run["best"]["epoch"] + 1, per)
            last_log = time.perf_counter()
        # Persisting a checkpoint costs ~1 s here (Ray Train syncs it to storage) and every
        # ray.train.report is a cross-worker sync: checkpoint at the end and every
        # `checkpoint_every` evaluations, report every `report_every`.
        n_eval = len(run["history"])
        checkpoint_now = stop or n_eval % cfg.checkpoint_every == 0
        if checkpoint_now or n_eval % cfg.report_every == 0:
            rep_t = time.perf_counter()
            if checkpoint_now:
                with tempfile.TemporaryDirectory(prefix="mmrecun-ckpt-") as d:
                    checkpoint = None
                    if rank == 0:
                        _save_checkpoint(Path(d), model, opt, run)
                        checkpoint = ray.train.Checkpoint.from_directory(d)
                    ray.train.report(metrics, checkpoint=checkpoint)
            else:
                ray.train.report(metrics)
            report_t = time.perf_counter() - rep_t
        if stop:
            break

    view.close()
    best = run["best"]
    return {"best_score": best["score"], "best_epoch": best["epoch"], "best_metrics": best["metrics"],
            "start_metrics": run["start_metrics"], "epochs_run": int(run["epoch"]) + 1,
            "steps": int(run["steps"]), "train_seconds": float(run["train_seconds"]),
            "state": best["state"], "history": run["history"],
            "resumed_from_epoch": run["resumed_from_epoch"],
            "optimizer": to_numpy(opt.state_dict()) if rank == 0 else None}
