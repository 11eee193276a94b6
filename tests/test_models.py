"""Model zoo: registry, shapes, gradients, graphs (user-item and kNN), and a planted-data
training check where every model must beat the popularity ranking."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmrecun_ray.errors import ConfigError, DataError
from mmrecun_ray.models import (FREEDOM, MF, MGCN, MODELS, LightGCN, BatchRows, build_model,
                                model_names, model_param_defaults, model_param_types)
from mmrecun_ray.models.base import ModelOutput, Recommender
from mmrecun_ray.models.graph import (knn_edges, knn_normalized, light_propagate,
                                      modality_weights, normalized_adjacency, user_item_block,
                                      vision_slot_modality)
from mmrecun_ray.models.mgcn import batch_info_nce, info_nce
from mmrecun_ray.objectives import pair_scores
from mmrecun_ray.training.defaults import TRAINING_DEFAULTS, training_defaults

ALL = ["mf", "vbpr", "lightgcn", "freedom", "mgcn"]
GRAPH = ["lightgcn", "freedom", "mgcn"]
FEATURE = ["vbpr", "freedom", "mgcn"]
#: every model, plus the feature-training variants (``name:train_features``)
VARIANTS = ALL + ["freedom:train_features", "mgcn:train_features"]


def spec(variant: str) -> tuple[str, dict]:
    """``"freedom:train_features"`` -> ``("freedom", {"train_features": True})``."""
    name, _, flag = variant.partition(":")
    return name, ({flag: True} if flag else {})


# -- helpers ------------------------------------------------------------------------------
@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """The tensors here are tiny: one intra-op thread is faster, and far more robust on a
    shared machine, than spinning up a pool per op. Restored after the module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_problem(seed: int = 0, n_users: int = 30, n_items: int = 25, n_edges: int = 200
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Random ``(2, E)`` edges (every user and item present) and two modalities."""
    g = torch.Generator().manual_seed(seed)
    users = torch.cat([torch.arange(n_users), torch.randint(0, n_users, (n_edges,), generator=g)])
    items = torch.cat([torch.arange(n_users) % n_items,
                       torch.randint(0, n_items, (n_edges,), generator=g)])
    feats = {"image": torch.rand(n_items, 20, generator=g),
             "text": torch.randn(n_items, 12, generator=g)}
    return torch.stack([users, items]), feats


def batch_loss(model: Recommender, out: ModelOutput, users: torch.Tensor, pos: torch.Tensor,
               neg: torch.Tensor, reg_weight: float) -> torch.Tensor:
    """The training loss the loop uses: BPR + reg_weight * L2 + the model's own loss."""
    u = out.user[users]
    bpr = F.softplus((u * out.item[neg]).sum(-1) - (u * out.item[pos]).sum(-1)).mean()
    return (bpr + reg_weight * model.regularization(out, users, pos, neg)
            + model.auxiliary_loss(out, users, pos, neg))


def dense(m: torch.Tensor) -> torch.Tensor:
    return m.to_dense()


# -- registry, typed constructors, from_params -------------------------------------------
def test_registry_names_types_and_defaults() -> None:
    assert model_names()[:5] == ALL  # wrappers (e.g. sisa) may be registered after these
    assert set(ALL) <= set(MODELS)
    assert model_param_types("lightgcn") == {"embedding_dim": int, "n_layers": int}
    assert model_param_defaults("lightgcn") == {"embedding_dim": 64, "n_layers": 2}
    assert model_param_types("freedom")["image_modality"] == (str | None)
    assert model_param_types("freedom")["train_features"] is bool
    assert model_param_types("sisa") == {"base_model": str, "shards": int, "seed": int}
    for name in ALL:
        p = model_param_defaults(name)
        assert p["embedding_dim"] == 64
        # training settings are not model parameters any more
        assert not {"learning_rate", "reg_weight"} & set(p)
        assert set(p) == set(model_param_types(name))
    f, m = model_param_defaults("freedom"), model_param_defaults("mgcn")
    assert (f["knn_k"], f["dropout"], f["mm_loss_weight"], f["mm_image_weight"]) == (10, 0.9, 1e-4, 0.1)
    assert (m["cl_loss"], m["temperature"]) == (0.01, 0.2)
    with pytest.raises(ConfigError, match="known models: mf, vbpr, lightgcn, freedom, mgcn"):
        build_model("ngcf", 3, 3, {})
    with pytest.raises(ConfigError, match="known models"):
        model_param_defaults("nope")


def test_training_defaults_per_model() -> None:
    assert set(TRAINING_DEFAULTS) == set(ALL)
    for name in ALL:
        td = training_defaults(name)
        assert td.learning_rate > 0 and td.reg_weight >= 0 and td.patience < td.epochs
        assert set(td.to_dict()) == {"learning_rate", "reg_weight", "epochs", "patience",
                                     "batch_size"}
    assert training_defaults("FREEDOM").reg_weight == 0.0  # MMRec's FREEDOM has no L2
    with pytest.raises(ConfigError, match="no training defaults for model 'sisa'; known: mf"):
        training_defaults("sisa")


def test_typed_constructors_take_keyword_hyper_parameters() -> None:
    import inspect
    assert list(inspect.signature(LightGCN).parameters) == ["n_users", "n_items",
                                                           "embedding_dim", "n_layers"]
    lg = LightGCN(30, 25, embedding_dim=8, n_layers=3)
    assert lg.params == {"embedding_dim": 8, "n_layers": 3}
    assert lg.user_embedding.weight.shape == (30, 8)
    assert MF(4, 5, embedding_dim=6).item_embedding.weight.shape == (5, 6)
    _, feats = small_problem()
    mg = MGCN(30, 25, feats, knn_k=3, cl_loss=0.5)
    assert (mg.knn_k, mg.cl_loss, mg.temperature) == (3, 0.5, 0.2)
    with pytest.raises(ConfigError, match="n_users > 0"):
        LightGCN(0, 3)


def test_from_params_refuses_unknown_keys_and_wrong_types() -> None:
    with pytest.raises(ConfigError, match=r"unknown lightgcn parameter 'n_layer'; known: "
                                          r"embedding_dim, n_layers$"):
        build_model("lightgcn", 3, 4, {}, {"n_layer": 3})
    with pytest.raises(ConfigError, match=r"unknown mf parameter 'knn_k'"):
        MF.from_params(3, 4, {}, {"knn_k": 5})
    with pytest.raises(ConfigError, match="lightgcn parameter 'n_layers' must be int, got '3'"):
        build_model("lightgcn", 3, 4, {}, {"n_layers": "3"})
    with pytest.raises(ConfigError, match="'dropout' must be float, got True"):
        build_model("freedom", 3, 25, small_problem()[1], {"dropout": True})
    # JSON numbers: an integral float is an int, an int is a float
    m = build_model("lightgcn", 3, 4, {}, {"n_layers": 3.0, "embedding_dim": 8})
    assert m.n_layers == 3 and isinstance(m.params["n_layers"], int)
    f = build_model("freedom", 3, 25, small_problem()[1], {"dropout": 1, "image_modality": None})
    assert f.dropout == 1.0
    with pytest.raises(ConfigError, match="image_modality='audio' is not a modality"):
        build_model("freedom", 3, 25, small_problem()[1], {"image_modality": "audio"})


def test_legacy_training_keys_are_dropped_and_nothing_else(caplog: pytest.LogCaptureFixture) -> None:
    import logging
    with caplog.at_level(logging.DEBUG, logger="mmrecun_ray.models.base"):
        m = build_model("lightgcn", 3, 4, {}, {"learning_rate": 0.005, "reg_weight": 1e-4,
                                               "n_layers": 1})
    assert m.params == {"embedding_dim": 64, "n_layers": 1}
    assert "dropping legacy parameter learning_rate=0.005" in caplog.text
    with pytest.raises(ConfigError, match="unknown lightgcn parameter 'lr'"):
        build_model("lightgcn", 3, 4, {}, {"lr": 0.005})


@pytest.mark.parametrize("name", ALL + ["sisa"])
def test_model_rebuilds_from_its_params(name: str) -> None:
    """``model.params`` survives JSON and ``from_params`` builds the same model: the same
    state loads strictly and gives the same scores."""
    import json
    edges, feats = small_problem()
    given = {"lightgcn": {"n_layers": 3}, "freedom": {"knn_k": 4, "mm_image_weight": 0.3,
                                                      "train_features": True},
             "mgcn": {"knn_k": 4, "temperature": 0.5}, "mf": {}, "vbpr": {},
             "sisa": {"base_model": "freedom", "shards": 2, "seed": 3, "knn_k": 4}}[name]
    torch.manual_seed(0)
    model = build_model(name, 30, 25, feats, {"embedding_dim": 8, **given})
    params = json.loads(json.dumps(model.params))
    assert {k: params[k] for k in given} == given
    twin = build_model(name, 30, 25, feats, params)
    assert twin.params == model.params
    twin.load_state_dict(model.state_dict(), strict=True)
    for m in (model, twin):
        m.set_graph(edges)
        m.eval()
    with torch.no_grad():
        a, b = model(), twin()
    torch.testing.assert_close(a.user @ a.item.T, b.user @ b.item.T)


@pytest.mark.parametrize("name", FEATURE)
def test_feature_models_reject_a_dataset_without_features(name: str) -> None:
    with pytest.raises(ConfigError, match="no modality features"):
        build_model(name, 4, 5, {})


def test_features_flush_entries_no_float32_sum_can_see() -> None:
    """Entries below 1e-30 are stored as 0 (they only make CPU products take the subnormal
    slow path); ordinary entries are kept bit for bit."""
    x = torch.tensor([[0.05, 1e-36, -3e-31, 0.2], [1e-29, -0.1, 0.0, 7.0]])
    model = build_model("vbpr", 3, 2, {"text": x}, {"embedding_dim": 4})
    got = model.item_features("text")
    assert torch.equal(got, torch.tensor([[0.05, 0.0, 0.0, 0.2], [1e-29, -0.1, 0.0, 7.0]]))
    assert torch.equal(got @ torch.ones(4), x @ torch.ones(4))  # invisible to a float32 sum


def test_bad_inputs_are_named() -> None:
    edges, feats = small_problem()
    with pytest.raises(ConfigError, match="'text' has shape"):
        build_model("mgcn", 30, 25, {"text": torch.zeros(24, 3)})
    model = build_model("lightgcn", 30, 25, {})
    with pytest.raises(ConfigError, match="set_graph"):
        model()
    with pytest.raises(DataError, match="item id 25"):
        model.set_graph(torch.tensor([[0], [25]]))
    fm = build_model("freedom", 30, 25, feats)
    with pytest.raises(ConfigError, match="'audio' was not present"):
        fm.set_item_features({"audio": torch.zeros(25, 4)})


# -- shapes, dtypes, gradients ------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_dtypes_and_every_parameter_gets_a_gradient(variant: str) -> None:
    torch.manual_seed(0)
    name, extra = spec(variant)
    edges, feats = small_problem()
    model = build_model(name, 30, 25, feats, {"embedding_dim": 16, **extra})
    model.set_graph(edges)
    model.train()
    out = model()
    width = 32 if name == "vbpr" else 16
    assert out.user.shape == (30, width) and out.item.shape == (25, width)
    assert out.user.dtype == torch.float32 and out.item.dtype == torch.float32
    users, pos, neg = torch.arange(30), edges[1, :30], torch.randint(0, 25, (30,))
    loss = batch_loss(model, out, users, pos, neg, training_defaults(name).reg_weight)
    assert torch.isfinite(loss)
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: {pname} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name}: {pname} got an all-zero gradient"
    # checkpoints carry parameters only (graphs and fixed features are re-installed)
    assert set(model.state_dict()) == {k for k, _ in model.named_parameters()}
    assert any(k.startswith("raw_features.") for k in model.state_dict()) == bool(extra)


