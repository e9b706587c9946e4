"""Stores, and ``connect``: a URL in, a store out."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from redbatch.errors import ConfigError
from redbatch.settings import Settings
from redbatch.stores.base import Store, Waiter, mask_url
from redbatch.stores.memory import MemoryStore

__all__ = ["Store", "Waiter", "MemoryStore", "connect"]

SCHEMES = ("sqlite", "redis", "rediss", "memory")


def connect(url: str | None = None, *, check: bool = True, **overrides: object) -> Store:
    """Open the store a URL names; without one, ``REDBATCH_URL`` or ``sqlite:///./redbatch.db``.

    ``check`` makes a round trip to the store so that an unreachable server fails here, within
    ``connect_timeout`` seconds, with ``StoreUnavailable``.
    """
    try:
        settings = Settings(**({"url": url} if url is not None else {}), **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise ConfigError(f"invalid redbatch settings: {exc}") from None
    if not isinstance(settings.url, str) or not settings.url:
        raise ConfigError("a store URL must be a non-empty string")
    parts = urlsplit(settings.url)
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return MemoryStore(settings.url)
    if scheme in ("redis", "rediss"):
        from redbatch.stores.redis import RedisStore  # noqa: PLC0415 - load redis-py only when used

        partitions = _redis_partitions(settings.url, settings.partitions)
        redis_store = RedisStore(
            settings.url,
            prefix=settings.prefix,
            partitions=partitions,
            connect_timeout=settings.connect_timeout,
            socket_timeout=settings.socket_timeout,
        )
        if check:
            redis_store.ping()
        return redis_store
    if scheme == "sqlite":
        from redbatch.stores.sqlite import SQLiteStore, sqlite_path  # noqa: PLC0415 - on demand

        sqlite_store: Store = SQLiteStore(
            sqlite_path(settings.url), busy_timeout=settings.sqlite_busy_timeout, url=settings.url
        )
        return sqlite_store
    raise ConfigError(f"unknown store URL scheme {parts.scheme!r} in {settings.url!r}; use one of {SCHEMES}")


def _redis_partitions(url: str, default: int) -> int:
    """Check a Redis URL's port and database (redis-py defers it) and read ``?partitions=``."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        database = parts.path.lstrip("/")
        if database and not database.isdigit():
            raise ValueError(f"the database must be a number, not {database!r}")
        partitions = int(parse_qs(parts.query).get("partitions", [str(default)])[0])
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {mask_url(url)}: {exc}") from None
    if not 1 <= partitions <= 1024:
        raise ConfigError(f"partitions must be between 1 and 1024, not {partitions}")
    return partitions
