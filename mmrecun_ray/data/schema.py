"""On-storage layout of a dataset version and its in-memory form.

A dataset version is a folder (local path or ``s3://`` prefix)::

    interactions/part-00000.parquet   user_id:int64, item_id:int64, split:string in
                                      {train, valid, test}; optional rating:float32,
                                      timestamp:int64
    features/<modality>.parquet       item_id:int64, embedding:fixed_size_list<float32>[d]
                                      (one row per item, every item present)
    manifest.json                     written last; a version without it does not exist
    ledger/                           forget-request ledger of a lineage root (see
                                      :mod:`mmrecun_ray.storage.ledger`); not listed in
                                      the manifest, kept by every overwrite

Ids are dense: users ``0..n_users-1``, items ``0..n_items-1``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
SPLITS = ("train", "valid", "test")
INTERACTIONS_DIR = "interactions"
FEATURES_DIR = "features"
MANIFEST = "manifest.json"
USER_COL = "user_id"
ITEM_COL = "item_id"
SPLIT_COL = "split"
EMBEDDING_COL = "embedding"


@dataclass
class Manifest:
    """``manifest.json``: what a reader needs before touching any Parquet file.

    ``files`` maps each relative path to its sha256 hex digest; ``parent`` and
    ``forget_request`` link a retain-set version to the version and request it came from.

    Lineage (see :mod:`mmrecun_ray.data.lineage`): ``root`` is the URI of the lineage root,
    whose ledger every version of the lineage consults (None: this version is a root);
    ``ancestors`` the content hashes of the versions it descends from, root first, parent
    last ([] for a root); ``requests`` the forget-request ids physically applied along the
    chain, oldest first.
    """

    name: str
    n_users: int
    n_items: int
    counts: dict[str, int]
    modalities: dict[str, int]  # modality -> dimension
    files: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    id_ranges: dict[str, list[int]] = field(default_factory=dict)
    created_at: str = ""
    source: str = ""
    parent: str | None = None
    forget_request: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    root: str | None = None
    ancestors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    def content_hash(self) -> str:
        """sha256 over the sorted file hashes: identifies this version's content."""
        import hashlib
        h = hashlib.sha256()
        for k in sorted(self.files):
            h.update(f"{k}={self.files[k]}\n".encode())
        return h.hexdigest()


@dataclass
class Interactions:
    """Parallel ``(N,)`` int64 arrays of user and item ids."""

    user: np.ndarray
    item: np.ndarray

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def pairs(self) -> np.ndarray:
        """``(N,)`` int64 keys ``user * n_items + item`` need n_items; see :meth:`keys`."""
        raise NotImplementedError("use keys(n_items)")

    def keys(self, n_items: int) -> np.ndarray:
        """``(N,)`` int64 pair keys ``user * n_items + item`` (for set operations)."""
        return self.user.astype(np.int64) * int(n_items) + self.item.astype(np.int64)


@dataclass
class RecDataset:
    """A loaded dataset version (numpy, CPU).

    Attributes:
        train/valid/test: interactions per split.
        features: modality -> ``(n_items, d)`` float32, row r is item r.
        manifest: the version's manifest.
        uri: where it was loaded from.
        honoured: ids of the forget requests this view honours (ledger entries applied on
            load and requests physically applied along the lineage).
    """

    n_users: int
    n_items: int
    train: Interactions
    valid: Interactions
    test: Interactions
    features: dict[str, np.ndarray]
    manifest: Manifest
    uri: str = ""
    honoured: frozenset[str] = frozenset()

    def split(self, name: str) -> Interactions:
        return {"train": self.train, "valid": self.valid, "test": self.test}[name]
