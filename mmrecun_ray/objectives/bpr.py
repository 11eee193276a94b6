"""Pairwise ranking objectives on scores ``s(u, i) = <e_u, e_i>``.

- BPR:  ``-ln sigmoid(s(u,i) - s(u,j))`` for a positive ``i`` and sampled negative ``j``.
- RBPR: ``-ln sigmoid(s(u,j) - s(u,i))`` for a forgotten pair ``(u, i)``: the reverse
  ranking. It is bounded: once the forgotten item ranks well below the negative its
  gradient vanishes (unlike negated BPR, which pushes without limit).
- Matched RBPR: RBPR against a fixed per-pair reference whose score is held fixed, applied
  only while the forgotten item still scores above it (hard stop per pair).
- NegGrad: ``-BPR`` (the unbounded baseline the paper compares against).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmrecun_ray.models.base import ModelOutput


def pair_scores(out: ModelOutput, users: torch.Tensor, pos: torch.Tensor,
                neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of ``(B,)`` triples: returns ``(s(u,pos), s(u,neg))``, each ``(B,)``."""
    u = out.user[users]
    return (u * out.item[pos]).sum(-1), (u * out.item[neg]).sum(-1)


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Mean of ``-ln sigmoid(pos - neg)`` over ``(B,)`` scores (numerically stable)."""
    return F.softplus(neg_scores - pos_scores).mean()


def reverse_bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Mean of ``-ln sigmoid(neg - pos)``: pushes forgotten ``pos`` below ``neg``, bounded."""
    return F.softplus(pos_scores - neg_scores).mean()


def matched_reverse_bpr_loss(pos_scores: torch.Tensor, ref_scores: torch.Tensor) -> torch.Tensor:
    """``(B,)`` scores -> scalar: ``sum_b [pos_b > ref_b] * -ln sigmoid(ref_b - pos_b) / B``.

    ``ref`` is detached (the reference item is a target, not something to move) and a pair
    at or below its reference contributes nothing: each forgotten pair is pushed exactly
    down to its reference's level and no further.
    """
    ref = ref_scores.detach()
    active = (pos_scores > ref).to(pos_scores.dtype)
    return (F.softplus(pos_scores - ref) * active).sum() / max(pos_scores.numel(), 1)


def negated_bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """``-BPR``: gradient ascent on the forget set (unbounded below; baseline only)."""
    return -bpr_loss(pos_scores, neg_scores)
