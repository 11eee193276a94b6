"""Forget requests: what to forget, resolved against a dataset into the forget set D_f and
the retain set D_r.

Kinds:
  - ``interactions``: (user_id, item_id) pairs — evolving preferences;
  - ``users``: every interaction of the listed users — right to be forgotten;
  - ``items``: every interaction with the listed items; the items leave the catalogue
    (never recommended again, their features leave the modality graphs) — licensing;
  - ``modality``: one modality's features for listed items (or all) — a licence ends.

Specs (``--request``): a JSON file (``{"kind": "users", "ids": [...]}``,
``{"kind": "interactions", "pairs": [[u, i], ...]}``, ``{"kind": "modality",
"modality": "image", "items": [...] | "all"}``), a Parquet file (columns ``user_id`` and/or
``item_id``; both = interactions), or a string: ``users=3,7``, ``items=10``,
``interactions=3:10,4:11``, ``modality:image``, ``modality:image=1,2``, and sampled
experiment requests ``users:5%``, ``items:2%``, ``interactions:10%`` (seeded by ``--seed``
or a ``@SEED`` suffix, e.g. ``users:5%@1``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mmrecun_ray.data.schema import Interactions, RecDataset
from mmrecun_ray.errors import ConfigError, DataError

KINDS = ("interactions", "users", "items", "modality")
_SAMPLED = re.compile(r"^(users|items|interactions):(\d+(?:\.\d+)?)%(?:@(\d+))?$")


@dataclass
class ForgetRequest:
    """A concrete or sampled request. Sampled ones have ``fraction`` set and are made
    concrete by :func:`resolve_request`."""

    kind: str
    users: list[int] = field(default_factory=list)
    items: list[int] = field(default_factory=list)
    pairs: list[tuple[int, int]] = field(default_factory=list)
    modality: str | None = None
    all_items: bool = False
    fraction: float | None = None
    seed: int = 0
    source: str = ""

    def canonical(self) -> dict[str, Any]:
        """JSON form with sorted ids (identity for hashing and the ledger)."""
        return {"kind": self.kind, "users": sorted(self.users), "items": sorted(self.items),
                "pairs": sorted([list(p) for p in self.pairs]), "modality": self.modality,
                "all_items": self.all_items}

    def request_id(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as e:
        raise ConfigError(f"request {what}: expected comma-separated integer ids, got {text!r}") from e


def parse_request(spec: str, seed: int = 0) -> ForgetRequest:
    """Parse a request spec (file path or string form, see module doc)."""
    spec = spec.strip()
    path = Path(spec)
    if path.suffix in (".json", ".parquet"):
        if not path.exists():
            raise ConfigError(f"request file {spec}: not found")
        return _read_request_file(path)
    m = _SAMPLED.match(spec)
    if m:
        frac = float(m.group(2)) / 100.0
        if not 0 < frac < 1:
            raise ConfigError(f"request {spec!r}: fraction must be in (0%, 100%)")
        return ForgetRequest(kind=m.group(1), fraction=frac,
                             seed=int(m.group(3)) if m.group(3) else seed, source=spec)
    if spec.startswith("modality:"):
        rest = spec[len("modality:"):]
        name, _, ids = rest.partition("=")
        if not name:
            raise ConfigError(f"request {spec!r}: name the modality, e.g. modality:image")
        return ForgetRequest(kind="modality", modality=name, items=_ints(ids, spec) if ids else [],
                             all_items=not ids, source=spec)
    kind, eq, ids = spec.partition("=")
    if not eq or kind not in KINDS:
        raise ConfigError(f"request {spec!r}: expected users=.., items=.., interactions=u:i,.., "
                          "modality:NAME[=ids], KIND:P% or a .json/.parquet file")
    if kind == "interactions":
        try:
            pairs = [tuple(int(v) for v in p.split(":")) for p in ids.split(",") if p.strip()]
        except ValueError as e:
            raise ConfigError(f"request {spec!r}: pairs are user:item") from e
        if any(len(p) != 2 for p in pairs):
            raise ConfigError(f"request {spec!r}: pairs are user:item")
        return ForgetRequest(kind="interactions", pairs=[(p[0], p[1]) for p in pairs], source=spec)
    return ForgetRequest(kind=kind, **{kind: _ints(ids, spec)}, source=spec)


def _read_request_file(path: Path) -> ForgetRequest:
    if path.suffix == ".json":
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"request file {path}: invalid JSON ({e})") from e
        kind = d.get("kind")
        if kind not in KINDS:
            raise DataError(f"request file {path}: field 'kind' must be one of {KINDS}, got {kind!r}")
        if kind == "modality":
            items = d.get("items", "all")
            return ForgetRequest(kind=kind, modality=d.get("modality"),
                                 items=[] if items == "all" else [int(x) for x in items],
                                 all_items=items == "all", source=str(path))
        if kind == "interactions":
            return ForgetRequest(kind=kind, pairs=[(int(u), int(i)) for u, i in d.get("pairs", [])],
                                 source=str(path))
        return ForgetRequest(kind=kind, **{kind: [int(x) for x in d.get("ids", [])]},
                             source=str(path))
    import pyarrow.parquet as pq
    t = pq.read_table(path)
    cols = set(t.column_names)
    if {"user_id", "item_id"} <= cols:
        u = t.column("user_id").to_numpy()
        i = t.column("item_id").to_numpy()
        return ForgetRequest(kind="interactions", pairs=list(zip(u.tolist(), i.tolist())),
                             source=str(path))
    if "user_id" in cols:
        return ForgetRequest(kind="users", users=t.column("user_id").to_pylist(), source=str(path))
    if "item_id" in cols:
        return ForgetRequest(kind="items", items=t.column("item_id").to_pylist(), source=str(path))
    raise DataError(f"request file {path}: needs column user_id and/or item_id, has {sorted(cols)}")


@dataclass
class ForgetSet:
    """A request resolved against a dataset.

    Attributes:
        request: the concrete request (sampled ids filled in).
        forget: D_f, the training pairs the request covers, ``(F,)`` arrays.
        retain: the dataset with D_f removed from train (and the request's pairs removed
            from valid/test: a forgotten user or item is not evaluated either).
        banned_items: ``(B,)`` items that left the catalogue.
        dropped_features: modality -> item ids whose features were zeroed; a modality
            dropped for all items is absent from ``retain.features``.
        held_out_removed: validation/test pairs the request covers (gone from ``retain``'s
            valid/test): not training data, but pairs the user did interact with.
        removed: the covered rows per held-out split (``valid``, ``test``).
    """

    request: ForgetRequest
    forget: Interactions
    retain: RecDataset
    banned_items: np.ndarray
    dropped_features: dict[str, np.ndarray]
    held_out_removed: Interactions | None = None
    removed: dict[str, Interactions] = field(default_factory=dict)

    @property
    def request_id(self) -> str:
        return self.request.request_id()


def sample_request(req: ForgetRequest, ds: RecDataset) -> ForgetRequest:
    """Draw a sampled request's ids (``req.fraction`` of ``ds``'s training users, items or
    pairs) with ``req.seed``; the result is concrete (``fraction`` None)."""
    rng = np.random.default_rng(req.seed)
    if req.kind == "users":
        pool = np.unique(ds.train.user)
        n = max(1, int(round(req.fraction * pool.size)))
        return replace(req, users=sorted(rng.choice(pool, n, replace=False).tolist()), fraction=None)
    if req.kind == "items":
        pool = np.unique(ds.train.item)
        n = max(1, int(round(req.fraction * pool.size)))
        return replace(req, items=sorted(rng.choice(pool, n, replace=False).tolist()), fraction=None)
    n = max(1, int(round(req.fraction * len(ds.train))))
    idx = np.sort(rng.choice(len(ds.train), n, replace=False))
    return replace(req, pairs=list(zip(ds.train.user[idx].tolist(), ds.train.item[idx].tolist())),
                   fraction=None)


def _check_ids(ids: np.ndarray, n: int, what: str, source: str) -> None:
    bad = ids[(ids < 0) | (ids >= n)]
    if bad.size:
        raise DataError(f"request {source}: {what} id {int(bad[0])} out of range [0, {n})")


def _drop(inter: Interactions, mask: np.ndarray) -> Interactions:
    return Interactions(user=inter.user[~mask], item=inter.item[~mask])


def resolve_request(req: ForgetRequest, ds: RecDataset) -> ForgetSet:
    """Turn a request into D_f and D_r over ``ds`` (already ledger-filtered)."""
    if req.fraction is not None:
        req = sample_request(req, ds)
    n_items = ds.n_items
    banned = np.zeros(0, dtype=np.int64)
    dropped: dict[str, np.ndarray] = {}
    features = dict(ds.features)

    def covered(inter: Interactions) -> np.ndarray:
        if req.kind == "users":
            return np.isin(inter.user, np.asarray(req.users, dtype=np.int64))
        if req.kind == "items":
            return np.isin(inter.item, np.asarray(req.items, dtype=np.int64))
        if req.kind == "interactions":
            keys = np.asarray([u * n_items + i for u, i in req.pairs], dtype=np.int64)
            return np.isin(inter.keys(n_items), keys)
        return np.zeros(len(inter), dtype=bool)

    if req.kind == "users":
        _check_ids(np.asarray(req.users, dtype=np.int64), ds.n_users, "user", req.source)
    elif req.kind in ("items", "modality"):
        _check_ids(np.asarray(req.items, dtype=np.int64), ds.n_items, "item", req.source)
    elif req.kind == "interactions":
        arr = np.asarray(req.pairs, dtype=np.int64).reshape(-1, 2)
        _check_ids(arr[:, 0], ds.n_users, "user", req.source)
        _check_ids(arr[:, 1], ds.n_items, "item", req.source)
    if req.kind == "items":
        banned = np.unique(np.asarray(req.items, dtype=np.int64))
        for m, f in ds.features.items():
            f = f.copy()
            f[banned] = 0.0
            features[m] = f
            dropped[m] = banned
    if req.kind == "modality":
        if req.modality not in ds.features:
            raise DataError(f"request {req.source}: modality {req.modality!r} not in dataset "
                            f"{ds.uri} (has {sorted(ds.features)})")
        if req.all_items:
            features.pop(req.modality)
            dropped[req.modality] = np.arange(n_items, dtype=np.int64)
        else:
            f = ds.features[req.modality].copy()
            ids = np.unique(np.asarray(req.items, dtype=np.int64))
            f[ids] = 0.0
            features[req.modality] = f
            dropped[req.modality] = ids

    mask = covered(ds.train)
    forget = Interactions(user=ds.train.user[mask], item=ds.train.item[mask])
    if req.kind in ("users", "items", "interactions") and len(forget) == 0:
        raise DataError(f"request {req.source or req.kind}: covers no training interaction of {ds.uri}")
    v_mask, t_mask = covered(ds.valid), covered(ds.test)
    retain = replace(ds, train=_drop(ds.train, mask), valid=_drop(ds.valid, v_mask),
                     test=_drop(ds.test, t_mask), features=features)
    held_out = Interactions(user=np.concatenate([ds.valid.user[v_mask], ds.test.user[t_mask]]),
                            item=np.concatenate([ds.valid.item[v_mask], ds.test.item[t_mask]]))
    removed = {"valid": Interactions(ds.valid.user[v_mask], ds.valid.item[v_mask]),
               "test": Interactions(ds.test.user[t_mask], ds.test.item[t_mask])}
    return ForgetSet(request=req, forget=forget, retain=retain, banned_items=banned,
                     dropped_features=dropped, held_out_removed=held_out, removed=removed)
