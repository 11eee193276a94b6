"""URIs -> pyarrow filesystems, atomic and create-only writes, clear storage errors.

Every place that takes a URI accepts a local path (``/data/x``, ``runs/x``, ``file:///x``)
or ``s3://bucket/prefix``.

S3 settings follow AWS conventions: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION`` and ``AWS_PROFILE`` (credentials read from the shared credentials file
through a boto3 session). :func:`configure` sets explicit overrides (the CLI's
``--s3-endpoint``, ``--s3-region``, ``--s3-profile``); fields left ``None`` fall back to the
environment. pyarrow ignores ``AWS_ENDPOINT_URL``, so the ``S3FileSystem`` is built here
explicitly; hand the same filesystem to Ray Data and Ray Train::

    fs, path = filesystem_for("s3://bucket/runs")
    ray.data.read_parquet(path, filesystem=fs)
    RunConfig(storage_path=path, storage_filesystem=fs)

Failures surface as :class:`~mmrecun_ray.errors.StorageError` whose message names the
endpoint, bucket and key (never a secret) and whose ``reason`` attribute is one of
``not_found``, ``no_bucket``, ``auth``, ``no_credentials``, ``unreachable``, ``dns``,
``server``, ``conflict``, ``unsupported``, ``config``, ``io``. Transient failures
(``unreachable``, ``server``) are retried within :class:`~mmrecun_ray.storage.retry.RetryPolicy`
bounds: an operation gives up after ``deadline_s`` plus at most one attempt.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import posixpath
import re
import uuid
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from mmrecun_ray.errors import StorageError
from mmrecun_ray.storage.retry import RetryPolicy, retry_call

logger = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_REASONS = frozenset({"unreachable", "server"})
_DEFAULT_REGION_FOR_ENDPOINT = "us-east-1"


# -- settings ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class S3Settings:
    """Explicit S3 settings; ``None`` fields fall back to the AWS environment variables.

    Attributes:
        endpoint_url: e.g. ``http://127.0.0.1:8333``; ``None`` = AWS itself.
        region: signing region (``us-east-1`` when an endpoint is set and none is given).
        access_key / secret_key / session_token: explicit credentials (win over ``profile``).
        profile: name in the shared credentials/config files (``AWS_SHARED_CREDENTIALS_FILE``).
        retry: bounded retry policy for every call made with these settings.
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    profile: str | None = None
    session_token: str | None = field(default=None, repr=False)
    retry: RetryPolicy = RetryPolicy()

    @classmethod
    def from_env(cls) -> "S3Settings":
        """Settings from the standard AWS environment variables only."""
        env = os.environ
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            access_key=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            profile=env.get("AWS_PROFILE") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
        )

    def over(self, base: "S3Settings") -> "S3Settings":
        """``base`` with every non-``None`` field of ``self`` put on top.

        An explicit ``profile`` without explicit keys also drops ``base``'s keys, as the AWS
        CLI does for ``--profile``.
        """
        out = replace(base, **{f.name: getattr(self, f.name) for f in fields(self)
                               if getattr(self, f.name) is not None})
        if self.profile and not self.access_key:
            out = replace(out, access_key=None, secret_key=None, session_token=None)
        return out

    @property
    def endpoint_label(self) -> str:
        """Endpoint as shown in messages."""
        return self.endpoint_url or f"AWS S3 (region {self.region or 'default'})"

    @property
    def credentials_source(self) -> str:
        """Where the credentials come from, for messages (never the credentials)."""
        if self.access_key and self.secret_key:
            return "access key from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or explicit settings"
        if self.profile:
            return f"AWS profile '{self.profile}'"
        return "the default AWS credential chain"


_configured: S3Settings | None = None
_SECRETS: set[str] = set()


def configure(settings: S3Settings | None) -> None:
    """Set process-wide S3 overrides (CLI flags); ``None`` clears them.

    Only affects this process: Ray workers get the filesystem object itself (see
    :func:`filesystem_for`) or the variables from :func:`settings_env_vars`.
    """
    global _configured
    _configured = settings
    if settings is not None:
        _remember_secrets(settings.secret_key, settings.session_token)
    logger.info("storage configured: %s", settings)


