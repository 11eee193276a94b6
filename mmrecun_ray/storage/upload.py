"""Publish a local dataset version to object storage, ``manifest.json`` last.

A version exists only once its ``manifest.json`` does (see :mod:`mmrecun_ray.data.schema`),
so every other file is uploaded first: a reader never finds a manifest whose files are
missing, and an interrupted upload leaves no version behind.

The forget ledger (``ledger/``) is never copied file by file and never deleted: the source's
entries are appended to the destination's ledger (those whose id it lacks) before anything
at the destination is removed, so an ``--overwrite`` cannot bring forgotten data back. A
descendant version (manifest ``root`` set) keeps pointing at its lineage root, whose ledger
every load of the copy consults.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmrecun_ray.errors import DataError, StorageError
from mmrecun_ray.storage.ledger import LEDGER_DIR, carry_entries
from mmrecun_ray.storage.s3 import boto3_client, is_s3, s3_call, s3_error, split_s3
from mmrecun_ray.storage.settings import S3Settings, current_settings
from mmrecun_ray.storage.uri import delete, delete_tree, exists, join, resolve, write_bytes_atomic

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class UploadReport:
    """What :func:`upload_dir_report` did: file count (manifest included), bytes, seconds,
    and the ids of the ledger entries appended to the destination's ledger."""

    dest_uri: str
    files: int
    bytes: int
    seconds: float
    ledger_carried: tuple[str, ...] = ()

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.seconds if self.seconds > 0 else float("inf")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_published(src: Path, verify_hashes: bool = True) -> dict[str, Any]:
    """The manifest of the local version at ``src``, after checking its listed files.

    Raises:
        DataError: no/invalid ``manifest.json``, a listed file missing or changed.
    """
    mpath = src / MANIFEST
    if not mpath.is_file():
        raise DataError(f"{src}: not a published dataset version (no {MANIFEST})")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{mpath}: invalid JSON ({e})") from e
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise DataError(f"{mpath}: field 'files' must map relative paths to sha256 digests")
    for rel, digest in sorted(files.items()):
        path = src / rel
        if not path.is_file():
            raise DataError(f"{mpath}: lists {rel}, which is missing from {src}")
        if verify_hashes and _sha256(path) != digest:
            raise DataError(f"{path}: sha256 differs from {mpath} (file changed after publishing)")
    return manifest


def _local_files(src: Path) -> list[str]:
    """Relative posix paths of the regular, non-hidden files below ``src``, manifest and
    ledger excluded."""
    out = []
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix()
        parts = rel.split("/")
        if p.is_file() and rel != MANIFEST and parts[0] != LEDGER_DIR \
                and not any(part.startswith(".") for part in parts):
            out.append(rel)
    return out


def upload_dir_report(src: Path | str, dest_uri: str, settings: S3Settings | None = None, *,
                      overwrite: bool = False, verify_hashes: bool = True, part_size_mb: int = 8,
                      max_concurrency: int = 4, client: Any = None) -> UploadReport:
    """Upload the published version at ``src`` to ``dest_uri`` (``s3://`` or a local folder).

    Files go first (boto3 ``upload_file``: multipart above ``part_size_mb``, parts in
    ``max_concurrency`` threads), ``manifest.json`` last (one PUT).

    Args:
        overwrite: replace a version already at ``dest_uri``: its manifest is deleted first
            (the old version stops existing before any file changes), then its files that the
            new version does not have, except its ``ledger/`` (kept, with the source's
            entries appended before anything is removed).
        verify_hashes: check every file against the manifest's sha256 before uploading.
        client: a boto3 S3 client to use (default :func:`~mmrecun_ray.storage.s3.boto3_client`).
    Raises:
        DataError: ``src`` is not a complete published version.
        StorageError: a version already exists at ``dest_uri`` (``reason="conflict"``) and
            ``overwrite`` is False; storage failures.
    """
    src = Path(src)
    t0 = time.perf_counter()
    manifest = check_published(src, verify_hashes)
    if manifest.get("root"):
        logger.warning("%s descends from %s: every load of %s consults that root's ledger (and "
                       "is refused when the root cannot be read there)", src, manifest["root"], dest_uri)
    rels = _local_files(src)
    dest_manifest = join(dest_uri, MANIFEST)
    s = settings or current_settings()
    replacing = exists(dest_manifest, s)
    if replacing and not overwrite:
        hint = ("a dataset version is already published there; pass --overwrite "
                "(overwrite=True) to replace it")
        if is_s3(dest_uri):
            raise s3_error("conflict", "publish", dest_manifest, s, hint)
        err = StorageError(f"cannot publish {dest_manifest}: {hint}")
        err.reason = "conflict"  # type: ignore[attr-defined]
        raise err
    carried = carry_entries(str(src / LEDGER_DIR), join(dest_uri, LEDGER_DIR), s)  # before any removal
    if replacing:
        delete(dest_manifest, s)
        delete_tree(dest_uri, keep=[*rels, LEDGER_DIR], settings=s)
    if is_s3(dest_uri):
        nbytes = _upload_s3(src, rels, dest_uri, s, part_size_mb, max_concurrency, client)
    else:
        nbytes = _copy_local(src, rels, dest_uri)
    data = (src / MANIFEST).read_bytes()
    write_bytes_atomic(dest_manifest, data, s)  # last: the version now exists
    report = UploadReport(dest_uri=str(dest_uri), files=len(rels) + 1, bytes=nbytes + len(data),
                          seconds=time.perf_counter() - t0, ledger_carried=tuple(carried))
    logger.info("published %s -> %s: %d files, %.1f MB in %.2fs (%.1f MB/s)", src, dest_uri,
                report.files, report.bytes / 1e6, report.seconds, report.mb_per_s)
    return report


def upload_dir(src: Path | str, dest_uri: str, settings: S3Settings | None = None, **kwargs: Any) -> int:
    """:func:`upload_dir_report`, returning the number of files uploaded (manifest included)."""
    return upload_dir_report(src, dest_uri, settings, **kwargs).files


def _upload_s3(src: Path, rels: list[str], dest_uri: str, s: S3Settings, part_size_mb: int,
               max_concurrency: int, client: Any) -> int:
    from boto3.s3.transfer import TransferConfig
    client = client or boto3_client(s)
    part = max(5, part_size_mb) * 1024 * 1024  # S3's minimum part size is 5 MiB
    cfg = TransferConfig(multipart_threshold=part, multipart_chunksize=part,
                         max_concurrency=max_concurrency, use_threads=max_concurrency > 1)
    bucket, prefix = split_s3(dest_uri)
    fs = resolve(dest_uri, s)[0]
    total = 0
    for rel in rels:
        key = f"{prefix}/{rel}" if prefix else rel
        path = src / rel
        s3_call("upload", f"s3://{bucket}/{key}",
                lambda: client.upload_file(str(path), bucket, key, Config=cfg), s, fs)
        total += path.stat().st_size
    return total


def _copy_local(src: Path, rels: list[str], dest_uri: str) -> int:
    dest = Path(resolve(dest_uri)[1])
    total = 0
    for rel in rels:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex}")
        try:
            shutil.copyfile(src / rel, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        total += target.stat().st_size
    return total
