"""How the store talks to Redis: a client whose every wait is bounded, and the Lua scripts,
registered once and called by SHA."""

from __future__ import annotations

import logging
import threading
import time
from importlib import resources
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

log = logging.getLogger("redbatch.store.redis")

SCRIPTS = (
    "append", "claim", "heartbeat", "ack", "fail", "clear", "flush", "replay", "purge", "rules", "reschedule"
)  # fmt: skip
JOB_SCRIPTS = ("submit", "finish", "progress", "cancel", "retry_jobs", "cleanup", "jobs_page")

MASTER_RECHECK = 1.0
"""Seconds between two questions to the Sentinels, from a client that keeps using its
pooled connections, of which master they name.

redis-py's Sentinel pool asks only when it opens a connection, and leaves a connection to
a master once that master answers READONLY. A master the Sentinels demote while it is alive
(a failover Sentinel started on its own, or SENTINEL FAILOVER) stays a master, taking
writes, until Sentinel converts it into a replica some 8 to 10 s later, and then drops
them all when it resyncs from the new master. A client that reuses one connection (a
producer's) wrote every add of those seconds there: the chaos Sentinel run lost 10 s of
adds at once. Asking again each MASTER_RECHECK bounds that to about one second, for one
SENTINEL MASTERS round trip a second."""


def new_client(url: str, connect_timeout: float, socket_timeout: float) -> redis.Redis:
    """A client for ``url`` that fails within its timeouts.

    Bounded failure: connecting takes at most connect_timeout, and each reply (the
    handshake's, a command's) at most socket_timeout, with no retry inside redis-py
    (see errors.unavailable). No health check either: the pool already replaces a
    connection the server closed, and a PING before a command only adds a wait.
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 0),
    )


def new_async_client(url: str, connect_timeout: float, socket_timeout: float) -> redis.asyncio.Redis:
    """``new_client`` on redis-py's asyncio client (for one event loop: see wire.py)."""
    return redis.asyncio.Redis.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
        retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
    )


def newest_master(answers: list[Any], service: str, check: Any) -> tuple[str, int] | None:
    """Of the Sentinels' SENTINEL MASTERS answers, the master of the newest configuration
    (the highest config-epoch) that the answering Sentinel deems up.

    redis-py takes the first Sentinel that answers; but the Sentinel leading a failover
    names the old master there until the failover ends (some 5 s after the promotion, under
    the new epoch, flagged failover_in_progress), while those that learnt of it already
    name the new one: the newest epoch is the truth, and an entry whose failover is under
    way loses a tie.
    """
    best: tuple[tuple[int, bool], tuple[str, int]] | None = None
    for masters in answers:
        state = masters.get(service)
        if state and check(state, service):
            # The leader gives its entry the new epoch while it still names the old master.
            newer = (int(state.get("config-epoch") or 0), "failover_in_progress" not in state["flags"])
            if best is None or newer > best[0]:
                best = (newer, (state["ip"], int(state["port"])))
    return None if best is None else best[1]


class NewestSentinel(Sentinel):
    """redis-py's Sentinel manager, finding the master by ``newest_master``: it asks every
    Sentinel (each bounded by the timeouts), where redis-py asks until one answers."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        answers, errors = [], []
        for sentinel in self.sentinels:
            try:
                answers.append(sentinel.sentinel_masters())
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                errors.append(repr(exc))
        found = newest_master(answers, service_name, self.check_master_state)
        if found is None:
            raise MasterNotFoundError(f"No master found for {service_name!r}: {', '.join(errors)}")
        return found


class NewestAsyncSentinel(redis.asyncio.sentinel.Sentinel):
    """``NewestSentinel`` on redis-py's asyncio client."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        answers, errors = [], []
        for sentinel in self.sentinels:
            try:
                answers.append(await sentinel.sentinel_masters())
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                errors.append(repr(exc))
        found = newest_master(answers, service_name, self.check_master_state)
        if found is None:
            raise redis.asyncio.sentinel.MasterNotFoundError(
                f"No master found for {service_name!r}: {', '.join(errors)}"
            )
        return found


