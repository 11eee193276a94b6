"""Data room: publishing, loading, validation, synthetic generator, MMRec import."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmrecun_ray.data import writer as writer_mod
from mmrecun_ray.data.dataset import (features_dataset, features_to_numpy, interactions_dataset,
                                      load_dataset, read_manifest, user_items, verify_files)
from mmrecun_ray.data.forget import apply_forget_view, forget_view
from mmrecun_ray.data.lineage import child_lineage, ledger_uri_for, root_uri, version_hashes
from mmrecun_ray.data.mmrec_import import prepare_mmrec
from mmrecun_ray.data.schema import Interactions
from mmrecun_ray.data.synthetic import SyntheticSpec, generate_synthetic, prepare_synthetic, true_scores
from mmrecun_ray.data.writer import write_dataset
from mmrecun_ray.errors import DataError, StorageError
from mmrecun_ray.storage import join, list_files
from mmrecun_ray.storage import ledger as ledger_mod

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# -- helpers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny() -> dict:
    return generate_synthetic("tiny", 0)


def _write(uri, data: dict, **kw):
    args = dict(name="t", n_users=data["n_users"], n_items=data["n_items"], train=data["train"],
                valid=data["valid"], test=data["test"], features=data["features"], source="test")
    args.update(kw)
    return write_dataset(uri, **args)


def _small() -> dict:
    """Hand-made 3-user / 4-item dataset."""
    return {"n_users": 3, "n_items": 4,
            "train": Interactions(np.array([0, 0, 1, 2, 2]), np.array([1, 0, 2, 3, 0])),
            "valid": Interactions(np.array([0, 1]), np.array([2, 3])),
            "test": Interactions(np.array([2]), np.array([1])),
            "features": {"text": np.arange(8, dtype=np.float32).reshape(4, 2)}}


def _tamper(root: Path, rel: str, table: pa.Table) -> None:
    """Replace a published file AND its manifest hash (a producer that published bad data)."""
    pq.write_table(table, root / rel)
    man = json.loads((root / "manifest.json").read_text())
    man["files"][rel] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    (root / "manifest.json").write_text(json.dumps(man))


def _published_small(tmp_path: Path) -> Path:
    out = tmp_path / "v1"
    _write(out, _small())
    return out


# -- round trip -------------------------------------------------------------------------------
def test_roundtrip_tiny(tmp_path, tiny):
    out = tmp_path / "tiny"
    m = prepare_synthetic("tiny", 0, out)
    ds = load_dataset(out)
    assert (ds.n_users, ds.n_items) == (300, 200)
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(ds.split(s).user, tiny[s].user)
        np.testing.assert_array_equal(ds.split(s).item, tiny[s].item)
        assert ds.split(s).user.dtype == np.int64
        assert m.counts[s] == len(tiny[s])
    assert sum(m.counts.values()) == 6000
    for mod, dim in (("image", 64), ("text", 32)):
        assert ds.features[mod].dtype == np.float32 and ds.features[mod].shape == (200, dim)
        np.testing.assert_array_equal(ds.features[mod], tiny["features"][mod])
    assert m.modalities == {"image": 64, "text": 32}
    assert m.id_ranges == {"user_id": [0, 299], "item_id": [0, 199]}
    assert datetime.fromisoformat(m.created_at).utcoffset().total_seconds() == 0
    assert m.source == "synthetic:tiny:seed=0" and m.extra["seed"] == 0
    for rel, sha in m.files.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == sha
    assert sorted(m.files) == ["features/image.parquet", "features/text.parquet",
                               "interactions/part-00000.parquet"]
    assert read_manifest(out).content_hash() == m.content_hash()
    assert verify_files(out).name == "tiny"
    schema = pq.read_schema(out / "features/image.parquet")
    assert schema.field("embedding").type == pa.list_(pa.float32(), 64)


def test_several_part_files(tmp_path, tiny):
    m = _write(tmp_path / "v", tiny, rows_per_file=1000)
    parts = sorted(k for k in m.files if k.startswith("interactions/"))
    assert parts == [f"interactions/part-{i:05d}.parquet" for i in range(6)]
    ds = load_dataset(tmp_path / "v")
    np.testing.assert_array_equal(ds.test.item, tiny["test"].item)
    assert pq.read_metadata(tmp_path / "v" / parts[-1]).num_rows == 1000


def test_train_user_items_hand_computed():
    d = _small()
    csr = user_items(d["train"], 3, 4)
    np.testing.assert_array_equal(csr.indptr, [0, 2, 3, 5])
    np.testing.assert_array_equal(csr.indices, [0, 1, 2, 0, 3])
    np.testing.assert_array_equal(csr.items_of(2), [0, 3])
    np.testing.assert_array_equal(csr.contains([0, 0, 1, 2, 2], [1, 2, 2, 3, 1]),
                                  [True, False, True, True, False])
    assert csr.to_scipy().toarray().sum() == 5


# -- publishing guarantees ---------------------------------------------------------------------
def test_manifest_written_last_and_nothing_visible_before_rename(tmp_path, monkeypatch):
    out = tmp_path / "v"
    real = writer_mod._write_manifest
    observed = {}

    def spy(fs, root, manifest):
        observed["files_present"] = all((Path(root) / rel).is_file() for rel in manifest.files)
        observed["n_files"] = len(manifest.files)
        observed["target_visible"] = out.exists()
        observed["root"] = root
        real(fs, root, manifest)

    monkeypatch.setattr(writer_mod, "_write_manifest", spy)
    _write(out, _small())
    assert observed == {"files_present": True, "n_files": 2, "target_visible": False,
                        "root": observed["root"]}
    assert Path(observed["root"]).name.startswith(".v.tmp-") and not Path(observed["root"]).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v"]


def test_folder_without_manifest_is_not_a_version(tmp_path):
    out = _published_small(tmp_path)
    (out / "manifest.json").unlink()
    with pytest.raises(DataError, match="not a published dataset version"):
        load_dataset(out)
    with pytest.raises(DataError, match="not a published dataset version"):
        read_manifest(tmp_path / "nowhere")


def test_refuses_existing_version_unless_overwrite(tmp_path):
    out = _published_small(tmp_path)
    before = read_manifest(out)
    with pytest.raises(StorageError, match="already holds a published dataset version; pass --overwrite"):
        _write(out, _small())
    d = _small()
    d["test"] = Interactions(np.array([2, 1]), np.array([1, 0]))
    m = _write(out, d, overwrite=True)
    assert m.counts["test"] == 2 and read_manifest(out).counts["test"] == 2
    assert before.counts["test"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]  # no temp/old folders left


def test_failed_write_leaves_previous_version(tmp_path, monkeypatch):
    out = _published_small(tmp_path)
    before = read_manifest(out)
    bad = _small()
    bad["features"] = {"text": bad["features"]["text"].copy()}
    bad["features"]["text"][2, 1] = np.nan
    with pytest.raises(DataError, match=r"modality 'text'.*NaN/inf.*item_id 2"):
        _write(out, bad, overwrite=True)
    # an I/O failure in the middle of writing: previous version intact, no leftovers
    calls = {"n": 0}
    real = writer_mod._write_parquet

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(writer_mod, "_write_parquet", failing)
    with pytest.raises(StorageError, match="write failed, nothing published.*disk full"):
        _write(out, _small(), overwrite=True)
    after = load_dataset(out)
    assert after.manifest.created_at == before.created_at and after.manifest.files == before.files
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]


# -- validation: writer inputs -----------------------------------------------------------------
@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: d["train"].user.__setitem__(3, -1),
     r"train split: column 'user_id' row 3 has id -1, outside 0\.\.2"),
    (lambda d: d["valid"].item.__setitem__(1, 4),
     r"valid split: column 'item_id' row 1 has id 4, outside 0\.\.3"),
    (lambda d: d.__setitem__("test", Interactions(np.array([2.5]), np.array([1]))),
     r"test split: column 'user_id' must hold integer ids; row 0 has 2\.5"),
    (lambda d: d.__setitem__("test", Interactions(np.array(["a"]), np.array([1]))),
     r"test split: column 'user_id' must hold integer ids"),
    (lambda d: d.__setitem__("valid", Interactions(np.zeros(0, np.int64), np.zeros(0, np.int64))),
     r"split 'valid' is empty"),
    (lambda d: d.__setitem__("features", {"text": np.ones((3, 2), np.float32)}),
     r"features\['text'\]: modality 'text' has 3 rows but the dataset has n_items=4"),
    (lambda d: d["features"]["text"].__setitem__((3, 0), np.inf),
     r"features\['text'\]: modality 'text' has NaN/inf values; first bad item_id 3"),
])
def test_writer_rejects_bad_input(tmp_path, mutate, pattern):
    d = _small()
    mutate(d)
    with pytest.raises(DataError, match=pattern):
        _write(tmp_path / "v", d)
    assert not (tmp_path / "v").exists() and list(tmp_path.iterdir()) == []


# -- validation: loader -------------------------------------------------------------------------
def _inter(root: Path) -> pa.Table:
    return pq.read_table(root / "interactions/part-00000.parquet")


@pytest.mark.parametrize("change, pattern", [
    (lambda t: t.drop_columns(["split"]), r"part-00000\.parquet: missing column\(s\) \['split'\]"),
    (lambda t: t.set_column(1, "item_id", pa.array([0, 1, 2, 3, 9, 2, 3, 1], pa.int64())),
     r"part-00000\.parquet: column 'item_id' row 4 has id 9, outside 0\.\.3"),
    (lambda t: t.set_column(0, "user_id", pa.array([0, 0, 1, 2, -2, 0, 1, 2], pa.int64())),
     r"part-00000\.parquet: column 'user_id' row 4 has id -2"),
    (lambda t: t.set_column(0, "user_id", pa.array([0., 0, 1, 2, 2, 0, 1, 2])),
     r"part-00000\.parquet: column 'user_id' must hold integer ids, got type double"),
    (lambda t: t.set_column(2, "split", pa.array(["train"] * 5 + ["valid", "trian", "test"])),
     r"part-00000\.parquet: column 'split' row 6 has unknown split label 'trian'"),
    (lambda t: t.set_column(2, "split", pa.array(["train"] * 5 + ["test"] * 3)),
     r"manifest counts valid=2 but the files hold 0"),
])
def test_loader_rejects_bad_interactions(tmp_path, change, pattern):
    out = _published_small(tmp_path)
    _tamper(out, "interactions/part-00000.parquet", change(_inter(out)))
    with pytest.raises(DataError, match=pattern):
        load_dataset(out)


def test_loader_rejects_bad_features(tmp_path):
    out = _published_small(tmp_path)
    rel = "features/text.parquet"
    t = pq.read_table(out / rel)
    dup = t.set_column(0, "item_id", pa.array([0, 1, 1, 3], pa.int64()))
    _tamper(out, rel, dup)
    with pytest.raises(DataError, match=r"text\.parquet: modality 'text' has duplicate rows for item_id 1"):
        load_dataset(out)
    emb = pa.FixedSizeListArray.from_arrays(pa.array([0, 1, 2, 3, np.nan, 5, 6, 7], pa.float32()), 2)
    _tamper(out, rel, pa.table({"item_id": pa.array([3, 2, 1, 0], pa.int64()), "embedding": emb}))
    with pytest.raises(DataError,
                       match=r"text\.parquet: modality 'text' has NaN/inf values; first bad item_id 1"):
        load_dataset(out)
    # rows stored out of order are put back in item order
    emb = pa.FixedSizeListArray.from_arrays(pa.array([6, 7, 4, 5, 2, 3, 0, 1], pa.float32()), 2)
    _tamper(out, rel, pa.table({"item_id": pa.array([3, 2, 1, 0], pa.int64()), "embedding": emb}))
    np.testing.assert_array_equal(load_dataset(out).features["text"], _small()["features"]["text"])
    _tamper(out, rel, t.slice(0, 3))
    with pytest.raises(DataError, match=r"modality 'text' has no row for item_id 3"):
        load_dataset(out)


def test_hash_mismatch_after_publish(tmp_path):
    out = _published_small(tmp_path)
    rel = "interactions/part-00000.parquet"
    t = _inter(out)
    pq.write_table(t.set_column(1, "item_id", pa.array([3, 1, 2, 3, 0, 2, 3, 1], pa.int64())), out / rel)
    with pytest.raises(DataError, match=r"part-00000\.parquet: sha256 mismatch.*changed after"):
        load_dataset(out)
    with pytest.raises(DataError, match="sha256 mismatch"):
        verify_files(out)
    assert load_dataset(out, verify_hashes=False).train.item[0] == 3
    (out / rel).unlink()
    with pytest.raises(DataError, match=r"part-00000\.parquet: listed in manifest\.json but missing"):
        load_dataset(out)


# -- synthetic -----------------------------------------------------------------------------------
def test_synthetic_deterministic(tiny):
    again = generate_synthetic("tiny", 0)
    other = generate_synthetic("tiny", 1)
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(again[s].user, tiny[s].user)
        np.testing.assert_array_equal(again[s].item, tiny[s].item)
    np.testing.assert_array_equal(again["features"]["image"], tiny["features"]["image"])
    assert not np.array_equal(other["train"].item, tiny["train"].item)


def test_synthetic_split_proportions(tiny):
    n = 300
    per = {s: np.bincount(tiny[s].user, minlength=n) for s in ("train", "valid", "test")}
    total = per["train"] + per["valid"] + per["test"]
    assert total.sum() == 6000 and total.min() >= 5
    assert per["valid"].min() >= 1 and per["test"].min() >= 1 and per["train"].min() >= 3
    expect = np.maximum(1, np.floor(0.1 * total + 0.5))
    np.testing.assert_array_equal(per["valid"], expect)
    np.testing.assert_array_equal(per["test"], expect)
    big = total >= 20
    assert big.sum() > 50
    frac = per["train"][big] / total[big]
    assert 0.75 <= frac.min() and frac.max() <= 0.84 and abs(frac.mean() - 0.8) < 0.01
    keys = np.concatenate([tiny[s].keys(200) for s in ("train", "valid", "test")])
    assert np.unique(keys).size == keys.size  # no pair twice (sampled without replacement)


def test_synthetic_exact_sizes_custom_spec():
    spec = SyntheticSpec("mid", n_users=1000, n_items=700, n_interactions=9_123,
                         modalities={"audio": 16})
    d = generate_synthetic(spec, 3)
    assert sum(len(d[s]) for s in ("train", "valid", "test")) == 9_123
    assert d["features"]["audio"].shape == (700, 16)
    assert np.bincount(d["train"].user, minlength=1000).min() >= 3


def _recall_at(scores: np.ndarray, train: Interactions, test: Interactions, n_users: int,
               n_items: int, k: int = 20) -> float:
    """Mean recall@k over users with test items; train items masked."""
    s = scores.astype(np.float64).copy()
    s[train.user, train.item] = -np.inf
    top = np.argpartition(-s, k, axis=1)[:, :k]
    hit = np.zeros((n_users, n_items), dtype=bool)
    hit[np.repeat(np.arange(n_users), k), top.ravel()] = True
    n_test = np.bincount(test.user, minlength=n_users)
    hits = np.bincount(test.user, weights=hit[test.user, test.item], minlength=n_users)
    ok = n_test > 0
    return float(np.mean(hits[ok] / np.minimum(k, n_test[ok])))


def test_synthetic_planted_signal(tiny):
    n_u, n_i = 300, 200
    truth = tiny["truth"]
    cl = truth["item_cluster"]
    same = cl[:, None] == cl[None, :]
    np.fill_diagonal(same, False)
    diff = cl[:, None] != cl[None, :]
    for mod in ("image", "text"):
        f = tiny["features"][mod]
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        cos = f @ f.T
        assert cos[same].mean() > 0.12 and abs(cos[diff].mean()) < 0.03, mod
    pop = np.bincount(tiny["train"].item, minlength=n_i).astype(np.float64)
    top_decile_share = np.sort(pop)[::-1][: n_i // 10].sum() / pop.sum()
    assert top_decile_share > 0.18  # long tail: 10% of items hold far more than 10%
    r_truth = _recall_at(true_scores(truth, np.arange(n_u)), tiny["train"], tiny["test"], n_u, n_i)
    r_pop = _recall_at(np.tile(pop, (n_u, 1)), tiny["train"], tiny["test"], n_u, n_i)
    f = tiny["features"]["text"]
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    profile = np.zeros((n_u, f.shape[1]))
    np.add.at(profile, tiny["train"].user, f[tiny["train"].item])
    r_content = _recall_at(profile @ f.T, tiny["train"], tiny["test"], n_u, n_i)
    assert r_truth > 2.0 * r_pop, (r_truth, r_pop)
    assert r_content > 1.5 * r_pop and r_content > 4 * 20 / n_i, (r_content, r_pop)


# -- MMRec import --------------------------------------------------------------------------------
def _mmrec_dir(tmp_path: Path, inter: str, feats: dict[str, np.ndarray] | None = None) -> Path:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "toy.inter").write_text(inter)
    for m, a in (feats or {}).items():
        np.save(src / f"{m}_feat.npy", a)
    return src


def test_import_minimal_columns_and_timestamp(tmp_path):
    src = _mmrec_dir(tmp_path, "userID\titemID\ttimestamp\tx_label\n0\t0\t10\t0\n0\t2\t11\t1\n"
                               "1\t1\t12\t0\n1\t0\t13\t2\n",
                     {"image": np.eye(3, dtype=np.float32), "audio": np.ones((3, 5), np.float64)})
    m = prepare_mmrec(src, tmp_path / "out")
    assert (m.name, m.n_users, m.n_items) == ("toy", 2, 3)
    assert m.counts == {"train": 2, "valid": 1, "test": 1}
    assert m.modalities == {"audio": 5, "image": 3}
    t = _inter(tmp_path / "out")
    assert t.column_names == ["user_id", "item_id", "split", "timestamp"]
    assert t["timestamp"].to_pylist() == [10, 12, 11, 13] and t["split"].to_pylist()[2] == "valid"
    ds = load_dataset(tmp_path / "out")
    np.testing.assert_array_equal(ds.features["image"], np.eye(3))
    assert ds.features["audio"].dtype == np.float32


@pytest.mark.parametrize("inter, feats, pattern", [
    ("userID\titemID\tx_label\n0\t0\t0\n0\t1\t3\n", None,
     r"toy\.inter: column 'x_label' line 3 has 3; expected 0 \(train\), 1 \(valid\) or 2 \(test\)"),
    ("userID\titemID\tx_label\n0\t0\t0\n0\tabc\t1\n", None,
     r"toy\.inter: column 'itemID' line 3 has 'abc', not an integer"),
    ("userID\titemID\tx_label\n0\t0\t0\n0\t1.5\t1\n", None,
     r"toy\.inter: column 'itemID' must hold integer ids; line 3 has 1\.5"),
    ("userID\titemID\tx_label\n0\t0\t0\n-1\t1\t1\n", None,
     r"toy\.inter: column 'userID' line 3 has negative id -1"),
    ("user\titemID\tx_label\n0\t0\t0\n", None, r"toy\.inter: missing column\(s\) \['userID'\]"),
    ("userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n1\t1\t2\n", {"text": np.ones((3, 4), np.float32)},
     r"text_feat\.npy: modality 'text' has 3 rows but the dataset has n_items=2"),
    ("userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n", None, r"toy\.inter: split 'test' is empty"),
])
def test_import_rejects_bad_files(tmp_path, inter, feats, pattern):
    src = _mmrec_dir(tmp_path, inter, feats)
    with pytest.raises(DataError, match=pattern):
        prepare_mmrec(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _need_shared(name: str) -> Path:
    p = SHARED / name
    if not (p / f"{name}.inter").exists():
        pytest.skip(f"real data {p} absent (tests read ../shared/data beside the checkout)")
    return p


def test_import_lfm2k(tmp_path):
    src = _need_shared("lfm2k")
    t0 = time.perf_counter()
    m = prepare_mmrec(src, tmp_path / "lfm2k")
    ds = load_dataset(tmp_path / "lfm2k")
    elapsed = time.perf_counter() - t0
    assert (m.name, m.n_users, m.n_items) == ("lfm2k", 1858, 1425)
    assert m.counts == {"train": 44327, "valid": 4799, "test": 7219}
    assert m.modalities == {"audio": 512, "text": 384}
    np.testing.assert_array_equal(ds.features["text"], np.load(src / "text_feat.npy"))
    assert _inter(tmp_path / "lfm2k").column_names == ["user_id", "item_id", "split", "rating"]
    assert elapsed < 20


def test_import_baby(tmp_path):
    src = _need_shared("baby")
    m = prepare_mmrec(src, tmp_path / "baby")
    ds = load_dataset(tmp_path / "baby")
    assert (m.name, m.n_users, m.n_items) == ("baby", 19445, 7050)
    assert m.counts == {"train": 118551, "valid": 20559, "test": 21682}
    assert m.modalities == {} and ds.features == {}
    assert set(m.extra["interaction_columns"]) == {"rating", "timestamp"}
    assert np.bincount(ds.train.user, minlength=19445).min() >= 1


# -- Ray Data ------------------------------------------------------------------------------------
def test_ray_datasets_match_numpy(tmp_path, ray_session):
    out = tmp_path / "tiny"
    prepare_synthetic("tiny", 2, out)
    ds = load_dataset(out)
    rows = interactions_dataset(out, "valid").to_pandas()
    assert list(rows.columns) == ["user_id", "item_id"]
    got = np.sort(rows["user_id"].to_numpy(np.int64) * 200 + rows["item_id"].to_numpy(np.int64))
    np.testing.assert_array_equal(got, np.sort(ds.valid.keys(200)))
    feats = features_to_numpy(features_dataset(out, "text"), 200, 32)
    np.testing.assert_array_equal(feats, ds.features["text"])
    with pytest.raises(DataError, match="no modality 'audio'"):
        features_dataset(out, "audio")


# -- forget view: the real ledger, lineage, every reader ------------------------------------------
# _small(): train (0,1) (0,0) (1,2) (2,3) (2,0) | valid (0,2) (1,3) | test (2,1); 3 users, 4 items
def _rows(ds, split: str) -> list[tuple[int, int]]:
    x = ds.split(split)
    return sorted(zip(x.user.tolist(), x.item.tolist()))


def _stream_rows(uri, split: str) -> list[tuple[int, int]]:
    return sorted((int(r["user_id"]), int(r["item_id"])) for r in interactions_dataset(uri, split).take_all())


def _record(uri, rid: str, kind: str, rows=(), users=(), banned=(), dropped=None) -> dict:
    """Record a request against ``uri`` (in its lineage's ledger); ``rows`` are
    ``(user, item, split code)``."""
    m = read_manifest(uri)
    return ledger_mod.record_request(
        ledger_uri_for(uri), request_id=rid, kind=kind, request={"kind": kind},
        pairs=np.asarray(list(rows), dtype=np.int64).reshape(-1, 3), users=list(users),
        banned_items=list(banned), dropped_features=dropped or {}, n_users=m.n_users,
        n_items=m.n_items, data_uri=str(uri), data_hash=m.content_hash())


def test_users_request_hides_every_split_in_load_and_stream(tmp_path, ray_session):
    out = _published_small(tmp_path)
    # user 0's rows of all splits, and user 1's valid row given only by pair: (1,3) split 1
    _record(out, "u0", "users", rows=[(0, 1, 0), (0, 0, 0), (0, 2, 1)], users=[0])
    _record(out, "p13", "interactions", rows=[(1, 3, 1)])
    ds = load_dataset(out)
    assert _rows(ds, "train") == [(1, 2), (2, 0), (2, 3)]
    assert _rows(ds, "valid") == [] and _rows(ds, "test") == [(2, 1)]
    assert ds.manifest.extra["forget_filtered_rows"] == 4
    assert ds.honoured == {"u0", "p13"}
    assert user_items(ds.train, 3, 4).indptr.tolist() == [0, 0, 1, 3]
    # the Ray Data streams drop exactly the same rows
    assert [_stream_rows(out, s) for s in ("train", "valid", "test")] == \
        [[(1, 2), (2, 0), (2, 3)], [], [(2, 1)]]
    # the users list alone hides a user's rows even where no pair was recorded
    _record(out, "u2", "users", rows=[(2, 3, 0)], users=[2])
    again = load_dataset(out)
    assert _rows(again, "train") == [(1, 2)] and _rows(again, "test") == []
    assert _stream_rows(out, "test") == []


def test_items_and_modality_requests_withdraw_features(tmp_path, ray_session):
    d = _small()
    d["features"]["image"] = np.arange(12, dtype=np.float32).reshape(4, 3) + 1
    out = tmp_path / "v"
    _write(out, d)
    _record(out, "i3", "items", rows=[(2, 3, 0), (1, 3, 1)], banned=[3], dropped={"text": [3], "image": [3]})
    ds = load_dataset(out)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (4, 1, 1)
    assert 3 not in ds.train.item and 3 not in ds.valid.item
    np.testing.assert_array_equal(ds.features["text"], [[0, 1], [2, 3], [4, 5], [0, 0]])
    np.testing.assert_array_equal(ds.features["image"][3], [0, 0, 0])
    np.testing.assert_array_equal(ds.features["image"][:3], d["features"]["image"][:3])
    np.testing.assert_array_equal(features_to_numpy(features_dataset(out, "text"), 4, 2),
                                  [[0, 1], [2, 3], [4, 5], [0, 0]])
    # a modality request: feature rows of item 1 dropped in 'image', then 'text' withdrawn whole
    _record(out, "m-image-1", "modality", dropped={"image": [1]})
    _record(out, "m-text", "modality", dropped={"text": "all"})
    ds = load_dataset(out)
    assert sorted(ds.features) == ["image"] and (len(ds.train), len(ds.valid)) == (4, 1)
    np.testing.assert_array_equal(ds.features["image"].sum(axis=1), [6, 0, 24, 0])
    np.testing.assert_array_equal(features_to_numpy(features_dataset(out, "image"), 4, 3).sum(axis=1),
                                  [6, 0, 24, 0])
    with pytest.raises(DataError, match="modality 'text' was withdrawn"):
        features_dataset(out, "text")
    # the view without the modality requests brings the features back (for resolving them)
    back = load_dataset(out, exclude_requests={"m-text", "m-image-1"})
    assert sorted(back.features) == ["image", "text"] and back.honoured == {"i3"}
    np.testing.assert_array_equal(back.features["image"].sum(axis=1), [6, 15, 24, 0])


def test_forget_view_hand_computed_and_exclude(tmp_path):
    out = _published_small(tmp_path)
    assert forget_view(out).request_ids == frozenset() and forget_view(out).keys.size == 0
    _record(out, "a", "interactions", rows=[(0, 1, 0), (2, 1, 2)])
    _record(out, "b", "users", rows=[(1, 2, 0), (1, 3, 1)], users=[1])
    _record(out, "c", "items", banned=[0], dropped={"text": [0]})
    v = forget_view(out)
    assert v.keys.tolist() == [1, 6, 7, 9]  # u*4+i: (0,1) (1,2) (1,3) (2,1)
    assert v.users.tolist() == [1] and v.banned_items.tolist() == [0]
    assert v.request_ids == {"a", "b", "c"} and v.dropped_features["text"].tolist() == [0]
    w = forget_view(out, exclude={"b"})
    assert w.keys.tolist() == [1, 9] and w.users.size == 0 and w.request_ids == {"a", "c"}
    # a re-run of a request id is not a second entry
    assert _record(out, "a", "interactions", rows=[(0, 0, 0)])["seq"] == 0
    assert len(ledger_mod.read_entries(ledger_uri_for(out))) == 3
    # apply_forget_view leaves its input alone
    ds = load_dataset(out, exclude_requests={"a", "b", "c"})
    f = apply_forget_view(ds, w)
    assert (len(ds.train), len(f.train), len(f.test)) == (5, 2, 0)  # left: (1,2) (2,3)
    assert ds.features["text"][0].tolist() == [0, 1] and f.features["text"][0].tolist() == [0, 0]
    # an entry recorded for another id space is refused, naming the entry
    ledger_mod.record_request(ledger_uri_for(out), request_id="alien", kind="interactions",
                              request={}, pairs=np.array([[0, 5, 0]]), users=[], banned_items=[],
                              dropped_features={}, n_users=3, n_items=9, data_uri="elsewhere",
                              data_hash="x")
    with pytest.raises(DataError, match=r"00000003\.json: recorded for n_items=9, dataset has n_items=4"):
        load_dataset(out)


def _descendant(parent, out, request_id: str, hide) -> None:
    """Publish ``parent``'s data minus the rows ``hide(user, item)`` marks, as its child."""
    ds = load_dataset(parent)
    keep = {s: ~hide(ds.split(s).user, ds.split(s).item) for s in ("train", "valid", "test")}
    parts = {s: Interactions(ds.split(s).user[k], ds.split(s).item[k]) for s, k in keep.items()}
    write_dataset(out, name="child", n_users=ds.n_users, n_items=ds.n_items, features=ds.features,
                  source=f"forget:{parent}", lineage=child_lineage(parent, ds.manifest, request_id),
                  **parts)


def test_chained_requests_all_land_in_the_root_ledger(tmp_path):
    root = _published_small(tmp_path)
    d = _small()
    d["test"] = Interactions(np.array([2, 1]), np.array([1, 0]))  # so that B leaves a test row
    _write(root, d, overwrite=True)
    _record(root, "A", "interactions", rows=[(0, 1, 0)])
    child = tmp_path / "out1" / "retain_data"
    _descendant(root, child, "A", lambda u, i: (u == 0) & (i == 1))
    cm = read_manifest(child)
    assert cm.root == str(root) and cm.requests == ["A"] and cm.parent == str(root)
    assert cm.ancestors == [read_manifest(root).content_hash()] and cm.forget_request == "A"
    assert root_uri(child) == str(root) and ledger_uri_for(child) == join(root, "ledger")
    # request B resolved on the child lands in the ROOT's ledger
    _record(child, "B", "users", rows=[(2, 3, 0), (2, 0, 0), (2, 1, 2)], users=[2])
    assert [e["id"] for e in ledger_mod.read_entries(join(root, "ledger"))] == ["A", "B"]
    assert not (child / "ledger").exists()
    r = load_dataset(root)
    assert _rows(r, "train") == [(0, 0), (1, 2)] and _rows(r, "test") == [(1, 0)]
    assert r.honoured == {"A", "B"}
    c = load_dataset(child)
    assert _rows(c, "train") == [(0, 0), (1, 2)] and _rows(c, "valid") == [(0, 2), (1, 3)]
    assert c.honoured == {"A", "B"}
    # a grandchild keeps the root and the whole chain
    grand = tmp_path / "out2" / "retain_data"
    _descendant(child, grand, "B", lambda u, i: u == 2)
    gm = read_manifest(grand)
    assert gm.root == str(root) and gm.requests == ["A", "B"]
    assert gm.ancestors == version_hashes(cm) == [cm.ancestors[0], cm.content_hash()]
    assert load_dataset(grand).honoured == {"A", "B"} and len(load_dataset(grand).train) == 2
    # without its root a descendant is refused, naming the root
    shutil.move(root, tmp_path / "moved")
    for call in (load_dataset, forget_view, ledger_uri_for, lambda u: interactions_dataset(u, "train")):
        with pytest.raises(DataError, match=f"lineage root {root} cannot be read"):
            call(child)


def test_ledger_survives_writer_overwrite_local(tmp_path):
    out = _published_small(tmp_path)
    _record(out, "u0", "users", rows=[(0, 1, 0), (0, 0, 0), (0, 2, 1)], users=[0])
    files = list_files(join(out, "ledger"))
    d = _small()
    d["test"] = Interactions(np.array([2, 0]), np.array([1, 3]))  # new data, one more row of user 0
    m = _write(out, d, overwrite=True)
    assert m.counts["test"] == 2 and list_files(join(out, "ledger")) == files
    ds = load_dataset(out)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (3, 1, 1) and _rows(ds, "test") == [(2, 1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v1"]  # no old/temp folder left


def test_object_store_writer_manifest_last_overwrite_keeps_ledger(s3_env, s3_prefix, monkeypatch):
    """The object-store branch on a real SeaweedFS: manifest last, stale parts cleaned up on
    overwrite, the ledger kept; a failed rewrite leaves no version visible."""
    uri = join(s3_prefix, "v")
    order: list[str] = []
    real_parquet, real_manifest = writer_mod._write_parquet, writer_mod._write_manifest
    monkeypatch.setattr(writer_mod, "_write_parquet",
                        lambda fs, path, *a, **k: order.append(path) or real_parquet(fs, path, *a, **k))
    monkeypatch.setattr(writer_mod, "_write_manifest",
                        lambda fs, r, m: order.append("MANIFEST") or real_manifest(fs, r, m))
    tiny = generate_synthetic("tiny", 1)
    _write(uri, tiny, rows_per_file=2000)
    assert order[-1] == "MANIFEST" and len(order) == 3 + 2 + 1
    with pytest.raises(StorageError, match="already holds a published dataset version"):
        _write(uri, tiny)
    ds = load_dataset(uri)
    users = [0, 1, 2]
    rows = [(u, i, k) for k, s in enumerate(("train", "valid", "test"))
            for u, i in zip(ds.split(s).user.tolist(), ds.split(s).item.tolist()) if u in users]
    _record(uri, "u012", "users", rows=rows, users=users)
    ledger_files = list_files(join(uri, "ledger"))
    _write(uri, tiny, overwrite=True)  # one part file now: part-00001/2 are stale
    keys = list_files(uri)
    assert keys == sorted(["features/image.parquet", "features/text.parquet",
                           "interactions/part-00000.parquet", "manifest.json",
                           *[f"ledger/{f}" for f in ledger_files]])
    again = load_dataset(uri)
    n_rows = sum(len(tiny[s]) for s in ("train", "valid", "test"))
    hidden = sum(np.isin(tiny[s].user, users).sum() for s in ("train", "valid", "test"))
    assert hidden == len(rows) > 0
    assert sum(len(again.split(s)) for s in ("train", "valid", "test")) == n_rows - hidden
    assert not np.isin(again.test.user, users).any()

    def broken(*a, **k):
        raise OSError("connection reset")
    monkeypatch.setattr(writer_mod, "_write_parquet", broken)
    with pytest.raises(StorageError, match="version not published.*connection reset"):
        _write(uri, tiny, overwrite=True)
    with pytest.raises(DataError, match="not a published dataset version"):
        load_dataset(uri)
    assert list_files(join(uri, "ledger")) == ledger_files
