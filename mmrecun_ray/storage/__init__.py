"""Storage: URIs (local or s3://), atomic and create-only writes, the forget-request ledger,
publishing a dataset version to object storage."""

from mmrecun_ray.storage.retry import RetryPolicy
from mmrecun_ray.storage.uri import (S3Settings, boto3_client, configure, current_settings, delete,
                                     exists, filesystem_for, is_s3, join, list_files, read_bytes,
                                     read_json, resolve, s3_filesystem, settings_env_vars, split_s3,
                                     write_bytes_atomic, write_bytes_create_only, write_json_atomic)

__all__ = ["RetryPolicy", "S3Settings", "boto3_client", "configure", "current_settings", "delete",
           "exists", "filesystem_for", "is_s3", "join", "list_files", "read_bytes", "read_json",
           "resolve", "s3_filesystem", "settings_env_vars", "split_s3", "write_bytes_atomic",
           "write_bytes_create_only", "write_json_atomic"]
