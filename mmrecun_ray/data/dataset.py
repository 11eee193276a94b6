"""Read published dataset versions: numpy in memory, or Ray Data datasets.

Readers trust only what ``manifest.json`` lists: the files it names (never a directory
listing), their sha256 digests, counts and dimensions. A folder without a manifest is not a
published version and is refused.

Every reader here applies the lineage's forget ledger (:mod:`mmrecun_ray.data.forget`):
forgotten pairs, all rows of forgotten users and withdrawn items are gone from every split,
withdrawn feature rows are zero and withdrawn modalities absent, in :func:`load_dataset` and
in the Ray Data streams alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import posixpath
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from mmrecun_ray.data import validate as V
from mmrecun_ray.data.forget import apply_forget_view, drop_hidden_rows, forget_view, zero_feature_rows
from mmrecun_ray.data.manifest import read_manifest, read_version_file
from mmrecun_ray.data.schema import (EMBEDDING_COL, FEATURES_DIR, INTERACTIONS_DIR, ITEM_COL, MANIFEST,
                                     SPLIT_COL, SPLITS, USER_COL, Interactions, Manifest, RecDataset)
from mmrecun_ray.errors import ConfigError, DataError
from mmrecun_ray.storage.uri import join, resolve

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

log = logging.getLogger(__name__)

__all__ = ["UserItemCSR", "features_dataset", "features_to_numpy", "interactions_dataset",
           "load_dataset", "read_manifest", "train_user_items", "user_items", "verify_files"]


# -- manifest ---------------------------------------------------------------------------------
def _interaction_files(m: Manifest) -> list[str]:
    return sorted(k for k in m.files if k.startswith(INTERACTIONS_DIR + "/"))


def _feature_file(m: Manifest, modality: str, uri: str) -> str:
    rel = f"{FEATURES_DIR}/{modality}.parquet"
    if rel not in m.files:
        raise DataError(f"{join(uri, MANIFEST)}: modality '{modality}' has no file {rel} listed")
    return rel


def _read_table(fs: pafs.FileSystem, root: str, uri: str, rel: str, expected_sha: str,
                verify: bool) -> pa.Table:
    """Read one Parquet file named in the manifest, checking its sha256 when ``verify``."""
    try:
        raw = read_version_file(fs, root, uri, rel)
    except FileNotFoundError:
        raise DataError(f"{join(uri, rel)}: listed in {MANIFEST} but missing") from None
    if verify:
        got = hashlib.sha256(raw).hexdigest()
        if got != expected_sha:
            raise DataError(f"{join(uri, rel)}: sha256 mismatch (manifest {expected_sha[:12]}..., "
                            f"file {got[:12]}...): the file changed after the version was published")
    try:
        return pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{join(uri, rel)}: not a readable Parquet file ({e})") from e


# -- interactions -----------------------------------------------------------------------------
def _split_codes(table: pa.Table, where: str) -> np.ndarray:
    """``(N,)`` int8 split code per row (index into :data:`SPLITS`); rejects unknown labels."""
    col = table[SPLIT_COL]
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)
            or pa.types.is_dictionary(col.type)):
        raise DataError(f"{where}: column '{SPLIT_COL}' must be a string column, got {col.type}")
    enc = col.combine_chunks()
    if not pa.types.is_dictionary(enc.type):
        enc = enc.dictionary_encode()
    if enc.null_count:
        r = int(np.flatnonzero(enc.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where}: column '{SPLIT_COL}' row {r} is null")
    labels = enc.dictionary.to_pylist()
    idx = enc.indices.to_numpy()
    remap = np.full(len(labels), -1, dtype=np.int8)
    for j, lab in enumerate(labels):
        if lab in SPLITS:
            remap[j] = SPLITS.index(lab)
    codes = remap[idx] if idx.size else np.zeros(0, dtype=np.int8)
    if (codes < 0).any():
        r = int(np.flatnonzero(codes < 0)[0])
        raise DataError(f"{where}: column '{SPLIT_COL}' row {r} has unknown split label "
                        f"{labels[idx[r]]!r}; expected one of {list(SPLITS)}")
    return codes


def _id_column(table: pa.Table, column: str, where: str) -> np.ndarray:
    col = table[column]
    if col.null_count:
        r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where}: column '{column}' row {r} is null")
    if not pa.types.is_integer(col.type):
        raise DataError(f"{where}: column '{column}' must hold integer ids, got type {col.type}")
    return col.to_numpy().astype(np.int64, copy=False)


def _load_interactions(fs: pafs.FileSystem, root: str, uri: str, m: Manifest,
                       verify: bool) -> dict[str, Interactions]:
    users: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    items: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    rels = _interaction_files(m)
    if not rels:
        raise DataError(f"{join(uri, MANIFEST)}: lists no {INTERACTIONS_DIR}/ files")
    for rel in rels:
        where = join(uri, rel)
        t = _read_table(fs, root, uri, rel, m.files[rel], verify)
        V.check_columns(t.column_names, (USER_COL, ITEM_COL, SPLIT_COL), where)
        u = _id_column(t, USER_COL, where)
        i = _id_column(t, ITEM_COL, where)
        V.check_id_range(u, m.n_users, USER_COL, where)
        V.check_id_range(i, m.n_items, ITEM_COL, where)
        codes = _split_codes(t, where)
        for k, s in enumerate(SPLITS):
            sel = codes == k
            users[s].append(u[sel])
            items[s].append(i[sel])
    out = {s: Interactions(np.concatenate(users[s]), np.concatenate(items[s])) for s in SPLITS}
    got = {s: len(out[s]) for s in SPLITS}
    for s in SPLITS:
        if s in m.counts and int(m.counts[s]) != got[s]:
            raise DataError(f"{uri}: manifest counts {s}={m.counts[s]} but the files hold {got[s]}")
    V.check_splits_nonempty(got, str(uri))
    V.check_unique_pairs(np.concatenate([out[s].keys(m.n_items) for s in SPLITS]), int(m.n_items),
                         join(uri, INTERACTIONS_DIR))
    return out


# -- features ---------------------------------------------------------------------------------
def _embedding_matrix(col: pa.ChunkedArray, dim: int, where: str, item_ids: np.ndarray) -> np.ndarray:
    """``(R, dim)`` float32 from a fixed_size_list column (rows in file order)."""
    t = col.type
    if not pa.types.is_fixed_size_list(t) or not pa.types.is_floating(t.value_type):
        raise DataError(f"{where}: column '{EMBEDDING_COL}' must be fixed_size_list<float>, got {t}")
    if t.list_size != dim:
        raise DataError(f"{where}: column '{EMBEDDING_COL}' has dimension {t.list_size} but the "
                        f"manifest says {dim}")
    arr = col.combine_chunks()
    if arr.null_count:
        r = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where}: column '{EMBEDDING_COL}' is null for item_id {int(item_ids[r])}")
    flat = arr.flatten().to_numpy(zero_copy_only=False)
    return flat.astype(np.float32, copy=False).reshape(-1, dim)


def _order_features(item_ids: np.ndarray, emb: np.ndarray, n_items: int, modality: str,
                    where: str) -> np.ndarray:
    """Validate ids and return ``(n_items, d)`` float32 with row r = item r."""
    V.check_feature_item_ids(item_ids, n_items, modality, where)
    if np.array_equal(item_ids, np.arange(n_items)):
        out = np.ascontiguousarray(emb)
    else:
        out = np.empty_like(emb)
        out[item_ids] = emb
    bad = V.first_nonfinite_row(out)
    if bad is not None:
        raise DataError(f"{where}: modality '{modality}' has NaN/inf values; first bad item_id {bad}")
    return out


def _load_feature(fs: pafs.FileSystem, root: str, uri: str, m: Manifest, modality: str,
                  verify: bool) -> np.ndarray:
    rel = _feature_file(m, modality, str(uri))
    where = join(uri, rel)
    t = _read_table(fs, root, uri, rel, m.files[rel], verify)
    V.check_columns(t.column_names, (ITEM_COL, EMBEDDING_COL), where)
    ids = _id_column(t, ITEM_COL, where)
    emb = _embedding_matrix(t[EMBEDDING_COL], int(m.modalities[modality]), where, ids)
    return _order_features(ids, emb, m.n_items, modality, where)


# -- public loaders ---------------------------------------------------------------------------
def load_dataset(uri: str | Path, *, verify_hashes: bool = True,
                 exclude_requests: Collection[str] = ()) -> RecDataset:
    """Load a published version into numpy, with everything its lineage's ledger forgot hidden.

    Args:
        uri: local folder or ``s3://`` prefix of the version.
        verify_hashes: check every file's sha256 against the manifest.
        exclude_requests: ledger request ids NOT to apply (see
            :func:`~mmrecun_ray.data.forget.forget_view`).
    Returns:
        :class:`RecDataset` with int64 splits and ``(n_items, d)`` float32 features, the
        forget view applied (:func:`~mmrecun_ray.data.forget.apply_forget_view`);
        ``honoured`` = the ledger ids applied and the requests of ``manifest.requests``.
    Raises:
        DataError: not a version, changed/missing/corrupt file, invalid contents, or a
            descendant whose lineage root cannot be read.
    """
    uri = str(uri)
    m = read_manifest(uri)
    view = forget_view(uri, exclude_requests, manifest=m)  # before the data: a missing root fails fast
    fs, root = resolve(uri)
    splits = _load_interactions(fs, root, uri, m, verify_hashes)
    features = {mod: _load_feature(fs, root, uri, m, mod, verify_hashes)
                for mod in m.modalities if not view.gone(mod)}  # a withdrawn modality is not read
    listed = {k for k in m.files if k.startswith(FEATURES_DIR + "/")}
    unexpected = listed - {f"{FEATURES_DIR}/{mod}.parquet" for mod in m.modalities}
    if unexpected:
        raise DataError(f"{join(uri, MANIFEST)}: feature file(s) {sorted(unexpected)} have no "
                        "entry in 'modalities'")
    ds = RecDataset(n_users=int(m.n_users), n_items=int(m.n_items), train=splits["train"],
                    valid=splits["valid"], test=splits["test"], features=features, manifest=m, uri=uri,
                    honoured=frozenset(m.requests))
    ds = apply_forget_view(ds, view)
    if "forget_filtered_rows" in ds.manifest.extra:
        log.info("%s: forget ledger (%d requests) hid %d interactions", uri, len(view.request_ids),
                 ds.manifest.extra["forget_filtered_rows"])
    return ds


# -- user -> items index ----------------------------------------------------------------------
@dataclass
class UserItemCSR:
    """Per-user sorted item lists of a split (CSR), for negative sampling and masking.

    Attributes:
        indptr: ``(n_users + 1,)`` int64; user u's items are ``indices[indptr[u]:indptr[u+1]]``.
        indices: ``(nnz,)`` int64 item ids, sorted within each user, duplicates removed.
        n_users, n_items: id spaces.
    """

    indptr: np.ndarray
    indices: np.ndarray
    n_users: int
    n_items: int
    #: ``(nnz,)`` sorted pair keys ``user * n_items + item`` (derived, for membership tests)
    keys: np.ndarray = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(self.indptr))
        self.keys = users * self.n_items + self.indices

    def items_of(self, user: int) -> np.ndarray:
        """Sorted ``(k,)`` item ids of ``user``."""
        return self.indices[self.indptr[user]:self.indptr[user + 1]]

    def degrees(self) -> np.ndarray:
        """``(n_users,)`` number of items per user."""
        return np.diff(self.indptr)

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``(B,)`` bool: whether each ``(users[b], items[b])`` is in the index."""
        q = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        if self.keys.size == 0:
            return np.zeros(q.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self.keys, q), self.keys.size - 1)
        return self.keys[pos] == q

    def to_scipy(self) -> Any:
        """``scipy.sparse.csr_matrix`` of shape ``(n_users, n_items)`` with ones."""
        import scipy.sparse as sp
        data = np.ones(self.indices.size, dtype=np.float32)
        return sp.csr_matrix((data, self.indices, self.indptr), shape=(self.n_users, self.n_items))


