"""``redraw``: re-draw the rows only D_f trained, refit the rows of users who keep data.

Our earlier method (not the paper's), kept as its own row of every comparison:

1. The ID-embedding rows of users left with no retain data (``users`` requests) and of
   items that left the catalogue (``items`` requests) are re-drawn from the initial
   distribution and their Adam moments cleared: Gold holds exactly that for them, since
   no retain pair reaches those rows (:func:`~mmrecun_ray.unlearning.references.exclusive_ids`).
   A pair whose user or item row is re-drawn needs nothing more; for ``users`` and
   ``items`` requests that is every pair, so no worker group is started.
2. Forgotten pairs whose user keeps retain data (``interactions`` requests): those users'
   rows are re-drawn too and refitted alone (every other parameter frozen, a fresh Adam at
   ``refit_lr_scale`` x the training rate) for ``refit_steps`` steps of ``refit_batch``
   retain pairs of theirs, plus ``refit_alpha`` times the matched reverse term on their
   forgotten pairs (:class:`~mmrecun_ray.objectives.RefitRows`, references from
   :func:`~mmrecun_ray.unlearning.references.matched_references`).

What it does not do: the item rows D_f helped shape keep what they learnt from it (the
fold-in attack sees it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace

import numpy as np

from mmrecun_ray.objectives import Objective, RefitRows
from mmrecun_ray.training.config import LoopConfig, LoopInputs
from mmrecun_ray.training.loop import start_on_driver
from mmrecun_ray.training.runner import LoopResult, run_loop
from mmrecun_ray.unlearning.methods.base import (Job, Method, MethodResult, method_info, pairs_dataset,
                                                 register, retain_inputs, settings_dict, steps_per_epoch)
from mmrecun_ray.unlearning.references import exclusive_ids, matched_references

logger = logging.getLogger(__name__)


def redraw_inputs(job: Job) -> LoopInputs:
    """The loop's inputs over the retain graph from the trained state and Adam moments, with
    the rows only D_f trained (:func:`exclusive_ids`) marked for a re-draw."""
    inputs = retain_inputs(job, job.state, job.optimizer)
    inputs.reset_users, inputs.reset_items = exclusive_ids(job.fset)
    return inputs


def redrawn_start(cfg: LoopConfig, objective: Objective, inputs: LoopInputs,
                  t0: float) -> LoopResult:
    """The zero-step run (no Ray): the starting model of ``inputs`` with its reset rows
    re-drawn (seed ``cfg.seed``) and their Adam moments cleared; ``t0`` the run's start."""
    ret = start_on_driver(cfg, objective, inputs, evaluate=False)
    return LoopResult.of(ret, ret["state"], time.perf_counter() - t0)


@dataclass
class RedrawSettings:
    """Attributes:
        refit_steps: refit budget for pairs whose user keeps retain data (0: re-draw only).
        refit_batch: retain pairs per refit step per worker.
        refit_alpha: weight of the matched reverse term while refitting.
        refit_lr_scale: refit step size as a multiple of the training learning rate.
        batch_size: forget pairs per refit step per worker.
        seed: seed of the re-draw, the references and the sampling.
    """

    refit_steps: int = 50
    refit_batch: int = 4096
    refit_alpha: float = 0.05
    refit_lr_scale: float = 2.0
    batch_size: int = 256
    seed: int = 0


@register
class Redraw(Method):
    """Row re-draw + refit (see the module docstring)."""

    name = "redraw"
    Settings = RedrawSettings
    summary = "re-draw rows only D_f trained; refit rows of users who keep data"

    def run(self, job: Job) -> MethodResult:
        t0 = time.perf_counter()
        s: RedrawSettings = self.settings
        fset = job.fset
        base_cfg, fit = job.recipe()
        inputs = redraw_inputs(job)
        refs = matched_references(fset, seed=s.seed)
        rest = ~(np.isin(inputs.forget_user, inputs.reset_users)
                 | np.isin(inputs.forget_item, inputs.reset_items))
        inputs.forget_user, inputs.forget_item = inputs.forget_user[rest], inputs.forget_item[rest]
        inputs.forget_ref = refs[rest]
        objective = RefitRows(reg_weight=fit.reg_weight, alpha=s.refit_alpha,
                              retain_batch=s.refit_batch)
        cfg = replace(base_cfg, seed=s.seed, batch_size=s.batch_size,
                      learning_rate=base_cfg.learning_rate * s.refit_lr_scale)
        logger.info("redraw: %d users and %d items re-drawn; %d of %d forget pairs have a user "
                    "who keeps data", inputs.reset_users.size, inputs.reset_items.size,
                    int(rest.sum()), rest.size)
        if not rest.any() or s.refit_steps <= 0:
            res = redrawn_start(cfg, objective, inputs, t0)
        else:
            users = np.unique(inputs.forget_user)
            inputs.reset_users = np.union1d(inputs.reset_users, users)
            r = fset.retain
            sel = np.isin(r.train.user, users)
            per_epoch = steps_per_epoch(inputs.forget_user.size, s.batch_size, job.scaling.workers)
            epochs = -(-s.refit_steps // per_epoch)
            cfg = replace(cfg, max_steps=s.refit_steps, epochs=epochs, eval_every=epochs)
            logger.info("redraw: refitting %d users' rows on %d retain pairs for %d steps",
                        users.size, int(sel.sum()), s.refit_steps)
            datasets = {"forget": pairs_dataset(inputs.forget_user, inputs.forget_item, inputs.forget_ref),
                        "train": pairs_dataset(r.train.user[sel], r.train.item[sel])}
            res = run_loop(cfg, objective, inputs, datasets, job.scaling, name=f"unlearn-{self.name}",
                           callbacks=job.callbacks)
        info = method_info(job, self.name, {"loop": cfg.to_dict(), "objective": objective.to_dict(),
                                            "settings": settings_dict(s)})
        return MethodResult(self.name, res.state or job.state, info, time.perf_counter() - t0, res,
                            extra={"reset_users": int(inputs.reset_users.size),
                                   "reset_items": int(inputs.reset_items.size)})
