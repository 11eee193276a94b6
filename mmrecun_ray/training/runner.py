"""Ray layer: starts (or joins) Ray, shards datasets over Ray Train workers and runs
:func:`~mmrecun_ray.training.loop.train_loop` under a ``TorchTrainer`` (DDP; gloo on
CPU, NCCL on GPUs). ``workers=0`` is Ray Train's local mode: the loop runs in this
process without worker actors.

Start-up is what short jobs pay: a worker group (an empty ``TorchTrainer.fit()``) costs
about 10 s here, local mode nothing. :func:`choose_workers` (``--workers auto``) picks
local mode unless DDP's estimated time, start-up included, is lower; :func:`run_loops`
runs several loop jobs in one worker group (one start for all of them).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Sequence

import ray
import ray.data
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer

from mmrecun_ray import console
from mmrecun_ray.errors import DataError
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
        choice: how ``--workers auto`` chose ``workers`` (:func:`choose_workers`'s
            record; None when the number was given).
    """

    workers: int = 2
    gpus: bool = False
    cpus_per_worker: float = 0.5
    max_failures: int = 1
    storage_uri: str | None = None
    extra_resources: dict[str, float] = field(default_factory=dict)
    choice: dict[str, Any] | None = None

    @property
    def mode(self) -> str:
        """``local`` or ``N workers`` (what the console shows)."""
        return "local" if self.workers == 0 else f"{self.workers} worker{'s' * (self.workers > 1)}"


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


# --- --workers auto ---------------------------------------------------------------------------
#: Seconds a Ray Train worker group costs before the loop's first line runs: an empty
#: ``TorchTrainer.fit()`` with 1 or 2 workers, 9-11 s on the project's 2-CPU machine when
#: quiet (bench/startup.py; more under load). Local mode costs ~0 s. Every run pays it.
WORKER_GROUP_START_S = 10.0

#: Local-mode seconds of one optimisation step on the project's 2-CPU machine, as
#: ``(a, b)`` of ``a + b * edges / 10_000`` (a step of a graph model propagates over every
#: training edge), fitted on synthetic tiny and Last.fm-2K (bench/loop_overhead.py --models).
STEP_SECONDS: dict[str, tuple[float, float]] = {
    "mf": (0.004, 0.0005),
    "vbpr": (0.008, 0.001),
    "lightgcn": (0.006, 0.010),
    "freedom": (0.010, 0.012),
    "mgcn": (0.015, 0.020),
}
#: the step cost of a model not in the table (the dearest one's)
DEFAULT_STEP_SECONDS = (0.015, 0.020)


@dataclass
class Work:
    """What a command asks the loop to do, as ``--workers auto`` weighs it.

    Attributes:
        model: registered model name (its step cost, :data:`STEP_SECONDS`).
        pairs: pairs of the epoch stream (steps per epoch: ``ceil(pairs / batch_size)``
            in local mode, ``/ workers`` with DDP).
        epochs: epochs over all the runs (caps: early stopping may end runs sooner).
        batch_size: pairs per step per worker.
        edges: propagation-graph edges (default: ``pairs``).
        runs: loop runs, each one Ray Train run (each pays :data:`WORKER_GROUP_START_S`
            with workers).
    """

    model: str
    pairs: int
    epochs: int
    batch_size: int = 2048
    edges: int | None = None
    runs: int = 1

    def local_seconds(self) -> float:
        """Estimated optimisation seconds in local mode on the project's machine."""
        a, b = STEP_SECONDS.get(self.model, DEFAULT_STEP_SECONDS)
        edges = self.pairs if self.edges is None else self.edges
        steps = math.ceil(max(self.pairs, 1) / max(self.batch_size, 1))
        return float(self.epochs) * steps * (a + b * edges / 10_000)


