"""Where redis-py's errors become redbatch's: ``unavailable``, worn by every store operation.

redis.ConnectionError (the connection dropped)  retried once on a new connection
redis.ConnectionError, redis.TimeoutError       StoreUnavailable
redis.ResponseError with a refusal code         StoreUnavailable (Redis is up, but
    (READONLY, OOM, LOADING, ...)               cannot take the command now)
any other redis.ResponseError                   RedbatchError, with Redis's reply
redis.RedisClusterException (no node of the     StoreUnavailable
    cluster answered, a slot nobody serves)
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import redis

from redbatch.errors import RedbatchError, StoreUnavailable

log = logging.getLogger("redbatch.store.redis")

P = ParamSpec("P")
T = TypeVar("T")

# Error prefixes of a Redis that is up but cannot take writes now; OOM included: with
# noeviction, Redis refuses writes until memory is freed.
REFUSALS = {"READONLY", "OOM", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY", "NOREPLICAS"}


def unavailable(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn redis-py's failures into redbatch errors: StoreUnavailable when Redis cannot be
    reached or refuses writes (READONLY during a failover, OOM, LOADING, ...).

    This is the one place a store operation is retried: once, when its connection turned
    out to be dropped (reset, closed, refused: errors that show at once), so that the
    first command after a Redis restart does not fail. A timeout is never retried: it
    has spent its time already, and the command may have run. redis-py's own retries,
    nested in each other (command, connect, socket connect, health check), are off:
    they multiplied the bound the timeouts promise (see client.py).
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            try:
                return fn(*args, **kwargs)
            except redis.ConnectionError as exc:
                if not _dropped(exc):
                    raise
                return fn(*args, **kwargs)
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            mapped = translated(exc)
            if mapped is None:
                raise
            raise mapped from exc

    return wrapper


def unavailable_async(fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """``unavailable`` for a coroutine function (the asyncio client's operations)."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            try:
                return await fn(*args, **kwargs)
            except redis.ConnectionError as exc:
                if not _dropped(exc):
                    raise
                return await fn(*args, **kwargs)
        except redis.RedisError as exc:
            mapped = translated(exc)
            if mapped is None:
                raise
            raise mapped from exc

    return wrapper


def _dropped(exc: redis.ConnectionError) -> bool:
    """Whether the connection merely dropped (worth one more try on a new one)."""
    if type(exc) is not redis.ConnectionError:  # authentication, LOADING, ...
        return False
    log.info("Redis connection dropped (%s); trying once more on a new one", exc)
    return True


def translated(exc: BaseException) -> RedbatchError | None:
    """The redbatch error a redis-py failure means (see the table above); None for others."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return StoreUnavailable(f"Redis is unavailable: {exc}")
    if isinstance(exc, redis.exceptions.RedisClusterException):
        return StoreUnavailable(f"Redis Cluster is unavailable: {exc}")
    if isinstance(exc, redis.ResponseError):
        # redis-py cuts the code off the replies it has a class for (READONLY, OOM, ...)
        reply = str(exc)
        code = exc.status_code or reply.split(" ", 1)[0]
        if not reply.startswith(code):
            reply = f"{code} {reply}"
        if code in REFUSALS:
            return StoreUnavailable(f"Redis refused the command: {reply}")
        return RedbatchError(f"Redis error: {reply}")
    return None
