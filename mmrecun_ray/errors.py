"""Error types with messages that name the file, column or id at fault."""

from __future__ import annotations


class MMRecUNError(Exception):
    """Base class: the CLI turns these into a one-line message and exit code 2."""


class DataError(MMRecUNError):
    """Bad input data: the message names the file/column/id at fault."""


class StorageError(MMRecUNError):
    """Storage failure: the message names endpoint, bucket and key (never a secret)."""


class ConfigError(MMRecUNError):
    """Bad configuration or command-line value (unknown model name, bad --set, ...)."""
