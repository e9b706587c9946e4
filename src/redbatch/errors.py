"""The one exception hierarchy: every error redbatch raises on purpose is a RedbatchError."""

from __future__ import annotations


class RedbatchError(Exception):
    """Base class of every error redbatch raises on purpose."""


class InvalidItem(RedbatchError, ValueError):
    """An item is not a JSON value or is larger than the size limit; nothing was stored."""


class InvalidKey(RedbatchError, ValueError):
    """A key is not a non-empty string within the length limit; nothing was stored."""


class ConfigError(RedbatchError, ValueError):
    """A setting is invalid (``max_items < 1``, a negative wait, a bad URL, ...)."""


class NotFound(RedbatchError, LookupError):
    """An unknown batcher, key, job or dead letter was named."""


class StoreUnavailable(RedbatchError, ConnectionError):
    """The store could not be reached within the configured time."""


class LeaseLost(RedbatchError):
    """A batch was reclaimed by another worker; this worker may no longer write for it."""
