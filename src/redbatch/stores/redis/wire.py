"""Appends near the wire: one EVALSHA framed by hand, sent on the sync client or on the
running event loop's asyncio client.

Why by hand: an ``add_many`` of 1,000 items is a command of some 2,000 arguments, and
redis-py encodes each argument in a Python generator before hiredis packs them; framing each
entry as RESP while it is grouped under its key (store.py) costs a third of that
(``benchmarks.profiling add_many``). The frame goes out on a pooled connection (for the
sync client's appends, one held between calls: ``HeldConnection``) the way redis-py's own
``execute_command`` sends it (``send_packed_command``, ``read_response``), so
timeouts, dropped connections (which disconnect themselves) and a Sentinel master turned
replica (which raises ``ConnectionError``) behave as for every other command. The script is
the registered one, called by the same SHA; only the framing is ours.

Why one asyncio client per event loop: an asyncio connection belongs to the loop that opened
it, and a process may run several loops (``asyncio.run`` twice, a worker's loop beside an
application's), so ``AsyncClients`` keeps one client per loop, made on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import threading
import weakref
from collections.abc import AsyncGenerator, Callable, Iterable
from typing import Any

import redis
import redis.asyncio

Arg = bytes | str | int | float


def frame(arg: Arg) -> bytes:
    """One argument as a RESP bulk string (a float as its repr, as redis-py sends it)."""
    if isinstance(arg, str):
        arg = arg.encode()
    elif isinstance(arg, int):
        arg = b"%d" % arg
    elif isinstance(arg, float):
        arg = repr(arg).encode()
    return b"$%d\r\n%b\r\n" % (len(arg), arg)


def entry_frame(prefix: bytes, payload: bytes) -> bytes:
    """An entry, ``prefix`` then ``payload``, as one RESP bulk string."""
    return b"$%d\r\n%b%b\r\n" % (len(prefix) + len(payload), prefix, payload)


def framed(args: Iterable[Arg]) -> list[bytes]:
    return [frame(arg) for arg in args]


def command(count: int, chunks: list[bytes]) -> bytes:
    """The command of ``count`` arguments whose frames are ``chunks``, joined."""
    chunks.insert(0, b"*%d\r\n" % count)
    return b"".join(chunks)


def send(client: Any, packed: bytes, *then: bytes) -> Any:
    """Send a framed command on one of ``client``'s pooled connections; return its reply.

    With ``then`` (framed commands sent right after it, on the same connection and in the
    same write: a WAIT), a list of every reply, an error reply among them as its exception:
    each is read, so that the connection stays in step.
    """
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([packed, *then], check_health=False)
        if not then:
            return conn.read_response()
        return [_read(conn) for _ in range(1 + len(then))]
    finally:
        pool.release(conn)


class HeldConnection:
    """``send`` for the appends of one sync client, on a connection of its pool held between
    calls rather than taken from the pool and given back each time.

    Why: redis-py's ``get_connection`` and ``release`` (a fork check each, the pool's lock,
    observability counters, an event dispatched per release) were some 13% of the GIL held
    by 16 threads adding through one batcher (figure 8), whose leader makes one call at a
    time; held, a call costs some 4 us of CPU less (19 -> 15 us per ``send`` of one entry).
    Only one caller uses the held connection at a time: a caller that finds it busy
    (another batcher's append) takes a pooled one, as ``send``. Each use checks it as the
    pool does (connected, no unread data), and any failure but an error reply (which leaves
    it in step) disconnects it, so the next use reconnects. It stays counted as the pool's
    connection in use, so closing the client (``pool.disconnect``) closes it too, and
    ``close`` (the store's) gives it back; a forked child never uses the parent's (the
    process id is checked, and the lock made anew).
    Only for redis-py's plain ``ConnectionPool``: a Sentinel pool asks the Sentinels in
    ``get_connection`` where the master is (client.py), and other pools may have rules of
    their own; those keep ``send``.
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self._holdable = type(getattr(client, "connection_pool", None)) is redis.ConnectionPool
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = os.getpid()
        _HELD.add(self)

    def send(self, packed: bytes, *then: bytes) -> Any:
        """``send(client, packed, *then)``, on the held connection when it is free."""
        if not self._holdable or not self._lock.acquire(blocking=False):
            return send(self._client, packed, *then)
        try:
            pool = self._client.connection_pool
            conn = self._conn
            if conn is None or self._pid != os.getpid():
                self._conn = None
                conn = self._conn = pool.get_connection()  # counted in use until dropped
                self._pid = os.getpid()
            else:
                pool.ensure_connection(conn)
            try:
                conn.send_packed_command([packed, *then], check_health=False)
                if not then:
                    return conn.read_response()
                return [_read(conn) for _ in range(1 + len(then))]
            except redis.ResponseError:
                raise  # a whole error reply, read: the connection is in step
            except BaseException:
                conn.disconnect()
                raise
        finally:
            self._lock.release()

    def close(self) -> None:
        """Give the held connection back to the pool (a client given to the store stays in
        its owner's use), unless a call is on it now; a later ``send`` takes one again."""
        if not self._lock.acquire(blocking=False):
            return  # on its way: closing the client disconnects it
        try:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                self._client.connection_pool.release(conn)
        finally:
            self._lock.release()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._conn = None


_HELD: weakref.WeakSet[HeldConnection] = weakref.WeakSet()


def _reset_after_fork() -> None:
    # A thread of the parent may have held the lock at the fork; the connection is the parent's.
    for held in list(_HELD):
        held._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _read(conn: Any) -> Any:
    try:
        return conn.read_response()
    except redis.ResponseError as exc:
        return exc


async def send_async(client: redis.asyncio.Redis, packed: bytes, *then: bytes) -> Any:
    """``send`` on an asyncio client."""
    pool: Any = client.connection_pool
    conn = await pool.get_connection()
    try:
        await conn.send_packed_command([packed, *then], check_health=False)
        if not then:
            return await conn.read_response()
        replies = []
        for _ in range(1 + len(then)):
            try:
                replies.append(await conn.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
        return replies
    finally:
        await pool.release(conn)


class AsyncClients:
    """One asyncio client per event loop, made by ``factory`` when a loop first asks."""

    def __init__(self, factory: Callable[[], redis.asyncio.Redis]) -> None:
        self._factory = factory
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = (
            weakref.WeakKeyDictionary()
        )
        self._closing: set[concurrent.futures.Future[None]] = set()

    async def get(self) -> redis.asyncio.Redis:
        """The running loop's client. It is closed when the loop shuts its asynchronous
        generators down (``asyncio.run`` does, before closing the loop): a generator of
        ours, suspended until then, holds the client and closes it in its ``finally``."""
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            with self._lock:
                client = self._factory()
                self._clients[loop] = client
            closer = _close_at_shutdown(client)
            self._closers[loop] = closer
            await closer.__anext__()
        return client

    def close(self) -> None:
        """Close every loop's client as far as its loop allows: a running loop (this thread's,
        when a coroutine closes the store, or another thread's) closes it soon; an idle one
        at once, unless this thread is inside another loop, which cannot wait for it. Else
        (a closed loop) its sockets are shut down, their descriptors freed when the garbage
        collector takes their transports."""
        with self._lock:
            clients, self._clients = list(self._clients.items()), weakref.WeakKeyDictionary()
            self._closers = weakref.WeakKeyDictionary()
        try:
            inside_a_loop = asyncio.get_running_loop() is not None
        except RuntimeError:
            inside_a_loop = False
        for loop, client in clients:
            if loop.is_running():
                future = asyncio.run_coroutine_threadsafe(client.aclose(), loop)
                self._closing.add(future)  # held until done: a task nobody holds may vanish
                future.add_done_callback(self._closing.discard)
            elif loop.is_closed() or inside_a_loop:
                _shut_down(client)
            else:
                loop.run_until_complete(client.aclose())


async def _close_at_shutdown(client: redis.asyncio.Redis) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await client.aclose()


def _shut_down(client: redis.asyncio.Redis) -> None:
    """Shut the sockets of a closed loop's client: its transports can no longer close."""
    pool: Any = client.connection_pool
    for conn in [*pool._available_connections, *pool._in_use_connections]:
        writer = getattr(conn, "_writer", None)
        sock = None if writer is None else writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
