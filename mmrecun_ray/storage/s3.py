"""S3 clients and error translation.

pyarrow ignores ``AWS_ENDPOINT_URL``, so the ``S3FileSystem`` is built here explicitly from
:func:`~mmrecun_ray.storage.settings.current_settings`; the boto3 client (single-GET reads,
create-only PUTs, uploads) gets the same endpoint, credentials and retry policy.

Failures surface as :class:`~mmrecun_ray.errors.StorageError` whose message names the
endpoint, bucket and key (never a secret) and whose ``reason`` attribute is one of
``not_found``, ``no_bucket``, ``auth``, ``no_credentials``, ``unreachable``, ``dns``,
``server``, ``conflict``, ``unsupported``, ``config``, ``io``. Transient failures
(``unreachable``, ``server``) are retried within :class:`~mmrecun_ray.storage.retry.RetryPolicy`
bounds by :func:`s3_call`: an operation gives up after ``deadline_s`` plus at most one attempt.
"""

from __future__ import annotations

import functools
import logging
import posixpath
import re
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from mmrecun_ray.errors import StorageError
from mmrecun_ray.storage.retry import retry_call
from mmrecun_ray.storage.settings import (S3Settings, config_error, credentials, current_settings,
                                          redact, remember_secrets)

logger = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_REASONS = frozenset({"unreachable", "server"})
_DEFAULT_REGION_FOR_ENDPOINT = "us-east-1"


# -- S3 URIs ------------------------------------------------------------------------------------
def is_s3(uri: str | Path) -> bool:
    """Whether ``uri`` is an ``s3://`` URI."""
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


# -- filesystems and clients --------------------------------------------------------------------
@functools.lru_cache(maxsize=16)
def _s3_fs_cached(s: S3Settings) -> pafs.S3FileSystem:
    creds = credentials(s)
    kwargs: dict[str, Any] = {
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=s.retry.max_attempts),
        "connect_timeout": s.retry.connect_timeout_s,
    }
    if s.endpoint_url:
        u = urlparse(s.endpoint_url)
        if not u.netloc:
            raise config_error(s, f"endpoint URL {s.endpoint_url!r} must look like "
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
    remember_secrets(s.secret_key, s.session_token)
    return _s3_fs_cached(s)


@functools.lru_cache(maxsize=16)
def _boto3_client_cached(s: S3Settings) -> Any:
    import boto3
    from botocore.config import Config
    creds = credentials(s)
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
    remember_secrets(s.secret_key, s.session_token)
    return _boto3_client_cached(s)


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


def classify(exc: BaseException) -> tuple[str, str]:
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


_KNOWN_BUCKETS: set[tuple[str, str]] = set()


def bucket_exists(fs: pafs.FileSystem, bucket: str, s: S3Settings) -> bool:
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
    reason, code = classify(exc)
    if reason == "not_found" and fs is not None:
        bucket, _ = split_s3(uri)
        try:
            if not bucket_exists(fs, bucket, s):
                reason = "no_bucket"
        except Exception as e:  # noqa: BLE001 - the bucket probe failed: report that instead
            reason, code = classify(e)
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


# -- conditional writes ---------------------------------------------------------------------------
_CONDITIONAL_OK: set[tuple[str, str]] = set()


def ensure_conditional_put(client: Any, uri: str, s: S3Settings, fs: pafs.FileSystem) -> None:
    """Check once per (endpoint, bucket) that the server refuses a second ``If-None-Match: *``
    PUT of the same key (a probe object beside ``uri``, deleted afterwards).

    Raises:
        StorageError: ``reason="unsupported"`` when the server silently overwrote instead.
    """
    bucket, key = split_s3(uri)
    if (s.endpoint_label, bucket) in _CONDITIONAL_OK:
        return
    probe = posixpath.join(posixpath.dirname(key), f".create-only-probe-{uuid.uuid4().hex}")
    probe_uri = f"s3://{bucket}/{probe}"

    def two_puts() -> bool:
        client.put_object(Bucket=bucket, Key=probe, Body=b"1", IfNoneMatch="*")
        try:
            client.put_object(Bucket=bucket, Key=probe, Body=b"2", IfNoneMatch="*")
            return False
        except Exception as e:  # noqa: BLE001
            if classify(e)[0] == "conflict":
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
