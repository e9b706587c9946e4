"""Stores, and ``connect``: a URL in, a store out."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from pydantic import ValidationError

from redbatch.errors import ConfigError
from redbatch.settings import Settings
from redbatch.stores.base import Store, Waiter
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

        query = parse_qs(parts.query)
        partitions = int(query.get("partitions", [settings.partitions])[0])
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
            sqlite_path(settings.url), busy_timeout=settings.sqlite_busy_timeout
        )
        return sqlite_store
    raise ConfigError(f"unknown store URL scheme {parts.scheme!r} in {settings.url!r}; use one of {SCHEMES}")
