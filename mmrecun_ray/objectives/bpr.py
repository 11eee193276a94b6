"""Pairwise ranking objectives on scores ``s(u, i) = <e_u, e_i>``.

- BPR:  ``-ln sigmoid(s(u,i) - s(u,j))`` for a positive ``i`` and sampled negative ``j``.
- RBPR: ``-ln sigmoid(s(u,j) - s(u,i))`` for a forgotten pair ``(u, i)``: the reverse
  ranking. It is bounded: once the forgotten item ranks well below the negative its
  gradient vanishes (unlike negated BPR, which pushes without limit).
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


def negated_bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """``-BPR``: gradient ascent on the forget set (unbounded below; baseline only)."""
    return -bpr_loss(pos_scores, neg_scores)
