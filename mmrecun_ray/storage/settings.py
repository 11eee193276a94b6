"""S3 settings and credentials: explicit overrides on top of the AWS environment.

S3 settings follow AWS conventions: ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION`` and ``AWS_PROFILE`` (credentials read from the shared credentials file
through a boto3 session). :func:`configure` sets explicit overrides (the CLI's
``--s3-endpoint``, ``--s3-region``, ``--s3-profile``); fields left ``None`` fall back to the
environment. Secrets seen here are remembered so that :func:`redact` can strip them from any
message.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields, replace

from mmrecun_ray.errors import StorageError
from mmrecun_ray.storage.retry import RetryPolicy

logger = logging.getLogger(__name__)


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
        remember_secrets(settings.secret_key, settings.session_token)
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


def remember_secrets(*values: str | None) -> None:
    """Remember secret values (4+ characters) so that :func:`redact` hides them."""
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
class Credentials:
    """Resolved credentials and region (secrets kept out of ``repr``)."""

    access_key: str | None
    secret_key: str | None = field(repr=False)
    session_token: str | None = field(repr=False)
    region: str | None


def credentials(s: S3Settings) -> Credentials:
    """Resolve explicit keys, else the profile's keys through boto3, else leave to the SDK."""
    if s.access_key and s.secret_key:
        return Credentials(s.access_key, s.secret_key, s.session_token, s.region)
    if not s.profile:
        return Credentials(None, None, None, s.region)
    import boto3
    import botocore.exceptions as bce
    try:
        session = boto3.session.Session(profile_name=s.profile)
        creds = session.get_credentials()
    except bce.ProfileNotFound as e:
        raise config_error(s, f"AWS profile '{s.profile}' not found in "
                               f"{_credentials_file()} or the AWS config file") from e
    except bce.BotoCoreError as e:
        raise config_error(s, f"AWS profile '{s.profile}': {redact(str(e), s)}") from e
    if creds is None:
        raise config_error(s, f"AWS profile '{s.profile}' has no credentials ({_credentials_file()})")
    frozen = creds.get_frozen_credentials()
    remember_secrets(frozen.secret_key, frozen.token)
    return Credentials(frozen.access_key, frozen.secret_key, frozen.token,
                        s.region or session.region_name)


def _credentials_file() -> str:
    return os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials")


def config_error(s: S3Settings, text: str) -> StorageError:
    """A ``StorageError(reason="config")`` naming the endpoint."""
    err = StorageError(f"S3 configuration error at endpoint {s.endpoint_label}: {text}")
    err.reason = "config"  # type: ignore[attr-defined]
    return err
