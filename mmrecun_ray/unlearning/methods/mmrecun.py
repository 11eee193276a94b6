"""MMRecUN (AAAI 2025) as published, and the NegGrad baseline.

From the trained model, on the retain graph (forgotten edges gone before the first step),
fine-tune with ``alpha * RBPR(D_f) + beta * BPR(D_r) + lambda * L2`` (+ the model's
auxiliary losses): ``RBPR = -ln sigmoid(s(u, j) - s(u, i))`` for each forgotten pair
``(u, i)`` against a fresh uniform negative ``j`` at every step, both sides of the pair
moving (:class:`~mmrecun_ray.objectives.ReverseBPR`). One epoch is one pass over D_f;
each forget batch of ``batch_size`` pairs is paired with ``batch_size / forget_ratio``
retain pairs. The run ends at the step budget or once forget-set Recall@20 reaches the
target (``forget_target``: ``auto`` = the level Gold is estimated to reach, see
:func:`~mmrecun_ray.unlearning.references.estimate_gold_forget_recall`).

Implementation choices the paper leaves open, stated: Adam continues from the trained
model's moment estimates (``optimizer.pt``; a fresh Adam moves every touched parameter by
~lr per step and wrecks a converged model), at ``lr_scale`` x the training learning rate.
A ``modality`` request has no forget pairs: the loss is then ``beta * BPR(D_r) + L2`` over
the retain features, which is fine-tuning (:mod:`.finetune`), and that is what runs.

NegGrad replaces RBPR by ``-BPR(D_f)`` (gradient ascent, unbounded): the baseline the
paper compares against.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from mmrecun_ray.objectives import NegGrad, ReverseBPR
from mmrecun_ray.training.loop import start_on_driver
from mmrecun_ray.training.runner import LoopResult, run_loop
from mmrecun_ray.unlearning.methods.base import (Job, Method, MethodResult, method_info, pairs_dataset,
                                                 register, retain_inputs, settings_dict,
                                                 steps_per_epoch)
from mmrecun_ray.unlearning.references import estimate_gold_forget_recall


@dataclass
class StepSettings:
    """Budget and step size of a fine-tuning style method.

    Attributes:
        lr_scale: step size as a multiple of the training learning rate (when
            ``learning_rate`` is unset).
        learning_rate: explicit step size.
        max_steps: budget in optimizer steps (None: ``epochs`` alone).
        epochs: budget in passes over the method's epoch stream.
        eval_steps: check the stop rule about every this many steps.
        seed: seed of sampling and shuffling.
    """

    lr_scale: float = 5.0
    learning_rate: float | None = None
    max_steps: int | None = 400
    epochs: int = 50
    eval_steps: int = 2
    seed: int = 0

    def lr(self, base_lr: float) -> float:
        return float(self.learning_rate) if self.learning_rate else float(base_lr) * self.lr_scale


@dataclass
class MMRecUNSettings(StepSettings):
    """MMRecUN's knobs (see the module docstring).

    Attributes:
        alpha: weight of RBPR on D_f.
        beta: weight of BPR (+ auxiliary losses) on D_r.
        batch_size: forget pairs per step per worker.
        forget_ratio: forget batch size / retain batch size.
        forget_target: stop once forget Recall@20 <= this; ``auto`` = Gold's estimated
            level; None = run the whole budget.
    """

    alpha: float = 1.0
    beta: float = 1.0
    batch_size: int = 256
    forget_ratio: float = 0.5
    forget_target: float | str | None = "auto"

    def target(self, job: Job) -> float | None:
        if self.forget_target == "auto":
            return estimate_gold_forget_recall(job.fset, job.reference_valid_recall)
        return None if self.forget_target is None else float(self.forget_target)


@register
class MMRecUN(Method):
    """The paper's recipe (see the module docstring)."""

    name = "mmrecun"
    Settings = MMRecUNSettings
    objective_cls = ReverseBPR
    summary = "MMRecUN as published: alpha*RBPR(D_f) + beta*BPR(D_r) + L2, sampled negatives"

    def run(self, job: Job) -> MethodResult:
        s: MMRecUNSettings = self.settings
        if len(job.fset.forget) == 0:
            from mmrecun_ray.unlearning.methods.finetune import Finetune, FinetuneSettings
            step = {k: getattr(s, k) for k in ("lr_scale", "learning_rate", "max_steps", "epochs",
                                                "eval_steps", "seed")}
            res = Finetune(FinetuneSettings(**step)).run(job)
            return replace(res, method=self.name, info=replace(
                res.info, lineage=res.info.lineage[:-1] + [{**res.info.lineage[-1], "method": self.name}]))
        t0 = time.perf_counter()
        base_cfg, fit = job.recipe()
        n = len(job.fset.forget)
        cfg = replace(base_cfg, epochs=s.epochs, max_steps=s.max_steps, batch_size=s.batch_size,
                      learning_rate=s.lr(base_cfg.learning_rate), seed=s.seed,
                      eval_every=max(1, round(s.eval_steps / steps_per_epoch(n, s.batch_size,
                                                                               job.scaling.workers))))
        objective = self.objective_cls(reg_weight=fit.reg_weight, alpha=s.alpha, beta=s.beta,
                                       retain_batch=max(1, round(s.batch_size / s.forget_ratio)),
                                       target_recall=s.target(job))
        inputs = retain_inputs(job, job.state, job.optimizer)
        res = None
        if not job.callbacks:  # the target may hold before any step: then no worker starts
            ret = start_on_driver(cfg, objective, inputs)
            if ret is not None:
                res = LoopResult.of(ret, ret["state"], time.perf_counter() - t0)
        if res is None:
            datasets = {"forget": pairs_dataset(job.fset.forget.user, job.fset.forget.item),
                        "train": job.retain_dataset()}
            res = run_loop(cfg, objective, inputs, datasets, job.scaling, name=f"unlearn-{self.name}",
                           callbacks=job.callbacks)
        info = method_info(job, self.name, {"loop": cfg.to_dict(), "objective": objective.to_dict(),
                                            "settings": settings_dict(s)})
        return MethodResult(self.name, res.state or job.state, info, time.perf_counter() - t0, res)


@register
class NegGradMethod(MMRecUN):
    """Gradient ascent on D_f with BPR on D_r (baseline)."""

    name = "neggrad"
    objective_cls = NegGrad
    summary = "NegGrad: -BPR(D_f) + BPR(D_r), the unbounded baseline"
