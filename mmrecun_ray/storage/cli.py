"""``upload`` sub-command: publish a local dataset version to object storage.

    python -m mmrecun_ray upload --src runs/data/baby --dest s3://bucket/datasets/baby

Files go first, ``manifest.json`` last (see :mod:`mmrecun_ray.storage.upload`), so readers of
``--dest`` see the whole version or none; the destination's forget ledger is kept (even with
``--overwrite``) and the source's entries are appended to it. Prints one summary line.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable


def cmd_upload(args: argparse.Namespace) -> int:
    """Run :func:`~mmrecun_ray.storage.upload.upload_dir_report` and print its summary."""
    from mmrecun_ray.storage.upload import upload_dir_report
    rep = upload_dir_report(args.src, args.dest, overwrite=args.overwrite,
                            verify_hashes=not args.no_verify)
    carried = f"; {len(rep.ledger_carried)} ledger entries carried" if rep.ledger_carried else ""
    print(f"uploaded {rep.files} files, {rep.bytes} bytes ({rep.bytes / 1e6:.1f} MB) in "
          f"{rep.seconds:.2f}s ({rep.mb_per_s:.1f} MB/s): {args.src} -> {rep.dest_uri}{carried}")
    return 0


def add_parsers(sub: Any, add_scaling: Callable, add_s3: Callable) -> None:
    """Register ``upload`` on the top-level sub-parsers (``add_scaling`` unused: no Ray)."""
    p = sub.add_parser("upload", help="publish a local dataset version to an s3:// prefix "
                                      "(files first, manifest.json last)")
    p.add_argument("--src", required=True, help="local folder of a published version (has manifest.json)")
    p.add_argument("--dest", required=True, help="destination URI (s3://bucket/prefix or a folder)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a version already published at --dest (default: refuse); "
                        "its forget ledger is kept")
    p.add_argument("--no-verify", action="store_true",
                   help="skip checking each file's sha256 against the manifest before uploading")
    add_s3(p)
    p.set_defaults(func=cmd_upload)