class FollowingSentinelPool(SentinelConnectionPool):
    """A master's Sentinel pool that asks the Sentinels again every ``MASTER_RECHECK`` seconds
    whether they still name the master its connections go to; when they name another,
    redis-py drops the idle connections to the old one, and a connection in use is dropped
    when it comes back (``owns_connection``), so the next command goes to the new master."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call,unused-ignore]
        self._recheck_at = time.monotonic() + MASTER_RECHECK
        self._recheck_lock = threading.Lock()

    def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        self._recheck()
        return super().get_connection()

    def _recheck(self) -> None:
        now = time.monotonic()
        if now < self._recheck_at or self.master_address is None:
            return  # no connection made yet: the first one asks anyway
        if not self._recheck_lock.acquire(blocking=False):
            return  # another thread is asking
        try:
            self._recheck_at = now + MASTER_RECHECK
            self.get_master_address()  # type: ignore[no-untyped-call,unused-ignore]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # No Sentinel answered, or none names a master that is up (a failover under
            # way): go on with the connections as they are; a dead master fails them.
            log.debug("asking the Sentinels for the master failed: %s", exc)
        finally:
            self._recheck_lock.release()


def new_sentinel_client(
    sentinels: list[tuple[str, int]],
    service: str,
    *,
    username: str | None,
    password: str | None,
    db: int,
    client_name: str | None,
    connect_timeout: float,
    socket_timeout: float,
) -> redis.Redis:
    """A client for the master that the Sentinels of ``sentinels`` name for ``service``.

    It follows failovers: a connection is made to whichever master the Sentinels name at
    that moment, and one to a master that became a replica (READONLY) is dropped, so the
    next command goes to the new master; meanwhile commands fail with StoreUnavailable.
    A master demoted while alive stays a master for seconds: the pool asks the Sentinels
    again every MASTER_RECHECK seconds, so that its writes stop going there.
    Every wait is bounded as in ``new_client``; asking the Sentinels costs at most
    connect_timeout plus socket_timeout for each one that does not answer. The URL's
    credentials are the master's; the Sentinels are asked without any.
    """
    bounded: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    sentinel = NewestSentinel(sentinels, sentinel_kwargs=dict(bounded), **bounded)  # type: ignore[no-untyped-call,unused-ignore]
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call,unused-ignore]
        service,
        connection_pool_class=FollowingSentinelPool,
        username=username,
        password=password,
        db=db,
        client_name=client_name,
        **bounded,
    )
    return client


def new_cluster_client(
    nodes: list[tuple[str, int]],
    *,
    username: str | None,
    password: str | None,
    client_name: str | None,
    connect_timeout: float,
    socket_timeout: float,
) -> RedisCluster:
    """A Redis Cluster client that learns the cluster's map from the first of ``nodes`` to answer.

    Bounded as ``new_client``: redis-py's cluster retries are off (it would otherwise
    rebuild its map and send a command again up to three times after a timeout or a dropped
    connection); a MOVED or ASK redirection is still followed, since the command did not
    run. Building the client asks the nodes for the map, each one that does not answer
    costing up to connect_timeout plus socket_timeout.

    Building it also sends COMMAND (a read) to one master, the first of the map; while that
    master is dead and not yet failed over, a second try goes to another master, so that a
    process started then still opens the store. Only then are retries turned off.
    """
    client: RedisCluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],  # type: ignore[no-untyped-call,unused-ignore]
        retry=Retry(NoBackoff(), 1),
        username=username,
        password=password,
        client_name=client_name,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
    )
    client.set_retry(Retry(NoBackoff(), 0))
    return client


class FollowingAsyncSentinelPool(redis.asyncio.sentinel.SentinelConnectionPool):
    """``FollowingSentinelPool`` on redis-py's asyncio client (one event loop: no lock)."""

    def __init__(self, service_name: str, sentinel_manager: Any, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call,unused-ignore]
        self._recheck_at = time.monotonic() + MASTER_RECHECK

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Any:
        now = time.monotonic()
        if now >= self._recheck_at and self.master_address is not None:
            self._recheck_at = now + MASTER_RECHECK
            try:
                await self.get_master_address()  # type: ignore[no-untyped-call,unused-ignore]
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.debug("asking the Sentinels for the master failed: %s", exc)
        return await super().get_connection()  # type: ignore[no-untyped-call,unused-ignore]


def new_async_sentinel_client(
    sentinels: list[tuple[str, int]],
    service: str,
    *,
    username: str | None,
    password: str | None,
    db: int,
    client_name: str | None,
    connect_timeout: float,
    socket_timeout: float,
) -> redis.asyncio.Redis:
    """``new_sentinel_client`` on redis-py's asyncio client (for one event loop)."""
    bounded: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "retry": redis.asyncio.retry.Retry(NoBackoff(), 0),
    }
    sentinel = NewestAsyncSentinel(sentinels, sentinel_kwargs=dict(bounded), **bounded)  # type: ignore[no-untyped-call,unused-ignore]
    client: redis.asyncio.Redis = sentinel.master_for(
        service,
        connection_pool_class=FollowingAsyncSentinelPool,
        username=username,
        password=password,
        db=db,
        client_name=client_name,
        **bounded,
    )
    return client


def load_scripts(client: Any) -> dict[str, Any]:
    """Every script of ``lua/``, with lib.lua (the shared prelude) in front, registered on
    ``client``; redis-py loads one again when Redis lost it (a restart, SCRIPT FLUSH)."""
    lua = resources.files("redbatch.stores.redis").joinpath("lua")
    prelude = lua.joinpath("lib.lua").read_text()
    return {
        name: client.register_script(prelude + "\n" + lua.joinpath(f"{name}.lua").read_text())
        for name in (*SCRIPTS, *JOB_SCRIPTS)
    }
