"""Fine-tuning on the retain set: continue BPR training on D_r (retain graph) from the
trained model, the same step budget as MMRecUN, spent with the training batch size; the
state with the best validation Recall@20 is kept."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from mmrecun_ray.training.runner import run_loop
from mmrecun_ray.unlearning.methods.base import (Job, Method, MethodResult, method_info, register,
                                                 retain_inputs, settings_dict, steps_per_epoch)
from mmrecun_ray.unlearning.methods.mmrecun import StepSettings


@dataclass
class FinetuneSettings(StepSettings):
    """Budget and step size (see :class:`~.mmrecun.StepSettings`)."""


@register
class Finetune(Method):
    """BPR on D_r from the trained model (baseline)."""

    name = "finetune"
    Settings = FinetuneSettings
    summary = "fine-tuning: BPR on D_r from the trained model"

    def run(self, job: Job) -> MethodResult:
        t0 = time.perf_counter()
        s: FinetuneSettings = self.settings
        base_cfg, fit = job.recipe()
        per_epoch = steps_per_epoch(len(job.fset.retain.train), base_cfg.batch_size,
                                    job.scaling.workers)
        epochs = max(1, min(s.epochs, -(-(s.max_steps or 10**9) // per_epoch)))
        cfg = replace(base_cfg, epochs=epochs, max_steps=s.max_steps,
                      learning_rate=s.lr(base_cfg.learning_rate), seed=s.seed,
                      eval_every=max(1, epochs // 5))
        objective = replace(fit, patience=10**6)
        res = run_loop(cfg, objective, retain_inputs(job, job.state, job.optimizer),
                       {"train": job.retain_dataset()}, job.scaling, name=f"unlearn-{self.name}",
                       callbacks=job.callbacks)
        info = method_info(job, self.name, {"loop": cfg.to_dict(), "objective": objective.to_dict(),
                                            "settings": settings_dict(s)})
        return MethodResult(self.name, res.state or job.state, info, time.perf_counter() - t0, res)
