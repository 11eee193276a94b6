"""Read a dataset version's files by URI: ``manifest.json`` first, then what it lists.

Readers trust only what ``manifest.json`` lists; a folder without a manifest is not a
published version and is refused.
"""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import pyarrow.fs as pafs

from mmrecun_ray.data.schema import MANIFEST, SCHEMA_VERSION, Manifest
from mmrecun_ray.errors import DataError, StorageError
from mmrecun_ray.storage.s3 import s3_call
from mmrecun_ray.storage.uri import is_s3, join, resolve

_REQUIRED_MANIFEST_KEYS = ("name", "n_users", "n_items", "counts", "modalities", "files")


def read_version_file(fs: pafs.FileSystem, root: str, uri: str | Path, rel: str) -> bytes:
    """Whole file ``rel`` of the version at ``uri`` (``fs``, ``root`` from :func:`resolve`).

    On S3 the read gets the storage layer's bounded retries and errors naming endpoint,
    bucket and key (:func:`~mmrecun_ray.storage.s3.s3_call`), so an unreachable object store
    is a :class:`~mmrecun_ray.errors.StorageError`, not a raw ``OSError``.

    Raises:
        FileNotFoundError: no such file (or no such bucket: not probed, to save a request).
    """
    path = posixpath.join(root, rel)

    def read() -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()
    if not is_s3(uri):
        return read()
    try:
        return s3_call("read", join(uri, rel), read)
    except StorageError as e:
        if getattr(e, "reason", None) == "not_found":
            raise FileNotFoundError(path) from e
        raise


def read_manifest(uri: str | Path) -> Manifest:
    """Read ``<uri>/manifest.json``.

    Raises:
        DataError: no manifest ("not a published dataset version"), unreadable JSON, missing
            keys, or a newer schema version than this code understands.
    """
    fs, root = resolve(uri)
    try:
        raw = read_version_file(fs, root, uri, MANIFEST)
    except FileNotFoundError:
        raise DataError(f"{uri}: not a published dataset version (no {MANIFEST})") from None
    try:
        d = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{join(uri, MANIFEST)}: not valid JSON ({e})") from e
    if not isinstance(d, dict):
        raise DataError(f"{join(uri, MANIFEST)}: expected a JSON object")
    missing = [k for k in _REQUIRED_MANIFEST_KEYS if k not in d]
    if missing:
        raise DataError(f"{join(uri, MANIFEST)}: missing key(s) {missing}")
    m = Manifest.from_dict(d)
    if int(m.schema_version) > SCHEMA_VERSION:
        raise DataError(f"{join(uri, MANIFEST)}: schema_version {m.schema_version} is newer than "
                        f"supported ({SCHEMA_VERSION})")
    return m
