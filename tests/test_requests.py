"""Forget requests: parsing and resolution into D_f and D_r on a hand-made dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mmrecun_ray.data.schema import Interactions, Manifest, RecDataset
from mmrecun_ray.errors import ConfigError, DataError
from mmrecun_ray.unlearning.references import exclusive_ids, matched_references
from mmrecun_ray.unlearning.requests import parse_request, resolve_request


def _ds() -> RecDataset:
    # 4 users x 5 items; train pairs per user: u0 {0,1,2}, u1 {1,3}, u2 {0,4}, u3 {2,3,4}
    tr_u = np.array([0, 0, 0, 1, 1, 2, 2, 3, 3, 3])
    tr_i = np.array([0, 1, 2, 1, 3, 0, 4, 2, 3, 4])
    va = Interactions(np.array([0, 1, 2, 3]), np.array([3, 4, 1, 0]))
    te = Interactions(np.array([0, 1, 2, 3]), np.array([4, 0, 2, 1]))
    feats = {"image": np.arange(10, dtype=np.float32).reshape(5, 2) + 1,
             "text": np.ones((5, 3), dtype=np.float32)}
    m = Manifest(name="hand", n_users=4, n_items=5, counts={"train": 10, "valid": 4, "test": 4},
                 modalities={"image": 2, "text": 3})
    return RecDataset(4, 5, Interactions(tr_u, tr_i), va, te, feats, m, uri="mem://hand")


def _pairs(x: Interactions) -> set[tuple[int, int]]:
    return set(zip(x.user.tolist(), x.item.tolist()))


def test_users_request_forgets_every_interaction_of_the_user() -> None:
    fs = resolve_request(parse_request("users=0,3"), _ds())
    assert _pairs(fs.forget) == {(0, 0), (0, 1), (0, 2), (3, 2), (3, 3), (3, 4)}
    assert _pairs(fs.retain.train) == {(1, 1), (1, 3), (2, 0), (2, 4)}
    assert set(fs.retain.valid.user.tolist()) == {1, 2}  # a forgotten user is not evaluated
    assert fs.banned_items.size == 0


def test_items_request_bans_items_and_zeroes_their_features() -> None:
    fs = resolve_request(parse_request("items=4"), _ds())
    assert _pairs(fs.forget) == {(2, 4), (3, 4)}
    assert fs.banned_items.tolist() == [4]
    assert not (fs.retain.test.item == 4).any() and not (fs.retain.valid.item == 4).any()
    assert np.all(fs.retain.features["image"][4] == 0) and np.all(fs.retain.features["image"][3] != 0)


def test_interactions_and_modality_requests() -> None:
    fs = resolve_request(parse_request("interactions=0:1,3:4"), _ds())
    assert _pairs(fs.forget) == {(0, 1), (3, 4)}
    assert len(fs.retain.train) == 8
    fm = resolve_request(parse_request("modality:image=1,2"), _ds())
    assert len(fm.forget) == 0 and len(fm.retain.train) == 10
    assert np.all(fm.retain.features["image"][[1, 2]] == 0)
    assert np.all(fm.retain.features["image"][[0, 3, 4]] != 0)
    fa = resolve_request(parse_request("modality:text"), _ds())
    assert "text" not in fa.retain.features and fa.dropped_features["text"].tolist() == [0, 1, 2, 3, 4]


def test_sampled_requests_are_seeded_and_sized() -> None:
    ds = _ds()
    a = resolve_request(parse_request("interactions:30%", seed=3), ds)
    b = resolve_request(parse_request("interactions:30%@3"), ds)
    assert len(a.forget) == 3 and _pairs(a.forget) == _pairs(b.forget)
    assert a.request_id == b.request_id
    u = resolve_request(parse_request("users:50%", seed=1), ds)
    assert len(set(u.forget.user.tolist())) == 2


def test_request_files(tmp_path) -> None:
    p = tmp_path / "req.json"
    p.write_text(json.dumps({"kind": "users", "ids": [1]}))
    fs = resolve_request(parse_request(str(p)), _ds())
    assert _pairs(fs.forget) == {(1, 1), (1, 3)}


@pytest.mark.parametrize("spec, err, needle", [
    ("users=9", DataError, "user id 9"),
    ("items=-1", DataError, "item id -1"),
    ("interactions=0:3", DataError, "covers no training interaction"),
    ("modality:audio", DataError, "'audio'"),
    ("people=1", ConfigError, "people=1"),
    ("users:150%", ConfigError, "fraction"),
    ("missing.json", ConfigError, "missing.json"),
])
def test_bad_requests_name_what_is_wrong(spec: str, err: type, needle: str) -> None:
    with pytest.raises(err, match=needle.replace("(", r"\(")):
        resolve_request(parse_request(spec), _ds())


def test_matched_references_follow_where_gold_would_rank_each_pair() -> None:
    ds = _ds()
    # users request: the users leave entirely -> never-seen items of theirs
    fs1 = resolve_request(parse_request("users=1"), ds)  # u1: train {1,3}, valid 4, test 0
    refs1 = matched_references(fs1, seed=0)
    assert refs1.tolist() == [2, 2]  # the only item u1 never touched in any split
    # interactions request: u0 keeps retain data and has validation item 3 -> reference 3
    fi = resolve_request(parse_request("interactions=0:1,3:4"), ds)
    ri = matched_references(fi, seed=0)
    by_pair = dict(zip(zip(fi.forget.user.tolist(), fi.forget.item.tolist()), ri.tolist()))
    assert by_pair[(0, 1)] == 3 and by_pair[(3, 4)] == 0  # u3's validation item is 0
    # items request: the item left the catalogue -> never a banned or known item
    fb = resolve_request(parse_request("items=4"), ds)
    rb = matched_references(fb, seed=0)
    by_user = dict(zip(fb.forget.user.tolist(), rb.tolist()))
    assert by_user[2] == 3  # u2 never touched item 3 (train 0,4; valid 1; test 2)
    assert by_user[3] != 4  # u3 touched every item: any but the banned one
    assert np.array_equal(rb, matched_references(fb, seed=0))  # seeded


def test_exclusive_ids_are_users_without_retain_data_and_banned_items() -> None:
    users, items = exclusive_ids(resolve_request(parse_request("users=0,3"), _ds()))
    assert users.tolist() == [0, 3] and items.size == 0
    users, items = exclusive_ids(resolve_request(parse_request("interactions=0:1"), _ds()))
    assert users.size == 0 and items.size == 0  # u0 keeps items 0 and 2
    users, items = exclusive_ids(resolve_request(parse_request("items=4"), _ds()))
    assert users.size == 0 and items.tolist() == [4]  # u2, u3 keep other items