def current_settings() -> S3Settings:
    """Effective settings: :func:`configure` overrides on top of the environment."""
    env = S3Settings.from_env()
    return env if _configured is None else _configured.over(env)


def settings_env_vars(settings: S3Settings | None = None) -> dict[str, str]:
    """Non-secret ``AWS_*`` variables reproducing ``settings`` in another process.

    Meant for Ray ``runtime_env={"env_vars": ...}``; credentials are deliberately left out
    (workers inherit them from their own environment or profile).
    """
    s = settings or current_settings()
    out = {"AWS_ENDPOINT_URL": s.endpoint_url, "AWS_REGION": s.region, "AWS_PROFILE": s.profile}
    return {k: v for k, v in out.items() if v}


def _remember_secrets(*values: str | None) -> None:
    for v in values:
        if v and len(v) >= 4:
            _SECRETS.add(v)


def redact(text: str, settings: S3Settings | None = None) -> str:
    """``text`` with every known secret (and ``settings``' secrets) replaced by ``***``."""
    secrets = set(_SECRETS)
    if settings is not None:
        secrets.update(v for v in (settings.secret_key, settings.session_token) if v)
    for s in sorted(secrets, key=len, reverse=True):
        text = text.replace(s, "***")
    return text


@dataclass(frozen=True)
class _Credentials:
    access_key: str | None
    secret_key: str | None = field(repr=False)
    session_token: str | None = field(repr=False)
    region: str | None


def _credentials(s: S3Settings) -> _Credentials:
    """Resolve explicit keys, else the profile's keys through boto3, else leave to the SDK."""
    if s.access_key and s.secret_key:
        return _Credentials(s.access_key, s.secret_key, s.session_token, s.region)
    if not s.profile:
        return _Credentials(None, None, None, s.region)
    import boto3
    import botocore.exceptions as bce
    try:
        session = boto3.session.Session(profile_name=s.profile)
        creds = session.get_credentials()
    except bce.ProfileNotFound as e:
        raise _config_error(s, f"AWS profile '{s.profile}' not found in "
                               f"{_credentials_file()} or the AWS config file") from e
    except bce.BotoCoreError as e:
        raise _config_error(s, f"AWS profile '{s.profile}': {redact(str(e), s)}") from e
    if creds is None:
        raise _config_error(s, f"AWS profile '{s.profile}' has no credentials ({_credentials_file()})")
    frozen = creds.get_frozen_credentials()
    _remember_secrets(frozen.secret_key, frozen.token)
    return _Credentials(frozen.access_key, frozen.secret_key, frozen.token,
                        s.region or session.region_name)


def _credentials_file() -> str:
    return os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")


def _config_error(s: S3Settings, text: str) -> StorageError:
    err = StorageError(f"S3 configuration error at endpoint {s.endpoint_label}: {text}")
    err.reason = "config"  # type: ignore[attr-defined]
    return err


# -- filesystems and clients --------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _s3_fs_cached(s: S3Settings) -> pafs.S3FileSystem:
    creds = _credentials(s)
    kwargs: dict[str, Any] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s.retry.max_attempts),
        "connect_timeout": s.retry.connect_timeout_s,
    }
    if s.endpoint_url:
        u = urlparse(s.endpoint_url)
        if not u.netloc:
            raise _config_error(s, f"endpoint URL {s.endpoint_url!r} must look like "
                                   "http://host:port or https://host")
        kwargs["endpoint_override"] = u.netloc + (u.path.rstrip("/") if u.path not in ("", "/") else "")
        kwargs["scheme"] = u.scheme or "https"
    region = creds.region or (_DEFAULT_REGION_FOR_ENDPOINT if s.endpoint_url else None)
    if region:
        kwargs["region"] = region
    if creds.access_key and creds.secret_key:
        kwargs.update(access_key=creds.access_key, secret_key=creds.secret_key)
        if creds.session_token:
            kwargs["session_token"] = creds.session_token
    return pafs.S3FileSystem(**kwargs)


