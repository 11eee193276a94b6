"""Append-only ledger of forget requests, local or on S3.

A lineage of dataset versions shares one ledger, ``<root version>/ledger`` (the root is
found through the manifest: :func:`mmrecun_ray.data.lineage.ledger_uri_for`). Layout below a
ledger URI::

    00000000.json, 00000001.json, ...  one committed entry per file, never rewritten
    pairs/<sha256>.parquet             an entry's forgotten pairs (user_id:int64,
                                       item_id:int64, split:int8 with 0 train, 1 valid,
                                       2 test), named by the sha256 of its bytes; files
                                       written before the split column read as train

Nothing that replaces a dataset version deletes ``ledger/``: the writer's ``overwrite=True``
moves it into the new version, ``upload --overwrite`` keeps the destination's and appends the
source's entries (:func:`carry_entries`), S3 cleanups skip it.

Commit protocol of :func:`append_entry`:

1. the pairs file is written first (content-addressed, so concurrent or repeated writers of
   the same pairs write the same bytes to the same name and no writer can clobber another's
   pairs); an orphan pairs file left by a crash before step 2 is unreferenced and harmless;
2. the entry JSON (id, kind, counts, ``pairs_file``, ``pairs_sha256``, time, a unique
   ``writer`` token, ``status: "committed"``) is created at ``<seq:08d>.json`` with
   create-only semantics: locally ``O_CREAT|O_EXCL`` temp file + ``os.link`` (fails if the
   name exists); on S3 ``PutObject`` with ``If-None-Match: *`` (412 if the key exists).
   SeaweedFS 4.48 honours the header (checked on first use per endpoint and bucket: a
   server that silently overwrites is refused with ``StorageError(reason="unsupported")``).
3. on conflict the winner's entry is read: if it carries our writer token, our earlier
   attempt did land (a lost response) and it is returned; else the ledger is re-listed and
   the next number tried.

Guarantees: an entry counts once its JSON exists; entries are never overwritten or lost;
sequence numbers are contiguous from 0 (a writer only tries ``n`` after seeing ``n-1``), so
the committed entries always form a prefix ``0..N-1``. Two different appends of the same
request id may both land when they race (readers take the union, so this is harmless);
sequential re-appends of an id are deduplicated (:func:`record_request`, ``dedupe=True``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmrecun_ray.errors import DataError, StorageError
from mmrecun_ray.storage.settings import S3Settings
from mmrecun_ray.storage.uri import (join, list_files, read_bytes, read_json, write_bytes_atomic,
                                     write_bytes_create_only)

logger = logging.getLogger(__name__)

LEDGER_DIR = "ledger"
PAIRS_DIR = "pairs"
#: split codes of the pairs' ``split`` column, in order 0, 1, 2
SPLIT_NAMES = ("train", "valid", "test")
ENTRY_NAME = re.compile(r"^(\d{8})\.json$")
RESERVED_FIELDS = frozenset({"seq", "status", "writer", "pairs_file", "pairs_sha256"})
MAX_CONFLICTS = 10_000
#: concurrent reads of entries and pairs files (an object store answers each GET in ms)
READ_THREADS = 8
T = TypeVar("T")
R = TypeVar("R")
_PAIRS_SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("split", pa.int8())])


def entry_uri(ledger_uri: str | Path, seq: int) -> str:
    """URI of entry ``seq``: ``<ledger>/<seq:08d>.json``."""
    return join(ledger_uri, f"{seq:08d}.json")


# -- pairs side files ---------------------------------------------------------------------------
def _as_pairs(pairs: Any, what: str) -> np.ndarray:
    """``(N, 3)`` int64 ``[user, item, split]``; ``(N, 2)`` input is train (split 0)."""
    arr = np.asarray(pairs, dtype=np.int64)
    if arr.size == 0:
        return np.zeros((0, 3), np.int64)
    if arr.ndim != 2 or arr.shape[1] not in (2, 3):
        raise DataError(f"{what}: expected an (N, 3) array of [user_id, item_id, split] "
                        f"(or (N, 2) train pairs), got shape {arr.shape}")
    if arr.shape[1] == 2:
        arr = np.concatenate([arr, np.zeros((len(arr), 1), np.int64)], axis=1)
    if (arr[:, :2] < 0).any():
        raise DataError(f"{what}: negative ids")
    bad = (arr[:, 2] < 0) | (arr[:, 2] >= len(SPLIT_NAMES))
    if bad.any():
        raise DataError(f"{what}: split code {int(arr[bad][0, 2])} is not 0 (train), 1 (valid) or 2 (test)")
    return np.unique(arr, axis=0)


def encode_pairs(pairs: Any) -> bytes:
    """``(N, 3)`` ``[user_id, item_id, split]`` (or ``(N, 2)`` train) rows -> Parquet bytes
    (sorted, deduplicated)."""
    arr = _as_pairs(pairs, "pairs")
    table = pa.table({"user_id": arr[:, 0], "item_id": arr[:, 1], "split": arr[:, 2].astype(np.int8)},
                     schema=_PAIRS_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def decode_pairs(data: bytes, source: str) -> np.ndarray:
    """Parquet bytes -> ``(N, 3)`` int64 ``[user_id, item_id, split]``; a file without a
    ``split`` column (older ledgers) reads as train. ``source`` names the file in errors."""
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{source}: not a readable Parquet pairs file ({e})") from e
    missing = {"user_id", "item_id"} - set(table.column_names)
    if missing:
        raise DataError(f"{source}: missing column(s) {sorted(missing)}")
    cols = [table.column(c).to_numpy().astype(np.int64) for c in ("user_id", "item_id")]
    split = (table.column("split").to_numpy().astype(np.int64) if "split" in table.column_names
             else np.zeros(table.num_rows, np.int64))
    return np.stack([*cols, split], axis=1) if table.num_rows else np.zeros((0, 3), np.int64)


def entry_pairs(ledger_uri: str | Path, entry: dict[str, Any],
                settings: S3Settings | None = None) -> np.ndarray:
    """The ``(N, 3)`` int64 ``[user_id, item_id, split]`` pairs of ``entry``, checked against
    its ``pairs_sha256``.

    Raises:
        DataError: pairs file changed (hash mismatch) or unreadable.
    """
    rel = entry.get("pairs_file")
    if not rel:
        return np.zeros((0, 3), np.int64)
    uri = join(ledger_uri, *rel.split("/"))
    data = read_bytes(uri, settings)
    digest = hashlib.sha256(data).hexdigest()
    if digest != entry.get("pairs_sha256"):
        raise DataError(f"{uri}: sha256 {digest} does not match ledger entry {entry.get('seq')} "
                        f"({entry.get('pairs_sha256')})")
    return decode_pairs(data, uri)


# -- appending ----------------------------------------------------------------------------------
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _seqs(ledger_uri: str | Path, settings: S3Settings | None) -> list[int]:
    """Sorted sequence numbers of the committed entries."""
    out = []
    for rel in list_files(ledger_uri, ".json", settings):
        m = ENTRY_NAME.match(rel)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def _next_seq(ledger_uri: str | Path, settings: S3Settings | None) -> int:
    seqs = _seqs(ledger_uri, settings)
    return seqs[-1] + 1 if seqs else 0


def append_entry(ledger_uri: str | Path, entry: dict[str, Any], pairs: Any = None, *,
                 settings: S3Settings | None = None, dedupe: bool = False,
                 stats: dict[str, int] | None = None) -> dict[str, Any]:
    """Append one committed entry and return it as stored (with ``seq``).

    Args:
        ledger_uri: the ledger folder (local path or ``s3://``).
        entry: JSON-able fields; ``id`` (default: a fresh uuid) and ``kind`` (default
            ``"pairs"``) are recommended; ``counts`` is merged with the computed counts.
            Fields in :data:`RESERVED_FIELDS` are set here and may not be given.
        pairs: ``(N, 3)`` int ``[user_id, item_id, split]`` (``(N, 2)``: train) pairs, or None.
        settings: S3 settings (default: :func:`~mmrecun_ray.storage.settings.current_settings`).
        dedupe: if an entry with this ``id`` already exists, return it instead of appending.
        stats: if given, ``stats["conflicts"]`` is set to the number of sequence numbers
            lost to other writers.
    Raises:
        DataError: reserved field given, bad pairs. StorageError: storage failures.
    """
    bad = RESERVED_FIELDS & set(entry)
    if bad:
        raise DataError(f"ledger entry for {ledger_uri}: fields {sorted(bad)} are set by the ledger")
    doc: dict[str, Any] = dict(entry)
    doc.setdefault("id", uuid.uuid4().hex)
    doc.setdefault("kind", "pairs")
    doc.setdefault("time", _now())
    if dedupe and "id" in entry:
        old = find_entry(ledger_uri, entry["id"], settings)
        if old is not None:
            logger.info("ledger %s: request %s already recorded as entry %d", ledger_uri,
                        entry["id"], old["seq"])
            return old
    arr = _as_pairs(pairs if pairs is not None else [], f"ledger entry {doc['id']} pairs")
    counts = {"pairs": int(len(arr)), "users": int(np.unique(arr[:, 0]).size),
              "items": int(np.unique(arr[:, 1]).size)}
    counts.update({name: int((arr[:, 2] == k).sum()) for k, name in enumerate(SPLIT_NAMES)})
    counts.update(doc.get("counts") or {})
    doc["counts"] = counts
    doc["pairs_file"], doc["pairs_sha256"] = None, None
    if len(arr):
        data = encode_pairs(arr)
        digest = hashlib.sha256(data).hexdigest()
        pairs_uri = join(ledger_uri, PAIRS_DIR, f"{digest}.parquet")
        write_bytes_atomic(pairs_uri, data, settings)  # same name <=> same bytes: rewrites are no-ops
        doc["pairs_file"], doc["pairs_sha256"] = f"{PAIRS_DIR}/{digest}.parquet", digest
    doc["writer"] = uuid.uuid4().hex
    doc["status"] = "committed"
    return _commit(ledger_uri, doc, settings, stats)


def _commit(ledger_uri: str | Path, doc: dict[str, Any], settings: S3Settings | None,
            stats: dict[str, int] | None) -> dict[str, Any]:
    """Create-only write of ``doc`` at the first free sequence number (see module doc)."""
    seq = _next_seq(ledger_uri, settings)
    conflicts = 0
    while conflicts <= MAX_CONFLICTS:
        doc["seq"] = seq
        body = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
        uri = entry_uri(ledger_uri, seq)
        if write_bytes_create_only(uri, body, settings):
            break
        try:
            winner = read_json(uri, settings)
        except StorageError as e:
            if getattr(e, "reason", None) != "not_found":
                raise
            conflicts += 1  # deleted behind our back (never by this module): retry the same seq
            continue
        if winner.get("writer") == doc["writer"]:
            break  # our earlier attempt landed; its response was lost
        conflicts += 1
        seq = max(seq + 1, _next_seq(ledger_uri, settings))
    else:
        raise StorageError(f"ledger {ledger_uri}: gave up appending entry {doc['id']} after "
                           f"{MAX_CONFLICTS} conflicting writers")
    if stats is not None:
        stats["conflicts"] = conflicts
    logger.info("ledger %s: committed entry %d (%s, %d pairs, %d conflicts)", ledger_uri, seq,
                doc["kind"], doc["counts"]["pairs"], conflicts)
    return dict(doc)


def _checked_ids(values: Any, n: int, what: str, request_id: str) -> list[int]:
    """Sorted unique ids in ``0..n-1`` as plain ints, or a DataError naming the request."""
    arr = np.unique(np.asarray(values, dtype=np.int64).reshape(-1))
    bad = arr[(arr < 0) | (arr >= n)]
    if bad.size:
        raise DataError(f"forget request {request_id}: {what} id {int(bad[0])} outside 0..{n - 1}")
    return [int(x) for x in arr]


def record_request(ledger_uri: str | Path, *, request_id: str, kind: str, request: dict[str, Any],
                   pairs: np.ndarray, users: list[int], banned_items: list[int],
                   dropped_features: dict[str, list[int] | str], n_users: int, n_items: int,
                   data_uri: str, data_hash: str, source: str = "",
                   settings: S3Settings | None = None) -> dict[str, Any]:
    """Append a resolved forget request; idempotent per ``request_id`` (a re-run returns the
    entry already there).

    Args:
        ledger_uri: the lineage's ledger (:func:`mmrecun_ray.data.lineage.ledger_uri_for`).
        request_id: the request's stable id.
        kind: ``users`` / ``items`` / ``interactions`` / ``modality``.
        request: the canonical request (JSON-able, without its pair list).
        pairs: ``(N, 3)`` int64 ``[user, item, split]``: every row the request covers, all
            splits (0 train, 1 valid, 2 test).
        users: users whose every row is forgotten (a ``users`` request), else [].
        banned_items: items that left the catalogue: every row hidden, feature rows zeroed.
        dropped_features: modality -> item ids whose feature rows are zeroed, or ``"all"``
            when the whole modality is withdrawn.
        n_users, n_items: id spaces the ids refer to.
        data_uri, data_hash: the version the request was resolved against and its
            ``Manifest.content_hash()``.
        source: where the request came from (file name, CLI spec).
    Returns:
        The committed entry (with ``seq``).
    Raises:
        DataError: an id outside its id space, bad pairs or split codes, bad
            ``dropped_features``. StorageError: storage failures.
    """
    if not request_id:
        raise DataError(f"ledger {ledger_uri}: a forget request needs a non-empty id")
    n_users, n_items = int(n_users), int(n_items)
    arr = _as_pairs(pairs, f"forget request {request_id} pairs")
    _checked_ids(arr[:, 0], n_users, "user", request_id)
    _checked_ids(arr[:, 1], n_items, "item", request_id)
    dropped: dict[str, list[int] | str] = {}
    for modality, ids in (dropped_features or {}).items():
        if isinstance(ids, str):
            if ids != "all":
                raise DataError(f"forget request {request_id}: dropped_features['{modality}'] "
                                f"must be a list of item ids or 'all', got {ids!r}")
            dropped[str(modality)] = "all"
        else:
            dropped[str(modality)] = _checked_ids(ids, n_items, f"dropped_features['{modality}'] item",
                                                  request_id)
    entry = {"id": str(request_id), "kind": str(kind), "request": request, "source": str(source),
             "users": _checked_ids(users, n_users, "user", request_id),
             "banned_items": _checked_ids(banned_items, n_items, "banned item", request_id),
             "dropped_features": dropped, "n_users": n_users, "n_items": n_items,
             "data_uri": str(data_uri), "data_hash": str(data_hash)}
    return append_entry(ledger_uri, entry, arr, settings=settings, dedupe=True)


def carry_entries(src_ledger: str | Path, dest_ledger: str | Path,
                  settings: S3Settings | None = None) -> list[str]:
    """Append to ``dest_ledger`` every entry of ``src_ledger`` whose id it lacks (pairs
    included, original ``time`` kept, ``carried_from`` added); never removes anything.

    Returns:
        The ids carried, in ``src_ledger`` order.
    """
    have = {e.get("id") for e in read_entries(dest_ledger, settings)}
    carried = []
    for e in read_entries(src_ledger, settings):
        if e.get("id") in have:
            continue
        fields = {k: v for k, v in e.items() if k not in RESERVED_FIELDS and k != "counts"}
        fields.setdefault("carried_from", str(src_ledger))
        append_entry(dest_ledger, fields, entry_pairs(src_ledger, e, settings), settings=settings)
        have.add(e.get("id"))
        carried.append(e.get("id"))
    if carried:
        logger.info("ledger %s: carried %d entries from %s", dest_ledger, len(carried), src_ledger)
    return carried


# -- reading ----------------------------------------------------------------------------------------
def _map(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """``[fn(x) for x in items]``, up to :data:`READ_THREADS` at a time (order kept)."""
    if len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(min(READ_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def read_entries(ledger_uri: str | Path, settings: S3Settings | None = None) -> list[dict[str, Any]]:
    """Committed entries ordered by ``seq``; [] when there is no ledger.

    Raises:
        DataError: an entry whose content disagrees with its file name or is not committed.
    """
    def read(seq: int) -> dict[str, Any]:
        uri = entry_uri(ledger_uri, seq)
        doc = read_json(uri, settings)
        if not isinstance(doc, dict) or doc.get("seq") != seq or doc.get("status") != "committed":
            raise DataError(f"{uri}: not a committed ledger entry with seq {seq}")
        return doc
    return _map(read, _seqs(ledger_uri, settings))


def entries_pairs(ledger_uri: str | Path, entries: list[dict[str, Any]],
                  settings: S3Settings | None = None) -> list[np.ndarray]:
    """:func:`entry_pairs` of each entry (read concurrently), in order."""
    return _map(lambda e: entry_pairs(ledger_uri, e, settings), entries)


def find_entry(ledger_uri: str | Path, request_id: str,
               settings: S3Settings | None = None) -> dict[str, Any] | None:
    """The first committed entry recorded for ``request_id``, or None."""
    for e in read_entries(ledger_uri, settings):
        if e.get("id") == request_id:
            return e
    return None
