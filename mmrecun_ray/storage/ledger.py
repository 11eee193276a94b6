"""Append-only ledger of forget requests, local or on S3.

Layout below a ledger URI (by default ``<dataset>/ledger``, see :func:`ledger_uri_for`)::

    00000000.json, 00000001.json, ...  one committed entry per file, never rewritten
    pairs/<sha256>.parquet             an entry's forgotten pairs (user_id:int64,
                                       item_id:int64), named by the sha256 of its bytes

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
request id may both land when they race (:func:`forgotten_pairs` takes the union, so this is
harmless); sequential re-appends of an id are deduplicated when ``dedupe=True``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmrecun_ray.errors import DataError, StorageError
from mmrecun_ray.storage.uri import (S3Settings, join, list_files, read_bytes, read_json,
                                     write_bytes_atomic, write_bytes_create_only)

logger = logging.getLogger(__name__)

LEDGER_DIR = "ledger"
PAIRS_DIR = "pairs"
ENTRY_NAME = re.compile(r"^(\d{8})\.json$")
RESERVED_FIELDS = frozenset({"seq", "status", "writer", "pairs_file", "pairs_sha256"})
MAX_CONFLICTS = 10_000
_PAIRS_SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64())])


def ledger_uri_for(dataset_uri: str | Path) -> str:
    """The ledger of a dataset version: ``<dataset_uri>/ledger``."""
    return join(dataset_uri, LEDGER_DIR)


def entry_uri(ledger_uri: str | Path, seq: int) -> str:
    """URI of entry ``seq``: ``<ledger>/<seq:08d>.json``."""
    return join(ledger_uri, f"{seq:08d}.json")


# -- pairs side files ---------------------------------------------------------------------------
def encode_pairs(pairs: np.ndarray) -> bytes:
    """``(N, 2)`` int64 ``[user_id, item_id]`` rows -> Parquet bytes (sorted, deduplicated)."""
    arr = _as_pairs(pairs, "pairs")
    arr = np.unique(arr, axis=0) if len(arr) else arr
    table = pa.table({"user_id": arr[:, 0], "item_id": arr[:, 1]}, schema=_PAIRS_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def decode_pairs(data: bytes, source: str) -> np.ndarray:
    """Parquet bytes -> ``(N, 2)`` int64 ``[user_id, item_id]``; ``source`` names the file in errors."""
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{source}: not a readable Parquet pairs file ({e})") from e
    missing = {"user_id", "item_id"} - set(table.column_names)
    if missing:
        raise DataError(f"{source}: missing column(s) {sorted(missing)}")
    u = table.column("user_id").to_numpy().astype(np.int64)
    i = table.column("item_id").to_numpy().astype(np.int64)
    return np.stack([u, i], axis=1) if len(u) else np.zeros((0, 2), np.int64)


def _as_pairs(pairs: Any, what: str) -> np.ndarray:
    arr = np.asarray(pairs, dtype=np.int64)
    if arr.size == 0:
        return np.zeros((0, 2), np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DataError(f"{what}: expected an (N, 2) array of [user_id, item_id], got shape {arr.shape}")
    if (arr < 0).any():
        raise DataError(f"{what}: negative ids")
    return arr


def read_pairs(ledger_uri: str | Path, entry: dict[str, Any],
               settings: S3Settings | None = None) -> np.ndarray:
    """The ``(N, 2)`` int64 pairs of ``entry``, checked against its ``pairs_sha256``.

    Raises:
        DataError: pairs file changed (hash mismatch) or unreadable.
    """
    rel = entry.get("pairs_file")
    if not rel:
        return np.zeros((0, 2), np.int64)
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
        pairs: ``(N, 2)`` int ``[user_id, item_id]`` forgotten pairs, or None.
        settings: S3 settings (default: :func:`~mmrecun_ray.storage.uri.current_settings`).
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
        for old in read_entries(ledger_uri, settings):
            if old.get("id") == entry["id"]:
                logger.info("ledger %s: request %s already recorded as entry %d", ledger_uri,
                            entry["id"], old["seq"])
                return old
    arr = _as_pairs(pairs if pairs is not None else [], f"ledger entry {doc['id']} pairs")
    arr = np.unique(arr, axis=0) if len(arr) else arr
    counts = {"pairs": int(len(arr)), "users": int(np.unique(arr[:, 0]).size),
              "items": int(np.unique(arr[:, 1]).size)}
    counts.update(doc.get("counts") or {})
    doc["counts"] = counts
    doc["pairs_file"], doc["pairs_sha256"] = None, None
    if len(arr):
        data = encode_pairs(arr)
        digest = hashlib.sha256(data).hexdigest()
        rel = f"{PAIRS_DIR}/{digest}.parquet"
        pairs_uri = join(ledger_uri, PAIRS_DIR, f"{digest}.parquet")
        write_bytes_atomic(pairs_uri, data, settings)  # same name <=> same bytes: rewrites are no-ops
        doc["pairs_file"], doc["pairs_sha256"] = rel, digest
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


def record_request(ledger_uri: str | Path, fset: Any, settings: S3Settings | None = None) -> dict[str, Any]:
    """Append a resolved forget request (an ``unlearning.requests.ForgetSet``); idempotent per
    request id.

    The entry carries the canonical request without its pair list (the pairs of D_f go to the
    Parquet side file), the banned items and dropped features, and ``n_users``/``n_items``
    of the dataset the ids refer to.
    """
    req = fset.request
    canonical = {k: v for k, v in req.canonical().items() if k != "pairs"}
    forget = fset.forget
    pairs = np.stack([np.asarray(forget.user, np.int64), np.asarray(forget.item, np.int64)], axis=1)
    entry = {"id": fset.request_id, "kind": req.kind, "request": canonical,
             "source": getattr(req, "source", ""),
             "banned_items": [int(x) for x in np.asarray(fset.banned_items).tolist()],
             "dropped_features": {m: [int(x) for x in np.asarray(v).tolist()]
                                  for m, v in fset.dropped_features.items()},
             "n_users": int(fset.retain.n_users), "n_items": int(fset.retain.n_items)}
    return append_entry(ledger_uri, entry, pairs, settings=settings, dedupe=True)


# -- reading ----------------------------------------------------------------------------------------
def read_entries(ledger_uri: str | Path, settings: S3Settings | None = None) -> list[dict[str, Any]]:
    """Committed entries ordered by ``seq``; [] when there is no ledger.

    Raises:
        DataError: an entry whose content disagrees with its file name or is not committed.
    """
    out = []
    for seq in _seqs(ledger_uri, settings):
        uri = entry_uri(ledger_uri, seq)
        doc = read_json(uri, settings)
        if not isinstance(doc, dict) or doc.get("seq") != seq or doc.get("status") != "committed":
            raise DataError(f"{uri}: not a committed ledger entry with seq {seq}")
        out.append(doc)
    return out


def forgotten_pairs(dataset_uri: str | Path, n_items: int | None = None, *,
                    ledger_uri: str | Path | None = None,
                    settings: S3Settings | None = None) -> np.ndarray:
    """Sorted unique int64 keys ``user_id * n_items + item_id`` of every forgotten pair.

    Args:
        dataset_uri: the dataset version; its ledger is ``<dataset_uri>/ledger`` unless
            ``ledger_uri`` is given, and ``n_items`` defaults to its manifest's.
        n_items: item count used for the keys.
    Returns:
        ``(K,)`` int64; empty when the ledger has no entries.
    Raises:
        DataError: an item id >= n_items, an entry recorded for a different ``n_items``, a
            changed pairs file.
    """
    lu = ledger_uri or ledger_uri_for(dataset_uri)
    entries = read_entries(lu, settings)
    with_pairs = [e for e in entries if e.get("pairs_file")]
    if not with_pairs:
        return np.zeros(0, np.int64)
    if n_items is None:
        n_items = int(read_json(join(dataset_uri, "manifest.json"), settings)["n_items"])
    keys = []
    for e in with_pairs:
        if e.get("n_items") is not None and int(e["n_items"]) != n_items:
            raise DataError(f"{entry_uri(lu, e['seq'])}: recorded for n_items={e['n_items']}, "
                            f"dataset {dataset_uri} has n_items={n_items}")
        arr = read_pairs(lu, e, settings)
        if len(arr) and arr[:, 1].max() >= n_items:
            raise DataError(f"{join(lu, e['pairs_file'])}: item id {int(arr[:, 1].max())} >= "
                            f"n_items={n_items} of {dataset_uri}")
        keys.append(arr[:, 0] * np.int64(n_items) + arr[:, 1])
    return np.unique(np.concatenate(keys))
