"""URI operations: local paths and ``s3://`` prefixes behind one set of functions.

Every place that takes a URI accepts a local path (``/data/x``, ``runs/x``, ``file:///x``)
or ``s3://bucket/prefix``. Hand the same filesystem to Ray Data and Ray Train::

    fs, path = filesystem_for("s3://bucket/runs")
    ray.data.read_parquet(path, filesystem=fs)
    RunConfig(storage_path=path, storage_filesystem=fs)

Writes are atomic (readers see the old object or the whole new one) or create-only (never
replace). Failures are :class:`~mmrecun_ray.errors.StorageError` (S3: translated and retried
by :func:`~mmrecun_ray.storage.s3.s3_call`; local: not retried). Settings live in
:mod:`mmrecun_ray.storage.settings`, clients and error translation in
:mod:`mmrecun_ray.storage.s3`; the names re-exported below keep older imports working.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import uuid
from collections.abc import Collection
from pathlib import Path
from typing import Any, Callable, TypeVar

import pyarrow.fs as pafs

from mmrecun_ray.errors import StorageError
from mmrecun_ray.storage.s3 import (TRANSIENT_REASONS, boto3_client, bucket_exists, classify,
                                    ensure_conditional_put, is_s3, s3_call, s3_error, s3_filesystem,
                                    split_s3)
from mmrecun_ray.storage.settings import (S3Settings, configure, current_settings, redact,
                                          settings_env_vars)

__all__ = ["S3Settings", "TRANSIENT_REASONS", "boto3_client", "configure", "current_settings",
           "delete", "delete_tree", "exists", "filesystem_for", "is_s3", "join", "list_files",
           "read_bytes", "read_json", "redact", "resolve", "s3_call", "s3_error", "s3_filesystem",
           "settings_env_vars", "split_s3", "to_jsonable", "write_bytes_atomic",
           "write_bytes_create_only", "write_json_atomic"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def resolve(uri: str | Path, settings: S3Settings | None = None) -> tuple[pafs.FileSystem, str]:
    """Map a URI to ``(filesystem, path inside it)``.

    ``s3://bucket/key`` -> ``(S3FileSystem, "bucket/key")``; anything else -> local
    filesystem and an absolute path.
    """
    uri = str(uri)
    if is_s3(uri):
        split_s3(uri)
        return s3_filesystem(settings), uri[len("s3://"):].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def filesystem_for(uri: str | Path, settings: S3Settings | None = None) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for Ray Data ``read_parquet(path, filesystem=fs)`` and Ray Train
    ``RunConfig(storage_path=path, storage_filesystem=fs)``; same as :func:`resolve`."""
    return resolve(uri, settings)


def join(uri: str | Path, *parts: str) -> str:
    """Join path parts onto a URI (posix separators for S3)."""
    uri = str(uri)
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    if uri.startswith("file://"):
        return "file://" + str(Path(uri[len("file://"):], *parts))
    return str(Path(uri, *parts))


# -- local errors and the dispatch ----------------------------------------------------------------
def _local_error(exc: BaseException, op: str, uri: str) -> StorageError:
    """A :class:`StorageError` for a local ``OSError`` (``reason`` not_found / auth / io)."""
    if isinstance(exc, FileNotFoundError):
        reason, text = "not_found", "no such file or directory"
    elif isinstance(exc, PermissionError):
        reason, text = "auth", "permission denied"
    else:
        reason, text = "io", str(exc)
    err = StorageError(f"cannot {op} {uri}: {text}")
    err.reason, err.uri = reason, uri  # type: ignore[attr-defined]
    return err


def _run(op: str, uri: str | Path, fn: Callable[[pafs.FileSystem, str], T],
         settings: S3Settings | None) -> T:
    """Resolve ``uri`` and run ``fn(fs, path)``, translating errors (local: not retried)."""
    uri = str(uri)
    if not is_s3(uri):
        fs, path = resolve(uri)
        try:
            return fn(fs, path)
        except StorageError:
            raise
        except OSError as e:
            raise _local_error(e, op, uri) from e
    s = settings or current_settings()
    fs, path = resolve(uri, s)
    return s3_call(op, uri, lambda: fn(fs, path), s, fs)