def s3_filesystem(settings: S3Settings | None = None) -> pafs.S3FileSystem:
    """A ``pyarrow.fs.S3FileSystem`` honouring endpoint, credentials and retry policy.

    Cached per settings value (the filesystem is thread-safe and picklable, so it can be
    shipped to Ray workers; pickling carries the credentials with it).
    """
    s = settings or current_settings()
    _remember_secrets(s.secret_key, s.session_token)
    return _s3_fs_cached(s)


@functools.lru_cache(maxsize=16)
def _boto3_client_cached(s: S3Settings) -> Any:
    import boto3
    from botocore.config import Config
    creds = _credentials(s)
    session = boto3.session.Session(
        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
        aws_session_token=creds.session_token,
        region_name=creds.region or (_DEFAULT_REGION_FOR_ENDPOINT if s.endpoint_url else None))
    cfg = Config(retries={"mode": "standard", "total_max_attempts": s.retry.max_attempts},
                 connect_timeout=s.retry.connect_timeout_s, max_pool_connections=16,
                 s3={"addressing_style": "path"} if s.endpoint_url else None)
    return session.client("s3", endpoint_url=s.endpoint_url, config=cfg)


def boto3_client(settings: S3Settings | None = None) -> Any:
    """A boto3 S3 client with the same endpoint, credentials and retry policy (cached)."""
    s = settings or current_settings()
    _remember_secrets(s.secret_key, s.session_token)
    return _boto3_client_cached(s)


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``.

    Raises:
        StorageError: no bucket in the URI.
    """
    rest = str(uri)[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        err = StorageError(f"{uri}: an S3 URI needs a bucket, e.g. s3://bucket/prefix")
        err.reason = "config"  # type: ignore[attr-defined]
        raise err
    return bucket, key.strip("/")


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


# -- error translation ----------------------------------------------------------------------------
_BOTO_CODE = re.compile(r"An error occurred \((\w+)\) when calling")
_AWS_CODE = re.compile(r"AWS Error ([A-Za-z_]+)(?: \(HTTP status (\d+)\))?")
_AUTH = {"ACCESS_DENIED", "ACCESSDENIED", "SIGNATURE_DOES_NOT_MATCH", "SIGNATUREDOESNOTMATCH",
         "INVALID_ACCESS_KEY_ID", "INVALIDACCESSKEYID", "EXPIRED_TOKEN", "EXPIREDTOKEN",
         "INVALIDTOKEN", "MISSING_AUTHENTICATION_TOKEN", "UNRECOGNIZED_CLIENT", "INVALID_CLIENT_TOKEN_ID",
         "403", "AUTHORIZATIONHEADERMALFORMED"}
_NO_BUCKET = {"NO_SUCH_BUCKET", "NOSUCHBUCKET"}
_NOT_FOUND = {"NO_SUCH_KEY", "NOSUCHKEY", "RESOURCE_NOT_FOUND", "404", "NOTFOUND"}
_CONFLICT = {"PRECONDITIONFAILED", "PRECONDITION_FAILED", "412"}
_UNREACHABLE = {"NETWORK_CONNECTION", "REQUEST_TIMEOUT", "REQUESTTIMEOUT"}
_SERVER = {"SLOW_DOWN", "SLOWDOWN", "SERVICE_UNAVAILABLE", "SERVICEUNAVAILABLE", "INTERNAL_FAILURE",
           "INTERNALERROR", "THROTTLING", "THROTTLINGEXCEPTION", "CONDITIONALREQUESTCONFLICT", "409"}


def _classify(exc: BaseException) -> tuple[str, str]:
    """``(reason, AWS code or '')`` for a pyarrow / botocore / OS exception."""
    import botocore.exceptions as bce
    if isinstance(exc, FileNotFoundError):
        return "not_found", ""
    if isinstance(exc, bce.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        return _reason_for(code.upper(), status), code
    if isinstance(exc, bce.EndpointConnectionError) and \
            "Failed to resolve" in str(exc.kwargs.get("error", "")):
        return "dns", type(exc).__name__
    if isinstance(exc, (bce.ConnectionError, bce.ConnectionClosedError, bce.ReadTimeoutError,
                        bce.ResponseStreamingError, bce.IncompleteReadError)):
        return "unreachable", type(exc).__name__
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
        return "no_credentials", type(exc).__name__
    if isinstance(exc, bce.ProfileNotFound):
        return "config", "ProfileNotFound"
    m = _BOTO_CODE.search(str(exc))  # e.g. boto3's S3UploadFailedError wraps a ClientError
    if m and not isinstance(exc, FileNotFoundError):
        return _reason_for(m.group(1).upper(), 0), m.group(1)
    if isinstance(exc, OSError):
        if "Could not resolve host" in str(exc) or "curlCode: 6," in str(exc):
            return "dns", "NETWORK_CONNECTION"
        m = _AWS_CODE.search(str(exc))
        if m:
            code = m.group(1)
            return _reason_for(code.upper(), int(m.group(2) or 0)), code
        if "curlCode" in str(exc) or "Could not connect" in str(exc):
            return "unreachable", ""
        return "io", ""
    return "io", ""


def _reason_for(code: str, status: int) -> str:
    if code in _NO_BUCKET:
        return "no_bucket"
    if code in _AUTH or status == 403:
        return "auth"
    if code in _CONFLICT or status == 412:
        return "conflict"
    if code in _NOT_FOUND or status == 404:
        return "not_found"
    if code in _UNREACHABLE:
        return "unreachable"
    if code in _SERVER or status >= 500 or status == 429:
        return "server"
    return "io"


_EXPLAIN = {
    "not_found": "object not found",
    "no_bucket": "bucket does not exist",
    "auth": "access denied: the credentials ({creds}) were refused; check AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --s3-profile",
    "no_credentials": "no S3 credentials found: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                      "AWS_PROFILE or --s3-profile",
    "unreachable": "endpoint unreachable: is the object store running? check AWS_ENDPOINT_URL "
                   "or --s3-endpoint",
    "dns": "endpoint host name does not resolve (no network, or a wrong AWS_ENDPOINT_URL / "
           "--s3-endpoint)",
    "server": "the object store answered with a server error",
    "conflict": "object already exists (create-only write refused)",
    "unsupported": "the object store does not support this operation",
    "config": "bad S3 configuration",
    "io": "storage I/O error",
}


def s3_error(reason: str, op: str, uri: str, settings: S3Settings, detail: str = "") -> StorageError:
    """A :class:`StorageError` naming endpoint, bucket and key; secrets are redacted.

    Attributes set on the error: ``reason``, ``endpoint``, ``bucket``, ``key``, ``uri``.
    """
    bucket, key = split_s3(uri)
    text = _EXPLAIN.get(reason, reason).format(creds=settings.credentials_source)
    msg = (f"cannot {op} {uri}: {text} [endpoint {settings.endpoint_label}, bucket '{bucket}', "
           f"key '{key}']")
    if detail:
        msg += f" ({' '.join(detail.split())[:300]})"
    err = StorageError(redact(msg, settings))
    err.reason = reason  # type: ignore[attr-defined]
    attrs = {"endpoint": settings.endpoint_label, "bucket": bucket, "key": key, "uri": uri}
    for name, value in attrs.items():
        setattr(err, name, value)
    return err


def _local_error(exc: BaseException, op: str, uri: str) -> StorageError:
    if isinstance(exc, FileNotFoundError):
        reason, text = "not_found", "no such file or directory"
    elif isinstance(exc, PermissionError):
        reason, text = "auth", "permission denied"
    else:
        reason, text = "io", str(exc)
    err = StorageError(f"cannot {op} {uri}: {text}")
    err.reason, err.uri = reason, uri  # type: ignore[attr-defined]
    return err


_KNOWN_BUCKETS: set[tuple[str, str]] = set()


def _bucket_exists(fs: pafs.FileSystem, bucket: str, s: S3Settings) -> bool:
    """HEAD the bucket once per (endpoint, bucket); a bucket seen once is assumed to stay."""
    key = (s.endpoint_label, bucket)
    if key in _KNOWN_BUCKETS:
        return True
    found = fs.get_file_info(bucket).type != pafs.FileType.NotFound
    if found:
        _KNOWN_BUCKETS.add(key)
    return found


def _translate(exc: BaseException, op: str, uri: str, s: S3Settings,
               fs: pafs.FileSystem | None) -> StorageError:
    """Classify ``exc`` (telling a missing bucket from a missing key) into a :class:`StorageError`."""
    reason, code = _classify(exc)
    if reason == "not_found" and fs is not None:
        bucket, _ = split_s3(uri)
        try:
            if not _bucket_exists(fs, bucket, s):
                reason = "no_bucket"
        except Exception as e:  # noqa: BLE001 - the bucket probe failed: report that instead
            reason, code = _classify(e)
            exc = e
    detail = f"AWS error {code}" if code and code.upper() not in str(exc).upper() else ""
    raw = str(exc) if not isinstance(exc, FileNotFoundError) else ""
    return s3_error(reason, op, uri, s, " ".join(x for x in (detail, raw) if x))


def s3_call(op: str, uri: str, fn: Callable[[], T], settings: S3Settings | None = None,
            fs: pafs.FileSystem | None = None) -> T:
    """Run ``fn`` (one S3 operation on ``uri``) with translation to :class:`StorageError`
    and bounded retries of transient failures.

    Args:
        op: verb for messages ("read", "write", "list", ...).
        uri: the ``s3://`` URI ``fn`` works on (named in errors).
        fn: the operation; may raise pyarrow ``OSError``s or botocore errors.
        settings: whose retry policy applies and whose endpoint errors name.
        fs: filesystem used to tell a missing bucket from a missing key.
    """
    s = settings or current_settings()

    def attempt() -> T:
        try:
            return fn()
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - translated
            raise _translate(e, op, uri, s, fs) from e

    return retry_call(attempt, s.retry, what=f"{op} {uri}",
                      transient=lambda e: getattr(e, "reason", None) in TRANSIENT_REASONS)


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
        if isinstance(fs, pafs.S3FileSystem) and not _bucket_exists(fs, path.split("/", 1)[0], s):
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


_CONDITIONAL_OK: set[tuple[str, str]] = set()


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
    if (s.endpoint_label, bucket) not in _CONDITIONAL_OK:
        _probe_conditional_put(client, uri, s, fs)

    def put() -> bool:
        try:
            client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
            return True
        except Exception as e:  # noqa: BLE001 - 412 means "exists"; the rest is translated
            if _classify(e)[0] == "conflict":
                return False
            raise
    return s3_call("create", uri, put, s, fs)


def _probe_conditional_put(client: Any, uri: str, s: S3Settings, fs: pafs.FileSystem) -> None:
    """Check once that the server refuses a second ``If-None-Match: *`` PUT."""
    bucket, key = split_s3(uri)
    probe = posixpath.join(posixpath.dirname(key), f".create-only-probe-{uuid.uuid4().hex}")
    probe_uri = f"s3://{bucket}/{probe}"

    def two_puts() -> bool:
        client.put_object(Bucket=bucket, Key=probe, Body=b"1", IfNoneMatch="*")
        try:
            client.put_object(Bucket=bucket, Key=probe, Body=b"2", IfNoneMatch="*")
            return False
        except Exception as e:  # noqa: BLE001
            if _classify(e)[0] == "conflict":
                return True
            raise
        finally:
            try:
                client.delete_object(Bucket=bucket, Key=probe)
            except Exception:  # noqa: BLE001 - a leftover hidden probe object is harmless
                logger.debug("could not delete probe %s", probe_uri)

    if not s3_call("create (probing conditional writes)", uri, two_puts, s, fs):
        raise s3_error("unsupported", "create", uri, s,
                       "the server ignored If-None-Match: * (it overwrote an existing object), "
                       "so create-only writes cannot be guaranteed there")
    _CONDITIONAL_OK.add((s.endpoint_label, bucket))


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
            if isinstance(fs, pafs.S3FileSystem) and not _bucket_exists(fs, path.split("/", 1)[0], s):
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
