"""Publish a dataset version (layout in :mod:`mmrecun_ray.data.schema`).

Publishing is all-or-nothing for readers:

* local folder: every file, manifest included, goes into a hidden temporary sibling folder
  which is then renamed into place. With ``overwrite=True`` the old folder is first renamed
  aside, its ``ledger/`` moved into the new folder, the new one renamed in, and the old one
  deleted, so a reader sees the old version, briefly no version, or the new version (with
  the same ledger), never a mix.
* ``s3://`` prefix: data files first, ``manifest.json`` last (a single PUT). A prefix without
  a manifest is not a version. With ``overwrite=True`` the old manifest is deleted first, so
  during the rewrite the version simply does not exist; stale files of the old version that
  the new one does not list are deleted after the new manifest is in place, except
  ``ledger/``, which no overwrite touches.

Overwriting a version is for replacing its data; the forget requests recorded in its ledger
keep applying to whatever is published there. Overwriting a version concurrently with
recording a request against it is not supported.

Inputs are validated before anything is written (:mod:`mmrecun_ray.data.validate`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import shutil
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mmrecun_ray.data import validate as V
from mmrecun_ray.data.lineage import Lineage
from mmrecun_ray.data.schema import (EMBEDDING_COL, FEATURES_DIR, INTERACTIONS_DIR, ITEM_COL, MANIFEST,
                                     SPLIT_COL, SPLITS, USER_COL, Interactions, Manifest)
from mmrecun_ray.errors import DataError, StorageError
from mmrecun_ray.storage.ledger import LEDGER_DIR
from mmrecun_ray.storage.uri import delete_tree, resolve

log = logging.getLogger(__name__)

#: target bytes per Parquet row group of a feature table
_FEATURE_ROW_GROUP_BYTES = 32 * 1024 * 1024
_RESERVED_COLS = (USER_COL, ITEM_COL, SPLIT_COL)


class _HashingSink:
    """File-like object that forwards writes to a pyarrow output stream and hashes them."""

    def __init__(self, out: pa.NativeFile) -> None:
        self._out = out
        self._sha = hashlib.sha256()
        self._pos = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._sha.update(view)
        self._out.write(data)
        self._pos += view.nbytes
        return view.nbytes

    def tell(self) -> int:
        return self._pos

    def flush(self) -> None:
        return None

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            self._out.close()
            self.closed = True

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _write_parquet(fs: pafs.FileSystem, path: str, schema: pa.Schema, tables: Any,
                   no_dictionary: tuple[str, ...] = ()) -> str:
    """Write an iterable of ``tables`` (each a row group batch) to ``path``; return sha256 hex."""
    sink = _HashingSink(fs.open_output_stream(path))
    try:
        use_dict: bool | list[str] = [n for n in schema.names if n not in no_dictionary] \
            if no_dictionary else True
        with pq.ParquetWriter(sink, schema, compression="snappy", use_dictionary=use_dict) as w:
            for t in tables:
                w.write_table(t)
    finally:
        sink.close()
    return sink.hexdigest()


def _validate_split(inter: Interactions, split: str, n_users: int, n_items: int) -> Interactions:
    """Validate one split's ids and return it with int64 arrays."""
    where = f"{split} split"
    if len(inter.user) != len(inter.item):
        raise DataError(f"{where}: user ({len(inter.user)}) and item ({len(inter.item)}) "
                        "arrays differ in length")
    u = V.check_integer_ids(inter.user, USER_COL, where)
    i = V.check_integer_ids(inter.item, ITEM_COL, where)
    V.check_id_range(u, n_users, USER_COL, where)
    V.check_id_range(i, n_items, ITEM_COL, where)
    return Interactions(u, i)


def _interaction_schema(extra_cols: Mapping[str, Mapping[str, np.ndarray]]) -> pa.Schema:
    fields = [pa.field(USER_COL, pa.int64(), nullable=False),
              pa.field(ITEM_COL, pa.int64(), nullable=False),
              pa.field(SPLIT_COL, pa.string(), nullable=False)]
    for name, per_split in extra_cols.items():
        fields.append(pa.field(name, pa.from_numpy_dtype(np.asarray(per_split[SPLITS[0]]).dtype)))
    return pa.schema(fields)