@pytest.mark.parametrize("variant", FEATURE + ["freedom:train_features", "mgcn:train_features"])
def test_dropping_a_modality_changes_output_and_keeps_gradients(variant: str) -> None:
    torch.manual_seed(0)
    name, extra = spec(variant)
    edges, feats = small_problem()
    model = build_model(name, 30, 25, feats, {"embedding_dim": 16, **extra})
    model.set_graph(edges)
    model.eval()
    before = model().item.detach().clone()
    model.set_item_features({"text": feats["text"]})
    assert model.active_modalities == ["text"]
    model.train()
    out = model()
    assert not torch.allclose(out.item.detach(), before)
    users, pos, neg = torch.arange(30), edges[1, :30], torch.randint(0, 25, (30,))
    batch_loss(model, out, users, pos, neg, 1e-4).backward()
    # dropped layers stay in the autograd graph (zero gradient): DDP needs no
    # find_unused_parameters
    assert all(p.grad is not None for p in model.parameters())
    assert float(model.projection["image"].weight.grad.abs().sum()) == 0.0
    if extra:
        assert float(model.raw_features["image"].grad.abs().sum()) == 0.0
        assert float(model.raw_features["text"].grad.abs().sum()) > 0.0


@pytest.mark.parametrize("name", FEATURE)
def test_any_number_of_modalities(name: str) -> None:
    edges, feats = small_problem()
    g = torch.Generator().manual_seed(5)
    three = {**feats, "audio": torch.randn(25, 7, generator=g)}
    outs = []
    for fs in ({"audio": three["audio"]}, three):
        model = build_model(name, 30, 25, fs, {"embedding_dim": 8})
        model.set_graph(edges)
        model.eval()
        out = model()
        assert torch.isfinite(out.user).all() and torch.isfinite(out.item).all()
        outs.append(out.item.shape[1])
        assert model.active_modalities == list(fs)
    assert outs[0] == outs[1]


