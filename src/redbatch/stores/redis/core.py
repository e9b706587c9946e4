"""What every part of the Redis store shares: the client and its scripts, a batcher's
partitions and the names of their keys, and how an entry is framed.

The whole key layout is drawn once, at the top of lua/lib.lua.
"""

from __future__ import annotations

import re
import zlib
from typing import Any

import redis

from redbatch.errors import NotReplicated, StoreUnavailable
from redbatch.stores.redis.wire import AsyncClients, command, framed, send_async
from redbatch.types import QueueSpec

# An entry is "arrived_ms:digest:json" (lib.lua's digest_of reads the same framing).
_FRAMING = re.compile(rb"([0-9]+):[^:]*:")


def read_entry(entry: bytes) -> tuple[int | None, bytes]:
    """An entry's arrival and payload. One without the framing (pushed by hand) has no arrival
    to read; its payload is the whole entry, which the batcher shows as a ``CorruptItem``
    unless it is JSON. Listing must work on anything; claims never hand such an entry out."""
    framed = _FRAMING.match(entry)
    if framed is None:
        return None, entry
    return int(framed[1]), entry[framed.end() :]


class Partition:
    """The key names of one batcher partition."""

    __slots__ = ("age", "base", "dead", "due", "rules", "seq", "stats")

    def __init__(self, prefix: str, name: str, index: int) -> None:
        self.base = f"{{{prefix}:{name}:{index}}}:"
        self.due = self.base + "due"
        self.age = self.base + "age"
        self.stats = self.base + "stats"
        self.dead = self.base + "dead"
        self.seq = self.base + "seq"
        self.rules = self.base + "rules"


