"""The small JSON documents at the top of a ``process`` output, each written atomically (a
local ``os.replace``, one S3 ``PutObject``): readers see the old document or the new one.

- ``CURRENT``: the pointer to the model that ships (model URI, data version, the requests
  it honours, the batch that produced it, the audit verdict). Moving it is publishing.
- ``RETRAIN_SCHEDULED``: a model was rejected and the policy's fallback is ``schedule``:
  the requests it would have honoured (accepted in the ledger, honoured by no shipped
  model yet); the next run retrains from scratch and ships.
- ``GOLD``: the last Gold band retrained (its batch, index in the chain, bands), for
  policies with ``gold: scheduled``.
- ``INFLIGHT``: the batch being processed; a run that finds it resumes that batch first.
"""

from __future__ import annotations

from typing import Any

from mmrecun_ray.errors import DataError
from mmrecun_ray.storage import delete, exists, join, read_json, write_json_atomic

POINTER = "CURRENT"
RETRAIN_MARKER = "RETRAIN_SCHEDULED"
GOLD = "GOLD"
INFLIGHT = "INFLIGHT"


def read_doc(out_uri: str, name: str) -> dict[str, Any] | None:
    """The document ``<out>/<name>``, or None when absent.

    Raises:
        DataError: it exists but is not a JSON object (naming it).
    """
    uri = join(out_uri, name)
    if not exists(uri):
        return None
    doc = read_json(uri)
    if not isinstance(doc, dict):
        raise DataError(f"{uri}: expected a JSON object, got {type(doc).__name__}")
    return doc


def write_doc(out_uri: str, name: str, doc: dict[str, Any]) -> None:
    """Replace ``<out>/<name>`` atomically."""
    write_json_atomic(join(out_uri, name), doc)


def remove_doc(out_uri: str, name: str) -> None:
    """Remove ``<out>/<name>`` (no error when absent)."""
    delete(join(out_uri, name))


def read_pointer(out_uri: str) -> dict[str, Any] | None:
    """``<out>/CURRENT``, or None before the first publish.

    Raises:
        DataError: a pointer without ``model_uri`` or ``honoured``.
    """
    doc = read_doc(out_uri, POINTER)
    if doc is not None:
        missing = [k for k in ("model_uri", "honoured", "batches") if k not in doc]
        if missing:
            raise DataError(f"{join(out_uri, POINTER)}: missing key(s) {missing}")
    return doc
