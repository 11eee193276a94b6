"""Gold: the same model retrained from scratch on the retain set D_r, with the recipe the
model was trained with (loop configuration and :class:`~mmrecun_ray.objectives.Fit`
objective from ``model.json``). The reference every method is judged against; a Gold
*band* is several Golds that differ only in their seed."""

from __future__ import annotations

import time
from dataclasses import replace

from mmrecun_ray.training.runner import run_loop
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
        res = run_loop(cfg, fit, retain_inputs(job, None), {"train": job.retain_data}, job.scaling,
                       name=f"unlearn-gold-s{cfg.seed}", callbacks=job.callbacks)
        info = method_info(job, self.name, {"loop": cfg.to_dict(), "objective": fit.to_dict()})
        return MethodResult(self.name, res.state or {}, info, time.perf_counter() - t0, res,
                            extra={"seed": cfg.seed})