def _validate_extra_columns(extra_cols: Mapping[str, Mapping[str, np.ndarray]] | None,
                            splits: Mapping[str, Interactions]) -> dict[str, dict[str, np.ndarray]]:
    """Check optional per-interaction columns (rating, timestamp, ...) line up with the splits."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, per_split in (extra_cols or {}).items():
        if name in _RESERVED_COLS:
            raise DataError(f"interaction column '{name}' is reserved")
        out[name] = {}
        dtypes = set()
        for s in SPLITS:
            if s not in per_split:
                raise DataError(f"interaction column '{name}': no values for split '{s}'")
            arr = np.asarray(per_split[s])
            if arr.ndim != 1 or arr.shape[0] != len(splits[s]):
                raise DataError(f"interaction column '{name}' split '{s}': shape {arr.shape} but "
                                f"the split has {len(splits[s])} interactions")
            if arr.dtype.kind not in "fiub":
                raise DataError(f"interaction column '{name}': unsupported dtype {arr.dtype}")
            dtypes.add(arr.dtype)
            out[name][s] = arr
        if len(dtypes) > 1:
            raise DataError(f"interaction column '{name}': dtype differs across splits {dtypes}")
    return out


def _interaction_tables(splits: Mapping[str, Interactions],
                        extra_cols: Mapping[str, Mapping[str, np.ndarray]],
                        schema: pa.Schema) -> pa.Table:
    """One table with all splits in order train, valid, test."""
    parts = []
    for s in SPLITS:
        inter = splits[s]
        cols: dict[str, Any] = {
            USER_COL: pa.array(inter.user, pa.int64()),
            ITEM_COL: pa.array(inter.item, pa.int64()),
            SPLIT_COL: pa.array(np.full(len(inter), s, dtype=object), pa.string()),
        }
        for name, per_split in extra_cols.items():
            cols[name] = pa.array(per_split[s])
        parts.append(pa.table(cols, schema=schema))
    return pa.concat_tables(parts)


def _feature_batches(item_ids: np.ndarray, feats: np.ndarray, schema: pa.Schema):
    """Yield ``feats`` as row-group-sized tables (no full copy of the matrix)."""
    d = feats.shape[1]
    rows = max(1, _FEATURE_ROW_GROUP_BYTES // (4 * d))
    for start in range(0, feats.shape[0], rows):
        block = np.ascontiguousarray(feats[start:start + rows])
        emb = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1), pa.float32()), d)
        yield pa.table({ITEM_COL: pa.array(item_ids[start:start + rows], pa.int64()),
                        EMBEDDING_COL: emb}, schema=schema)


def _write_files(fs: pafs.FileSystem, root: str, table: pa.Table, rows_per_file: int,
                 features: Mapping[str, np.ndarray], n_items: int) -> dict[str, str]:
    """Write interaction parts and feature tables under ``root``; return rel path -> sha256."""
    files: dict[str, str] = {}
    local = isinstance(fs, pafs.LocalFileSystem)  # object stores need no directory markers
    if local:
        fs.create_dir(posixpath.join(root, INTERACTIONS_DIR), recursive=True)
    n_parts = max(1, -(-table.num_rows // rows_per_file))
    for p in range(n_parts):
        rel = f"{INTERACTIONS_DIR}/part-{p:05d}.parquet"
        chunk = table.slice(p * rows_per_file, rows_per_file)
        files[rel] = _write_parquet(fs, posixpath.join(root, rel), table.schema, [chunk])
    if features and local:
        fs.create_dir(posixpath.join(root, FEATURES_DIR), recursive=True)
    item_ids = np.arange(n_items, dtype=np.int64)
    for m, feats in features.items():
        rel = f"{FEATURES_DIR}/{m}.parquet"
        schema = pa.schema([pa.field(ITEM_COL, pa.int64(), nullable=False),
                            pa.field(EMBEDDING_COL, pa.list_(pa.float32(), feats.shape[1]),
                                     nullable=False)])
        files[rel] = _write_parquet(fs, posixpath.join(root, rel), schema,
                                    _feature_batches(item_ids, feats, schema),
                                    no_dictionary=(EMBEDDING_COL,))
    return files


def _write_manifest(fs: pafs.FileSystem, root: str, manifest: Manifest) -> None:
    import json
    data = (json.dumps(manifest.to_dict(), indent=2, sort_keys=True) + "\n").encode()
    with fs.open_output_stream(posixpath.join(root, MANIFEST)) as f:
        f.write(data)


def _id_range(arrays: list[np.ndarray]) -> list[int]:
    nonempty = [a for a in arrays if a.size]
    if not nonempty:
        return []
    return [int(min(a.min() for a in nonempty)), int(max(a.max() for a in nonempty))]


def _local_target_state(target: Path) -> str:
    """'absent', 'empty', 'version' (has a manifest) or 'other' (files but no manifest)."""
    if not target.exists():
        return "absent"
    if not target.is_dir():
        return "other"
    if (target / MANIFEST).exists():
        return "version"
    return "other" if any(target.iterdir()) else "empty"


def _refuse(uri: str, state: str) -> None:
    what = "a published dataset version" if state == "version" else "existing files (no manifest)"
    raise StorageError(f"{uri}: already holds {what}; pass --overwrite to replace it "
                       "(overwrite=True from Python; its forget ledger is kept)")


def _publish_local(target: Path, uri: str, overwrite: bool, table: pa.Table, rows_per_file: int,
                   features: Mapping[str, np.ndarray], manifest: Manifest) -> Manifest:
    """Write into ``.<name>.tmp-<uuid>`` beside ``target`` and rename it into place."""
    state = _local_target_state(target)
    if state in ("version", "other") and not overwrite:
        _refuse(uri, state)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
    fs = pafs.LocalFileSystem()
    try:
        try:
            tmp.mkdir()
            manifest.files = _write_files(fs, str(tmp), table, rows_per_file, features,
                                          manifest.n_items)
            _write_manifest(fs, str(tmp), manifest)
        except OSError as e:
            raise StorageError(f"{uri}: write failed, nothing published (any previous version is "
                               f"untouched): {e}") from e
        state = _local_target_state(target)
        if state in ("version", "other") and not overwrite:
            _refuse(uri, state)  # another writer published meanwhile
        try:
            if state == "empty":
                target.rmdir()
            elif state != "absent":
                old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex}")
                os.rename(target, old)
                ledger = (old / LEDGER_DIR).exists()
                try:
                    if ledger:
                        os.rename(old / LEDGER_DIR, tmp / LEDGER_DIR)  # the ledger goes with the new version
                    os.rename(tmp, target)
                except OSError:
                    if ledger and (tmp / LEDGER_DIR).exists():
                        os.rename(tmp / LEDGER_DIR, old / LEDGER_DIR)
                    os.rename(old, target)  # put the previous version back
                    raise
                shutil.rmtree(old, ignore_errors=True)
                return manifest
            os.rename(tmp, target)
        except OSError as e:
            raise StorageError(f"{uri}: could not move the new version into place (concurrent "
                               f"publish?): {e}") from e
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _publish_remote(fs: pafs.FileSystem, root: str, uri: str, overwrite: bool, table: pa.Table,
                    rows_per_file: int, features: Mapping[str, np.ndarray],
                    manifest: Manifest) -> Manifest:
    """Object store: data files first, manifest last; stale objects removed afterwards."""
    mpath = posixpath.join(root, MANIFEST)
    try:
        has_manifest = fs.get_file_info(mpath).type == pafs.FileType.File
        existing = [i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True,
                                                                        allow_not_found=True))
                    if i.type == pafs.FileType.File]
    except OSError as e:
        raise StorageError(f"{uri}: cannot list existing objects: {e}") from e
    if existing and not overwrite:
        _refuse(uri, "version" if has_manifest else "other")
    try:
        if has_manifest:
            fs.delete_file(mpath)  # the old version stops existing before any file changes
        manifest.files = _write_files(fs, root, table, rows_per_file, features, manifest.n_items)
        _write_manifest(fs, root, manifest)
    except OSError as e:
        raise StorageError(f"{uri}: write failed, version not published: {e}") from e
    if existing:
        try:
            delete_tree(uri, keep=[*manifest.files, MANIFEST, LEDGER_DIR])
        except StorageError as e:  # stale files are invisible to readers; just report
            log.warning("%s: could not delete every stale object: %s", uri, e)
    return manifest


def write_dataset(out_uri: str | Path, *, name: str, n_users: int, n_items: int,
                  train: Interactions, valid: Interactions, test: Interactions,
                  features: Mapping[str, np.ndarray], source: str, parent: str | None = None,
                  forget_request: str | None = None, extra: dict[str, Any] | None = None,
                  rows_per_file: int = 1_000_000, overwrite: bool = False,
                  interaction_columns: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                  lineage: Lineage | None = None) -> Manifest:
    """Validate and publish one dataset version at ``out_uri`` (local folder or ``s3://``).

    Args:
        out_uri: the version's folder/prefix; must not hold anything unless ``overwrite``.
        name: dataset name recorded in the manifest.
        n_users, n_items: id spaces ``0..n-1``.
        train, valid, test: ``(N_s,)`` int64 user/item ids per split; none may be empty.
        features: modality -> ``(n_items, d)`` float matrix (row r is item r); finite values.
        source: provenance string (e.g. ``synthetic:baby:seed=0`` or ``mmrec:/path``).
        parent, forget_request: lineage of a retain-set version (default: ``lineage``'s).
        extra: free-form metadata stored in the manifest.
        rows_per_file: interaction rows per ``interactions/part-XXXXX.parquet``.
        overwrite: replace an existing version (see module docstring for the guarantees).
        interaction_columns: optional extra per-interaction columns, name -> split ->
            ``(N_s,)`` array (MMRec's ``rating`` float32, ``timestamp`` int64).
        lineage: publish a descendant version
            (:func:`~mmrecun_ray.data.lineage.child_lineage`): its root, ancestors and
            applied requests go into the manifest, and every load of it consults the
            root's ledger. None: the version is a root.
    Returns:
        The manifest as written (``files`` holds each file's sha256).
    Raises:
        DataError: invalid input (nothing is written). StorageError: target occupied or I/O.
    """
    n_users, n_items = int(n_users), int(n_items)
    if lineage is not None:
        for what, given, own in (("parent", parent, lineage.parent),
                                 ("forget_request", forget_request, lineage.forget_request)):
            if given is not None and own is not None and given != own:
                raise DataError(f"{name}: {what}={given!r} disagrees with the lineage's {own!r}")
        parent = parent if parent is not None else lineage.parent
        forget_request = forget_request if forget_request is not None else lineage.forget_request
    if n_users <= 0 or n_items <= 0:
        raise DataError(f"{name}: n_users={n_users} and n_items={n_items} must be positive")
    if rows_per_file <= 0:
        raise DataError(f"rows_per_file must be positive, got {rows_per_file}")
    splits = {s: _validate_split(x, s, n_users, n_items)
              for s, x in zip(SPLITS, (train, valid, test))}
    counts = {s: len(splits[s]) for s in SPLITS}
    V.check_splits_nonempty(counts, f"dataset '{name}'")
    keys = np.concatenate([splits[s].keys(n_items) for s in SPLITS])
    V.check_unique_pairs(keys, n_items, f"dataset '{name}'")
    del keys
    feats: dict[str, np.ndarray] = {}
    for m, arr in features.items():
        if not m or "/" in m or m.startswith("."):
            raise DataError(f"features: invalid modality name {m!r}")
        feats[m] = V.check_features(m, arr, n_items, f"features['{m}']")
    extra_cols = _validate_extra_columns(interaction_columns, splits)

    schema = _interaction_schema(extra_cols)
    table = _interaction_tables(splits, extra_cols, schema)
    meta = dict(extra or {})
    if extra_cols:
        meta.setdefault("interaction_columns", sorted(extra_cols))
    manifest = Manifest(
        name=name, n_users=n_users, n_items=n_items, counts=counts,
        modalities={m: int(a.shape[1]) for m, a in feats.items()},
        id_ranges={USER_COL: _id_range([splits[s].user for s in SPLITS]),
                   ITEM_COL: _id_range([splits[s].item for s in SPLITS])},
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source=source, parent=parent, forget_request=forget_request, extra=meta,
        root=lineage.root if lineage else None,
        ancestors=list(lineage.ancestors) if lineage else [],
        requests=list(lineage.requests) if lineage else [])

    fs, root = resolve(out_uri)
    if isinstance(fs, pafs.LocalFileSystem):
        out = _publish_local(Path(root), str(out_uri), overwrite, table, rows_per_file, feats, manifest)
    else:
        out = _publish_remote(fs, root, str(out_uri), overwrite, table, rows_per_file, feats, manifest)
    log.info("published dataset '%s' at %s: %d users, %d items, counts %s, modalities %s",
             name, out_uri, n_users, n_items, counts, out.modalities)
    return out
