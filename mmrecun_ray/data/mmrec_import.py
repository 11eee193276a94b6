"""Import a dataset in MMRec's on-disk layout and publish it as a dataset version.

MMRec layout (one folder per dataset)::

    NAME.inter          tab-separated with a header: userID itemID [rating] [timestamp] x_label
                        (x_label 0/1/2 = train/valid/test); ids are dense from 0
    <modality>_feat.npy (n_items, d) matrix, row r is item r (image_feat, text_feat, audio_feat)

The source may be a local folder or an ``s3://`` prefix; the result is written with
:func:`mmrecun_ray.data.writer.write_dataset`, which validates again before publishing.
"""

from __future__ import annotations

import io
import logging
import posixpath
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from mmrecun_ray.data import validate as V
from mmrecun_ray.data.schema import SPLITS, Interactions, Manifest
from mmrecun_ray.errors import DataError
from mmrecun_ray.storage.uri import join, list_files, resolve

log = logging.getLogger(__name__)

USER_FIELD = "userID"
ITEM_FIELD = "itemID"
LABEL_FIELD = "x_label"
RATING_FIELD = "rating"
TIME_FIELD = "timestamp"
FEAT_SUFFIX = "_feat.npy"
#: first data row of a ``.inter`` file is line 2 (line 1 is the header)
_LINE_OFFSET = 2


def _pick_inter_file(src: str, name: str | None) -> str:
    """Relative path of ``NAME.inter`` (or the only ``*.inter`` when ``name`` is None)."""
    top = [f for f in list_files(src, ".inter") if "/" not in f]
    if name is not None:
        want = f"{name}.inter"
        if want not in top:
            raise DataError(f"{join(src, want)}: not found (found {top or 'no .inter files'})")
        return want
    if len(top) != 1:
        raise DataError(f"{src}: expected exactly one *.inter file, found {top or 'none'}; "
                        "pass name=")
    return top[0]


def _read_bytes(src: str, rel: str) -> bytes:
    fs, root = resolve(src)
    try:
        with fs.open_input_stream(posixpath.join(root, rel)) as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{join(src, rel)}: not found") from None


def _read_inter(src: str, rel: str) -> pa.Table:
    """Parse a tab-separated ``.inter`` file into an Arrow table (types inferred)."""
    where = join(src, rel)
    try:
        return pacsv.read_csv(pa.BufferReader(_read_bytes(src, rel)),
                              parse_options=pacsv.ParseOptions(delimiter="\t"))
    except pa.ArrowInvalid as e:
        raise DataError(f"{where}: cannot parse as a tab-separated file with a header ({e})") from e


def _int_field(table: pa.Table, column: str, where: str) -> np.ndarray:
    """``(N,)`` int64 values of an integer column; names the first bad line otherwise."""
    col = table[column]
    if col.null_count:
        r = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where}: column '{column}' line {r + _LINE_OFFSET} is empty")
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return V.check_integer_ids(col.to_numpy(), column, where, row_offset=_LINE_OFFSET,
                                   row_label="line")
    values = col.to_pylist()
    for r, v in enumerate(values):
        try:
            int(str(v).strip())
        except ValueError:
            raise DataError(f"{where}: column '{column}' line {r + _LINE_OFFSET} has {v!r}, "
                            "not an integer") from None
    return np.asarray([int(str(v).strip()) for v in values], dtype=np.int64)


def _nonnegative(ids: np.ndarray, column: str, where: str) -> None:
    if ids.size and ids.min() < 0:
        r = int(np.flatnonzero(ids < 0)[0])
        raise DataError(f"{where}: column '{column}' line {r + _LINE_OFFSET} has negative id {int(ids[r])}")