@dataclass
class Cluster:
    """CPUs (and GPUs) the runs can use: ``cpus`` over every node, ``node_cpus`` of the
    driver's node (local mode runs there, its torch using them all)."""

    cpus: float
    node_cpus: float
    gpus: float = 0.0

    @classmethod
    def current(cls) -> "Cluster":
        """Ray's view when Ray runs (or ``RAY_ADDRESS`` names a cluster: joined here),
        else this machine's CPUs (those this process may run on)."""
        if os.environ.get("RAY_ADDRESS") or ray.is_initialized():
            ensure_ray()
            total = ray.cluster_resources()
            me = ray.get_runtime_context().get_node_id()
            node = next((n.get("Resources", {}) for n in ray.nodes() if n.get("NodeID") == me), total)
            return cls(cpus=float(total.get("CPU", 1.0)), node_cpus=float(node.get("CPU", 1.0)),
                       gpus=float(total.get("GPU", 0.0)))
        n = float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        return cls(cpus=n, node_cpus=n, gpus=0.0)


def estimate_seconds(work: Work, workers: int, cluster: Cluster, cpus_per_worker: float = 0.5) -> float:
    """Estimated wall seconds of ``work`` on ``workers`` (0 = local mode): start-up plus
    optimisation. DDP splits each epoch's steps over the workers, each computing with
    ``max(1, floor(cpus_per_worker))`` threads (Ray sets a worker's ``OMP_NUM_THREADS``
    so), against local mode's ``node_cpus`` threads; speed taken as proportional to the
    threads at work, as measured here (2-worker DDP with 1 CPU each ran Last.fm-2K at the
    0.33 s/epoch of local mode on 2 CPUs)."""
    local = work.local_seconds()
    if workers <= 0:
        return local
    threads = min(workers * max(1.0, math.floor(cpus_per_worker)), cluster.cpus)
    speedup = threads / max(cluster.node_cpus, 1.0)
    return work.runs * WORKER_GROUP_START_S + local / max(speedup, 1e-9)


def choose_workers(work: Work, cluster: Cluster, cpus_per_worker: float = 0.5, gpus: bool = False,
                   min_workers: int = 0, max_workers: int = 8) -> tuple[int, dict[str, Any]]:
    """``--workers auto``: the number of workers (0 = local mode) with the lowest
    :func:`estimate_seconds` among those whose CPUs the cluster has (ties: fewer); with
    ``gpus``, one worker per GPU of the cluster (at least one). Returns ``(workers,
    record)``; the record (JSON-able) says why, for the console and ``metrics.json``."""
    est: dict[int, float] = {}
    if gpus:
        best = max(1, min(int(cluster.gpus), max_workers))
        reason = f"--gpus: one worker per GPU ({best})"
    else:
        fits = [n for n in range(min_workers, max_workers + 1)
                if n == min_workers or n * cpus_per_worker <= cluster.cpus]
        est = {n: estimate_seconds(work, n, cluster, cpus_per_worker) for n in fits}
        best = min(est, key=lambda n: (round(est[n], 6), n))
        ddp = {n: v for n, v in est.items() if n > 0}
        rival = min(ddp, key=lambda n: (ddp[n], n)) if best == 0 and ddp else 0
        if best == 0:
            reason = (f"local mode: est. {est[0]:.0f} s of work; "
                      + (f"DDP at best ({rival} workers) est. {est[rival]:.0f} s "
                         f"({WORKER_GROUP_START_S:.0f} s start-up x {work.runs} run(s))" if rival else
                         "no room for workers"))
        else:
            reason = (f"{best}-worker DDP: est. {est[best]:.0f} s, start-up "
                      f"({WORKER_GROUP_START_S:.0f} s x {work.runs} run(s)) included, against "
                      f"{est[0]:.0f} s in local mode" if 0 in est else f"{best} workers (at least {min_workers})")
    record = {"requested": "auto", "workers": best, "reason": reason,
              "estimated_seconds": {str(n): round(v, 1) for n, v in est.items()},
              "work": {"model": work.model, "pairs": work.pairs, "epochs": work.epochs,
                       "batch_size": work.batch_size, "runs": work.runs},
              "cluster": {"cpus": cluster.cpus, "node_cpus": cluster.node_cpus, "gpus": cluster.gpus},
              "worker_group_start_s": WORKER_GROUP_START_S}
    return best, record


