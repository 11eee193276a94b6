"""Checks shared by the writer, the MMRec importer and the loader.

Every check raises :class:`~mmrecun_ray.errors.DataError` whose message names the file (or
the in-memory argument), the column and the first offending id or row, so a bad dataset is
rejected with a message a person can act on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

import numpy as np

from mmrecun_ray.data.schema import SPLITS
from mmrecun_ray.errors import DataError

log = logging.getLogger(__name__)


def check_columns(present: Iterable[str], required: Iterable[str], where: str) -> None:
    """Raise if any ``required`` column is absent from ``present``.

    Args:
        present: column names found in the file/table.
        required: column names that must be there.
        where: file or argument name for the message.
    """
    have = list(present)
    missing = [c for c in required if c not in have]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; found {have}")


def check_integer_ids(values: np.ndarray, column: str, where: str, row_offset: int = 0,
                      row_label: str = "row") -> np.ndarray:
    """Return ``values`` as ``(N,)`` int64, or raise naming the first non-integer row.

    Floats are accepted only when every value is integral and finite (as a CSV reader may
    produce); anything else (strings, booleans, objects, fractional floats) is rejected.

    Args:
        values: ``(N,)`` array of ids.
        column: column name for the message.
        where: file or argument name for the message.
        row_offset: added to the row index in the message (e.g. header lines, earlier files).
        row_label: what a row is called in the message (``"line"`` for text files).
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise DataError(f"{where}: column '{column}' must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where}: column '{column}' must hold integer ids; "
                            f"{row_label} {r + row_offset} has {arr[r].item()!r}")
        return arr.astype(np.int64)
    first = arr[0].item() if arr.size else None
    raise DataError(f"{where}: column '{column}' must hold integer ids, got dtype {arr.dtype} "
                    f"({row_label} {row_offset}: {first!r})")


def check_id_range(ids: np.ndarray, upper: int, column: str, where: str, row_offset: int = 0,
                   row_label: str = "row") -> None:
    """Raise unless every id is in ``0..upper-1``; names the first offending row and id.

    Args:
        ids: ``(N,)`` int64.
        upper: exclusive bound (``n_users`` or ``n_items``).
    """
    if ids.size == 0:
        return
    bad = (ids < 0) | (ids >= upper)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: column '{column}' {row_label} {r + row_offset} has id {int(ids[r])}, "
                        f"outside 0..{upper - 1}")


def check_splits_nonempty(counts: Mapping[str, int], where: str) -> None:
    """Raise if any of train/valid/test has no interactions."""
    for s in SPLITS:
        if int(counts.get(s, 0)) == 0:
            raise DataError(f"{where}: split '{s}' is empty (counts {dict(counts)})")


def check_features(modality: str, feats: np.ndarray, n_items: int, where: str) -> np.ndarray:
    """Validate an item feature matrix and return it as C-contiguous float32.

    Args:
        modality: modality name for the message.
        feats: ``(n_items, d)`` numeric array, row r is item r.
        n_items: expected row count.
    Returns:
        ``(n_items, d)`` float32.
    """
    arr = np.asarray(feats)
    if arr.ndim != 2:
        raise DataError(f"{where}: modality '{modality}' must be a 2-D (n_items, d) matrix, "
                        f"got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise DataError(f"{where}: modality '{modality}' must be numeric, got dtype {arr.dtype}")
    if arr.shape[0] != n_items:
        raise DataError(f"{where}: modality '{modality}' has {arr.shape[0]} rows but the dataset "
                        f"has n_items={n_items} (row r must be item r)")
    if arr.shape[1] == 0:
        raise DataError(f"{where}: modality '{modality}' has dimension 0")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    first = first_nonfinite_row(arr)
    if first is not None:
        raise DataError(f"{where}: modality '{modality}' has NaN/inf values; first bad item_id {first}")
    return arr


def first_nonfinite_row(arr: np.ndarray, chunk_rows: int = 4096) -> int | None:
    """Index of the first row of ``(n, d)`` ``arr`` holding NaN/inf, or ``None`` (chunked)."""
    for start in range(0, arr.shape[0], chunk_rows):
        block = arr[start:start + chunk_rows]
        ok = np.isfinite(block).all(axis=1)
        if not ok.all():
            return start + int(np.flatnonzero(~ok)[0])
    return None


def check_feature_item_ids(item_ids: np.ndarray, n_items: int, modality: str, where: str,
                           column: str = "item_id") -> None:
    """A feature table must list every item ``0..n_items-1`` exactly once.

    Args:
        item_ids: ``(R,)`` int64, the table's item_id column.
    """
    check_id_range(item_ids, n_items, column, where)
    if item_ids.size:
        counts = np.bincount(item_ids, minlength=n_items)
        dup = np.flatnonzero(counts > 1)
        if dup.size:
            raise DataError(f"{where}: modality '{modality}' has duplicate rows for {column} "
                            f"{int(dup[0])} ({int(counts[dup[0]])} rows)")
        missing = np.flatnonzero(counts == 0)
    else:
        missing = np.arange(n_items)
    if missing.size:
        raise DataError(f"{where}: modality '{modality}' has no row for {column} {int(missing[0])} "
                        f"({missing.size} of {n_items} items missing)")


def count_duplicate_pairs(keys: np.ndarray) -> int:
    """Number of repeated ``(user, item)`` pair keys (each extra copy counts once)."""
    if keys.size == 0:
        return 0
    return int(keys.size - np.unique(keys).size)


def check_unique_pairs(keys: np.ndarray, n_items: int, where: str) -> None:
    """Refuse a dataset in which the same ``(user, item)`` pair appears twice (within a split
    or across splits: a repeated training pair weighs double, a training pair repeated in
    test leaks the answer, and a forget request could miss a copy).

    Args:
        keys: ``(N,)`` int64 pair keys ``user * n_items + item`` of every row, all splits.
    Raises:
        DataError: naming the first repeated pair and how many repeats there are.
    """
    n = count_duplicate_pairs(keys)
    if n:
        srt = np.sort(keys)
        first = int(srt[np.flatnonzero(srt[1:] == srt[:-1])[0]])
        raise DataError(f"{where}: (user_id, item_id) = ({first // n_items}, {first % n_items}) "
                        f"appears more than once ({n} repeated rows in all); each pair must be "
                        "one row")