def _read_features(src: str, n_items: int) -> dict[str, np.ndarray]:
    """Every top-level ``<modality>_feat.npy`` as validated ``(n_items, d)`` float32."""
    out: dict[str, np.ndarray] = {}
    for rel in list_files(src, FEAT_SUFFIX):
        if "/" in rel:
            continue
        modality = rel[: -len(FEAT_SUFFIX)]
        where = join(src, rel)
        try:
            arr = np.load(io.BytesIO(_read_bytes(src, rel)), allow_pickle=False)
        except ValueError as e:
            raise DataError(f"{where}: not a readable .npy matrix ({e})") from e
        out[modality] = V.check_features(modality, arr, n_items, where)
    return out


def read_mmrec(src_dir: str | Path, name: str | None = None) -> dict:
    """Read an MMRec folder into memory (validated).

    Returns:
        dict with ``name``, ``n_users``, ``n_items``, ``train``/``valid``/``test``
        (:class:`Interactions`), ``features`` (modality -> ``(n_items, d)`` float32) and
        ``columns`` (extra per-interaction columns: name -> split -> ``(N_s,)`` array).
    """
    src = str(src_dir)
    rel = _pick_inter_file(src, name)
    where = join(src, rel)
    table = _read_inter(src, rel)
    V.check_columns(table.column_names, (USER_FIELD, ITEM_FIELD, LABEL_FIELD), where)
    if table.num_rows == 0:
        raise DataError(f"{where}: no interactions")
    user = _int_field(table, USER_FIELD, where)
    item = _int_field(table, ITEM_FIELD, where)
    label = _int_field(table, LABEL_FIELD, where)
    _nonnegative(user, USER_FIELD, where)
    _nonnegative(item, ITEM_FIELD, where)
    bad = (label < 0) | (label >= len(SPLITS))
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: column '{LABEL_FIELD}' line {r + _LINE_OFFSET} has {int(label[r])}; "
                        "expected 0 (train), 1 (valid) or 2 (test)")
    extra: dict[str, np.ndarray] = {}
    if RATING_FIELD in table.column_names:
        col = table[RATING_FIELD]
        if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)) or col.null_count:
            raise DataError(f"{where}: column '{RATING_FIELD}' must be numeric without gaps, got {col.type}")
        extra["rating"] = col.to_numpy().astype(np.float32)
    if TIME_FIELD in table.column_names:
        extra["timestamp"] = _int_field(table, TIME_FIELD, where)
    n_users, n_items = int(user.max()) + 1, int(item.max()) + 1
    splits = {s: Interactions(user[label == k], item[label == k]) for k, s in enumerate(SPLITS)}
    columns = {c: {s: v[label == k] for k, s in enumerate(SPLITS)} for c, v in extra.items()}
    V.check_splits_nonempty({s: len(x) for s, x in splits.items()}, where)
    features = _read_features(src, n_items)
    return {"name": name or rel[: -len(".inter")], "n_users": n_users, "n_items": n_items,
            **splits, "features": features, "columns": columns}


def prepare_mmrec(src_dir: str | Path, out_uri: str | Path, name: str | None = None, *,
                  overwrite: bool = False) -> Manifest:
    """Import the MMRec folder ``src_dir`` and publish it at ``out_uri``.

    Args:
        src_dir: folder (or ``s3://`` prefix) holding ``NAME.inter`` and ``*_feat.npy``.
        out_uri: where to publish the version.
        name: dataset name; default the stem of the only ``*.inter`` file.
        overwrite: replace an existing version at ``out_uri``.
    Returns:
        The published manifest (``n_users``/``n_items`` = max id + 1).
    """
    from mmrecun_ray.data.writer import write_dataset

    data = read_mmrec(src_dir, name)
    log.info("imported MMRec '%s' from %s: %d users, %d items, modalities %s", data["name"], src_dir,
             data["n_users"], data["n_items"], {m: a.shape[1] for m, a in data["features"].items()})
    return write_dataset(
        out_uri, name=data["name"], n_users=data["n_users"], n_items=data["n_items"],
        train=data["train"], valid=data["valid"], test=data["test"], features=data["features"],
        source=f"mmrec:{src_dir}", interaction_columns=data["columns"], overwrite=overwrite)
