"""How the store talks to Redis: a client whose every wait is bounded, and the Lua scripts,
registered once and called by SHA."""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

SCRIPTS = (
    "append", "claim", "heartbeat", "ack", "fail", "clear", "flush", "replay", "purge", "rules", "reschedule"
)  # fmt: skip
JOB_SCRIPTS = ("submit", "finish", "progress", "cancel", "retry_jobs", "cleanup", "jobs_page")


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
    Every wait is bounded as in ``new_client``; asking the Sentinels costs at most
    connect_timeout plus socket_timeout for each one that does not answer. The URL's
    credentials are the master's; the Sentinels are asked without any.
    """
    bounded: dict[str, Any] = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 0),
    }
    sentinel = Sentinel(sentinels, sentinel_kwargs=dict(bounded), **bounded)  # type: ignore[no-untyped-call]
    client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        service,
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
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],  # type: ignore[no-untyped-call]
        retry=Retry(NoBackoff(), 1),
        username=username,
        password=password,
        client_name=client_name,
        socket_connect_timeout=connect_timeout,
        socket_timeout=socket_timeout,
    )
    client.set_retry(Retry(NoBackoff(), 0))
    return client


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
    sentinel = redis.asyncio.sentinel.Sentinel(sentinels, sentinel_kwargs=dict(bounded), **bounded)  # type: ignore[no-untyped-call]
    client: redis.asyncio.Redis = sentinel.master_for(
        service,
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
