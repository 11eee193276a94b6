"""Gold: the same model retrained from scratch on the retain set D_r, with the recipe the
model was trained with (loop configuration and :class:`~mmrecun_ray.objectives.Fit`
objective from ``model.json``). The reference every method is judged against; a Gold
*band* is several Golds that differ only in their seed."""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from typing import Any

from mmrecun_ray.objectives import Fit
from mmrecun_ray.training.config import LoopConfig
from mmrecun_ray.training.runner import LoopJob, LoopResult, ensure_ray, run_loop, run_loops
from mmrecun_ray.unlearning.methods.base import (Job, Method, MethodResult, method_info, register,
                                                 retain_inputs)


@register
class Gold(Method):
    """Retrain from scratch on D_r. ``seed``: the retrain's seed (None: the trained
    model's own, the same initial draw as the model being unlearned); the members of a Gold
    band differ only in it."""

    name = "gold"
    role = "gold"
    summary = "retrain from scratch on D_r (the reference)"

    def __init__(self, settings: object = None, seed: int | None = None) -> None:
        super().__init__(settings)
        self.seed = seed

    def run(self, job: Job) -> MethodResult:
        t0 = time.perf_counter()
        cfg, fit = job.recipe()
        if self.seed is not None:
            cfg = replace(cfg, seed=int(self.seed))
        res = run_loop(cfg, fit, retain_inputs(job, None), {"train": job.retain_dataset()}, job.scaling,
                       name=f"unlearn-gold-s{cfg.seed}", callbacks=job.callbacks)
        return _gold_result(job, cfg, fit, res, time.perf_counter() - t0, {})


def _gold_result(job: Job, cfg: LoopConfig, fit: Fit, res: LoopResult, wall: float,
                 extra: dict[str, Any]) -> MethodResult:
    """A Gold run's result: its model.json records the retrain's loop and objective."""
    info = method_info(job, Gold.name, {"loop": cfg.to_dict(), "objective": fit.to_dict()})
    return MethodResult(Gold.name, res.state or {}, info, wall, res, extra={"seed": cfg.seed, **extra})


def _concurrent(job: Job, k: int, trial_cpus: float) -> bool:
    """Whether ``k`` Gold runs fit the cluster side by side (else they run one by one)."""
    import ray
    if job.scaling.workers < 1 or k < 2:
        return False
    ensure_ray()
    need = k * (job.scaling.workers * job.scaling.cpus_per_worker + trial_cpus)
    return need <= float(ray.cluster_resources().get("CPU", 0.0))


def _one_worker_group(job: Job, seeds: list[int]) -> list[MethodResult]:
    """The Golds of ``seeds`` one after the other in ONE Ray Train run (one worker-group
    start for the band, :func:`~mmrecun_ray.training.runner.run_loops`); each Gold's wall
    time is its own loop's, the first one's with the start-up."""
    cfg, fit = job.recipe()
    inputs = retain_inputs(job, None)
    jobs = [LoopJob(replace(cfg, seed=int(s)), copy.deepcopy(fit), inputs, {"train": job.retain_dataset()},
                    name=f"unlearn-gold-s{int(s)}") for s in seeds]
    results = run_loops(jobs, job.scaling, name="unlearn-gold-band", callbacks=job.callbacks)
    return [_gold_result(job, lj.cfg, lj.objective, res, res.wall_seconds,
                         {"concurrent": False, "worker_group": "shared"})
            for lj, res in zip(jobs, results)]


def run_band(job: Job, seeds: list[int], export_dir: Any, trial_cpus: float = 0.1) -> list[MethodResult]:
    """Gold retrained once per seed: side by side as Ray Tune trials when the cluster has
    the CPUs for all of them at once (each trial one Ray Train run on ``job.scaling``'s
    workers), else one after the other (with DDP workers: in one shared worker group). ``export_dir(seed) -> model folder URI``: each
    Gold is published there (by its trial when run in parallel) and the results carry
    ``extra["concurrent"]`` so that wall times of concurrent runs are read as such."""
    if not _concurrent(job, len(seeds), trial_cpus):
        if job.scaling.workers >= 1 and len(seeds) > 1:
            return _one_worker_group(job, seeds)
        out = []
        for s in seeds:
            res = Gold(seed=s).run(job)
            res.extra["concurrent"] = False
            out.append(res)
        return out
    from ray import tune

    from mmrecun_ray.training.export import export_model, read_state
    dirs = {s: export_dir(s) for s in seeds}
    job.retain_dataset()  # read once here; every trial gets the materialised dataset

    def trial(config: dict[str, Any], job: Job) -> None:
        res = Gold(seed=int(config["seed"])).run(job)
        export_model(dirs[int(config["seed"])], res.info, res.state,
                     res.loop.optimizer if res.loop else None)
        tune.report({"wall_seconds": res.wall_seconds, "steps": res.steps,
                     "epochs_run": res.loop.epochs_run if res.loop else 0,
                     "best_epoch": res.loop.best_epoch if res.loop else -1})

    from mmrecun_ray.storage import is_s3, resolve
    fs, path = resolve(job.scaling.storage_uri) if job.scaling.storage_uri else (None, None)
    tuner = tune.Tuner(tune.with_resources(tune.with_parameters(trial, job=job), {"CPU": trial_cpus}),
                       param_space={"seed": tune.grid_search(list(seeds))},
                       tune_config=tune.TuneConfig(max_concurrent_trials=len(seeds)),
                       run_config=tune.RunConfig(name="gold-band", verbose=0, storage_path=path,
                                                 storage_filesystem=fs if path and is_s3(job.scaling.storage_uri) else None,
                                                 failure_config=tune.FailureConfig(max_failures=0)))
    grid = tuner.fit()
    results: dict[int, MethodResult] = {}
    from mmrecun_ray.training.export import read_model_info
    for r in grid:
        if r.error:
            raise r.error
        s = int(r.config["seed"])
        state = {k: v.numpy() for k, v in read_state(dirs[s]).items()}
        results[s] = MethodResult("gold", state, read_model_info(dirs[s]), float(r.metrics["wall_seconds"]),
                                  None, extra={"seed": s, "concurrent": True,
                                               "steps": int(r.metrics["steps"]),
                                               "epochs_run": int(r.metrics["epochs_run"])})
    return [results[s] for s in seeds]