def ensure_ray(num_cpus: int | None = None, object_store_mb: int | None = None) -> None:
    """Join the cluster named by ``RAY_ADDRESS`` (``ray job submit`` sets it) or start a
    local single-node Ray. Idempotent. Worker output reaches this process only when the
    console is verbose (or not configured: library use); see :mod:`mmrecun_ray.console`."""
    if ray.is_initialized():
        console.route_ray_logs()
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    ray.data.DataContext.get_current().enable_progress_bars = False
    console.route_ray_logs()  # before init: its own lines go where the console says
    options = console.ray_init_options()
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **options)
    else:
        # address="local": always a fresh local instance, never one a stranger left on the host
        kwargs: dict[str, Any] = {"address": "local", "include_dashboard": False, **options}
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        mb = object_store_mb or int(os.environ.get("MMRECUN_OBJECT_STORE_MB", "0") or 0)
        if mb:
            kwargs["object_store_memory"] = mb * 1024 * 1024
        ray.init(**kwargs)
    console.forget_queue()
    console.route_ray_logs()
    console.link_ray_session()


@dataclass
class LoopJob:
    """One run of the loop, as :func:`run_loop` takes it (an item of :func:`run_loops`).

    ``datasets`` holds the objective's ``streams`` (``"train"``, and ``"forget"`` for
    forgetting objectives); ``name`` labels the run (Ray Train's run name, the console).
    """

    cfg: LoopConfig
    objective: Objective
    inputs: LoopInputs
    datasets: dict[str, ray.data.Dataset]
    name: str = "mmrecun"


def run_loop(cfg: LoopConfig, objective: Objective, inputs: LoopInputs,
             datasets: dict[str, ray.data.Dataset], scaling: Scaling, name: str = "mmrecun",
             callbacks: list[Any] | None = None) -> LoopResult:
    """Run the loop with ``objective`` on Ray Train and collect the result.

    ``datasets`` holds the objective's ``streams`` (``"train"``, and ``"forget"`` for
    forgetting objectives); Ray Train splits each over the workers
    (``streaming_split(equal=True)``).
    """
    return run_loops([LoopJob(cfg, objective, inputs, datasets, name)], scaling, name=name,
                     callbacks=callbacks)[0]


def _dataset_names(jobs: Sequence[LoopJob]) -> tuple[dict[str, ray.data.Dataset], list[dict[str, str]]]:
    """One Ray Train dataset per distinct Dataset object (the jobs of a Gold band share
    D_r): ``(name -> dataset, per job: stream -> name)``; a stream keeps its own name
    unless another dataset took it (then ``stream-<k>``)."""
    by_id: dict[int, str] = {}
    named: dict[str, ray.data.Dataset] = {}
    maps: list[dict[str, str]] = []
    for job in jobs:
        m: dict[str, str] = {}
        for stream in job.objective.streams:
            ds = job.datasets[stream]
            if id(ds) not in by_id:
                name = stream if stream not in named else f"{stream}-{len(named)}"
                by_id[id(ds)], named[name] = name, ds
            m[stream] = by_id[id(ds)]
        maps.append(m)
    return named, maps


