"""The bad-input corpus: every case exits 2 with one line naming the file, column, key or id
at fault, prints no traceback, and changes nothing on disk.

Each case runs the real CLI (``mmrecun_ray.cli.main``) on real files: a published tiny
dataset, a real trained model, and a copy of either with one thing broken. Validation
happens before any side effect, so no case starts Ray.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mmrecun_ray.cli import main
from mmrecun_ray.data.synthetic import prepare_synthetic
from mmrecun_ray.errors import DataError
from mmrecun_ray.training.runner import Scaling
from mmrecun_ray.training.train import train


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny dataset, a second (different) one, and an MF model trained on the first."""
    root = tmp_path_factory.mktemp("corpus")
    data, other = root / "data", root / "other"
    prepare_synthetic("tiny", 0, str(data))
    prepare_synthetic("tiny", 1, str(other))
    model = train(str(data), "mf", str(root / "trained"), Scaling(workers=0),
                  sets={"epochs": 2, "embedding_dim": 8}).model_uri
    return {"root": root, "data": data, "other": other, "model": Path(model)}


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _manifest(ds: Path) -> dict:
    return json.loads((ds / "manifest.json").read_text())


def _rewrite(ds: Path, rel: str, data: bytes) -> None:
    """Replace a file and record its new sha256 in the manifest (a consistent but bad file)."""
    (ds / rel).write_bytes(data)
    m = _manifest(ds)
    m["files"][rel] = hashlib.sha256(data).hexdigest()
    (ds / "manifest.json").write_text(json.dumps(m))


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _inter(ds: Path) -> tuple[str, pa.Table]:
    rel = next(k for k in _manifest(ds)["files"] if k.startswith("interactions/"))
    return rel, pq.read_table(ds / rel)


def _feature(ds: Path, modality: str = "image") -> tuple[str, pa.Table]:
    rel = f"features/{modality}.parquet"
    return rel, pq.read_table(ds / rel)


