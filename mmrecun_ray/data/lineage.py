"""Lineage of dataset versions: which version is the root, and where the shared ledger is.

A retain-set version written after a forget request descends from the version it was cut
from. Every version of a lineage consults ONE ledger, the root's: ``<root>/ledger``. So a
request recorded against any descendant (a chain: request B resolved on request A's
``retain_data``) is honoured by every later load of the original dataset too, and a
descendant never loads without the root's ledger (its root must be readable).

The manifest carries the lineage (``root``, ``ancestors``, ``requests``;
:class:`~mmrecun_ray.data.schema.Manifest`); :func:`child_lineage` computes a child's, which
:func:`~mmrecun_ray.data.writer.write_dataset` records.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from mmrecun_ray.data.manifest import read_manifest
from mmrecun_ray.data.schema import Manifest
from mmrecun_ray.errors import DataError
from mmrecun_ray.storage.ledger import LEDGER_DIR
from mmrecun_ray.storage.uri import is_s3, join, resolve

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lineage:
    """Where a descendant version comes from (what :func:`child_lineage` returns).

    Attributes:
        root: URI of the lineage root (its ledger is the lineage's).
        ancestors: content hashes, root first, parent last.
        requests: forget-request ids physically applied along the chain, oldest first.
        parent: URI of the version it was derived from.
        forget_request: id of the request that produced it from ``parent`` (None: a copy).
    """

    root: str
    ancestors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    parent: str | None = None
    forget_request: str | None = None


def canonical_uri(uri: str | Path) -> str:
    """``uri`` in the form recorded in manifests: ``s3://bucket/key`` without a trailing
    slash, or an absolute local path (so a relative path stays valid from any directory)."""
    uri = str(uri)
    if is_s3(uri):
        return uri.rstrip("/")
    return resolve(uri)[1]


def root_uri(uri: str | Path, manifest: Manifest | None = None) -> str:
    """The version's lineage root: ``manifest.root``, or the version itself when it is a root.

    Args:
        manifest: ``uri``'s manifest if already read (saves a read).
    """
    m = manifest or read_manifest(uri)
    return m.root if m.root else canonical_uri(uri)


def check_root(uri: str | Path, manifest: Manifest) -> Manifest | None:
    """The root's manifest of a descendant (None for a root).

    Raises:
        DataError: the root cannot be read (naming the root URI): a descendant is never
            used without its root's ledger.
    """
    if not manifest.root:
        return None
    try:
        root = read_manifest(manifest.root)
    except DataError as e:
        raise DataError(f"{uri}: its lineage root {manifest.root} cannot be read ({e}); refusing "
                        "to use a descendant version without the root's forget ledger") from None
    if manifest.ancestors and root.content_hash() != manifest.ancestors[0]:
        log.warning("%s: lineage root %s was replaced since this version was cut from it "
                    "(content hash %s, recorded %s); its ledger still applies", uri, manifest.root,
                    root.content_hash()[:12], manifest.ancestors[0][:12])
    return root


def ledger_uri_for(uri: str | Path, manifest: Manifest | None = None) -> str:
    """``<root>/ledger``: the ledger of ``uri``'s lineage (the same for a root and for every
    descendant).

    Raises:
        DataError: ``uri`` is not a version, or it is a descendant whose root cannot be read.
    """
    m = manifest or read_manifest(uri)
    check_root(uri, m)
    return join(root_uri(uri, m), LEDGER_DIR)


def version_hashes(manifest: Manifest) -> list[str]:
    """Content hashes of the lineage up to and including this version, root first."""
    return [*manifest.ancestors, manifest.content_hash()]


def child_lineage(parent_uri: str | Path, parent_manifest: Manifest,
                  request_id: str | None) -> Lineage:
    """The lineage of a version derived from ``parent_uri`` by applying ``request_id``.

    Args:
        parent_uri: the version the child is cut from.
        parent_manifest: its manifest.
        request_id: the forget request physically applied (None: none, e.g. a copy).
    """
    requests = [*parent_manifest.requests, *([request_id] if request_id else [])]
    return Lineage(root=root_uri(parent_uri, parent_manifest), ancestors=version_hashes(parent_manifest),
                   requests=requests, parent=canonical_uri(parent_uri), forget_request=request_id)
