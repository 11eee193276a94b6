"""Storage: URIs (local or s3://), atomic publish, the forget-request ledger."""

from mmrecun_ray.storage.uri import (S3Settings, exists, is_s3, join, list_files, read_bytes,
                                     read_json, resolve, write_bytes_atomic, write_json_atomic)

__all__ = ["S3Settings", "exists", "is_s3", "join", "list_files", "read_bytes", "read_json",
           "resolve", "write_bytes_atomic", "write_json_atomic"]