class Boom:
    """A pickle that would create a file when loaded (it must never be)."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


# -- corpus: (name, build(tmp, base) -> argv, culprit regex) ----------------------------------
def _train(data: Path, tmp: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--model", "mf", "--out", str(tmp / "out"), "--workers", "0",
            "--epochs", "1", *extra]


def _unlearn(b: dict[str, Path], tmp: Path, *extra: str, model: Path | None = None,
             data: Path | None = None, request: str = "users:5%") -> list[str]:
    return ["unlearn", "--model-uri", str(model or b["model"]), "--data", str(data or b["data"]),
            "--request", request, "--out", str(tmp / "out"), "--workers", "0", *extra]


def _data_case(mutate: Callable[[Path], None]) -> Callable[[Path, dict], list[str]]:
    def build(tmp: Path, b: dict) -> list[str]:
        ds = _copy(b["data"], tmp / "bad")
        mutate(ds)
        return _train(ds, tmp)
    return build


def _model_case(mutate: Callable[[Path], None]) -> Callable[[Path, dict], list[str]]:
    def build(tmp: Path, b: dict) -> list[str]:
        m = _copy(b["model"], tmp / "badmodel")
        mutate(m)
        return _unlearn(b, tmp, model=m)
    return build


def _truncate(ds: Path) -> None:
    rel, _ = _inter(ds)
    _rewrite(ds, rel, (ds / rel).read_bytes()[:200])


def _string_users(ds: Path) -> None:
    rel, t = _inter(ds)
    t = t.set_column(t.schema.get_field_index("user_id"), "user_id",
                     pa.array([str(x) for x in t["user_id"].to_pylist()]))
    _rewrite(ds, rel, _parquet_bytes(t))


def _feature_value(value: float) -> Callable[[Path], None]:
    def mutate(ds: Path) -> None:
        rel, t = _feature(ds)
        emb = np.stack(t["embedding"].to_numpy(zero_copy_only=False)).astype(np.float32)
        emb[7, 3] = value
        col = pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), emb.shape[1])
        _rewrite(ds, rel, _parquet_bytes(t.set_column(1, "embedding", col)))
    return mutate


def _user_out_of_range(ds: Path) -> None:
    rel, t = _inter(ds)
    users = t["user_id"].to_numpy().copy()
    users[5] = 10_000
    _rewrite(ds, rel, _parquet_bytes(t.set_column(0, "user_id", pa.array(users))))


def _duplicate_row(ds: Path) -> None:
    rel, t = _inter(ds)
    t = pa.concat_tables([t, t.slice(3, 1)])
    _rewrite(ds, rel, _parquet_bytes(t))
    m = _manifest(ds)
    split = t["split"][3].as_py()
    m["counts"][split] += 1
    (ds / "manifest.json").write_text(json.dumps(m))


def _no_test_rows(ds: Path) -> None:
    rel, t = _inter(ds)
    keep = pa.compute.not_equal(t["split"], "test")
    _rewrite(ds, rel, _parquet_bytes(t.filter(keep)))
    m = _manifest(ds)
    m["counts"]["test"] = 0
    (ds / "manifest.json").write_text(json.dumps(m))


def _manifest_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def mutate(ds: Path) -> None:
        m = _manifest(ds)
        edit(m)
        (ds / "manifest.json").write_text(json.dumps(m))
    return mutate


def _tamper(ds: Path) -> None:
    rel, _ = _inter(ds)
    raw = bytearray((ds / rel).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (ds / rel).write_bytes(bytes(raw))


def _crafted(name: str) -> Callable[[Path], None]:
    def mutate(m: Path) -> None:
        (m / name).write_bytes(pickle.dumps({"state": Boom(m.parent / "pwned")}))
    return mutate


def _model_json(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def mutate(m: Path) -> None:
        d = json.loads((m / "model.json").read_text())
        out = edit(d)
        (m / "model.json").write_text(out if isinstance(out, str) else json.dumps(d))
    return mutate


def _request_file(name: str, content: str | bytes) -> Callable[[Path, dict], list[str]]:
    def build(tmp: Path, b: dict) -> list[str]:
        f = tmp / name
        f.write_bytes(content if isinstance(content, bytes) else content.encode())
        return _unlearn(b, tmp, request=str(f))
    return build


def _config_file(content: str, *extra: str) -> Callable[[Path, dict], list[str]]:
    def build(tmp: Path, b: dict) -> list[str]:
        f = tmp / "cfg.json"
        f.write_text(content)
        return _unlearn(b, tmp, "--config", str(f), *extra)
    return build


def _occupied_unlearn(tmp: Path, b: dict) -> list[str]:
    (tmp / "out").mkdir()
    (tmp / "out" / "job.json").write_text(json.dumps({"key": {"command": "unlearn", "request_id": "x"},
                                                      "state": "done"}))
    return _unlearn(b, tmp)


def _occupied_train(tmp: Path, b: dict) -> list[str]:
    shutil.copytree(b["model"].parent, tmp / "out")
    return _train(b["data"], tmp)


CASES: list[tuple[str, Callable[[Path, dict], list[str]], str]] = [
    # data files
    ("truncated parquet", _data_case(_truncate), r"interactions/part-00000\.parquet: not a readable Parquet"),
    ("tampered file (sha256)", _data_case(_tamper), r"part-00000\.parquet: sha256 mismatch"),
    ("wrong dtype", _data_case(_string_users), r"column 'user_id' must hold integer ids"),
    ("NaN feature", _data_case(_feature_value(float("nan"))), r"image.*NaN/inf.*item_id 7"),
    ("inf feature", _data_case(_feature_value(float("inf"))), r"image.*NaN/inf.*item_id 7"),
    ("user id out of range", _data_case(_user_out_of_range), r"user_id.*10000"),
    ("duplicate row", _data_case(_duplicate_row), r"appears more than once"),
    ("empty split", _data_case(_no_test_rows), r"test"),
    ("manifest not JSON", _data_case(lambda ds: (ds / "manifest.json").write_text("{not json")),
     r"manifest\.json: not valid JSON"),
    ("manifest missing key", _data_case(_manifest_edit(lambda m: m.pop("n_items"))), r"n_items"),
    ("manifest counts", _data_case(_manifest_edit(lambda m: m["counts"].update(train=1))),
     r"counts train=1"),
    ("manifest newer schema", _data_case(_manifest_edit(lambda m: m.update(schema_version=99))),
     r"schema_version 99"),
    ("manifest lists a missing file",
     _data_case(_manifest_edit(lambda m: m["files"].update({"interactions/part-00009.parquet": "0" * 64}))),
     r"part-00009\.parquet"),
    ("not a dataset", lambda tmp, b: _train(tmp / "nothing", tmp), r"nothing.*not a published"),
    # model folders
    ("crafted pickle in model.pt", _model_case(_crafted("model.pt")), r"model\.pt: refused"),
    ("crafted pickle in optimizer.pt", _model_case(_crafted("optimizer.pt")), r"optimizer\.pt: refused"),
    ("model.json not JSON", _model_case(_model_json(lambda d: "{oops")), r"model\.json"),
    ("model.json missing key", _model_case(_model_json(lambda d: d.pop("n_items"))), r"model\.json.*n_items"),
    ("model.json unknown model", _model_case(_model_json(lambda d: d.update(model="nosuch"))), r"nosuch"),
    ("model of another dataset", lambda tmp, b: _unlearn(b, tmp, data=b["other"]),
     r"trained on dataset version [0-9a-f]{12}.*lineage root [0-9a-f]{12}"),
    ("model shape mismatch", _model_case(_model_json(lambda d: d.update(n_users=d["n_users"] + 1))),
     r"301 users"),
    # requests
    ("request ids not integers", lambda tmp, b: _unlearn(b, tmp, request="users=abc"), r"users=abc"),
    ("request user out of range", lambda tmp, b: _unlearn(b, tmp, request="users=99999"), r"user id 99999"),
    ("request fraction", lambda tmp, b: _unlearn(b, tmp, request="items:150%"), r"150%"),
    ("request pair syntax", lambda tmp, b: _unlearn(b, tmp, request="interactions=1-2"), r"user:item"),
    ("request unknown modality", lambda tmp, b: _unlearn(b, tmp, request="modality:audio"), r"'audio'"),
    ("request covers nothing", lambda tmp, b: _unlearn(b, tmp, request="interactions=0:199,0:198"),
     r"covers no training interaction"),
    ("request file missing", lambda tmp, b: _unlearn(b, tmp, request=str(tmp / "req.json")), r"req\.json"),
    ("request file not JSON", _request_file("req.json", "{"), r"req\.json: invalid JSON"),
    ("request file kind", _request_file("req.json", '{"kind": "everything"}'), r"req\.json.*'kind'"),
    ("request parquet columns", _request_file("req.parquet", _parquet_bytes(pa.table({"who": [1]}))),
     r"req\.parquet.*user_id"),
    # settings
    ("--set wrong type", lambda tmp, b: _unlearn(b, tmp, "--method", "mmrecun", "--set", "alpha=abc"),
     r"alpha='abc'"),
    ("--set unknown key", lambda tmp, b: _unlearn(b, tmp, "--set", "reset_exclusive=false"),
     r"reset_exclusive"),
    ("--set integer", lambda tmp, b: _unlearn(b, tmp, "--method", "mmrecun", "--set", "max_steps=2.5"),
     r"max_steps='2\.5'"),
    ("--set boolean", lambda tmp, b: _train(b["data"], tmp, "--set", "eval_every=maybe"), r"eval_every"),
    ("train unknown model param", lambda tmp, b: _train(b["data"], tmp, "--set", "n_layerz=3"), r"n_layerz"),
    ("train model param type", lambda tmp, b: _train(b["data"], tmp, "--set", "embedding_dim=big"),
     r"embedding_dim"),
    ("unknown model", lambda tmp, b: ["train", "--data", str(b["data"]), "--model", "nosuchmodel",
                                      "--out", str(tmp / "out")], r"nosuchmodel"),
    ("--config missing", lambda tmp, b: _unlearn(b, tmp, "--config", str(tmp / "none.json")), r"none\.json"),
    ("--config not JSON", _config_file("{bad"), r"cfg\.json: not valid JSON"),
    ("--config method mismatch", _config_file('{"method": "neggrad", "settings": {}}', "--method", "gold"),
     r"neggrad"),
    ("--workers negative", lambda tmp, b: _unlearn(b, tmp, "--workers", "-1"), r"--workers -1"),
    # outputs
    ("--out holds another job", _occupied_unlearn, r"out: holds another job.*--overwrite"),
    ("train --out holds a model", _occupied_train, r"out: already holds a trained model.*--overwrite"),
]


@pytest.mark.parametrize("name,build,culprit", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_naming_the_culprit_and_changes_nothing(
        name: str, build: Callable, culprit: str, base: dict, tmp_path: Path, capsys) -> None:
    argv = build(tmp_path, base)
    capsys.readouterr()
    before = {"tmp": _snapshot(tmp_path), "base": _snapshot(base["root"])}
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (name, err)
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    import re
    assert re.search(culprit, lines[0]), (culprit, lines[0])
    assert "Traceback" not in err
    assert _snapshot(tmp_path) == before["tmp"], "files changed under the case's folder"
    assert _snapshot(base["root"]) == before["base"], "the dataset or model changed"
    assert not (base["root"] / "pwned").exists() and not (tmp_path / "pwned").exists()


def test_corpus_is_large_enough() -> None:
    assert len(CASES) >= 30


def test_crafted_checkpoint_is_refused_without_running_it(tmp_path: Path) -> None:
    from mmrecun_ray.training.loop import load_checkpoint
    ck = tmp_path / "checkpoint.pt"
    ck.write_bytes(pickle.dumps({"model_state": Boom(tmp_path / "pwned")}))
    with pytest.raises(DataError, match="checkpoint.pt: not a loadable checkpoint"):
        load_checkpoint(ck)
    assert not (tmp_path / "pwned").exists()
    torch.save({"model_state": {"w": torch.zeros(1)}}, ck)
    assert "model_state" in load_checkpoint(ck)
