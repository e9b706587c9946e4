"""How the store talks to Redis: a client whose every wait is bounded, and the Lua scripts,
registered once and called by SHA."""

from __future__ import annotations

from importlib import resources
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

SCRIPTS = (
    "append", "claim", "heartbeat", "ack", "fail", "clear", "flush", "replay", "purge", "rules", "reschedule"
)  # fmt: skip


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


def load_scripts(client: Any) -> dict[str, Any]:
    """Every script of ``lua/``, with lib.lua (the shared prelude) in front, registered on
    ``client``; redis-py loads one again when Redis lost it (a restart, SCRIPT FLUSH)."""
    lua = resources.files("redbatch.stores.redis").joinpath("lua")
    prelude = lua.joinpath("lib.lua").read_text()
    return {
        name: client.register_script(prelude + "\n" + lua.joinpath(f"{name}.lua").read_text())
        for name in SCRIPTS
    }
