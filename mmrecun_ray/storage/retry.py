"""Bounded retries for storage calls.

Two layers, both bounded:

1. per request, inside the SDKs: pyarrow's ``AwsStandardS3RetryStrategy(max_attempts)`` and
   botocore's ``standard`` retry mode with the same ``max_attempts`` (both retry throttling,
   5xx and connection errors with their own short backoff);
2. per storage operation, here: :func:`retry_call` re-runs a whole operation while the
   failure is *transient* (endpoint unreachable, 5xx, throttling) until ``deadline_s`` has
   passed, sleeping with capped exponential backoff and jitter. This is what carries a
   read across an object store restart (seconds), which the SDK layer alone does not.

Permanent failures (wrong credentials, missing bucket or key) are never retried.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard storage calls try before raising.

    Attributes:
        max_attempts: attempts per request inside pyarrow / botocore (>= 1).
        deadline_s: total seconds one storage operation may keep retrying transient
            failures; 0 disables the outer retry loop.
        initial_backoff_s: first sleep of the outer loop; doubles each retry.
        max_backoff_s: cap on one sleep of the outer loop.
        connect_timeout_s: TCP connect timeout per request (bounds a black-holed endpoint).
    """

    max_attempts: int = 3
    deadline_s: float = 30.0
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    connect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.deadline_s < 0 or self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("RetryPolicy times must be >= 0")

    def backoff(self, retry_index: int) -> float:
        """Sleep before retry number ``retry_index`` (0-based): capped doubling, 50-100% jitter."""
        base = min(self.max_backoff_s, self.initial_backoff_s * (2 ** retry_index))
        return base * (0.5 + 0.5 * random.random())


def retry_call(fn: Callable[[], T], policy: RetryPolicy, *, transient: Callable[[BaseException], bool],
               what: str, clock: Callable[[], float] = time.monotonic) -> T:
    """Call ``fn`` until it succeeds, fails permanently, or ``policy.deadline_s`` runs out.

    Args:
        fn: the operation (no arguments); re-run whole on a transient failure.
        policy: backoff and deadline.
        transient: says whether an exception is worth retrying.
        what: short description for the log. ``fn``'s exceptions are logged too, so they
            must already be free of secrets (the storage layer translates before this).
    Returns:
        ``fn()``'s result.
    Raises:
        The last exception ``fn`` raised when it is permanent or the deadline has passed.
    """
    start = clock()
    retry = 0
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below, re-raised when permanent
            elapsed = clock() - start
            if not transient(e) or elapsed >= policy.deadline_s:
                raise
            pause = min(policy.backoff(retry), max(0.0, policy.deadline_s - elapsed))
            logger.warning("%s: transient failure, retry %d in %.2fs (%.1fs of %.1fs budget used): %s",
                           what, retry + 1, pause, elapsed, policy.deadline_s, e)
            time.sleep(pause)
            retry += 1