# -- operations -----------------------------------------------------------------------------------
def exists(uri: str | Path, settings: S3Settings | None = None) -> bool:
    """Whether a file or directory (prefix) exists at ``uri``.

    Raises:
        StorageError: S3 bucket missing, access denied, endpoint unreachable.
    """
    def op(fs: pafs.FileSystem, path: str) -> bool:
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            return True
        s = settings or current_settings()
        if isinstance(fs, pafs.S3FileSystem) and not bucket_exists(fs, path.split("/", 1)[0], s):
            raise s3_error("no_bucket", "check", str(uri), s)
        return False
    return _run("check", uri, op, settings)


def read_bytes(uri: str | Path, settings: S3Settings | None = None) -> bytes:
    """Whole object / file at ``uri``.

    S3 reads use a single ``GetObject`` (pyarrow's input stream issues ranged GETs after a
    HEAD, which fails with HTTP 416 or could mix versions when the object is replaced
    meanwhile).

    Raises:
        StorageError: ``reason`` ``not_found`` / ``no_bucket`` / ``auth`` / ``unreachable`` ...
    """
    uri = str(uri)
    if is_s3(uri):  # one GET: one consistent version even while a writer replaces the object
        s = settings or current_settings()
        bucket, key = split_s3(uri)
        client = boto3_client(s)
        return s3_call("read", uri, lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read(),
                       s, resolve(uri, s)[0])

    def op(fs: pafs.FileSystem, path: str) -> bytes:
        with fs.open_input_stream(path) as f:
            return f.read()
    return _run("read", uri, op, settings)


def read_json(uri: str | Path, settings: S3Settings | None = None) -> Any:
    """Parsed JSON at ``uri``; invalid JSON is a :class:`StorageError` naming the URI."""
    data = read_bytes(uri, settings)
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StorageError(f"{uri}: not valid JSON ({e})") from e


def write_bytes_atomic(uri: str | Path, data: bytes, settings: S3Settings | None = None) -> None:
    """Write ``data`` so that readers see the old object or the whole new one.

    Local: write ``.<name>.tmp-<uuid>`` beside the target (a hidden name that
    :func:`list_files` skips), fsync, then ``os.replace``; the temp file is removed on any
    failure. S3: one ``PutObject`` (atomic per object; up to 5 GB).
    """
    uri = str(uri)
    if is_s3(uri):
        s = settings or current_settings()
        bucket, key = split_s3(uri)
        client = boto3_client(s)
        s3_call("write", uri, lambda: client.put_object(Bucket=bucket, Key=key, Body=data), s,
                resolve(uri, s)[0])
        return
    p = Path(resolve(uri)[1])
    tmp = p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as e:
        raise _local_error(e, "write", uri) from e
    finally:
        tmp.unlink(missing_ok=True)


def to_jsonable(x: Any) -> Any:
    """Plain-JSON form: numpy scalars and arrays to Python, non-finite floats to None."""
    import math

    import numpy as np
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return to_jsonable(x.tolist())
    if isinstance(x, (np.floating, np.integer, np.bool_)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json_atomic(uri: str | Path, obj: Any, settings: S3Settings | None = None) -> None:
    """``obj`` (made plain by :func:`to_jsonable`) as indented, key-sorted JSON via
    :func:`write_bytes_atomic`."""
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(uri, text.encode(), settings)


def write_bytes_create_only(uri: str | Path, data: bytes, settings: S3Settings | None = None) -> bool:
    """Create the object/file at ``uri`` only if nothing is there; never replace.

    Local: the bytes go to a temp file opened ``O_CREAT|O_EXCL`` beside the target, are
    fsynced, then ``os.link``-ed to the target name (``link`` fails if the name exists, so
    exactly one of several concurrent creators wins, and readers never see a partial file).
    S3: ``PutObject`` with ``If-None-Match: *`` (HTTP 412 when the key exists). The first
    use per (endpoint, bucket) probes that the server honours the header and raises
    ``StorageError(reason="unsupported")`` if it silently overwrites instead.

    Returns:
        True if this call created it, False if something was already there. Note: when a
        PUT succeeded but its response was lost and the retry saw 412, this returns False
        although the content is ours; callers that care embed a unique token and compare
        (the ledger does).
    """
    uri = str(uri)
    if not is_s3(uri):
        return _create_only_local(uri, data)
    s = settings or current_settings()
    bucket, key = split_s3(uri)
    client = boto3_client(s)
    fs, _ = resolve(uri, s)
    ensure_conditional_put(client, uri, s, fs)

    def put() -> bool:
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except Exception as e:  # noqa: BLE001 - 412 means "exists"; the rest is translated
            if classify(e)[0] == "conflict":
                return False
            raise
    return s3_call("create", uri, put, s, fs)

def _create_only_local(uri: str, data: bytes) -> bool:
    p = Path(resolve(uri)[1])
    tmp = p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, p)
        except FileExistsError:
            return False
        return True
    except OSError as e:
        raise _local_error(e, "create", uri) from e
    finally:
        tmp.unlink(missing_ok=True)


