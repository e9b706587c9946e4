"""Stores, and ``connect``: a URL in, a store out.

Every error quotes the URL through ``mask_url``: a password never reaches a message, a log
or a traceback, however malformed the URL around it.
"""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qs, urlsplit

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from redbatch.errors import ConfigError
from redbatch.settings import Settings
from redbatch.stores.base import Store, Waiter, mask_url
from redbatch.stores.memory import MemoryStore

__all__ = ["Store", "Waiter", "MemoryStore", "connect"]

SCHEMES = ("sqlite", "redis", "rediss", "memory")


def connect(url: str | None = None, *, check: bool = True, **overrides: object) -> Store:
    """Open the store a URL names; without one, ``REDBATCH_URL`` or ``sqlite:///./redbatch.db``.

    ``overrides`` are settings (``prefix``, ``partitions``, ``connect_timeout``, ...), which
    otherwise come from ``REDBATCH_*`` variables. ``check`` makes a round trip to the store so
    that an unreachable server fails here, within ``connect_timeout`` seconds, with
    ``StoreUnavailable``.
    """
    settings = _settings(url, overrides)
    if not isinstance(settings.url, str) or not settings.url:
        raise ConfigError("a store URL must be a non-empty string")
    masked = mask_url(settings.url)
    try:
        parts = urlsplit(settings.url)
    except ValueError:  # an unbalanced [ or ] around an IPv6 host
        raise ConfigError(f"invalid store URL {masked}: its host is not a valid IPv6 address") from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.netloc or parts.path or parts.fragment:
            raise ConfigError(f"invalid store URL {masked}: write memory:// alone")
        return MemoryStore(settings.url)
    if scheme in ("redis", "rediss"):
        from redbatch.stores.redis import RedisStore  # noqa: PLC0415 - load redis-py only when used

        partitions = _redis_partitions(parts, masked, settings.partitions)
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
    raise ConfigError(f"unknown store URL scheme {parts.scheme!r} in {masked}; use one of {SCHEMES}")


def _settings(url: str | None, overrides: dict[str, object]) -> Settings:
    try:
        return Settings(**({"url": url} if url is not None else {}), **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        raise ConfigError(f"invalid redbatch settings: {problems}") from None


def _problem(error: ErrorDetails) -> str:
    """One setting's problem; the URL's value is left out, as it may hold a password."""
    name = ".".join(str(part) for part in error["loc"])
    shown = "" if name == "url" else f" (got {error['input']!r})"
    return f"{name}: {error['msg']}{shown}"


def _redis_partitions(parts: SplitResult, masked: str, default: int) -> int:
    """Check a Redis URL's port and database (redis-py defers it) and read ``?partitions=``."""
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:  # its message quotes the port, which may be part of a password
        raise ConfigError(f"invalid Redis URL {masked}: the port must be a number from 0 to 65535") from None
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ConfigError(f"invalid Redis URL {masked}: the database (the path) must be a number, as in /0")
    try:
        partitions = int(parse_qs(parts.query).get("partitions", [str(default)])[0])
    except ValueError:
        raise ConfigError(f"invalid Redis URL {masked}: partitions must be a whole number") from None
    if not 1 <= partitions <= 1024:
        raise ConfigError(f"partitions must be between 1 and 1024, not {partitions}")
    return partitions