def test_model_moves_graphs_and_features_with_dtype_changes() -> None:
    edges, feats = small_problem()
    for name in GRAPH + ["vbpr"]:
        model = build_model(name, 30, 25, feats, {"embedding_dim": 8}).double()
        model.set_graph(edges)
        model.eval()
        out = model()
        assert out.user.dtype == torch.float64 and out.item.dtype == torch.float64


# -- user-item graph ----------------------------------------------------------------------
def test_normalized_adjacency_hand_computed() -> None:
    # u0-i0, u0-i1, u1-i0: deg u0=2, u1=1, i0=2, i1=1 ; node(i) = 2 + i
    edges = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 0]])  # duplicate u1-i0 is ignored
    a = dense(normalized_adjacency(torch.tensor([[0, 0, 1], [0, 1, 0]]), 2, 2))
    expected = torch.zeros(4, 4)
    for u, i, v in [(0, 0, 0.5), (0, 1, 1 / math.sqrt(2)), (1, 0, 1 / math.sqrt(2))]:
        expected[u, 2 + i] = expected[2 + i, u] = v
    torch.testing.assert_close(a, expected)
    model = build_model("lightgcn", 2, 2, {})
    model.set_graph(edges)
    torch.testing.assert_close(dense(model.adjacency), expected)
    r = dense(user_item_block(torch.tensor([[0, 0, 1], [0, 1, 0]]), 2, 2))
    torch.testing.assert_close(r, expected[:2, 2:])