def run_loops(jobs: Sequence[LoopJob], scaling: Scaling, name: str | None = None,
              callbacks: list[Any] | None = None) -> list[LoopResult]:
    """Run ``jobs`` one after the other in ONE Ray Train run: one worker-group start
    (about 10 s here) for all of them instead of one each. Returns one result per job,
    in order, each as :func:`run_loop` would return it (``wall_seconds``: the job's own
    time in the loop; the first job also carries the run's start-up). In local mode there
    is no worker group to share: each job is a run of its own, as with :func:`run_loop`.

    Fault tolerance as for one job: a restarted worker group skips the jobs already
    finished (rank 0 stores each finished job's result under the run's storage folder)
    and resumes the job in progress from its last checkpoint (checkpoints carry the job's
    index, so no job resumes from another's).
    """
    for job in jobs:
        missing = [s for s in job.objective.streams if s not in job.datasets]
        if missing:
            raise ValueError(f"objective {job.objective.name!r} needs datasets {missing}")
    if scaling.workers == 0 and len(jobs) > 1:  # no worker group to share: one (free) run each
        return [r for job in jobs for r in _fit([job], scaling, name, callbacks)]
    return _fit(jobs, scaling, name, callbacks) if jobs else []


def _fit(jobs: Sequence[LoopJob], scaling: Scaling, name: str | None,
         callbacks: list[Any] | None) -> list[LoopResult]:
    """One ``TorchTrainer.fit()`` running ``jobs`` in order (:func:`train_jobs`)."""
    ensure_ray()
    t0 = time.perf_counter()
    local = scaling.workers == 0
    named, maps = _dataset_names(jobs)
    refs: dict[int, Any] = {}  # one object-store copy per distinct inputs (none in local mode)
    for job in jobs:
        if not local and id(job.inputs) not in refs:
            refs[id(job.inputs)] = ray.put(job.inputs)
    multi = len(jobs) > 1
    # the loop keeps its verdicts' state in the objective: workers get a copy of it, and so
    # does local mode (else a second run of the same objective starts from the first's best)
    configs = [{"loop": job.cfg.to_dict(), "objective": copy.deepcopy(job.objective) if local else job.objective,
                "inputs": job.inputs if local else refs[id(job.inputs)], "datasets": maps[i],
                "job": i if multi else None} for i, job in enumerate(jobs)]
    run_name = f"{name or jobs[0].name}-{uuid.uuid4().hex[:8]}"
    run_cfg_kwargs: dict[str, Any] = {"name": run_name,
                                      "failure_config": ray.train.FailureConfig(max_failures=scaling.max_failures),
                                      "checkpoint_config": ray.train.CheckpointConfig(num_to_keep=1)}
    store = None
    if scaling.storage_uri:
        fs, path = resolve(scaling.storage_uri)
        run_cfg_kwargs.update(storage_path=path, storage_filesystem=fs)
        if multi and not local:
            store = (fs, f"{path.rstrip('/')}/{run_name}/loop-jobs")
    if callbacks:
        run_cfg_kwargs["callbacks"] = callbacks
    resources = {"CPU": scaling.cpus_per_worker, **scaling.extra_resources}
    if scaling.gpus:
        resources["GPU"] = 1
    display = console.RunsProgress([j.name for j in jobs], [j.cfg.epochs for j in jobs], scaling.mode) \
        if console.configured() and console.on_driver() else None
    queue = console.progress_queue() if display is not None and not local else None
    loop_config: dict[str, Any] = {"jobs": configs, "results": store,
                                   "progress": display if local else
                                   (console.QueueSink(queue) if queue is not None else None)}
    trainer = TorchTrainer(
        train_jobs, train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.workers, use_gpu=scaling.gpus,
                                               resources_per_worker=resources if scaling.workers else None),
        torch_config=TorchConfig(backend="nccl" if scaling.gpus else "gloo"),
        datasets=named,
        run_config=ray.train.RunConfig(**run_cfg_kwargs),
    )
    try:
        if queue is not None:
            with console.drain_into(queue, display):
                result = trainer.fit()
        else:
            result = trainer.fit()
        if result.error:
            raise result.error
    except BaseException:
        if display is not None:
            display.close(failed=True)
        raise
    rets = result.return_value or [{} for _ in jobs]
    wall = time.perf_counter() - t0
    startup = max(0.0, wall - sum(float(r.get("job_seconds", 0.0)) for r in rets))
    out = []
    for i, ret in enumerate(rets):
        last = i == len(rets) - 1
        state = ret.get("state")
        if state is None and last and result.checkpoint is not None and not local:
            state = _state_from_checkpoint(result.checkpoint)  # (local mode's are temporary)
        ckpt = result.checkpoint.path if last and result.checkpoint is not None and scaling.workers else None
        seconds = wall if not multi else float(ret.get("job_seconds", 0.0)) + (startup if i == 0 else 0.0)
        out.append(LoopResult.of(ret, state, seconds, ckpt))
    if display is not None:
        display.close([(r.epochs_run, r.wall_seconds) for r in out])
    return out


