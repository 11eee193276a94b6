"""Storage: URIs (local or s3://), atomic and create-only writes, the forget-request ledger,
publishing a dataset version to object storage.

One job a module: :mod:`~mmrecun_ray.storage.settings` (S3 settings and credentials),
:mod:`~mmrecun_ray.storage.s3` (clients, error translation, retries),
:mod:`~mmrecun_ray.storage.uri` (operations on URIs), :mod:`~mmrecun_ray.storage.ledger`,
:mod:`~mmrecun_ray.storage.upload`.
"""

from mmrecun_ray.storage.retry import RetryPolicy
from mmrecun_ray.storage.s3 import boto3_client, s3_filesystem
from mmrecun_ray.storage.settings import S3Settings, configure, current_settings, settings_env_vars
from mmrecun_ray.storage.uri import (delete, delete_tree, exists, filesystem_for, is_s3, join, move_tree,
                                     list_files, read_bytes, read_json, resolve, split_s3,
                                     to_jsonable, write_bytes_atomic, write_bytes_create_only,
                                     write_json_atomic)

__all__ = ["RetryPolicy", "S3Settings", "boto3_client", "configure", "current_settings", "delete",
           "delete_tree", "exists", "move_tree", "filesystem_for", "is_s3", "join", "list_files", "read_bytes",
           "read_json", "resolve", "s3_filesystem", "settings_env_vars", "split_s3", "to_jsonable",
           "write_bytes_atomic", "write_bytes_create_only", "write_json_atomic"]
