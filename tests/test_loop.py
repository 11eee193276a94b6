"""Pieces of the one loop that need no Ray: the refit-only parameter freeze and the
matched stop threshold."""

from __future__ import annotations

import math

import torch

from mmrecun_ray.models import build_model
from mmrecun_ray.training.loop import matched_threshold, train_only_rows


def test_train_only_rows_leaves_gradient_on_the_redrawn_rows_alone() -> None:
    torch.manual_seed(0)
    model = build_model("lightgcn", 6, 5, {}, {"embedding_dim": 4, "n_layers": 1})
    model.set_graph(torch.tensor([[0, 1, 2, 3, 4, 5, 0], [0, 1, 2, 3, 4, 0, 1]]))
    reset = model.reinit_id_rows(torch.tensor([1, 4]), None, seed=0)
    train_only_rows(model, reset)
    out = model()
    (out.user.sum() + out.item.sum()).backward()  # every row reaches the loss
    g = model.user_embedding.weight.grad
    assert torch.all(g[[1, 4]] != 0)
    assert torch.all(g[[0, 2, 3, 5]] == 0)
    assert model.item_embedding.weight.grad is None
    assert not model.item_embedding.weight.requires_grad


def test_matched_threshold_is_the_tolerance_plus_two_binomial_errors() -> None:
    assert matched_threshold(0.5, 100) == 0.5 + 2 * math.sqrt(0.25 / 100)  # 0.6
    assert abs(matched_threshold(0.5, 2344) - 0.5207) < 1e-4
    assert matched_threshold(0.0, 50) == 0.0
