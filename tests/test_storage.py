"""Storage room: URIs on local disk and a real SeaweedFS S3 server, errors, retries, the
forget-request ledger under concurrent writers, and publishing a dataset version."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from mmrecun_ray.errors import DataError, StorageError
from mmrecun_ray.storage import ledger, upload
from mmrecun_ray.storage import uri as su
from mmrecun_ray.storage.retry import RetryPolicy, retry_call


def _reason(e: pytest.ExceptionInfo) -> str | None:
    return getattr(e.value, "reason", None)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- round trips ----------------------------------------------------------------------------------
def _roundtrip(root: str, settings: su.S3Settings | None = None) -> None:
    su.write_bytes_atomic(su.join(root, "a", "x.bin"), b"\x00\x01payload", settings)
    su.write_json_atomic(su.join(root, "a", "b", "y.json"), {"k": [1, 2], "s": "é"}, settings)
    su.write_bytes_atomic(su.join(root, "z.txt"), b"", settings)
    assert su.read_bytes(su.join(root, "a", "x.bin"), settings) == b"\x00\x01payload"
    assert su.read_json(su.join(root, "a", "b", "y.json"), settings) == {"k": [1, 2], "s": "é"}
    assert su.read_bytes(su.join(root, "z.txt"), settings) == b""
    assert su.list_files(root, settings=settings) == ["a/b/y.json", "a/x.bin", "z.txt"]
    assert su.list_files(root, ".json", settings) == ["a/b/y.json"]
    assert su.list_files(su.join(root, "nothing-here"), settings=settings) == []
    assert su.exists(su.join(root, "a", "x.bin"), settings) and su.exists(su.join(root, "a"), settings)
    assert not su.exists(su.join(root, "a", "nope"), settings)
    su.write_bytes_atomic(su.join(root, "a", "x.bin"), b"v2", settings)  # replace
    assert su.read_bytes(su.join(root, "a", "x.bin"), settings) == b"v2"
    assert su.delete(su.join(root, "z.txt"), settings) and not su.delete(su.join(root, "z.txt"), settings)
    with pytest.raises(StorageError, match="nope") as e:
        su.read_bytes(su.join(root, "a", "nope"), settings)
    assert _reason(e) == "not_found"


def test_roundtrip_local(tmp_path: Path) -> None:
    _roundtrip(str(tmp_path / "root"))
    _roundtrip("file://" + str(tmp_path / "root2"))


def test_roundtrip_s3_from_aws_env_vars(s3_env, s3_prefix: str) -> None:
    # no explicit settings: endpoint and credentials come from AWS_ENDPOINT_URL & co.
    _roundtrip(s3_prefix)
    fs, path = su.filesystem_for(s3_prefix)
    assert path == s3_prefix[len("s3://"):]
    assert fs.get_file_info(path + "/a/x.bin").size == 2  # the same fs Ray Data/Train would get


def test_settings_precedence_configure_and_profile(s3_env, s3_prefix: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    target = su.join(s3_prefix, "p.json")
    su.write_json_atomic(target, {"v": 1})
    # the environment points at a dead endpoint; --s3-endpoint (configure) wins over it
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    su.configure(su.S3Settings(endpoint_url=s3_env.endpoint_url,
                               retry=RetryPolicy(max_attempts=1, deadline_s=0)))
    assert su.read_json(target) == {"v": 1}
    su.configure(su.S3Settings(retry=RetryPolicy(max_attempts=1, deadline_s=0)))
    with pytest.raises(StorageError) as e:
        su.read_json(target)
    assert _reason(e) == "unreachable"
    # --s3-profile: keys from the shared credentials file, env keys ignored (as the AWS CLI)
    creds = tmp_path / "credentials"
    creds.write_text(f"[mmtest]\naws_access_key_id = {s3_env.access_key}\n"
                     f"aws_secret_access_key = {s3_env.secret_key}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    su.configure(su.S3Settings(endpoint_url=s3_env.endpoint_url, profile="mmtest"))
    assert su.current_settings().secret_key is None
    assert su.read_json(target) == {"v": 1}
    assert su.boto3_client().get_object(Bucket=s3_env.bucket, Key=target.split("/", 3)[3])["Body"].read()
    su.configure(su.S3Settings(endpoint_url=s3_env.endpoint_url, profile="nosuchprofile"))
    with pytest.raises(StorageError, match="nosuchprofile") as e:
        su.read_json(target)
    assert _reason(e) == "config"
    assert su.settings_env_vars(su.current_settings()) == {
        "AWS_ENDPOINT_URL": s3_env.endpoint_url, "AWS_REGION": "us-east-1", "AWS_PROFILE": "nosuchprofile"}


# -- atomic and create-only writes ---------------------------------------------------------------
def _race_reader(read, expected: set[bytes], stop: threading.Event, seen: list) -> None:
    while not stop.is_set():
        data = read()
        seen.append(data in expected)


def test_atomic_write_local_readers_see_whole_versions_and_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "d" / "blob.bin"
    a, b = b"A" * 3_000_000, b"B" * 2_000_000
    su.write_bytes_atomic(target, a)
    stop, seen, listings = threading.Event(), [], []
    reader = threading.Thread(target=_race_reader, args=(lambda: target.read_bytes(), {a, b}, stop, seen))
    lister = threading.Thread(target=lambda: [listings.append(su.list_files(tmp_path / "d"))
                                              for _ in iter(stop.is_set, True)])
    reader.start(), lister.start()
    for k in range(30):
        su.write_bytes_atomic(target, b if k % 2 == 0 else a)
    stop.set(), reader.join(), lister.join()
    assert len(seen) > 5 and all(seen), f"{seen.count(False)} torn reads of {len(seen)}"
    assert listings and all(lst == ["blob.bin"] for lst in listings)
    assert os.listdir(tmp_path / "d") == ["blob.bin"]  # no temp file left, hidden or not
    # a failing write (target is a directory) raises a StorageError naming it, leaves no temp file
    (tmp_path / "d" / "sub").mkdir()
    with pytest.raises(StorageError, match="sub"):
        su.write_bytes_atomic(tmp_path / "d" / "sub", b"x")
    assert sorted(os.listdir(tmp_path / "d")) == ["blob.bin", "sub"]


def test_atomic_write_s3_readers_see_whole_versions(s3_env, s3_prefix: str) -> None:
    target = su.join(s3_prefix, "blob.bin")
    a, b = b"A" * 1_500_000, b"B" * 1_000_000
    su.write_bytes_atomic(target, a)
    stop, seen = threading.Event(), []
    reader = threading.Thread(target=_race_reader, args=(lambda: su.read_bytes(target), {a, b}, stop, seen))
    reader.start()
    for k in range(8):
        su.write_bytes_atomic(target, b if k % 2 == 0 else a)
    stop.set(), reader.join()
    assert len(seen) >= 3 and all(seen)
    assert su.list_files(s3_prefix) == ["blob.bin"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_create_only_never_replaces(where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    root = str(tmp_path) if where == "local" else request.getfixturevalue("s3_prefix")
    if where == "s3":
        request.getfixturevalue("s3_env")
    target = su.join(root, "one.json")
    assert su.write_bytes_create_only(target, b"first") is True
    assert su.write_bytes_create_only(target, b"second") is False
    assert su.read_bytes(target) == b"first"
    assert su.list_files(root) == ["one.json"]  # no temp file or probe object visible


# -- clear errors ---------------------------------------------------------------------------------
def test_errors_name_endpoint_bucket_key_never_the_secret(s3_server, s3_prefix: str) -> None:
    good = s3_server.settings(retry=RetryPolicy(max_attempts=1, deadline_s=0))
    key_uri = su.join(s3_prefix, "data", "x.json")
    su.write_json_atomic(key_uri, {"ok": True}, good)
    bucket, key = su.split_s3(key_uri)
    wrong_secret = "Wr0ngSecret-" + s3_server.secret_key[::-1]
    dead = f"http://127.0.0.1:{_closed_port()}"
    cases = [
        ("no_bucket", "s3://no-such-bucket-x/data/x.json", good, lambda u, s: su.read_bytes(u, s)),
        ("no_bucket", "s3://no-such-bucket-x/data/x.json", good, lambda u, s: su.write_bytes_atomic(u, b"1", s)),
        ("no_bucket", "s3://no-such-bucket-x/data", good, lambda u, s: su.list_files(u, settings=s)),
        ("no_bucket", "s3://no-such-bucket-x/data/x.json", good, lambda u, s: su.exists(u, s)),
        ("auth", key_uri, s3_server.settings(secret_key=wrong_secret), lambda u, s: su.read_bytes(u, s)),
        ("auth", key_uri, s3_server.settings(secret_key=wrong_secret), lambda u, s: su.write_bytes_atomic(u, b"1", s)),
        ("auth", key_uri, s3_server.settings(access_key="AKNOBODY", secret_key=wrong_secret),
         lambda u, s: su.list_files(u, settings=s)),
        ("unreachable", key_uri, s3_server.settings(endpoint_url=dead, retry=RetryPolicy(max_attempts=1, deadline_s=0)),
         lambda u, s: su.read_bytes(u, s)),
    ]
    for reason, uri, settings, call in cases:
        with pytest.raises(StorageError) as e:
            call(uri, settings)
        msg = str(e.value)
        b, k = su.split_s3(uri)
        assert _reason(e) == reason, msg
        assert settings.endpoint_url in msg and f"bucket '{b}'" in msg and f"key '{k}'" in msg, msg
        for secret in (s3_server.secret_key, wrong_secret):
            assert secret not in msg and secret not in repr(settings) and secret not in repr(e.value.__dict__)
    # auth really is on: the refusal above was the server's, the right key works
    assert su.read_json(key_uri, good) == {"ok": True} and (bucket, key) == (s3_server.bucket, key)
    # a nonsense URI is a clear error too
    with pytest.raises(StorageError, match="needs a bucket"):
        su.read_bytes("s3:///x", good)


def test_errors_for_unresolvable_endpoint_and_missing_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    t0 = time.perf_counter()
    bad_host = su.S3Settings(endpoint_url="http://no-such-host.invalid:9000", access_key="AK",
                             secret_key="s3cr3t-value", retry=RetryPolicy(deadline_s=20))
    for call in (lambda: su.read_bytes("s3://b/k", bad_host), lambda: su.list_files("s3://b/k", settings=bad_host)):
        with pytest.raises(StorageError, match="does not resolve") as e:
            call()
        assert _reason(e) == "dns" and "no-such-host.invalid" in str(e.value) and "s3cr3t" not in str(e.value)
    no_creds = su.S3Settings(endpoint_url=f"http://127.0.0.1:{_closed_port()}")
    with pytest.raises(StorageError, match="no S3 credentials found") as e:
        su.write_bytes_atomic("s3://b/k", b"x", no_creds)
    assert _reason(e) == "no_credentials"
    assert time.perf_counter() - t0 < 10  # permanent errors are not retried for 20 s


# -- retries --------------------------------------------------------------------------------------
def test_retry_policy_is_bounded_and_skips_permanent_errors() -> None:
    calls = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            err = StorageError("down")
            err.reason = "unreachable"  # type: ignore[attr-defined]
            raise err
        return "ok"
    policy = RetryPolicy(initial_backoff_s=0.05, max_backoff_s=0.05, deadline_s=5)
    is_transient = lambda e: getattr(e, "reason", "") == "unreachable"  # noqa: E731
    assert retry_call(flaky, policy, transient=is_transient, what="t") == "ok" and len(calls) == 3
    calls.clear()
    with pytest.raises(ValueError):
        retry_call(lambda: calls.append(1) or (_ for _ in ()).throw(ValueError("perm")), policy,
                   transient=is_transient, what="t")
    assert calls == [1]


def test_read_survives_server_restart(s3_server, s3_prefix: str) -> None:
    settings = s3_server.settings(retry=RetryPolicy(max_attempts=2, deadline_s=30.0, max_backoff_s=0.5))
    target = su.join(s3_prefix, "survivor.bin")
    payload = os.urandom(300_000)
    su.write_bytes_atomic(target, payload, settings)
    stop_s = s3_server.stop(graceful=False)  # a crash: SIGKILL to the process group
    result: dict = {}

    def read() -> None:
        t0 = time.perf_counter()
        try:
            result["data"] = su.read_bytes(target, settings)
        except Exception as e:  # noqa: BLE001 - asserted below
            result["error"] = e
        result["seconds"] = time.perf_counter() - t0
    t = threading.Thread(target=read)
    try:
        t.start()
        time.sleep(2.0)
        assert t.is_alive(), "the read should still be retrying while the server is down"
        start_s = s3_server.start()  # same data dir and ports
        t.join(30)
    finally:
        if not s3_server.running:
            s3_server.start()
    assert "error" not in result, result.get("error")
    assert result["data"] == payload and result["seconds"] >= 2.0
    logging.getLogger(__name__).info("restart: stop %.2fs, start %.2fs, read waited %.2fs",
                                     stop_s, start_s, result["seconds"])


def test_endpoint_down_for_good_fails_within_deadline(caplog: pytest.LogCaptureFixture) -> None:
    settings = su.S3Settings(endpoint_url=f"http://127.0.0.1:{_closed_port()}", access_key="AK",
                             secret_key="very-secret-value", retry=RetryPolicy(max_attempts=2, deadline_s=1.0))
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="mmrecun_ray.storage.retry"):
        with pytest.raises(StorageError) as e:
            su.read_bytes("s3://bucket/k/v.json", settings)
    took = time.perf_counter() - t0
    assert _reason(e) == "unreachable" and "bucket 'bucket'" in str(e.value)
    assert 1.0 <= took < 4.0, took
    retries = [r for r in caplog.records if "transient failure" in r.getMessage()]
    assert len(retries) >= 2 and all("very-secret-value" not in r.getMessage() for r in retries)


# -- ledger ---------------------------------------------------------------------------------------
def _append_worker(targets: list[tuple[str, su.S3Settings | None]], worker: int, n: int,
                   barrier, out) -> None:
    """Spawned process: per ledger, wait for the other writer, then append ``n`` entries, each
    forgetting pair (worker, k); report the conflicts met."""
    for ledger_uri, settings in targets:
        barrier.wait()
        conflicts = 0
        for k in range(n):
            stats: dict = {}
            ledger.append_entry(ledger_uri, {"id": f"w{worker}-{k}", "kind": "interactions"},
                                [[worker, k]], settings=settings, stats=stats)
            conflicts += stats["conflicts"]
        out.put((ledger_uri, conflicts))


def _check_ledger(ledger_uri: str, settings: su.S3Settings | None, n: int) -> None:
    entries = ledger.read_entries(ledger_uri, settings)
    assert [e["seq"] for e in entries] == list(range(2 * n))  # contiguous, none lost
    assert sorted(e["id"] for e in entries) == sorted(f"w{w}-{k}" for w in range(2) for k in range(n))
    assert len({e["writer"] for e in entries}) == 2 * n
    for w in range(2):  # each writer's own entries keep its order
        mine = [int(e["id"].split("-")[1]) for e in entries if e["id"].startswith(f"w{w}-")]
        assert mine == list(range(n))
    for e in entries:
        w, k = map(int, e["id"][1:].split("-"))
        np.testing.assert_array_equal(ledger.entry_pairs(ledger_uri, e, settings), [[w, k, 0]])


def test_ledger_concurrent_appends_local_and_s3(tmp_path: Path, s3_server, s3_prefix: str) -> None:
    n = 20
    targets = [(str(tmp_path / "ledger"), None), (su.join(s3_prefix, "ledger"), s3_server.settings())]
    ctx = mp.get_context("spawn")  # no fork: pyarrow/AWS SDK state must not be inherited
    barrier, out = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_append_worker, args=(targets, w, n, barrier, out)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    conflicts: dict[str, int] = {}
    for _ in range(2 * len(targets)):
        where, c = out.get(timeout=5)
        conflicts[where] = conflicts.get(where, 0) + c
    for ledger_uri, settings in targets:
        _check_ledger(ledger_uri, settings, n)
    logging.getLogger(__name__).info("ledger conflicts: %s", conflicts)
    assert sum(conflicts.values()) > 0, "the two writers never collided: the test proved nothing"
    assert not [p for p in os.listdir(tmp_path / "ledger") if p.startswith(".")]  # no temp files


def test_ledger_entries_and_pairs_hand_computed(tmp_path: Path) -> None:
    lu = str(tmp_path / "v1" / "ledger")
    assert ledger.read_entries(lu) == [] and ledger.find_entry(lu, "r0") is None
    e0 = ledger.append_entry(lu, {"id": "r0", "kind": "interactions"}, [[1, 2], [3, 4], [1, 2]])
    e1 = ledger.append_entry(lu, {"id": "r1", "kind": "users"},
                             np.array([[1, 2, 0], [0, 9, 2], [0, 9, 1], [0, 9, 2]]))
    e2 = ledger.append_entry(lu, {"id": "r2", "kind": "modality", "modality": "image"})
    assert (e0["seq"], e1["seq"], e2["seq"]) == (0, 1, 2)
    # (N, 2) pairs are train rows; duplicates collapse
    assert e0["counts"] == {"pairs": 2, "users": 2, "items": 2, "train": 2, "valid": 0, "test": 0}
    assert e1["counts"] == {"pairs": 3, "users": 2, "items": 2, "train": 1, "valid": 1, "test": 1}
    assert e0["status"] == "committed" and e2["pairs_file"] is None and e2["counts"]["pairs"] == 0
    np.testing.assert_array_equal(ledger.entry_pairs(lu, e0), [[1, 2, 0], [3, 4, 0]])
    np.testing.assert_array_equal(ledger.entry_pairs(lu, e1), [[0, 9, 1], [0, 9, 2], [1, 2, 0]])
    assert ledger.entry_pairs(lu, e2).shape == (0, 3)
    assert [e["id"] for e in ledger.read_entries(lu)] == ["r0", "r1", "r2"]
    assert ledger.find_entry(lu, "r1")["seq"] == 1
    # the pairs file is written before the entry and named by its content
    assert su.list_files(lu) == sorted(["00000000.json", "00000001.json", "00000002.json",
                                        e0["pairs_file"], e1["pairs_file"]])
    assert ledger.append_entry(lu, {"id": "r1"}, [[4, 4]], dedupe=True)["seq"] == 1
    assert len(ledger.read_entries(lu)) == 3
    with pytest.raises(DataError, match="set by the ledger"):
        ledger.append_entry(lu, {"seq": 7})
    with pytest.raises(DataError, match=r"\(N, 3\)"):
        ledger.append_entry(lu, {}, [1, 2, 3])
    with pytest.raises(DataError, match="split code 3 is not"):
        ledger.append_entry(lu, {}, [[1, 2, 3]])
    # a pairs file of an older ledger (no split column) reads as train rows
    import pyarrow as pa
    import pyarrow.parquet as pq
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"user_id": pa.array([5, 6], pa.int64()), "item_id": pa.array([1, 0], pa.int64())}), buf)
    np.testing.assert_array_equal(ledger.decode_pairs(buf.getvalue().to_pybytes(), "old"), [[5, 1, 0], [6, 0, 0]])
    # a changed pairs file is caught by its hash
    pfile = Path(lu) / e1["pairs_file"]
    pfile.write_bytes(ledger.encode_pairs(np.array([[0, 1]])))
    with pytest.raises(DataError, match="sha256"):
        ledger.entry_pairs(lu, e1)


def test_ledger_lost_response_is_not_appended_twice(s3_env, s3_prefix: str) -> None:
    """The entry PUT lands on the server but its response is lost: the retried create-only
    PUT sees 412, the ledger recognises its own writer token and does not append again."""
    import botocore.exceptions as bce
    lu = su.join(s3_prefix, "ledger")
    ledger.append_entry(lu, {"id": "before"})
    client = su.boto3_client(su.current_settings())  # the cached client the ledger uses
    dropped: list[str] = []

    def note_key(params, context, **_):
        context["test_key"] = params.get("Key", "")

    def lose_response(context, http_response, **_):
        if context.get("test_key", "").endswith("00000001.json") and not dropped:
            assert http_response.status_code == 200  # the server did store it
            dropped.append(context["test_key"])
            raise bce.ConnectionClosedError(endpoint_url=s3_env.endpoint_url)
    client.meta.events.register("before-parameter-build.s3.PutObject", note_key)
    client.meta.events.register("after-call.s3.PutObject", lose_response)
    try:
        stats: dict = {}
        entry = ledger.append_entry(lu, {"id": "lost-response"}, [[1, 1]], stats=stats)
    finally:
        client.meta.events.unregister("after-call.s3.PutObject", lose_response)
        client.meta.events.unregister("before-parameter-build.s3.PutObject", note_key)
    assert dropped, "the response was never dropped: the test proved nothing"
    assert entry["seq"] == 1 and stats["conflicts"] == 0
    assert [e["id"] for e in ledger.read_entries(lu)] == ["before", "lost-response"]


def _request(dest: str, rid: str, users: list[int], **kw) -> dict:
    """Record a ``users`` request covering all rows of ``users`` in ``_publish_small`` data."""
    from mmrecun_ray.data.lineage import ledger_uri_for
    rows = [(u, i, k) for k, split in enumerate(_SMALL_SPLITS) for u, i in split if u in users]
    args = dict(request_id=rid, kind="users", request={"kind": "users", "users": users},
                pairs=np.array(rows, np.int64).reshape(-1, 3), users=users, banned_items=[],
                dropped_features={}, n_users=3, n_items=4, data_uri=dest, data_hash="h")
    args.update(kw)
    return ledger.record_request(ledger_uri_for(dest), **args)


def test_record_request_on_s3_is_idempotent_and_hides_every_split(s3_env, s3_prefix: str,
                                                                  tmp_path: Path) -> None:
    from mmrecun_ray.data.dataset import load_dataset
    src = _publish_small(tmp_path / "v1")
    dest = su.join(s3_prefix, "v1")
    upload.upload_dir(src, dest)
    assert [len(load_dataset(dest).split(s)) for s in ("train", "valid", "test")] == [6, 1, 1]
    entry = _request(dest, "forget-u0", [0])
    assert entry["counts"] == {"pairs": 3, "users": 1, "items": 3, "train": 2, "valid": 1, "test": 0}
    assert (entry["n_items"], entry["users"], entry["data_uri"]) == (4, [0], dest)
    assert _request(dest, "forget-u0", [0, 1])["seq"] == entry["seq"]  # a re-run: same entry
    assert len(ledger.read_entries(su.join(dest, "ledger"))) == 1
    ds = load_dataset(dest)
    assert [len(ds.split(s)) for s in ("train", "valid", "test")] == [4, 0, 1]
    assert ds.honoured == {"forget-u0"} and 0 not in ds.train.user
    with pytest.raises(DataError, match=r"forget request bad: user id 3 outside 0\.\.2"):
        _request(dest, "bad", [0], banned_items=[1], n_users=3, pairs=np.array([[3, 1, 0]]))
    with pytest.raises(DataError, match=r"forget request bad: dropped_features\['text'\] must be"):
        _request(dest, "bad", [0], dropped_features={"text": "some"})


# -- publishing -----------------------------------------------------------------------------------
_SMALL_SPLITS = ([(0, 0), (0, 1), (1, 2), (2, 3), (2, 0), (1, 3)], [(0, 2)], [(1, 0)])


def _publish_small(out: Path, feature_rows: int = 4, dim: int = 8) -> Path:
    """3 users, 4 items (or ``feature_rows``), splits :data:`_SMALL_SPLITS`, one modality."""
    from mmrecun_ray.data.schema import Interactions
    from mmrecun_ray.data.writer import write_dataset
    n_items = max(4, feature_rows)
    tr, va, te = (Interactions(np.array([u for u, _ in x]), np.array([i for _, i in x])) for x in _SMALL_SPLITS)
    feats = {"text": np.random.default_rng(0).standard_normal((n_items, dim)).astype(np.float32)}
    write_dataset(out, name="small", n_users=3, n_items=n_items, train=tr, valid=va, test=te,
                  features=feats, source="test")
    return out


def test_upload_dir_publishes_manifest_last_with_multipart(s3_env, s3_prefix: str, tmp_path: Path) -> None:
    src = _publish_small(tmp_path / "v", feature_rows=1600, dim=1024)  # ~6.5 MB feature file
    (src / "notes.txt").write_text("extra file beside the version")
    client = su.boto3_client()
    order: list[tuple[str, str]] = []

    def record(params, model, **_):
        order.append((model.name, params.get("Key", "")))
    client.meta.events.register("before-parameter-build.s3.*", record)
    try:
        dest = su.join(s3_prefix, "v")
        report = upload.upload_dir_report(src, dest, part_size_mb=5, client=client)
    finally:
        client.meta.events.unregister("before-parameter-build.s3.*", record)
    local = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    assert report.files == len(local) == 4
    assert report.bytes == sum((src / r).stat().st_size for r in local)
    assert sorted(su.list_files(dest)) == local
    writes = [(op, k) for op, k in order if op in ("PutObject", "CreateMultipartUpload", "UploadPart")]
    assert writes[-1] == ("PutObject", dest.split("/", 3)[3] + "/manifest.json")
    assert ("CreateMultipartUpload", dest.split("/", 3)[3] + "/features/text.parquet") in writes
    assert sum(op == "UploadPart" for op, _ in writes) == 2
    for rel in local:
        assert su.read_bytes(su.join(dest, rel)) == (src / rel).read_bytes()
    # a second publish to the same place is refused unless overwrite=True
    with pytest.raises(StorageError, match="overwrite=True") as e:
        upload.upload_dir(src, dest)
    assert _reason(e) == "conflict"
    (src / "notes.txt").unlink()
    assert upload.upload_dir(src, dest, overwrite=True) == 3
    assert "notes.txt" not in su.list_files(dest)


def test_upload_dir_interrupted_leaves_no_version(s3_env, s3_prefix: str, tmp_path: Path) -> None:
    src = _publish_small(tmp_path / "v")
    client = su.boto3_client(su.current_settings())

    def fail_on_features(params, **_):
        if params.get("Key", "").endswith("features/text.parquet"):
            raise RuntimeError("network cable pulled")
    client.meta.events.register("before-parameter-build.s3.PutObject", fail_on_features)
    dest = su.join(s3_prefix, "v")
    try:
        with pytest.raises(Exception, match="cable"):
            upload.upload_dir(src, dest, client=client)
    finally:
        client.meta.events.unregister("before-parameter-build.s3.PutObject", fail_on_features)
    assert not su.exists(su.join(dest, "manifest.json"))
    # a folder that is not a published version, or whose files changed, is refused
    with pytest.raises(DataError, match="no manifest.json"):
        upload.upload_dir(tmp_path, dest)
    manifest = json.loads((src / "manifest.json").read_text())
    victim = src / sorted(manifest["files"])[0]
    victim.write_bytes(victim.read_bytes() + b"!")
    with pytest.raises(DataError, match="sha256"):
        upload.upload_dir(src, dest)


def test_upload_dir_to_local_folder(tmp_path: Path) -> None:
    src = _publish_small(tmp_path / "v")
    assert upload.upload_dir(src, str(tmp_path / "copy")) == 3
    assert sorted(p.name for p in (tmp_path / "copy").rglob("*") if p.is_file()) == \
        ["manifest.json", "part-00000.parquet", "text.parquet"]


def test_upload_overwrite_keeps_the_ledger_and_carries_the_sources(tmp_path: Path, s3_env,
                                                                   s3_prefix: str) -> None:
    """``upload --overwrite`` local->local and local->S3: the destination's ledger stays, the
    source's entries are appended to it, and the forgotten rows stay hidden on reload."""
    from mmrecun_ray.cli import main
    from mmrecun_ray.data.dataset import load_dataset
    src = _publish_small(tmp_path / "src")
    for dest in (str(tmp_path / "copy"), su.join(s3_prefix, "copy")):
        assert main(["upload", "--src", str(src), "--dest", dest]) == 0
        _request(dest, "dest-u2", [2])  # recorded at the destination only
        dest_files = su.list_files(su.join(dest, "ledger"))
        assert main(["upload", "--src", str(src), "--dest", dest, "--overwrite"]) == 0
        assert su.list_files(su.join(dest, "ledger")) == dest_files
        assert [len(load_dataset(dest).split(s)) for s in ("train", "valid", "test")] == [4, 1, 1]
    # the source has a ledger entry of its own: it is carried, before anything is removed
    _request(str(src), "src-u1", [1])
    for dest in (str(tmp_path / "copy"), su.join(s3_prefix, "copy")):
        rep = upload.upload_dir_report(src, dest, overwrite=True)
        assert rep.ledger_carried == ("src-u1",) and rep.files == 3
        entries = ledger.read_entries(su.join(dest, "ledger"))
        assert [e["id"] for e in entries] == ["dest-u2", "src-u1"]
        assert entries[1]["carried_from"] == str(src / "ledger")
        np.testing.assert_array_equal(ledger.entry_pairs(su.join(dest, "ledger"), entries[1]),
                                      [[1, 0, 2], [1, 2, 0], [1, 3, 0]])
        ds = load_dataset(dest)
        assert [len(ds.split(s)) for s in ("train", "valid", "test")] == [2, 1, 0]
        assert ds.honoured == {"dest-u2", "src-u1"}
        assert upload.upload_dir_report(src, dest, overwrite=True).ledger_carried == ()  # once only
    assert not su.exists(su.join(s3_prefix, "copy", "ledger", "00000002.json"))
