"""BPR / reverse BPR against hand-computed values, and the negative sampler."""

from __future__ import annotations

import math

import numpy as np
import torch

from mmrecun_ray.models.base import ModelOutput
from mmrecun_ray.objectives import (bpr_loss, matched_reverse_bpr_loss, negated_bpr_loss, pair_scores,
                                   reverse_bpr_loss)
from mmrecun_ray.objectives.sampling import NegativeSampler


def test_bpr_and_reverse_bpr_hand_computed() -> None:
    pos, neg = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 0.0])
    # -ln sigmoid(1) = ln(1 + e^-1); -ln sigmoid(0) = ln 2
    expected_bpr = (math.log(1 + math.exp(-1)) + math.log(2)) / 2
    # reverse: -ln sigmoid(neg - pos) = ln(1 + e^{pos - neg}) = ln(1 + e) and ln 2
    expected_rbpr = (math.log(1 + math.e) + math.log(2)) / 2
    assert abs(bpr_loss(pos, neg).item() - expected_bpr) < 1e-6
    assert abs(reverse_bpr_loss(pos, neg).item() - expected_rbpr) < 1e-6
    assert abs(negated_bpr_loss(pos, neg).item() + expected_bpr) < 1e-6


def test_reverse_bpr_is_bounded_but_negated_bpr_is_not() -> None:
    """Once the forgotten item ranks far below the negative, RBPR stops pushing; -BPR does not."""
    pos = torch.tensor([-20.0], requires_grad=True)
    neg = torch.tensor([0.0])
    reverse_bpr_loss(pos, neg).backward()
    assert abs(pos.grad.item()) < 1e-8
    assert reverse_bpr_loss(pos.detach(), neg).item() < 1e-8  # bounded below by 0
    pos2 = torch.tensor([-20.0], requires_grad=True)
    negated_bpr_loss(pos2, neg).backward()
    assert abs(pos2.grad.item() - 1.0) < 1e-6  # still pushing at full strength
    assert negated_bpr_loss(torch.tensor([-1e3]), neg).item() < -900  # unbounded below


def test_matched_reverse_bpr_pushes_only_pairs_above_their_reference() -> None:
    """Pair 0 sits 2 above its reference: loss ln(1 + e^2) / 2 and gradient sigmoid(2) / 2;
    pair 1 is already below: no loss, no gradient; the reference itself never moves."""
    pos = torch.tensor([2.0, -1.0], requires_grad=True)
    ref = torch.tensor([0.0, 0.0], requires_grad=True)
    loss = matched_reverse_bpr_loss(pos, ref)
    loss.backward()
    assert abs(loss.item() - math.log(1 + math.exp(2)) / 2) < 1e-6
    sig2 = 1 / (1 + math.exp(-2))
    assert torch.allclose(pos.grad, torch.tensor([sig2 / 2, 0.0]))
    assert ref.grad is None or torch.all(ref.grad == 0)
    assert matched_reverse_bpr_loss(torch.tensor([-1.0, -3.0]), torch.tensor([0.0, 0.0])).item() == 0.0


def test_pair_scores_are_dot_products() -> None:
    out = ModelOutput(user=torch.tensor([[1.0, 2.0], [0.0, 1.0]]),
                      item=torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]]))
    s_pos, s_neg = pair_scores(out, torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([0, 0]))
    assert s_pos.tolist() == [6.0, 2.0]
    assert s_neg.tolist() == [1.0, 0.0]


def test_sampler_never_returns_known_or_banned_items() -> None:
    n_items = 6
    users = np.repeat(np.arange(3), 200)
    known = np.array([0 * n_items + 0, 0 * n_items + 1, 1 * n_items + 5, 2 * n_items + 2], dtype=np.int64)
    allowed = np.array([0, 1, 2, 3, 5])  # item 4 left the catalogue
    s = NegativeSampler(known, n_items, allowed_items=allowed, seed=1)
    neg = s.sample(users)
    keys = users * n_items + neg
    assert not np.isin(keys, known).any()
    assert not (neg == 4).any()
    # uniform over the allowed unknown items: user 0 draws from {2, 3, 5}
    counts = np.bincount(neg[users == 0], minlength=n_items)
    assert set(np.flatnonzero(counts)) == {2, 3, 5}
    assert counts[[2, 3, 5]].min() > 40