def user_items(inter: Interactions, n_users: int, n_items: int) -> UserItemCSR:
    """Build a :class:`UserItemCSR` from ``(N,)`` user/item arrays (duplicates collapsed)."""
    keys = np.unique(inter.keys(n_items))
    users = keys // n_items
    indices = (keys - users * n_items).astype(np.int64)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return UserItemCSR(indptr=indptr, indices=indices, n_users=int(n_users), n_items=int(n_items))


def train_user_items(ds: RecDataset) -> UserItemCSR:
    """Training-split user -> sorted items index of ``ds`` (see :class:`UserItemCSR`)."""
    return user_items(ds.train, ds.n_users, ds.n_items)


# -- Ray Data ---------------------------------------------------------------------------------
def interactions_dataset(uri: str | Path, split: str, *,
                         exclude_requests: Collection[str] = ()) -> "ray.data.Dataset":
    """Ray Data dataset of one split's ``(user_id, item_id)`` int64 rows, less every row the
    lineage's forget ledger hides (the same rows :func:`load_dataset` drops).

    Reads exactly the interaction files the manifest lists, with the resolved filesystem
    (local or S3 with the endpoint override); the column projection and the split filter
    are pushed into the Parquet read, the ledger filter is a ``map_batches`` after it (only
    when the ledger hides anything). Hashes are not re-checked here: call
    :func:`load_dataset` or :func:`verify_files` when that matters.
    """
    import ray.data
    from ray.data.expressions import col

    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    m = read_manifest(uri)
    view = forget_view(uri, exclude_requests, manifest=m)
    fs, root = resolve(uri)
    paths = [posixpath.join(root, rel) for rel in _interaction_files(m)]
    ds = ray.data.read_parquet(paths, filesystem=fs, partitioning=None)
    ds = ds.select_columns([USER_COL, ITEM_COL, SPLIT_COL])  # projection is pushed into the read
    ds = ds.filter(expr=col(SPLIT_COL) == split).select_columns([USER_COL, ITEM_COL])
    if view.hides_rows:
        ds = ds.map_batches(drop_hidden_rows, fn_kwargs={"view": view}, batch_format="numpy")
    return ds


