"""Fitting a recommender: BPR over the training pairs (training, Gold, fine-tuning)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from mmrecun_ray.models.base import ModelOutput, Recommender
from mmrecun_ray.objectives.base import LoopView, Objective, Verdict, register, retain_bpr


@register
@dataclass
class Fit(Objective):
    """``BPR(D) + aux + reg_weight * L2`` over the training pairs; one epoch is one pass.

    Keeps the state with the best validation Recall@20 and stops once ``patience`` epochs
    passed without improvement (early stopping, as MMRec does).

    Attributes:
        reg_weight: weight of the L2 term (the model's ``regularization``).
        patience: epochs without a better validation Recall@20 before the run stops.
    """

    name = "fit"
    patience: int = 20
    _best: dict[str, Any] = field(default_factory=lambda: {"score": -math.inf, "epoch": -1},
                                  repr=False)

    def loss(self, core: Recommender, out: ModelOutput, batch: dict[str, torch.Tensor],
             view: LoopView) -> torch.Tensor:
        fit, reg = retain_bpr(core, out, batch["user_id"], batch["item_id"], view.sampler,
                              self.reg_weight)
        return fit + self.reg_weight * reg

    def judge(self, view: LoopView, out: ModelOutput, valid: dict[str, float],
              epoch: int) -> Verdict:
        score = float(valid.get("recall@20", 0.0))
        improved = score > self._best["score"]
        if improved:
            self._best = {"score": score, "epoch": epoch}
        stop = epoch - self._best["epoch"] >= self.patience
        return Verdict(keep=improved, stop=stop)

    def state_dict(self) -> dict[str, Any]:
        return dict(self._best)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._best = {"score": float(state["score"]), "epoch": int(state["epoch"])}
