"""Ray layer: starts (or joins) Ray, shards datasets over Ray Train workers and runs
:func:`~mmrecun_ray.training.loop.train_loop` under a ``TorchTrainer`` (DDP; gloo on
CPU, NCCL on GPUs). ``workers=0`` is Ray Train's local mode: the loop runs in this
process without worker actors.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.data
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from mmrecun_ray.objectives import Objective
from mmrecun_ray.storage import resolve
from mmrecun_ray.training.config import LoopConfig, LoopInputs
from mmrecun_ray.training.loop import CHECKPOINT_FILE, load_checkpoint, train_loop

logger = logging.getLogger(__name__)


@dataclass
class Scaling:
    """How to run the loop.

    Attributes:
        workers: Ray Train workers (DDP ranks); 0 = local mode in this process.
        gpus: one GPU per worker and NCCL instead of gloo.
        cpus_per_worker: CPU reservation per worker; fractional values leave room for
            Ray Data and Tune drivers on small machines.
        max_failures: worker-group restarts after a worker dies (each resumes from the
            last checkpoint: the counts of epochs and steps carry on).
        storage_uri: where Ray Train keeps checkpoints (local folder or ``s3://``).
    """

    workers: int = 2
    gpus: bool = False
    cpus_per_worker: float = 0.5
    max_failures: int = 1
    storage_uri: str | None = None
    extra_resources: dict[str, float] = field(default_factory=dict)


@dataclass
class LoopResult:
    """What a finished run hands back to the caller."""

    state: dict[str, Any] | None
    best_metrics: dict[str, Any]
    best_epoch: int
    epochs_run: int
    steps: int
    wall_seconds: float
    train_seconds: float
    history: list[dict[str, Any]]
    checkpoint_path: str | None = None
    optimizer: dict[str, Any] | None = None
    start_metrics: dict[str, Any] = field(default_factory=dict)
    resumed_from_epoch: int | None = None

    @classmethod
    def of(cls, ret: dict[str, Any], state: dict[str, Any] | None, wall_seconds: float,
           checkpoint_path: str | None = None) -> "LoopResult":
        """From the loop's return value (see :func:`mmrecun_ray.training.loop.train_loop`)."""
        return cls(state=state, best_metrics=ret.get("best_metrics", {}),
                   best_epoch=ret.get("best_epoch", -1), epochs_run=ret.get("epochs_run", 0),
                   steps=ret.get("steps", 0), wall_seconds=wall_seconds,
                   train_seconds=ret.get("train_seconds", 0.0), history=ret.get("history", []),
                   checkpoint_path=checkpoint_path, optimizer=ret.get("optimizer"),
                   start_metrics=ret.get("start_metrics", {}),
                   resumed_from_epoch=ret.get("resumed_from_epoch"))


def ensure_ray(num_cpus: int | None = None, object_store_mb: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (``ray job submit`` sets it) or start a
    local single-node Ray. Idempotent."""
    if ray.is_initialized():
        return
    ray.data.DataContext.get_current().enable_progress_bars = False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    # address="local": always a fresh local instance, never one a stranger left on the host
    kwargs: dict[str, Any] = {"address": "local", "include_dashboard": False, "log_to_driver": True}
    if num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    mb = object_store_mb or int(os.environ.get("MMRECUN_OBJECT_STORE_MB", "0") or 0)
    if mb:
        kwargs["object_store_memory"] = mb * 1024 * 1024
    ray.init(**kwargs)


def run_loop(cfg: LoopConfig, objective: Objective, inputs: LoopInputs,
             datasets: dict[str, ray.data.Dataset], scaling: Scaling, name: str = "mmrecun",
             callbacks: list[Any] | None = None) -> LoopResult:
    """Run the loop with ``objective`` on Ray Train and collect the result.

    ``datasets`` holds the objective's ``streams`` (``"train"``, and ``"forget"`` for
    forgetting objectives); Ray Train splits each over the workers
    (``streaming_split(equal=True)``).
    """
    missing = [s for s in objective.streams if s not in datasets]
    if missing:
        raise ValueError(f"objective {objective.name!r} needs datasets {missing}")
    ensure_ray()
    t0 = time.perf_counter()
    inputs_ref = ray.put(inputs)
    run_cfg_kwargs: dict[str, Any] = {"name": f"{name}-{uuid.uuid4().hex[:8]}",
                                      "failure_config": ray.train.FailureConfig(max_failures=scaling.max_failures),
                                      "checkpoint_config": ray.train.CheckpointConfig(num_to_keep=1)}
    if scaling.storage_uri:
        fs, path = resolve(scaling.storage_uri)
        run_cfg_kwargs.update(storage_path=path, storage_filesystem=fs)
    if callbacks:
        run_cfg_kwargs["callbacks"] = callbacks
    resources = {"CPU": scaling.cpus_per_worker, **scaling.extra_resources}
    if scaling.gpus:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"loop": cfg.to_dict(), "objective": objective, "inputs": inputs_ref},
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.workers, use_gpu=scaling.gpus,
                                               resources_per_worker=resources if scaling.workers else None),
        torch_config=TorchConfig(backend="nccl" if scaling.gpus else "gloo"),
        datasets=datasets,
        run_config=ray.train.RunConfig(**run_cfg_kwargs),
    )
    result = trainer.fit()
    if result.error:
        raise result.error
    ret = result.return_value or {}
    state = ret.get("state")
    ckpt_path = result.checkpoint.path if result.checkpoint is not None and scaling.workers else None
    if state is None and result.checkpoint is not None:
        state = _state_from_checkpoint(result.checkpoint)
    return LoopResult.of(ret, state, time.perf_counter() - t0, ckpt_path)


def _state_from_checkpoint(checkpoint: ray.train.Checkpoint) -> dict[str, Any]:
    """Model state (numpy) from a checkpoint written by the loop: the kept state, else the
    last one."""
    from pathlib import Path
    with checkpoint.as_directory() as d:
        ck = load_checkpoint(Path(d) / CHECKPOINT_FILE)
    state = (ck.get("best") or {}).get("state") or ck["model_state"]
    return {k: v.cpu().numpy() for k, v in state.items()}