def features_dataset(uri: str | Path, modality: str, *,
                     exclude_requests: Collection[str] = ()) -> "ray.data.Dataset":
    """Ray Data dataset with columns ``item_id`` and ``embedding`` for one modality; rows of
    items the ledger withdrew (banned items, dropped feature ids) are zero.

    Raises:
        DataError: no such modality, or the ledger withdrew the whole modality.
    """
    import ray.data

    m = read_manifest(uri)
    if modality not in m.modalities:
        raise DataError(f"{uri}: no modality '{modality}' (available: {sorted(m.modalities)})")
    view = forget_view(uri, exclude_requests, manifest=m)
    if view.gone(modality):
        raise DataError(f"{uri}: modality '{modality}' was withdrawn by a forget request in its "
                        "ledger; it is not available")
    fs, root = resolve(uri)
    path = posixpath.join(root, _feature_file(m, modality, str(uri)))
    ds = ray.data.read_parquet([path], filesystem=fs, partitioning=None)
    rows = view.zeroed_rows(modality)
    if rows.size:
        ds = ds.map_batches(zero_feature_rows, fn_kwargs={"rows": rows}, batch_format="pyarrow")
    return ds


def features_to_numpy(ds: "ray.data.Dataset", n_items: int, dim: int) -> np.ndarray:
    """Collect a :func:`features_dataset` into ``(n_items, dim)`` float32, row r = item r.

    Raises:
        DataError: a missing or duplicated item, a wrong dimension, or NaN/inf values.
    """
    ids_parts: list[np.ndarray] = []
    emb_parts: list[np.ndarray] = []
    for batch in ds.iter_batches(batch_format="numpy", batch_size=4096):
        ids = np.asarray(batch[ITEM_COL], dtype=np.int64)
        emb = np.asarray(batch[EMBEDDING_COL])
        if emb.dtype == object:  # ragged fallback: a sequence of 1-D arrays
            emb = np.stack([np.asarray(r) for r in emb]) if len(emb) else np.zeros((0, dim))
        if emb.ndim != 2 or emb.shape[1] != dim:
            raise DataError(f"features dataset: embedding shape {emb.shape}, expected (*, {dim})")
        ids_parts.append(ids)
        emb_parts.append(emb.astype(np.float32, copy=False))
    ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, dtype=np.int64)
    emb = np.concatenate(emb_parts) if emb_parts else np.zeros((0, dim), dtype=np.float32)
    return _order_features(ids, emb, n_items, "features dataset", "features dataset")


def verify_files(uri: str | Path) -> Manifest:
    """Check every file the manifest lists exists and matches its sha256; return the manifest."""
    m = read_manifest(uri)
    fs, root = resolve(uri)
    for rel, sha in sorted(m.files.items()):
        path = posixpath.join(root, rel)
        h = hashlib.sha256()
        try:
            with fs.open_input_stream(path) as f:
                while True:
                    chunk = f.read(8 * 1024 * 1024)
                    if not chunk:
                        break
                    h.update(chunk)
        except FileNotFoundError:
            raise DataError(f"{join(uri, rel)}: listed in {MANIFEST} but missing") from None
        if h.hexdigest() != sha:
            raise DataError(f"{join(uri, rel)}: sha256 mismatch: the file changed after the "
                            "version was published")
    return m