class RedisCore:
    """The state and helpers the parts of ``RedisStore`` (rules, dead letters) build on."""

    prefix: str
    partitions: int
    cluster: bool
    """True on Redis Cluster: a call over several partitions is then several script calls
    (one per partition, each on its own master), never one script or one MULTI."""
    client: Any
    """redis-py's reply types are unions of every reply shape: the scripts' replies are
    known, so the client is typed loosely rather than cast at every call."""
    replicas: int
    """Replicas that must confirm each write (WAIT) before it returns; 0 for none."""
    replicas_timeout_ms: int
    """How long a write's WAIT waits for them, at most."""
    _scripts: dict[str, Any]
    _parts: dict[str, list[Partition]]
    _async_clients: AsyncClients | None
    """One asyncio client per event loop (``append_async``, the ``LoopCalls``), if any."""

    def _eval(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA the named script; load it first if Redis lost it (restart, SCRIPT FLUSH).

        Calling ``execute_command`` directly saves redis-py's per-call argument filtering,
        a few microseconds on every ``add``. With ``replicas``, the script and a WAIT go in
        one pipeline on one connection (see ``_execute``).
        """
        script = self._scripts[name]
        if not self.replicas:
            try:
                return self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:
                return script(keys=keys, args=args)
        for _ in range(2):
            pipe = self._pipeline()
            self._queue_script(pipe, name, keys, args)
            reply = self._execute(pipe, raise_on_error=False)[0]
            if not isinstance(reply, redis.exceptions.NoScriptError):
                break
            self.client.script_load(script.script)  # the WAIT confirmed nothing: no write ran
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _loop_client(self) -> Any:
        """The running loop's asyncio client, for the ``LoopCalls`` (``calls_on_loop``)."""
        assert self._async_clients is not None, "calls_on_loop() is False: use the sync calls"
        return await self._async_clients.get()

    async def _eval_async(self, client: Any, name: str, keys: list[str], args: list[Any]) -> Any:
        """``_eval`` on an asyncio client (``calls_on_loop``: never with ``replicas``), framed
        by hand (wire.py: redis-py's encoder, argument by argument, was some 10% of a busy
        worker's time on its loop, settling jobs)."""
        count = 3 + len(keys) + len(args)
        packed = command(count, framed(["EVALSHA", self._scripts[name].sha, len(keys), *keys, *args]))
        return await self._script_async(client, name, packed)

    async def _script_async(self, client: Any, name: str, packed: bytes, *then: bytes) -> Any:
        """Send ``packed``, an EVALSHA of script ``name`` framed by hand, on ``client``
        (``send_async``), with ``then`` (``_waits()``) checked by ``_replied``; loaded again
        and sent again when Redis lost it (a NOSCRIPT reply, raised either way)."""
        try:
            reply = await send_async(client, packed, *then)
            return self._replied(reply) if then else reply
        except redis.exceptions.NoScriptError:  # Redis lost it (a restart, SCRIPT FLUSH)
            await client.script_load(self._scripts[name].script)
            reply = await send_async(client, packed, *then)
            return self._replied(reply) if then else reply

    def _queue_script(self, pipe: Any, name: str, keys: list[str], args: list[Any]) -> None:
        """Queue an EVALSHA of the named script on a pipeline from ``_pipeline``; its
        ``_execute`` then waits for ``replicas``."""
        pipe.execute_command("EVALSHA", self._scripts[name].sha, len(keys), *keys, *args)
        pipe.redbatch_writes = True

    def _pipeline(self) -> Any:
        """A pipeline without MULTI, for commands of several partitions at once."""
        return self.client.pipeline(transaction=False)

    def _execute(self, pipe: Any, raise_on_error: bool = True) -> list[Any]:
        """Send a pipeline from ``_pipeline``; its replies in order, exceptions among them
        unless ``raise_on_error``.

        With ``replicas`` (never on a cluster), a pipeline that runs a script
        (``_queue_script``) ends with a WAIT sent with it on the same connection: one round
        trip, and the WAIT counts the replicas holding every write of that connection so
        far. Fewer than ``replicas`` is NotReplicated, raised after the scripts ran.

        On a cluster, redis-py sends each master its share, and would send a command whose
        master timed out or dropped the connection again, one at a time: a hidden retry
        past ``socket_timeout``, and a script run twice. Here nothing is sent twice: a
        command redirected by MOVED or ASK (it did not run) is sent alone to where it now
        belongs, and any other failure is that command's reply.
        """
        if not self.cluster:
            waits = bool(self.replicas and getattr(pipe, "redbatch_writes", False))
            if waits:
                pipe.execute_command("WAIT", self.replicas, self.replicas_timeout_ms)
            replies = list(pipe.execute(raise_on_error=raise_on_error))
            if waits:
                self._confirmed(replies.pop())
            return replies
        stack = list(pipe._execution_strategy.command_queue)  # redis-py has no public name for it
        try:
            replies = list(pipe.send_cluster_commands(stack, raise_on_error=False, allow_redirections=False))
        finally:
            pipe.reset()
        for i, reply in enumerate(replies):
            if isinstance(reply, redis.exceptions.AskError):  # MOVED too: a subclass
                try:
                    replies[i] = self.client.execute_command(*stack[i].args, **stack[i].options)
                except redis.RedisError as exc:
                    replies[i] = exc
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
        return replies

    def _transact(self, pipe: Any) -> list[Any]:
        """Execute a MULTI pipeline (``transaction=True``); with ``replicas``, then wait for them.

        redis-py ends the transaction's connection with EXEC and hands it back to the pool,
        so its WAIT cannot follow on it. A PUBLISH and a WAIT follow on a connection of
        their own instead: Redis replicates in one stream, in order, and a PUBLISH is
        replicated (with nobody listening too), so the replicas that have it have the
        transaction before it. A second round trip, only for rules and dead letters over
        several partitions.
        """
        replies = list(pipe.execute())
        if self.replicas:
            confirm = self._pipeline()
            confirm.execute_command("PUBLISH", f"{self.prefix}:replicated", "")
            confirm.redbatch_writes = True
            self._execute(confirm)
        return replies

    def _waits(self) -> tuple[bytes, ...]:
        """What a command framed by hand (wire.py) is sent with, on its connection: a WAIT
        with ``replicas``, else nothing. ``_replied`` reads the replies."""
        if not self.replicas:
            return ()
        return (command(3, framed(["WAIT", self.replicas, self.replicas_timeout_ms])),)

    def _replied(self, reply: Any) -> Any:
        """The reply of a command sent by wire.send with ``_waits()``, its WAIT checked."""
        if not self.replicas:
            return reply
        reply, confirm = reply
        if isinstance(reply, Exception):
            raise reply  # NoScriptError among them: nothing ran, the caller sends it again
        self._confirmed(confirm)
        return reply

    def _confirmed(self, reply: Any) -> None:
        """Check a WAIT's reply: NotReplicated when fewer than ``replicas`` confirmed.

        The writes before it ran on the master either way; only their copies are in doubt.
        """
        if isinstance(reply, redis.ResponseError) and "WAIT cannot be used with replica" in str(reply):
            # A connection to a replica: through Sentinel, to an old master demoted in a
            # failover (or named by a Sentinel that had not heard of the failover yet).
            # A write would have been refused (READONLY) and the connection dropped; this
            # call only read. Drop the pool's idle connections, so the next call asks the
            # Sentinels where the master is now.
            self.client.connection_pool.disconnect(inuse_connections=False)
            raise StoreUnavailable("Redis refused the command: the server is a replica now (a failover?)")
        if isinstance(reply, Exception):
            raise reply
        if int(reply) < self.replicas:
            raise NotReplicated(int(reply), self.replicas, self.replicas_timeout_ms / 1000)

    def _partitions(self, name: str) -> list[Partition]:
        parts = self._parts.get(name)
        if parts is None:
            parts = self._parts[name] = [Partition(self.prefix, name, i) for i in range(self.partitions)]
        return parts

    def _partition_of(self, name: str, key: str) -> Partition:
        parts = self._partitions(name)
        if len(parts) == 1:
            return parts[0]
        return parts[zlib.crc32(key.encode()) % len(parts)]

    def _channel(self, name: str) -> str:
        """The channel the scripts PUBLISH a batcher's wake-ups on."""
        return f"{self.prefix}:wake:{name}"

    @staticmethod
    def _rule_args(spec: QueueSpec) -> list[int]:
        return [spec.max_items, spec.max_wait_ms, spec.idle_ms]
