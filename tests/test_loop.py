"""Pieces of the one loop that need no Ray workers: the row freeze, the objectives'
verdicts on a real starting model (the driver-side start), checkpoints that load with
``weights_only``."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mmrecun_ray.data.dataset import load_dataset
from mmrecun_ray.data.synthetic import prepare_synthetic
from mmrecun_ray.errors import DataError
from mmrecun_ray.models import build_model
from mmrecun_ray.objectives import Fit, RefitRows, ReverseBPR, Verdict, train_only_rows
from mmrecun_ray.training.config import LoopConfig
from mmrecun_ray.training.loop import load_checkpoint, start_on_driver
from mmrecun_ray.training.train import loop_inputs


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


def test_fit_keeps_the_best_and_stops_after_patience_epochs() -> None:
    fit = Fit(patience=3)
    seq = [0.10, 0.20, 0.15, 0.19, 0.20, 0.18]   # best at epoch 1; 0.20 again is no gain
    verdicts = [fit.judge(None, None, {"recall@20": r}, e) for e, r in enumerate(seq)]  # type: ignore[arg-type]
    assert [v.keep for v in verdicts] == [True, True, False, False, False, False]
    assert [v.stop for v in verdicts] == [False, False, False, False, True, True]
    restored = Fit(patience=3)
    restored.load_state_dict(fit.state_dict())
    assert restored.judge(None, None, {"recall@20": 0.21}, 6).keep  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    out = str(tmp_path_factory.mktemp("loop") / "data")
    prepare_synthetic("tiny", 0, out)
    return load_dataset(out)


def test_reverse_bpr_start_verdict_decides_whether_workers_start(tiny) -> None:
    """The driver-side start runs the same start as the workers: a forget target already met
    ends the run with zero steps and the starting state; an unmet one hands over to the
    workers (None)."""
    inputs = loop_inputs(tiny)
    users = np.unique(tiny.train.user)[:10]
    sel = np.isin(tiny.train.user, users)
    inputs.forget_user, inputs.forget_item = tiny.train.user[sel], tiny.train.item[sel]
    cfg = LoopConfig(model="mf", params={"embedding_dim": 8}, eval_ks=(20,))
    done = start_on_driver(cfg, ReverseBPR(target_recall=1.0), inputs)
    assert done is not None and done["steps"] == 0 and done["epochs_run"] == 0
    assert 0.0 <= done["best_metrics"]["forget_recall@20"] <= 1.0
    assert set(done["state"]) == {"user_embedding.weight", "item_embedding.weight"}
    assert start_on_driver(cfg, ReverseBPR(target_recall=-1.0), inputs) is None


def test_redrawn_rows_are_the_only_change_of_a_zero_step_start(tiny) -> None:
    inputs = loop_inputs(tiny)
    model = build_model("mf", tiny.n_users, tiny.n_items, {}, {"embedding_dim": 8})
    inputs.init_state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    inputs.reset_users = np.array([3, 5], dtype=np.int64)
    cfg = LoopConfig(model="mf", params={"embedding_dim": 8})
    ret = start_on_driver(cfg, RefitRows(), inputs, evaluate=False)
    before, after = inputs.init_state["user_embedding.weight"], ret["state"]["user_embedding.weight"]
    changed = np.flatnonzero(np.any(before != after, axis=1))
    assert changed.tolist() == [3, 5]
    np.testing.assert_array_equal(ret["state"]["item_embedding.weight"], inputs.init_state["item_embedding.weight"])


def test_checkpoints_refuse_anything_but_tensors(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    torch.save({"model_state": {"w": torch.ones(2)}, "epoch": 3, "best": {"score": -float("inf")}}, good)
    assert load_checkpoint(good)["epoch"] == 3

    class Boom:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(pickle.dumps({"model_state": Boom()}))
    with pytest.raises(DataError, match="bad.pt"):
        load_checkpoint(bad)
    assert not (tmp_path / "pwned").exists()
    assert Verdict().stop is False


class _NoStream:
    """A dataset shard that must not be read again (a later pass served from memory)."""

    def iter_torch_batches(self, **kwargs):
        raise AssertionError("the shard was streamed again")


def _pass(view, epoch: int, stop_after: int | None = None) -> np.ndarray:
    """The ``(n, 2)`` (user, item) rows of one epoch pass, in order."""
    rows = []
    for b, batch in enumerate(view.epoch("train", epoch)):
        rows.append(torch.stack([batch["user_id"], batch["item_id"]], 1).numpy())
        if stop_after is not None and b + 1 >= stop_after:
            break
    return np.concatenate(rows)


def test_a_worker_keeps_its_shard_after_the_first_full_pass(tiny, ray_session) -> None:
    """Later epochs are in-memory permutations of exactly the streamed rows (no Ray Data
    run per epoch), reshuffled each epoch and the same for the same seed; a pass cut short
    is never kept; ``cache_rows=0`` (or a shard over the limit) streams every pass."""
    import ray.data
    from mmrecun_ray.training.loop import View, make_sampler
    inputs = loop_inputs(tiny)
    table = {"user_id": tiny.train.user.astype(np.int64), "item_id": tiny.train.item.astype(np.int64)}
    truth = np.sort(tiny.train.user.astype(np.int64) * tiny.n_items + tiny.train.item)

    def view(cache_rows: int):
        cfg = LoopConfig(model="mf", batch_size=64, cache_rows=cache_rows)
        ds = ray.data.from_items([{"user_id": int(u), "item_id": int(i)}
                                  for u, i in zip(table["user_id"], table["item_id"])])
        return View(inputs, cfg, 0, 1, torch.device("cpu"), make_sampler(inputs, 0),
                    shards={"train": ds.iterator()})

    def keys(rows: np.ndarray) -> np.ndarray:
        return np.sort(rows[:, 0] * tiny.n_items + rows[:, 1])

    v = view(10**6)
    partial = _pass(v, 0, stop_after=2)
    assert 0 < len(partial) < len(truth)
    first = _pass(v, 0)  # the partial pass was not kept: this one streams
    np.testing.assert_array_equal(keys(first), truth)
    v.shards["train"] = _NoStream()
    second, third = _pass(v, 1), _pass(v, 2)
    np.testing.assert_array_equal(keys(second), truth)
    np.testing.assert_array_equal(keys(third), truth)
    assert (second != third).any(axis=1).mean() > 0.5
    v2 = view(10**6)
    _pass(v2, 0)
    np.testing.assert_array_equal(_pass(v2, 1), second)
    assert len(list(v.epoch("train", 1))) == -(-len(truth) // 64)  # ceil(n / batch) steps

    for limit in (0, len(truth) - 1):
        v3 = view(limit)
        np.testing.assert_array_equal(keys(_pass(v3, 0)), truth)
        v3.shards["train"] = _NoStream()
        with pytest.raises(AssertionError, match="streamed again"):
            _pass(v3, 1)
