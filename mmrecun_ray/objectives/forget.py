"""Forgetting objectives: one epoch is one pass over the forget set D_f, and each step
pairs a forget batch with a retain batch.

- :class:`ReverseBPR` — MMRecUN (AAAI 2025) as published:
  ``alpha * RBPR(D_f) + beta * (BPR(D_r) + aux) + reg_weight * L2`` with a fresh uniform
  negative for every forgotten pair at every step, both sides of each pair moving; it stops
  once forget-set Recall@20 reaches ``target_recall`` (or at the loop's step budget).
- :class:`NegGrad` — the same with ``-BPR(D_f)`` (gradient ascent; unbounded baseline).
- :class:`RefitRows` — our ``redraw`` method's refit: only the re-drawn rows train (every
  other parameter frozen, a fresh Adam), against fixed per-pair references (the matched
  reverse term), for the loop's step budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mmrecun_ray.evaluation.membership import mia_auc_from_scores
from mmrecun_ray.models.base import ModelOutput, Recommender
from mmrecun_ray.objectives.base import LoopView, Objective, Verdict, register, retain_bpr
from mmrecun_ray.objectives.bpr import (matched_reverse_bpr_loss, negated_bpr_loss, pair_scores,
                                        reverse_bpr_loss)

#: seed of the non-members of the in-loop score attack (the same draw at every evaluation)
_AUC_SEED = 12345


@torch.no_grad()
def forget_metrics(view: LoopView, out: ModelOutput) -> dict[str, float]:
    """Forget-set metrics of ``out``: ``forget_<metric>@K`` (D_f pairs ranked for their users,
    training pairs masked, items that left the catalogue *not* masked: the audit's definition)
    and ``forget_auc``, a score attack's AUC of D_f against one never-seen item per pair."""
    f = view.forget
    if f is None or len(f) == 0:
        return {}
    m = {f"forget_{k}": v for k, v in view.rank(out, f.user, f.item, view.eval_ks,
                                               mask_banned=False).items()}
    u = torch.from_numpy(f.user).to(view.device)
    neg = view.sampler.sample(f.user, rng=np.random.default_rng(_AUC_SEED))
    pos, ns = pair_scores(out, u, torch.from_numpy(f.item).to(view.device),
                          torch.from_numpy(neg).to(view.device))
    m["forget_auc"] = mia_auc_from_scores(pos.cpu().numpy(), ns.cpu().numpy())
    return m


@register
@dataclass
class ReverseBPR(Objective):
    """MMRecUN's loss (see the module docstring).

    Attributes:
        alpha: weight of the reverse BPR term on D_f.
        beta: weight of BPR (+ the model's auxiliary losses) on D_r.
        retain_batch: retain pairs per step per worker (the forget batch is the loop's
            ``batch_size``).
        target_recall: stop once forget-set Recall@20 is at or below this (None: run the
            budget).
    """

    name = "mmrecun"
    epoch_stream = "forget"
    streams = ("forget", "train")
    alpha: float = 1.0
    beta: float = 1.0
    retain_batch: int = 512
    target_recall: float | None = None

    def reverse(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """The term on D_f from ``(B,)`` scores of forgotten pairs and their negatives."""
        return reverse_bpr_loss(pos, neg)

    def forget_scores(self, out: ModelOutput, batch: dict[str, torch.Tensor],
                      view: LoopView) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s(u, i), s(u, j))`` of a forget batch, ``j`` a fresh uniform negative."""
        users = batch["user_id"]
        return pair_scores(out, users, batch["item_id"], view.sampler.sample_torch(users))

    def loss(self, core: Recommender, out: ModelOutput, batch: dict[str, torch.Tensor],
             view: LoopView) -> torch.Tensor:
        pos, neg = self.forget_scores(out, batch, view)
        rb = next(view.stream("train", self.retain_batch))
        fit, reg = retain_bpr(core, out, rb["user_id"], rb["item_id"], view.sampler,
                              self.reg_weight)
        return self.alpha * self.reverse(pos, neg) + self.beta * fit + self.reg_weight * reg

    def _verdict(self, view: LoopView, out: ModelOutput) -> Verdict:
        m = forget_metrics(view, out)
        met = self.target_recall is not None and m.get("forget_recall@20", 1.0) <= self.target_recall
        return Verdict(m, keep=True, stop=met)

    def start(self, view: LoopView, out: ModelOutput, valid: dict[str, float]) -> Verdict:
        return self._verdict(view, out)

    def judge(self, view: LoopView, out: ModelOutput, valid: dict[str, float],
              epoch: int) -> Verdict:
        return self._verdict(view, out)


@register
@dataclass
class NegGrad(ReverseBPR):
    """``alpha * (-BPR(D_f)) + beta * (BPR(D_r) + aux) + reg_weight * L2`` (baseline)."""

    name = "neggrad"

    def reverse(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return negated_bpr_loss(pos, neg)


def train_only_rows(model: torch.nn.Module,
                    reset: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
    """Freeze every parameter but the ``reset`` rows: other tensors stop requiring
    gradients, and the tables holding reset rows get a row mask on their gradient."""
    for p in model.parameters():
        p.requires_grad_(False)
    for param, rows in reset:
        mask = torch.zeros((param.shape[0],) + (1,) * (param.dim() - 1), device=param.device)
        mask[rows.to(param.device)] = 1.0
        param.requires_grad_(True)
        param.register_hook(lambda g, m=mask: g * m)


@register
@dataclass
class RefitRows(ReverseBPR):
    """Refit the re-drawn rows alone: BPR on the retain stream (the refitted users' retain
    pairs) plus ``alpha`` times the matched reverse term on their forgotten pairs (each pair
    pushed down to its fixed reference's score and no further; see
    :func:`~mmrecun_ray.objectives.bpr.matched_reverse_bpr_loss`). No stop rule: the run is
    the loop's step budget, and it keeps its last state."""

    name = "refit"
    continue_optimizer = False

    def prepare(self, model: Recommender,
                reset: list[tuple[torch.nn.Parameter, torch.Tensor]]) -> None:
        train_only_rows(model, reset)

    def forget_scores(self, out: ModelOutput, batch: dict[str, torch.Tensor],
                      view: LoopView) -> tuple[torch.Tensor, torch.Tensor]:
        return pair_scores(out, batch["user_id"], batch["item_id"], batch["ref_item"])

    def reverse(self, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        return matched_reverse_bpr_loss(pos, neg)

    def _verdict(self, view: LoopView, out: ModelOutput) -> Verdict:
        return Verdict(forget_metrics(view, out), keep=True, stop=False)