def delete(uri: str | Path, settings: S3Settings | None = None) -> bool:
    """Delete one file/object; returns False if it was not there."""
    def op(fs: pafs.FileSystem, path: str) -> bool:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return False
        fs.delete_file(path)
        return True
    return _run("delete", uri, op, settings)


def list_files(uri: str | Path, suffix: str = "", settings: S3Settings | None = None) -> list[str]:
    """Relative paths (sorted) of files below ``uri`` ending in ``suffix``; [] if absent.

    Hidden names (any path part starting with ``.``: temp files, probes) are skipped.

    Raises:
        StorageError: S3 bucket missing, access denied, endpoint unreachable.
    """
    def op(fs: pafs.FileSystem, path: str) -> list[str]:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            s = settings or current_settings()
            if isinstance(fs, pafs.S3FileSystem) and not bucket_exists(fs, path.split("/", 1)[0], s):
                raise s3_error("no_bucket", "list", str(uri), s)
            return []
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        out = []
        for info in infos:
            if info.type == pafs.FileType.File and info.path.endswith(suffix):
                rel = posixpath.relpath(info.path.replace(os.sep, "/"), path.replace(os.sep, "/"))
                if not any(part.startswith(".") for part in rel.split("/")):
                    out.append(rel)
        return sorted(out)
    return _run("list", uri, op, settings)


def _kept(rel: str, keep: Collection[str]) -> bool:
    """Whether ``rel`` is one of ``keep`` or lies below a folder named in ``keep``."""
    return any(rel == k or rel.startswith(k.rstrip("/") + "/") for k in keep)


def delete_tree(uri: str | Path, keep: Collection[str] = (),
                settings: S3Settings | None = None) -> list[str]:
    """Delete every file below ``uri`` except those ``keep`` names.

    Args:
        uri: folder or ``s3://`` prefix.
        keep: relative paths to keep; an entry also keeps everything below it as a folder
            (``"ledger"`` keeps ``ledger/00000000.json`` and ``ledger/pairs/...``).
    Returns:
        The deleted relative paths, sorted. Hidden names (temp files) are not touched.
    Raises:
        StorageError: listing or a deletion failed (files deleted before it stay deleted).
    """
    gone = [rel for rel in list_files(uri, settings=settings) if not _kept(rel, keep)]
    for rel in gone:
        delete(join(uri, *rel.split("/")), settings)
    return gone


def move_tree(src: str | Path, dest: str | Path, settings: S3Settings | None = None) -> None:
    """Move everything below ``src`` to ``dest`` (which must not exist yet).

    Locally one ``rename`` (atomic: the tree is at one place or the other); on S3 every
    object is copied, and only once all are copied are the originals deleted (a crash in
    between leaves two complete copies, never none).

    Raises:
        StorageError: ``dest`` exists, or a copy/delete failed.
    """
    if exists(dest, settings) or list_files(dest, settings=settings):
        raise StorageError(f"{dest}: already exists; will not move {src} over it")
    if not is_s3(src):
        _, s = resolve(src)
        _, d = resolve(dest)
        try:
            os.rename(s, d)
        except OSError as e:
            raise _local_error(e, "move", str(src)) from e
        return
    rels = list_files(src, settings=settings)

    def copy(fs: pafs.FileSystem, path: str) -> None:
        _, dpath = resolve(dest, settings)
        for rel in rels:
            fs.copy_file(posixpath.join(path, rel), posixpath.join(dpath, rel))
    _run("copy", src, copy, settings)
    for rel in rels:
        delete(join(src, *rel.split("/")), settings)


def remove_tree(uri: str | Path, settings: S3Settings | None = None) -> None:
    """Remove ``uri`` and everything below it (local: the folder itself too)."""
    if is_s3(uri):
        delete_tree(uri, settings=settings)
        return
    import shutil
    _, path = resolve(uri)
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise _local_error(e, "remove", str(uri)) from e