def test_light_propagate_matches_pyg_lgconv() -> None:
    """Our sparse-matmul propagation equals PyG's message-passing LGConv (mean of layers)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torch_geometric.nn import LGConv
    from mmrecun_ray.models.graph import light_propagate
    edges, _ = small_problem(seed=4)
    n_users, n_items = 30, 25
    x = torch.randn(n_users + n_items, 8, generator=torch.Generator().manual_seed(0))
    ours = light_propagate(normalized_adjacency(torch.unique(edges, dim=1), n_users, n_items), x, 3)
    pairs = torch.unique(edges, dim=1)
    index = torch.cat([torch.stack([pairs[0], pairs[1] + n_users]),
                       torch.stack([pairs[1] + n_users, pairs[0]])], dim=1)
    conv, h, layers = LGConv(), x, [x]
    for _ in range(3):
        h = conv(h, index)
        layers.append(h)
    torch.testing.assert_close(ours, torch.stack(layers).mean(0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", GRAPH)
def test_set_graph_with_fewer_edges_removes_them_from_propagation(name: str) -> None:
    torch.manual_seed(0)
    edges, feats = small_problem()
    n_users = 30
    model = build_model(name, n_users, 25, feats, {"embedding_dim": 16})
    model.set_graph(edges)
    model.eval()
    full = model()
    keep = torch.ones(edges.shape[1], dtype=torch.bool)
    keep[::3] = False
    # a pair both kept and removed (duplicate) would stay: remove by pair
    removed_pairs = {(int(u), int(i)) for u, i in edges[:, ~keep].T}
    retain = torch.stack([e for e in edges.T if (int(e[0]), int(e[1])) not in removed_pairs]).T
    model.set_graph(retain)
    after = model()
    assert not torch.allclose(full.user, after.user)
    assert not torch.allclose(full.item, after.item)
    a = dense(model.adjacency)
    for u, i in removed_pairs:
        assert a[u, n_users + i] == 0 and a[n_users + i, u] == 0
    for u, i in retain.T.tolist():
        assert a[u, n_users + i] > 0 and a[n_users + i, u] > 0
    n_unique = len({tuple(e) for e in retain.T.tolist()})
    assert int((a > 0).sum()) == 2 * n_unique
    if name == "mgcn":
        r = dense(model.derived()["user_item"])
        torch.testing.assert_close(r, a[:n_users, n_users:])
    if name == "freedom":
        model.train()
        pruned = dense(model.epoch_adjacency())
        kept_now = int((pruned > 0).sum()) // 2
        assert kept_now == int(n_unique * (1.0 - model.dropout))  # dropout 0.9 keeps 10 %
        assert bool(((pruned > 0) <= (a > 0)).all())  # only retained edges survive


@pytest.mark.parametrize("name", ALL)
def test_reinit_id_rows_redraws_only_the_named_rows(name: str) -> None:
    """Re-drawn rows lie inside the table's Xavier bound, the same seed gives the same draw
    on every worker, and every other row is untouched."""
    edges, feats = small_problem()
    model = build_model(name, 30, 25, feats, {"embedding_dim": 8})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    users, items = torch.tensor([3, 7]), torch.tensor([5])
    touched = model.reinit_id_rows(users, items, seed=11)
    assert [tuple(p.shape) for p, _ in touched] == [tuple(model.user_embedding.weight.shape),
                                                   tuple(model.item_embedding.weight.shape)]
    u, i = model.user_embedding.weight, model.item_embedding.weight
    assert not torch.allclose(u[users], before["user_embedding.weight"][users])
    keep = torch.ones(30, dtype=torch.bool)
    keep[users] = False
    assert torch.equal(u[keep], before["user_embedding.weight"][keep])
    assert torch.equal(i[torch.arange(25) != 5], before["item_embedding.weight"][torch.arange(25) != 5])
    bound = math.sqrt(6.0 / (u.shape[0] + u.shape[1]))
    assert float(u[users].abs().max()) <= bound
    for k, v in model.state_dict().items():  # nothing else moved
        if k not in ("user_embedding.weight", "item_embedding.weight"):
            assert torch.equal(v, before[k]), k
    twin = build_model(name, 30, 25, feats, {"embedding_dim": 8})
    twin.reinit_id_rows(users, items, seed=11)
    assert torch.equal(twin.user_embedding.weight[users], u[users])


# -- kNN item graphs ----------------------------------------------------------------------
HAND = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0], [-1.0, 0.0], [-1.0, -0.1]])


def neighbour_sets(index: torch.Tensor, n: int) -> list[set[int]]:
    out: list[set[int]] = [set() for _ in range(n)]
    for r, c in index.T.tolist():
        out[r].add(c)
    return out


def test_knn_on_a_hand_made_feature_matrix() -> None:
    index, sim = knn_edges(HAND, 2)
    assert neighbour_sets(index, 6) == [{0, 1}, {0, 1}, {2, 3}, {2, 3}, {4, 5}, {4, 5}]
    torch.testing.assert_close(sim.reshape(6, 2)[:, 0], torch.ones(6))  # self first
    # unweighted (FREEDOM): every row has degree 2 -> 1/2 per edge
    g = dense(knn_normalized(HAND, 2))
    assert torch.allclose(g[g > 0], torch.full((12,), 0.5))
    # weighted (MGCN): w_01 = cos(item0, item1) / sqrt(d_0 d_1)
    c01 = float(F.cosine_similarity(HAND[0:1], HAND[1:2]))
    gw = dense(knn_normalized(HAND, 2, weighted=True))
    d = 1 + c01
    assert gw[0, 1].item() == pytest.approx(c01 / d, rel=1e-5)
    assert gw[0, 0].item() == pytest.approx(1 / d, rel=1e-5)


def test_knn_inactive_and_zero_feature_items_have_no_edges() -> None:
    feats = HAND.clone()
    feats[2] = 0.0  # a forgotten feature row
    active = torch.ones(6, dtype=torch.bool)
    active[1] = False
    index, _ = knn_edges(feats, 2, active)
    nb = neighbour_sets(index, 6)
    assert nb[1] == set() and nb[2] == set()
    assert all(1 not in s and 2 not in s for s in nb)
    # item 0 loses item 1: its next best is item 3 (cos 0.0995 > 0 > -0.995)
    assert nb[0] == {0, 3}
    assert nb[3] == {3, 0}


def test_knn_batching_matches_one_block() -> None:
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(50, 16, generator=g)
    a_idx, a_sim = knn_edges(feats, 5, chunk_rows=7)
    b_idx, b_sim = knn_edges(feats, 5, chunk_rows=1024)
    assert torch.equal(a_idx, b_idx)
    torch.testing.assert_close(a_sim, b_sim)


def test_modality_weights_follow_mmrecs_vision_and_text_slots() -> None:
    # MMRec: the text file goes to t_feat, the other modality to v_feat (weight w)
    assert vision_slot_modality(["image", "text"]) == "image"
    assert vision_slot_modality(["text", "audio"]) == "audio"  # Last.fm-2K
    assert vision_slot_modality(["text", "video", "image"]) == "image"
    assert vision_slot_modality(["text"]) is None
    assert modality_weights(["image", "text"], 0.1, image_modality="image") == pytest.approx(
        {"image": 0.1, "text": 0.9})
    assert modality_weights(["text", "audio"], 0.1, image_modality="audio") == pytest.approx(
        {"text": 0.9, "audio": 0.1})
    assert modality_weights(["text", "audio", "image"], 0.2, image_modality="image") == \
        pytest.approx({"text": 0.4, "audio": 0.4, "image": 0.2})
    # the vision-slot modality dropped (unlearned): the rest weigh the same
    assert modality_weights(["text", "audio"], 0.1, image_modality="image") == pytest.approx(
        {"text": 0.5, "audio": 0.5})
    assert modality_weights(["text"], 0.1, image_modality="text") == {"text": 1.0}
    assert modality_weights(["a", "b"], 0.1, {"a": 3, "b": 1}) == pytest.approx({"a": 0.75, "b": 0.25})


def test_model_item_graphs_follow_features_and_active_items() -> None:
    feats = {"image": torch.cat([HAND, HAND.flip(1)], 1), "text": HAND.clone()}
    fm = build_model("freedom", 3, 6, feats, {"knn_k": 2, "embedding_dim": 4})
    mg = build_model("mgcn", 3, 6, feats, {"knn_k": 2, "embedding_dim": 4})
    expect = 0.1 * dense(knn_normalized(feats["image"], 2)) + 0.9 * dense(knn_normalized(HAND, 2))
    torch.testing.assert_close(dense(fm.item_graph), expect)
    assert set(mg.item_graphs) == {"image", "text"}
    active = torch.tensor([True, True, True, False, True, True])
    for model in (fm, mg):
        model.set_item_features({"text": HAND}, active)
    g = dense(fm.item_graph)
    torch.testing.assert_close(g, dense(knn_normalized(HAND, 2, active)))
    assert g[3].abs().sum() == 0 and g[:, 3].abs().sum() == 0
    assert list(mg.item_graphs) == ["text"]
    gm = dense(mg.item_graphs["text"])
    assert gm[3].abs().sum() == 0 and gm[:, 3].abs().sum() == 0


# -- FREEDOM: one pruned graph per epoch, MMRec's modality weights, trained features -----
def _pairs(adj: torch.Tensor) -> set[tuple[int, int]]:
    idx = adj.coalesce().indices()
    return {(int(r), int(c)) for r, c in idx.T.tolist() if r < c}


def test_freedom_draws_one_pruned_graph_per_epoch_from_seed_and_epoch() -> None:
    edges, feats = small_problem()
    torch.manual_seed(0)
    a = build_model("freedom", 30, 25, feats, {"embedding_dim": 8})
    torch.manual_seed(123)  # another rank's global RNG state: must not matter
    b = build_model("freedom", 30, 25, feats, {"embedding_dim": 8})
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.set_graph(edges)
        m.train()
    n_unique = torch.unique(edges, dim=1).shape[1]
    graphs = {}
    for epoch in (0, 1):
        a.on_epoch_start(epoch, seed=7)
        b.on_epoch_start(epoch, seed=7)
        ga, gb = a.epoch_adjacency(), b.epoch_adjacency()
        torch.testing.assert_close(dense(ga), dense(gb))  # same (seed, epoch): same graph
        assert len(_pairs(ga)) == int(n_unique * (1.0 - a.dropout)) > 0
        graphs[epoch] = _pairs(ga)
        # forward uses the epoch's graph, the same one at every step of the epoch
        out1, out2 = a(), a()
        torch.testing.assert_close(out1.user, out2.user)
        ego = torch.cat([a.user_embedding.weight, a.item_embedding.weight])
        expect = light_propagate(ga, ego, a.n_ui_layers)[:30]
        torch.testing.assert_close(out1.user, expect)
    assert graphs[0] != graphs[1]  # another epoch, another draw
    a.on_epoch_start(0, seed=8)
    assert _pairs(a.epoch_adjacency()) != graphs[0]  # another seed, another draw
    a.on_epoch_start(0, seed=7)
    assert _pairs(a.epoch_adjacency()) == graphs[0]  # reproducible
    # evaluation mode: the full graph
    a.eval()
    full = a()
    ego = torch.cat([a.user_embedding.weight, a.item_embedding.weight])
    torch.testing.assert_close(full.user, light_propagate(a.adjacency, ego, 2)[:30])
    # never called: one draw, kept; a new graph re-draws from the retained edges only
    c = build_model("freedom", 30, 25, feats, {"embedding_dim": 8})
    c.set_graph(edges)
    c.train()
    first = _pairs(c.epoch_adjacency())
    assert first == _pairs(c.epoch_adjacency())
    retain = edges[:, edges[0] >= 10]
    c.set_graph(retain)
    assert all(u >= 10 for u, _ in _pairs(c.epoch_adjacency()))


def test_freedom_weighs_the_vision_slot_modality_like_mmrec() -> None:
    """Last.fm-2K's text and audio: MMRec holds text in t_feat and audio in v_feat, so the
    item graph is ``0.1 * S_audio + 0.9 * S_text``; ``image_modality`` overrides."""
    feats = {"text": HAND.clone(), "audio": HAND[[0, 2, 1, 4, 3, 5]] * 2}  # other pairs
    fm = build_model("freedom", 3, 6, feats, {"knn_k": 2, "embedding_dim": 4})
    assert fm.params["image_modality"] == "audio"
    s_t, s_a = dense(knn_normalized(HAND, 2)), dense(knn_normalized(feats["audio"], 2))
    assert not torch.allclose(s_t, s_a)
    torch.testing.assert_close(dense(fm.item_graph), 0.1 * s_a + 0.9 * s_t)
    flipped = build_model("freedom", 3, 6, feats, {"knn_k": 2, "embedding_dim": 4,
                                                   "image_modality": "text"})
    torch.testing.assert_close(dense(flipped.item_graph), 0.9 * s_a + 0.1 * s_t)
    fm.set_item_features({"text": feats["text"]})  # audio forgotten: text alone
    torch.testing.assert_close(dense(fm.item_graph), s_t)


def test_trained_features_move_and_forgotten_rows_stay_zero() -> None:
    edges, feats = small_problem()
    torch.manual_seed(0)
    model = build_model("freedom", 30, 25, feats, {"embedding_dim": 8, "train_features": True})
    model.set_graph(edges)
    graph_before = dense(model.item_graph).clone()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    users, pos, neg = torch.arange(30), edges[1, :30], torch.randint(0, 25, (30,))
    for _ in range(3):
        loss = batch_loss(model, model(), users, pos, neg, 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    moved = (model.raw_features["text"] - feats["text"]).abs().max()
    assert moved > 1e-3  # the raw features are trained ...
    torch.testing.assert_close(dense(model.item_graph), graph_before)  # ... the kNN graph is not
    # a forgotten feature row (zero in the installed features) never reaches the output,
    # whatever the trained / loaded parameter holds
    forgot = feats["text"].clone()
    forgot[[2, 5]] = 0.0
    model.set_item_features({"image": feats["image"], "text": forgot})
    assert model.raw_features["text"][[2, 5]].abs().sum() > 0
    x = model.item_features("text")
    assert x[[2, 5]].abs().sum() == 0
    torch.testing.assert_close(x[0], model.raw_features["text"][0])
    model.zero_grad(set_to_none=True)
    batch_loss(model, model(), users, pos, neg, 0.0).backward()
    assert model.raw_features["text"].grad[[2, 5]].abs().sum() == 0
    assert model.raw_features["text"].grad.abs().sum() > 0


# -- MGCN's contrastive loss -----------------------------------------------------------------
def test_info_nce_equals_the_textbook_formula_and_its_gradients() -> None:
    # hand-computed: v1 = I, v2 = [[1, 0], [1, 1]] -> normalised [[1, 0], [s, s]], s = 1/sqrt 2
    s2 = 1 / math.sqrt(2)
    t = 0.5
    row0 = math.log(math.exp(1 / t) + math.exp(s2 / t)) - 1 / t
    row1 = math.log(math.exp(0.0) + math.exp(s2 / t)) - s2 / t
    got = info_nce(torch.eye(2), torch.tensor([[1.0, 0.0], [1.0, 1.0]]), t)
    assert float(got) == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # the old formula: cross-entropy of the (B, B) cosine logits / temperature
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 6, generator=g), 3 * torch.randn(37, 6, generator=g)
    grads = []
    for fn in (lambda x, y: F.cross_entropy(F.normalize(x, dim=1) @ F.normalize(y, dim=1).T / 0.2,
                                            torch.arange(37)),
               lambda x, y: info_nce(x, y, 0.2)):
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        loss = fn(x, y)
        (2.5 * loss).backward(retain_graph=True)
        grads.append((float(loss), x.grad.clone(), y.grad.clone()))
        x.grad, y.grad = None, None
        (2.5 * loss).backward()  # a second backward through the saved softmax: same grads
        torch.testing.assert_close(x.grad, grads[-1][1])
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[1][2], grads[0][2], rtol=1e-5, atol=1e-7)
    d = info_nce(a.double(), b.double(), 0.2)
    assert d.dtype == torch.float64 and float(d) == pytest.approx(grads[0][0], rel=1e-5)
    # a temperature so low that exp could overflow: the row-maximum path, still exact
    cold = F.cross_entropy(F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.005,
                           torch.arange(37))
    assert float(info_nce(a, b, 0.005)) == pytest.approx(float(cold), rel=1e-5)


def old_info_nce(v1: torch.Tensor, v2: torch.Tensor, t: float) -> torch.Tensor:
    """The formula before: cross-entropy of the (B, B) cosine logits / temperature."""
    logits = F.normalize(v1, dim=1) @ F.normalize(v2, dim=1).T / t
    return F.cross_entropy(logits, torch.arange(v1.shape[0]))


def test_info_nce_over_distinct_rows_equals_the_batch_with_repeats() -> None:
    """A batch drawing the same user/item several times: InfoNCE on the distinct rows with
    their counts gives the batch's loss and the same gradients on the full tables."""
    g = torch.Generator().manual_seed(4)
    side0, content0 = torch.randn(20, 6, generator=g), torch.randn(20, 6, generator=g)
    ids = torch.tensor([3, 3, 7, 0, 3, 19, 7, 5, 5, 5, 5, 12])  # repeats
    res = []
    for fn in (lambda s_, c_: old_info_nce(s_[ids], c_[ids], 0.2),
               lambda s_, c_: batch_info_nce(s_, c_, ids, 0.2)):
        s_, c_ = side0.clone().requires_grad_(), content0.clone().requires_grad_()
        loss = fn(s_, c_)
        loss.backward()
        res.append((float(loss), s_.grad, c_.grad))
    assert res[0][0] == pytest.approx(res[1][0], rel=1e-6)
    torch.testing.assert_close(res[1][1], res[0][1], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(res[1][2], res[0][2], rtol=1e-5, atol=1e-7)
    # hand check of the counts: rows {a: x2, b: x1}, unit views, t = 1
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    c = 1 / math.sqrt(2)
    row_a = math.log(2 * math.e + math.exp(c)) - 1.0
    row_b = math.log(2 * 1.0 + math.exp(c)) - c
    got = info_nce(q, k, 1.0, counts=torch.tensor([2, 1]))
    assert float(got) == pytest.approx((2 * row_a + row_b) / 3, rel=1e-6)


def test_mgcn_contrastive_loss_equals_the_old_formula() -> None:
    edges, feats = small_problem()
    torch.manual_seed(0)
    model = build_model("mgcn", 30, 25, feats, {"embedding_dim": 8})
    model.set_graph(edges)
    model.train()
    out = model()
    users = torch.randint(0, 30, (64,), generator=torch.Generator().manual_seed(1))
    pos = torch.randint(0, 25, (64,), generator=torch.Generator().manual_seed(2))
    side, content = out.extras["side"], out.extras["content"]
    old = 0.01 * (old_info_nce(side[30:][pos], content[30:][pos], 0.2)
                  + old_info_nce(side[:30][users], content[:30][users], 0.2))
    torch.testing.assert_close(model.auxiliary_loss(out, users, pos, pos), old)


def test_sparse_operator_products_and_gradients_match_torch_sparse() -> None:
    from mmrecun_ray.models.graph import SparseOperator
    g = torch.Generator().manual_seed(2)
    edges, _ = small_problem()
    for mat in (normalized_adjacency(torch.unique(edges, dim=1), 30, 25),
                user_item_block(torch.unique(edges, dim=1), 30, 25)):  # square, (30, 25)
        x0 = torch.randn(mat.shape[1], 5, generator=g)
        w = torch.randn(mat.shape[0], 5, generator=g)
        res = []
        for op in (mat, SparseOperator(mat)):
            x = x0.clone().requires_grad_()
            y = op @ x if isinstance(op, SparseOperator) else torch.sparse.mm(op, x)
            (y * w).sum().backward()
            res.append((y.detach(), x.grad))
        torch.testing.assert_close(res[0][0], res[1][0])
        torch.testing.assert_close(res[0][1], res[1][1])


# -- rows gathered once -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mf", "vbpr", "mgcn", "freedom"])
def test_gathered_rows_give_the_same_scores_l2_and_auxiliary_loss(name: str) -> None:
    edges, feats = small_problem()
    torch.manual_seed(0)
    model = build_model(name, 30, 25, feats, {"embedding_dim": 8})
    model.set_graph(edges)
    model.train()
    out = model()
    users, pos, neg = torch.arange(30), edges[1, :30], torch.randint(0, 25, (30,))
    rows = BatchRows.gather(out, users, pos, neg)
    for x, y in zip(rows.scores(), pair_scores(out, users, pos, neg)):
        torch.testing.assert_close(x, y)
    torch.testing.assert_close(model.regularization(out, users, pos, neg, rows=rows),
                               model.regularization(out, users, pos, neg))
    torch.testing.assert_close(model.auxiliary_loss(out, users, pos, neg, rows=rows),
                               model.auxiliary_loss(out, users, pos, neg))
    hand = (out.user[users].pow(2).sum() + out.item[pos].pow(2).sum()
            + out.item[neg].pow(2).sum()) / 60
    if name != "freedom":  # FREEDOM's L2 is on the ego embeddings
        torch.testing.assert_close(model.regularization(out, users, pos, neg, rows=rows), hand)


# -- planted data: every model beats popularity --------------------------------------------
def make_planted() -> dict[str, object]:
    """Users and items with rank-6 latent factors; each user picks 16 items by a noisy
    top-k of ``<U_u, V_i> + popularity``; 4 per user held out. Features are noisy linear
    projections of the item factors."""
    g = torch.Generator().manual_seed(7)
    n_users, n_items, rank, per_user, held = 240, 160, 6, 16, 4
    u = torch.randn(n_users, rank, generator=g)
    v = torch.randn(n_items, rank, generator=g)
    pop = 0.8 * torch.randn(n_items, generator=g)
    gumbel = -torch.log(-torch.log(torch.rand(n_users, n_items, generator=g)))
    chosen = torch.topk(u @ v.T + pop + gumbel, per_user, dim=1).indices  # (n_users, 16)
    train_items, test_items = chosen[:, held:], chosen[:, :held]
    users = torch.arange(n_users).unsqueeze(1)
    train = torch.stack([users.expand_as(train_items).reshape(-1), train_items.reshape(-1)])
    feats = {"image": v @ torch.randn(rank, 48, generator=g) + 0.3 * torch.randn(n_items, 48, generator=g),
             "text": v @ torch.randn(rank, 24, generator=g) + 0.3 * torch.randn(n_items, 24, generator=g)}
    seen = torch.zeros(n_users, n_items, dtype=torch.bool)
    seen[train[0], train[1]] = True
    return {"n_users": n_users, "n_items": n_items, "train": train, "test": test_items,
            "features": feats, "seen": seen}


@pytest.fixture(scope="module")
def planted() -> dict[str, object]:
    return make_planted()


def recall_at_k(scores: torch.Tensor, seen: torch.Tensor, test: torch.Tensor, k: int = 20) -> float:
    """Mean Recall@k of ``(n_users, n_items)`` scores, train items masked."""
    top = torch.topk(scores.masked_fill(seen, float("-inf")), k, dim=1).indices
    hits = (top.unsqueeze(2) == test.unsqueeze(1)).any(dim=1).sum(dim=1).float()
    return float((hits / test.shape[1]).mean())


def sample_negatives(users: torch.Tensor, seen: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Uniform items each user has not interacted with in train."""
    neg = torch.randint(0, seen.shape[1], users.shape, generator=g)
    bad = seen[users, neg]
    while bool(bad.any()):
        neg[bad] = torch.randint(0, seen.shape[1], (int(bad.sum()),), generator=g)
        bad = seen[users, neg]
    return neg


@pytest.mark.parametrize("variant", VARIANTS)
def test_planted_training_beats_popularity(variant: str, planted: dict) -> None:
    """Every model trains: its loss falls and it ranks held-out items better than
    popularity (FREEDOM re-draws its pruned graph every 10 steps, a planted "epoch")."""
    torch.manual_seed(0)
    name, extra = spec(variant)
    train, seen, test = planted["train"], planted["seen"], planted["test"]
    n_users, n_items = planted["n_users"], planted["n_items"]
    popularity = torch.bincount(train[1], minlength=n_items).float()
    pop_recall = recall_at_k(popularity.expand(n_users, -1), seen, test)

    model = build_model(name, n_users, n_items, planted["features"], {"embedding_dim": 32, **extra})
    model.set_graph(train)
    reg = training_defaults(name).reg_weight
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(1)
    model.train()
    losses = []
    for step in range(120):
        if step % 10 == 0:
            model.on_epoch_start(step // 10, seed=0)
        idx = torch.randint(0, train.shape[1], (512,), generator=g)
        users, pos = train[0, idx], train[1, idx]
        neg = sample_negatives(users, seen, g)
        out = model()
        loss = batch_loss(model, out, users, pos, neg, reg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10]), f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    model.eval()
    with torch.no_grad():
        out = model()
        recall = recall_at_k(out.user @ out.item.T, seen, test)
    assert recall > pop_recall + 0.05, f"{name}: recall@20 {recall:.3f} vs popularity {pop_recall:.3f}"
