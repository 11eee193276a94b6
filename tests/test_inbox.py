"""The deletion-request inbox (``process``) on real files and a real local Ray: overlapping
requests are forgotten once, the policy's verdicts follow the Gold band, a process killed
(SIGKILL) mid-batch finishes on re-run with each request honoured exactly once, a rejected
model leaves the pointer where it was and the scheduled retrain ships on the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmrecun_ray.cli import main
from mmrecun_ray.data.dataset import load_dataset
from mmrecun_ray.data.synthetic import prepare_synthetic
from mmrecun_ray.errors import ConfigError
from mmrecun_ray.storage import ledger
from mmrecun_ray.training.export import read_model_info
from mmrecun_ray.unlearning.audit import AuditResult
from mmrecun_ray.unlearning.band import Band
from mmrecun_ray.unlearning.inbox import merge_forget_sets, request_from_doc, union_request
from mmrecun_ray.unlearning.policy import Policy, judge, load_policy
from mmrecun_ray.unlearning.requests import parse_request, resolve_request

ROOT = Path(__file__).resolve().parents[1]
# the method these tests were written for (the product default is hir, which has no step budget)
FAST = ["--workers", "0", "--method", "mmrecun", "--set", "max_steps=4", "--set", "forget_target=null"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    data = str(tmp_path_factory.mktemp("inbox-data") / "data")
    prepare_synthetic("tiny", 0, data)
    return data


@pytest.fixture(scope="module")
def trained(tiny: str, ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    from mmrecun_ray.training.runner import Scaling
    from mmrecun_ray.training.train import train
    out = tmp_path_factory.mktemp("inbox-model") / "trained"
    return train(tiny, "lightgcn", str(out), Scaling(workers=0),
                 sets={"epochs": 8, "patience": 3, "batch_size": 512}).model_uri


def _fresh(tiny: str, tmp: Path) -> str:
    dest = tmp / "data"
    shutil.copytree(tiny, dest, ignore=shutil.ignore_patterns("ledger"))
    return str(dest)


def _drop(inbox: Path, name: str, doc: dict) -> str:
    (inbox / "pending").mkdir(parents=True, exist_ok=True)
    (inbox / "pending" / name).write_text(json.dumps(doc))
    return parse_request(str(inbox / "pending" / name)).request_id()


def _args(inbox: Path, data: str, out: Path, model: str | None, *extra: str) -> list[str]:
    return ["process", "--inbox", str(inbox), "--data", data, "--out", str(out),
            *(["--model-uri", model] if model else []), *FAST, *extra]


def _entries(data: str) -> list[dict]:
    return ledger.read_entries(str(Path(data) / "ledger"))


def _result(inbox: Path, folder: str, name: str) -> dict:
    return json.loads((inbox / folder / f"{name}.result.json").read_text())


def _journal(out: Path, pointer: dict) -> dict:
    return json.loads((out / "batches" / pointer["batch"] / "job.json").read_text())


# -- the merged forget set --------------------------------------------------------------------
def test_overlapping_requests_are_forgotten_once(tiny: str) -> None:
    ds = load_dataset(tiny)
    tr = ds.train
    u1_items = tr.item[tr.user == 1][:2].tolist()
    other = int(tr.item[tr.user == 7][0])
    reqs = [parse_request("users=1,2"),
            parse_request(f"interactions=1:{u1_items[0]},1:{u1_items[1]},7:{other}"),
            parse_request("items=9")]
    fsets = [resolve_request(r, ds) for r in reqs]
    merged = merge_forget_sets(fsets, ds, union_request(reqs, "test"))
    # by hand: a training row goes when its user is 1 or 2, its item is 9, or it is (7, other)
    hit = np.isin(tr.user, [1, 2]) | (tr.item == 9) | ((tr.user == 7) & (tr.item == other))
    assert len(merged.forget) == int(hit.sum())
    assert sum(len(f.forget) for f in fsets) > int(hit.sum())  # the overlaps, counted once
    assert len(merged.retain.train) == len(tr) - int(hit.sum())
    for split in ("valid", "test"):
        s = merged.retain.split(split)
        assert not (np.isin(s.user, [1, 2]) | (s.item == 9)).any()
    assert merged.banned_items.tolist() == [9]
    assert all(not merged.retain.features[m][9].any() for m in ds.features)
    assert merged.request.kind == "interactions"  # mixed kinds: the kind attacks come per kind
    # a request survives the JSON journal with its id
    from mmrecun_ray.unlearning.inbox import request_doc
    assert [request_from_doc(json.loads(json.dumps(request_doc(r)))).request_id() for r in reqs] == \
        [r.request_id() for r in reqs]


# -- the policy -------------------------------------------------------------------------------
def test_policy_file_is_checked_and_verdicts_follow_the_band(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"gold": "now", "retain_floor": 0.9}))
    with pytest.raises(ConfigError, match="retain_floor"):
        load_policy(str(bad))
    bad.write_text(json.dumps({"gate": ["overlap@20_vs_gold"]}))
    with pytest.raises(ConfigError, match="overlap@20_vs_gold"):
        load_policy(str(bad))
    with pytest.raises(ConfigError, match="'gold' is 'none'"):
        load_policy(None, {"gate": ["forget_recall@20"], "gold": "none"})
    good = tmp_path / "policy.json"
    good.write_text(json.dumps({"gate": ["forget_recall@20", "fold_in_recall@20"],
                                "retain_ratio_min_shipped": 0.95}))
    policy = load_policy(str(good), {"fallback": "schedule"})
    assert policy.fallback == "schedule" and policy.gold == "now"
    # bands by hand: mean 0.11, sd 0.01414, half-width max(2 sd, 2 se) = 0.02828
    bands = {"forget_recall@20": Band.from_stats("forget_recall@20", [0.10, 0.12], se=0.01),
             "retain_recall@20": Band.from_stats("retain_recall@20", [0.50, 0.52], se=0.01)}
    assert bands["forget_recall@20"].hi == pytest.approx(0.13828, abs=1e-5)
    shipped = AuditResult(values={"retain_recall@20": 0.60})
    cand = AuditResult(values={"forget_recall@20": 0.20, "retain_recall@20": 0.49})
    v = judge(policy, cand, bands, shipped, "now")
    assert not v.passed and v.verdicts == {"forget_recall@20": "above"}
    assert v.not_applicable == ["fold_in_recall@20"]  # no users request in this batch
    assert len(v.reasons) == 3  # forget above the band; 0.49 < 0.97 x 0.51; 0.49 < 0.95 x 0.60
    assert "0.2000 above the Gold band [0.0817, 0.1383]" in v.reasons[0]
    assert v.retain["vs_gold"] == pytest.approx(0.49 / 0.51)
    ok = judge(policy, AuditResult(values={"forget_recall@20": 0.13, "retain_recall@20": 0.50}),
               bands, AuditResult(values={"retain_recall@20": 0.52}), "now")
    assert ok.passed and ok.reasons == []
    # the default gate judges every banded metric the audit reports
    everything = judge(Policy(), cand, bands, None, "now")
    assert set(everything.verdicts) == {"forget_recall@20", "retain_recall@20"}
    # a band reused from an earlier batch judges the retain metrics only
    stale = judge(Policy(), cand, bands, None, "scheduled:abc")
    assert stale.verdicts == {"retain_recall@20": "inside"} and stale.stale_skipped == ["forget_recall@20"]
    assert len(stale.reasons) == 1 and "0.97 x Gold" in stale.reasons[0]


# -- crash safety -----------------------------------------------------------------------------
def _cli(args: list[str], env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": str(ROOT),
           "RAY_TMPDIR": os.environ.get("MMRECUN_TEST_RAY_TMP", "/tmp") + "-sub", **env_extra}
    return subprocess.run([sys.executable, "-m", "mmrecun_ray", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_three_requests_killed_mid_batch_then_rerun_honour_each_once(tiny, trained, tmp_path: Path
                                                                   ) -> None:
    data = _fresh(tiny, tmp_path)
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    ids = [_drop(inbox, "001-users.json", {"kind": "users", "ids": [3, 4]}),
           _drop(inbox, "002-pairs.json", {"kind": "interactions", "pairs": [[3, 0], [5, 1], [6, 2]]}),
           _drop(inbox, "003-items.json", {"kind": "items", "ids": [11]})]
    _drop(inbox, "004-bad.json", {"kind": "users", "ids": [5000]})
    args = _args(inbox, data, out, trained, "--gold", "none", "--retain-min-shipped", "0.5")
    killed = _cli(args, {"MMRECUN_FAULT_AT": "model_published"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    # mid-batch: accepted (the data hides the requests), nothing published, nothing moved
    assert sorted(e["id"] for e in _entries(data)) == sorted(ids)
    assert not (out / "CURRENT").exists() and (out / "INFLIGHT").exists()
    assert sorted(p.name for p in (inbox / "pending").iterdir()) == \
        ["001-users.json", "002-pairs.json", "003-items.json"]
    assert "user id 5000 out of range" in _result(inbox, "failed", "004-bad.json")["reason"]

    rerun = _cli(args, {})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    pointer = json.loads((out / "CURRENT").read_text())
    job = _journal(out, pointer)
    assert [s["state"] for s in job["states"]].count("accepted") == 1
    assert [s["state"] for s in job["states"]][-1] == "settled" and not (out / "INFLIGHT").exists()
    entries = _entries(data)
    assert len(entries) == 3 and sorted(e["id"] for e in entries) == sorted(ids)
    assert pointer["model_uri"] == str(out / "batches" / pointer["batch"] / "model")
    assert pointer["honoured"] == sorted(ids) and pointer["decision"] == "passed"
    info = read_model_info(pointer["model_uri"])
    assert info.honoured == sorted(ids) and info.lineage[-1]["requests"] == sorted(ids)
    assert 11 in info.banned_items
    assert list((inbox / "pending").iterdir()) == []
    for name, rid in zip(("001-users.json", "002-pairs.json", "003-items.json"), ids):
        r = _result(inbox, "done", name)
        assert r["status"] == "honoured" and r["id"] == rid and r["batch"] == pointer["batch"]
    # every later load hides them
    again = load_dataset(data)
    for split in ("train", "valid", "test"):
        s = again.split(split)
        assert not (np.isin(s.user, [3, 4]) | (s.item == 11)).any()

    # a request the shipped model already honours goes to done/ without a new batch
    _drop(inbox, "005-again.json", {"kind": "users", "ids": [4, 3]})
    before = (out / "CURRENT").read_bytes()
    assert main(args) == 0
    assert _result(inbox, "done", "005-again.json")["status"] == "already honoured"
    assert (out / "CURRENT").read_bytes() == before and len(_entries(data)) == 3


# -- the gate ---------------------------------------------------------------------------------
def test_rejected_model_leaves_the_pointer_and_the_scheduled_retrain_ships(tiny, trained,
                                                                          tmp_path: Path) -> None:
    data = _fresh(tiny, tmp_path)
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    first = _drop(inbox, "a.json", {"kind": "users", "ids": [20, 21]})
    assert main(_args(inbox, data, out, trained, "--gold", "none")) == 0
    pointer = (out / "CURRENT").read_bytes()
    model1 = json.loads(pointer)["model_uri"]
    # a floor no unlearned model meets: 1.5 x the shipped model's retain Recall@20
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"gold": "none", "retain_ratio_min_shipped": 1.5,
                                  "fallback": "schedule"}))
    second = _drop(inbox, "b.json", {"kind": "users", "ids": [30, 31, 32]})
    assert main(_args(inbox, data, out, None, "--policy", str(policy))) == 0
    assert (out / "CURRENT").read_bytes() == pointer  # the pointer did not move
    marker = json.loads((out / "RETRAIN_SCHEDULED").read_text())
    assert [r["id"] for r in marker["requests"]] == [second]
    assert "< 1.5 x the shipped model's" in marker["reasons"][0]
    deferred = _result(inbox, "failed", "b.json")
    assert deferred["status"] == "deferred" and "retrain from scratch scheduled" in deferred["reason"]
    assert second in {e["id"] for e in _entries(data)}  # accepted: the data hides it already
    assert not set(load_dataset(data).train.user.tolist()) & {30, 31, 32}

    # the next run retrains from scratch on the ledger-filtered data and ships that
    assert main(_args(inbox, data, out, None, "--policy", str(policy))) == 0
    now = json.loads((out / "CURRENT").read_text())
    assert now["decision"] == "retrain" and now["model_uri"].endswith("/gold/model")
    assert now["previous"]["model_uri"] == model1
    assert set(now["honoured"]) == {first, second} == set(read_model_info(now["model_uri"]).honoured)
    assert not (out / "RETRAIN_SCHEDULED").exists()
    assert _result(inbox, "done", "b.json")["status"] == "honoured"
    assert not (inbox / "failed" / "b.json").exists()
    # and the retrained model measurably forgot users 30-32: their pairs rank lower
    audits = _journal(out, now)["audits"]
    assert audits["gold"]["values"]["forget_recall@20"] < \
        audits["shipped"]["values"]["forget_recall@20"] - 0.1


# -- on S3 ------------------------------------------------------------------------------------
def test_inbox_and_pointer_on_s3(tiny, trained, s3_env, s3_prefix, tmp_path: Path) -> None:
    from mmrecun_ray.storage import join, list_files, read_json, write_bytes_atomic
    data = _fresh(tiny, tmp_path)
    inbox, out = join(s3_prefix, "inbox"), join(s3_prefix, "serving")
    write_bytes_atomic(join(inbox, "pending", "a.json"), b'{"kind": "items", "ids": [4, 8]}')
    write_bytes_atomic(join(inbox, "pending", "b.json"), b'{"kind": "users"')
    rid = parse_request("items=4,8").request_id()
    assert main(["process", "--inbox", inbox, "--data", data, "--out", out, "--model-uri", trained,
                 *FAST, "--gold", "none"]) == 0
    pointer = read_json(join(out, "CURRENT"))
    assert pointer["honoured"] == [rid] and pointer["model_uri"].startswith(out)
    assert read_model_info(pointer["model_uri"]).banned_items == [4, 8]
    assert list_files(join(inbox, "pending")) == []
    assert list_files(join(inbox, "done")) == ["a.json", "a.json.result.json"]
    failed = read_json(join(inbox, "failed", "b.json.result.json"))
    assert failed["status"] == "failed" and "invalid JSON" in failed["reason"]
    assert "s3://" in failed["reason"]  # the file is named by its URI, not a temp copy
