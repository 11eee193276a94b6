"""What the forget ledger hides, and hiding it: forgotten means gone from every view.

:func:`forget_view` folds the entries of a version's lineage ledger (the ROOT's ledger, see
:mod:`mmrecun_ray.data.lineage`) into a :class:`ForgetView`:

* every forgotten ``(user, item)`` pair, whichever split it was in, is hidden in all splits;
* every row of a forgotten user (a ``users`` request) is hidden, in all splits;
* every row of a withdrawn item (``banned_items``) is hidden and its feature rows zeroed;
* dropped feature ids are zeroed in their modality; a modality dropped for all items is gone.

:func:`apply_forget_view` applies it to a loaded :class:`~mmrecun_ray.data.schema.RecDataset`
(:func:`~mmrecun_ray.data.dataset.load_dataset` does), :func:`drop_hidden_rows` and
:func:`zero_feature_rows` to Ray Data batches (the streams of
:mod:`mmrecun_ray.data.dataset`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mmrecun_ray.data.lineage import ledger_uri_for
from mmrecun_ray.data.manifest import read_manifest
from mmrecun_ray.data.schema import SPLITS, Interactions, Manifest, RecDataset
from mmrecun_ray.errors import DataError
from mmrecun_ray.storage.ledger import entries_pairs, entry_uri, read_entries

_EMPTY = np.zeros(0, np.int64)


@dataclass(frozen=True)
class ForgetView:
    """Everything a lineage's ledger hides (all arrays sorted, unique, int64).

    Attributes:
        keys: ``(K,)`` pair keys ``user * n_items + item`` of every forgotten pair, all splits.
        users: ``(U,)`` forgotten users: every row of theirs, in every split, is hidden.
        banned_items: ``(B,)`` withdrawn items: every row with them hidden, feature rows zeroed.
        dropped_features: modality -> ``(D,)`` item ids whose feature rows are zeroed, or
            None when the whole modality is gone.
        request_ids: ids of the ledger entries folded in.
        n_items: item id space of ``keys``.
    """

    keys: np.ndarray
    users: np.ndarray
    banned_items: np.ndarray
    dropped_features: dict[str, np.ndarray | None]
    request_ids: frozenset[str]
    n_items: int

    @property
    def hides_rows(self) -> bool:
        """Whether any interaction row can be hidden."""
        return bool(self.keys.size or self.users.size or self.banned_items.size)

    def hidden(self, user: np.ndarray, item: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: whether each ``(user[n], item[n])`` row is hidden."""
        u = np.asarray(user, dtype=np.int64)
        i = np.asarray(item, dtype=np.int64)
        out = np.zeros(u.shape, dtype=bool)
        if self.keys.size:
            out |= np.isin(u * self.n_items + i, self.keys)
        if self.users.size:
            out |= np.isin(u, self.users)
        if self.banned_items.size:
            out |= np.isin(i, self.banned_items)
        return out

    def gone(self, modality: str) -> bool:
        """Whether the whole ``modality`` was withdrawn."""
        return modality in self.dropped_features and self.dropped_features[modality] is None

    def zeroed_rows(self, modality: str) -> np.ndarray:
        """``(R,)`` item ids whose ``modality`` feature rows are zeroed (banned or dropped)."""
        ids = self.dropped_features.get(modality)
        if ids is None:
            return self.banned_items
        return np.union1d(self.banned_items, ids)


@dataclass
class _Folder:
    """Accumulates ledger entries of one id space into a :class:`ForgetView`."""

    ledger_uri: str
    n_users: int
    n_items: int
    keys: list[np.ndarray] = dataclasses.field(default_factory=list)
    users: list[np.ndarray] = dataclasses.field(default_factory=list)
    banned: list[np.ndarray] = dataclasses.field(default_factory=list)
    dropped: dict[str, list[np.ndarray] | None] = dataclasses.field(default_factory=dict)
    ids: set[str] = dataclasses.field(default_factory=set)

    def add(self, e: dict[str, Any], pairs: np.ndarray) -> None:
        """Fold one committed entry and its ``(N, 3)`` pairs in.

        Raises:
            DataError: recorded for other id spaces, an item id out of range.
        """
        where = entry_uri(self.ledger_uri, e["seq"])
        for what, n in (("n_items", self.n_items), ("n_users", self.n_users)):
            if e.get(what) is not None and int(e[what]) != n:
                raise DataError(f"{where}: recorded for {what}={e[what]}, dataset has {what}={n}")
        if len(pairs):
            if pairs[:, 1].max() >= self.n_items:
                raise DataError(f"{where}: item id {int(pairs[:, 1].max())} >= n_items={self.n_items}")
            self.keys.append(pairs[:, 0] * np.int64(self.n_items) + pairs[:, 1])
        self.users.append(np.asarray(e.get("users") or [], dtype=np.int64))
        self.banned.append(np.asarray(e.get("banned_items") or [], dtype=np.int64))
        for modality, ids in (e.get("dropped_features") or {}).items():
            if ids == "all":
                self.dropped[modality] = None
            else:
                parts = self.dropped.setdefault(modality, [])
                if parts is not None:
                    parts.append(np.asarray(ids, dtype=np.int64))
        self.ids.add(str(e.get("id")))

    def view(self) -> ForgetView:
        def union(parts: list[np.ndarray]) -> np.ndarray:
            return np.unique(np.concatenate(parts)) if parts else _EMPTY
        return ForgetView(keys=union(self.keys), users=union(self.users),
                          banned_items=union(self.banned),
                          dropped_features={m: None if p is None else union(p)
                                            for m, p in self.dropped.items()},
                          request_ids=frozenset(self.ids), n_items=self.n_items)


