"""URIs -> pyarrow filesystems, and atomic publishing.

Every place that takes a URI accepts a local path (``/data/x``, ``runs/x``, ``file:///x``)
or ``s3://bucket/prefix``. S3 settings follow AWS conventions (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_PROFILE``);
pyarrow ignores ``AWS_ENDPOINT_URL``, so the filesystem is built explicitly here and
handed to Ray Data and Ray Train.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from mmrecun_ray.errors import StorageError


@dataclass(frozen=True)
class S3Settings:
    """Explicit S3 settings; ``None`` fields fall back to the AWS environment variables."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    profile: str | None = None

    @classmethod
    def from_env(cls) -> "S3Settings":
        return cls(
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
            region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"),
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            profile=os.environ.get("AWS_PROFILE"),
        )


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def s3_filesystem(settings: S3Settings | None = None) -> pafs.S3FileSystem:
    """Build a ``pyarrow.fs.S3FileSystem`` honouring the endpoint override."""
    s = settings or S3Settings.from_env()
    kwargs: dict[str, Any] = {}
    if s.endpoint_url:
        u = urlparse(s.endpoint_url)
        kwargs["endpoint_override"] = u.netloc or u.path
        kwargs["scheme"] = u.scheme or "https"
    if s.region:
        kwargs["region"] = s.region
    elif s.endpoint_url:
        kwargs["region"] = "us-east-1"
    if s.access_key and s.secret_key:
        kwargs["access_key"] = s.access_key
        kwargs["secret_key"] = s.secret_key
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str | Path, settings: S3Settings | None = None) -> tuple[pafs.FileSystem, str]:
    """Map a URI to ``(filesystem, path inside it)``.

    ``s3://bucket/key`` -> ``(S3FileSystem, "bucket/key")``; anything else -> local
    filesystem and an absolute path.
    """
    uri = str(uri)
    if is_s3(uri):
        return s3_filesystem(settings), uri[len("s3://"):].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def join(uri: str | Path, *parts: str) -> str:
    """Join path parts onto a URI (posix separators for S3)."""
    uri = str(uri)
    if is_s3(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return str(Path(uri, *parts))


def exists(uri: str | Path) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str | Path) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as e:
        raise StorageError(f"{uri}: not found") from e


def read_json(uri: str | Path) -> Any:
    return json.loads(read_bytes(uri).decode())


def write_bytes_atomic(uri: str | Path, data: bytes) -> None:
    """Write ``data`` so that readers see the old object or the whole new one.

    Local: write ``.<name>.tmp-<uuid>`` beside the target, then ``os.replace``. S3: a single
    PUT is already atomic per object.
    """
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex}")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, p)
        finally:
            if tmp.exists():
                tmp.unlink()
        return
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_json_atomic(uri: str | Path, obj: Any) -> None:
    write_bytes_atomic(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def list_files(uri: str | Path, suffix: str = "") -> list[str]:
    """Relative paths (sorted) of files below ``uri`` ending in ``suffix``; [] if absent."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    out = []
    for info in infos:
        if info.type == pafs.FileType.File and info.path.endswith(suffix):
            rel = posixpath.relpath(info.path.replace(os.sep, "/"), path.replace(os.sep, "/"))
            if not any(part.startswith(".") for part in rel.split("/")):
                out.append(rel)
    return sorted(out)