def train_jobs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Ray Train worker function of :func:`run_loops`: each job of ``config["jobs"]``
    through :func:`~mmrecun_ray.training.loop.train_loop`, in order. A job whose result
    rank 0 stored in ``config["results"]`` (``(filesystem, folder)``) before a restart is
    not run again. Returns (rank 0's reaches the driver) the loop's results, each with
    ``job_seconds``."""
    jobs, store, progress = config["jobs"], config.get("results"), config.get("progress")
    rank = ray.train.get_context().get_world_rank()
    out: list[dict[str, Any]] = []
    for i, job in enumerate(jobs):
        done = _stored_result(store, i, load=rank == 0) if store is not None else None
        if done is None:
            t = time.perf_counter()
            sink = None if progress is None else _JobSink(progress, i)
            done = {**train_loop({**job, "progress": sink}), "job_seconds": time.perf_counter() - t}
            if store is not None and rank == 0 and i < len(jobs) - 1:
                _store_result(store, i, done)
        out.append(done)
    return out


@dataclass
class _JobSink:
    """A progress sink that tags each event with its job's index."""

    sink: Any
    job: int

    def __call__(self, event: dict[str, Any]) -> None:
        self.sink({**event, "job": self.job})


def _result_path(store: tuple[Any, str], i: int) -> str:
    return f"{store[1]}/job-{i:04d}.pt"


def _plain(x: Any) -> Any:
    """Arrays -> tensors, numpy scalars -> Python numbers, recursively (what
    ``torch.load(weights_only=True)`` takes back)."""
    import numpy as np
    import torch
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x))
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_plain(v) for v in x)
    return x


def _store_result(store: tuple[Any, str], i: int, ret: dict[str, Any]) -> None:
    """A finished job's result, written to a temporary name and moved into place."""
    import io

    import torch
    fs, folder = store
    path = _result_path(store, i)
    fs.create_dir(folder, recursive=True)
    buf = io.BytesIO()
    torch.save(_plain(ret), buf)
    with fs.open_output_stream(path + ".tmp") as f:
        f.write(buf.getvalue())
    fs.move(path + ".tmp", path)


def _stored_result(store: tuple[Any, str], i: int, load: bool) -> dict[str, Any] | None:
    """The stored result of job ``i`` (``{}`` when present and not ``load``), else None.

    Raises:
        DataError: present but not loadable as tensors and plain values (every rank
            skips a stored job, so rank 0 cannot quietly run it again alone).
    """
    import io

    import pyarrow.fs as pafs
    import torch

    from mmrecun_ray.training.arrays import to_numpy
    fs, _ = store
    path = _result_path(store, i)
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    if not load:
        return {}
    try:
        with fs.open_input_stream(path) as f:
            return to_numpy(torch.load(io.BytesIO(f.read()), weights_only=True))
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        raise DataError(f"{path}: stored loop result not loadable ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e


def _state_from_checkpoint(checkpoint: ray.train.Checkpoint) -> dict[str, Any]:
    """Model state (numpy) from a checkpoint written by the loop: the kept state, else the
    last one."""
    from pathlib import Path
    with checkpoint.as_directory() as d:
        ck = load_checkpoint(Path(d) / CHECKPOINT_FILE)
    state = (ck.get("best") or {}).get("state") or ck["model_state"]
    return {k: v.cpu().numpy() for k, v in state.items()}