def forget_view(uri: str | Path, exclude: Collection[str] = (), *,
                manifest: Manifest | None = None) -> ForgetView:
    """The :class:`ForgetView` of ``uri``: its lineage ROOT's ledger, less ``exclude``.

    Args:
        uri: a dataset version (root or descendant).
        exclude: request ids whose entries are skipped (to resolve a request against the
            view that hides everything but the request itself).
        manifest: ``uri``'s manifest if already read.
    Raises:
        DataError: ``uri``'s root cannot be read; an entry recorded for other id spaces, an
            item id out of range, a changed pairs file.
    """
    m = manifest or read_manifest(uri)
    lu = ledger_uri_for(uri, m)
    skip = set(exclude)
    entries = [e for e in read_entries(lu) if e.get("id") not in skip]
    folder = _Folder(lu, int(m.n_users), int(m.n_items))
    for e, pairs in zip(entries, entries_pairs(lu, entries)):
        folder.add(e, pairs)
    return folder.view()


def apply_forget_view(ds: RecDataset, view: ForgetView) -> RecDataset:
    """``ds`` with everything ``view`` hides removed.

    Rows hidden in every split; feature rows of banned items and dropped ids zeroed (in a
    copy of that modality's matrix: ``ds`` is not changed); wholly dropped modalities
    removed from ``features``. ``honoured`` gains ``view.request_ids``; when the view hides
    anything, ``manifest.extra["forget_filtered_rows"]`` holds the number of rows removed.
    """
    honoured = ds.honoured | view.request_ids
    if not (view.hides_rows or view.dropped_features):
        return dataclasses.replace(ds, honoured=honoured)
    kept: dict[str, Interactions] = {}
    dropped = 0
    for s in SPLITS:
        x = ds.split(s)
        hide = view.hidden(x.user, x.item) if view.hides_rows else np.zeros(len(x), dtype=bool)
        dropped += int(hide.sum())
        kept[s] = Interactions(x.user[~hide], x.item[~hide]) if hide.any() else x
    features = {}
    for mod, f in ds.features.items():
        if view.gone(mod):
            continue
        rows = view.zeroed_rows(mod)
        if rows.size:
            f = f.copy()
            f[rows] = 0.0
        features[mod] = f
    extra = dict(ds.manifest.extra)
    extra["forget_filtered_rows"] = dropped
    return dataclasses.replace(ds, train=kept["train"], valid=kept["valid"], test=kept["test"],
                               features=features, manifest=dataclasses.replace(ds.manifest, extra=extra),
                               honoured=honoured)


# -- Ray Data batch functions (module level: pickled into Ray tasks) ----------------------------
def drop_hidden_rows(batch: dict[str, np.ndarray], view: ForgetView) -> dict[str, np.ndarray]:
    """A numpy batch with ``user_id``/``item_id`` columns, less the rows ``view`` hides."""
    keep = ~view.hidden(batch["user_id"], batch["item_id"])
    return {k: v[keep] for k, v in batch.items()}


def zero_feature_rows(batch: pa.Table, rows: np.ndarray) -> pa.Table:
    """A pyarrow batch of ``item_id``/``embedding`` (fixed-size list) with the embeddings of
    the items in ``rows`` set to zero; the schema is kept."""
    ids = batch.column("item_id").to_numpy()
    hit = np.isin(ids, rows)
    if not hit.any():
        return batch
    emb = batch.column("embedding").combine_chunks()
    d = emb.type.list_size
    values = emb.flatten().to_numpy(zero_copy_only=False).reshape(-1, d).copy()
    values[hit] = 0
    new = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), emb.type.value_type), d)
    return batch.set_column(batch.schema.get_field_index("embedding"),
                            batch.schema.field("embedding"), new)
