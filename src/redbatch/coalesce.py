"""Group commit for producers: concurrent adds of one batcher share store calls.

Why: every ``add`` is one store call (one Redis script and round trip, one SQLite transaction
and fsync), and those calls, not encoding, bound what a producer can add per second. When 16
threads of one process add at once, 16 calls queue up for the same server or the same file
lock. ``Coalescer`` sends them as one call instead, as the worker's acknowledgements already do
(``Worker._ack``), and as databases have long done for commits.

How (the writers' queue of LevelDB's ``DBImpl::Write``): every caller puts its request (its
encoded entries) at the back of one queue. The caller at the front is the *leader*: it takes
every request queued behind it, up to ``max_entries`` entries or ``max_bytes`` bytes (a request
is never split, so an ``add_many`` stays all or none), and makes one store call with them on its
own thread. Requests that arrive while that call is on its way wait; when it returns, the
leader wakes the new front request, whose caller leads the next call, and records its outcome
(nothing, or the exception) in each request it carried. It wakes only the first of those
callers, and each woken caller wakes the next (a chain): a thread woken while its waker holds
the GIL mostly preempts it only to wait for the GIL, so a leader waking its whole group in a
row cost 16 threads some 2.8 context switches per add, the chain 2.0, for 9 to 23% more adds
per second on Redis (A/B runs of figure 8's case, on a shared 2-core machine). So:

- a lone caller finds the queue empty and makes its call at once: a lock and a deque, no
  thread hop, no wait for company;
- every caller returns only once the call carrying its entries has returned (they are as
  durable as the store makes them), and gets that call's exception if it failed;
- one call of a batcher is on its way at a time, so calls (and a thread's adds) reach the
  store in the order they were made.

``AsyncCoalescer`` is the same for coroutines, with no thread in the way. A caller that finds
its loop idle makes its store call itself, at once (a lone add pays no task switch); callers
arriving while a call is on its way queue futures, and one leader task per loop (as the
worker's ``_ack_loop``) makes each next call for all of them, awaiting the store's
``append_async``, then resolves their futures. A call made by a caller carries only its own
entries, so cancelling that caller (a timeout) never fails another's add. Calls made by
different loops, or by threads and coroutines, are separate queues and may overlap; each is
one atomic store step, so they interleave only between calls.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor

from redbatch.daemon_pool import DaemonThreadPool
from redbatch.errors import StoreUnavailable
from redbatch.types import Entry

MAX_ENTRIES = 1_000
"""Entries per store call, at most (one larger ``add_many`` goes alone)."""
MAX_BYTES = 1 << 20
"""Bytes of keys and payloads per store call, at most (one larger request goes alone)."""


class _Request:
    """One caller's entries, waiting in the queue.

    ``wakeup`` exists for callers that wait: a lock taken when made, which the waiter blocks
    on and a leader, or the caller before it in its group's chain, releases (once) to wake
    it. A bare lock, rather than an Event, costs a C call each way where an Event costs a
    Condition, a few microseconds per add. ``after``: the request whose caller this one's
    wakes once its call is done (the next of the chain); ``gone``: its caller was interrupted
    while its call was on its way, so the chain leaves it out.
    """

    __slots__ = ("after", "done", "entries", "error", "gone", "size", "taken", "wakeup")

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.size = _size(entries)
        self.taken = False  # in a group whose store call is on its way
        self.done = False
        self.error: BaseException | None = None
        self.wakeup: threading.Lock | None = None
        self.after: _Request | None = None
        self.gone = False


def _size(entries: list[Entry]) -> int:
    """Bytes of keys and payloads: the leader's bound, summed by each caller rather than by
    the leader for a whole group (a generator per request was some 1.5 us of the leader's
    time per request it took, with 16 threads adding)."""
    if len(entries) == 1:
        key, payload, _ = entries[0]
        return len(payload) + len(key)
    return sum(len(e.payload) + len(e.key) for e in entries)


class Coalescer:
    """Send concurrent requests' entries through ``send``, one call at a time, grouped.

    ``send(entries)`` is the store call (the batcher's append, with its own retry under new
    rules); it reads the arrival time itself when it starts, so that time is never earlier
    than the start of any caller it carries. Thread-safe; safe across ``fork`` (the child
    starts with an empty queue: requests of the parent's threads are not the child's).
    """

    def __init__(
        self,
        send: Callable[[list[Entry]], None],
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._send = send
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._queue: deque[_Request] = deque()
        _INSTANCES.add(self)

    @property
    def queued(self) -> int:
        """Requests in the queue: those of the call on its way, and those waiting for the next."""
        return len(self._queue)

    def submit(self, entries: list[Entry]) -> None:
        """Store ``entries`` (all or none) with whatever else is waiting; return once stored.

        Raises what the store call carrying them raised; the same exception object reaches
        every caller of that call (as ``concurrent.futures.Future.result`` does).
        """
        request = _Request(entries)
        with self._lock:
            if self._queue:
                request.wakeup = threading.Lock()
                request.wakeup.acquire()
            self._queue.append(request)
        if request.wakeup is not None:
            self._wait(request)
            if request.done:
                if request.error is not None:
                    raise request.error
                return
        self._lead(request)

    def _wait(self, request: _Request) -> None:
        """Wait until a leader carried ``request`` (then wake the next caller of its chain),
        or handed this caller the lead."""
        assert request.wakeup is not None
        try:
            request.wakeup.acquire()
        except BaseException:  # interrupted (KeyboardInterrupt): leave the queue unblocked
            with self._lock:
                if not request.taken:
                    if request in self._queue:
                        leading = self._queue[0] is request
                        self._queue.remove(request)
                        if leading:
                            self._wake_front()
                elif request.done:  # its chain may have reached it: pass it on
                    self._wake_after(request)
                else:  # its call is on its way: the leader's chain will skip it
                    request.gone = True
            raise
        if request.done:
            self._wake_after(request)

    @staticmethod
    def _wake_after(request: _Request) -> None:
        """Wake the next caller of ``request``'s chain, if any (once: only this caller can)."""
        after, request.after = request.after, None
        if after is not None:
            assert after.wakeup is not None
            after.wakeup.release()

    def _lead(self, request: _Request) -> None:
        """Make one store call for ``request`` and those queued behind it, then hand over."""
        group = self._take_group()
        error: BaseException | None = None
        try:
            if len(group) == 1:
                self._send(request.entries)
            else:
                self._send([entry for member in group for entry in member.entries])
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._finish(group, error)

    def _take_group(self) -> list[_Request]:
        """The front requests, within the bounds (the first one whatever its size)."""
        with self._lock:
            first = self._queue[0]
            first.taken = True
            group = [first]
            if len(self._queue) > 1:  # a lone caller skips the sums
                entries, size = len(first.entries), first.size
                for member in itertools.islice(self._queue, 1, None):
                    entries += len(member.entries)
                    size += member.size
                    if entries > self.max_entries or size > self.max_bytes:
                        break
                    member.taken = True
                    group.append(member)
            return group

    def _finish(self, group: list[_Request], error: BaseException | None) -> None:
        """Tell the group's other callers the outcome; wake the next leader, if any, and the
        first caller of the group's chain."""
        if error is not None and not isinstance(error, Exception):
            error = StoreUnavailable(
                f"the store call carrying these items was interrupted ({type(error).__name__}) in "
                "another thread: they may or may not be stored"
            )
        with self._lock:
            for _ in group:
                self._queue.popleft()  # the group is the queue's front, in order
            self._wake_front()  # first: the next call waits for its leader, not for the others
            chain: _Request | None = None
            for member in group[:0:-1]:  # the followers, last first (the first is the leader's)
                member.error = error
                member.done = True
                if not member.gone:
                    member.after, chain = chain, member
            if chain is not None:
                assert chain.wakeup is not None
                chain.wakeup.release()

    def _wake_front(self) -> None:
        """Hand the lead to the front request (called holding the lock)."""
        if self._queue:
            front = self._queue[0].wakeup
            assert front is not None  # only a request that found the queue empty has none
            front.release()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._queue = deque()


_INSTANCES: weakref.WeakSet[Coalescer] = weakref.WeakSet()


def _reset_after_fork() -> None:
    # A thread of the parent may have held the lock or led a call at the fork; it does not
    # exist in the child, which would otherwise wait behind it for ever.
    for coalescer in list(_INSTANCES):
        coalescer._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


class _LoopQueue:
    """One event loop's waiting requests, its leader task while it has one, and whether a
    caller's own call is on its way."""

    __slots__ = ("busy", "leader", "waiting")

    def __init__(self) -> None:
        self.waiting: deque[tuple[list[Entry], asyncio.Future[None]]] = deque()
        self.leader: asyncio.Task[None] | None = None
        self.busy = False


class AsyncCoalescer:
    """``Coalescer`` for coroutines: ``await submit(entries)`` stores them with whatever else
    this loop's callers are waiting to store, through ``send`` (a coroutine function).

    A caller that makes its own call (its loop was idle), cancelled while the call is on its
    way, interrupts only that call: its entries may or may not be stored. A queued caller
    cancelled before its entries were taken is left out of the next call; one cancelled after
    they were taken returns at once, and its entries are stored or not as the call goes.
    Cancelling the leader task (its loop shutting down) fails the call's callers with
    ``StoreUnavailable``: their entries may or may not be stored.
    """

    def __init__(
        self,
        send: Callable[[list[Entry]], Awaitable[None]],
        *,
        max_entries: int = MAX_ENTRIES,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self._send = send
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopQueue] = (
            weakref.WeakKeyDictionary()
        )
        self._loops_lock = threading.Lock()  # loops of several threads may arrive at once

    def queued(self) -> int:
        """Requests of the running loop waiting for a call (not those of the call on its way)."""
        queue = self._loops.get(asyncio.get_running_loop())
        return 0 if queue is None else len(queue.waiting)

    async def submit(self, entries: list[Entry]) -> None:
        """Store ``entries`` (all or none) with whatever else is waiting; return once stored."""
        loop = asyncio.get_running_loop()
        queue = self._loops.get(loop)
        if queue is None:
            with self._loops_lock:
                queue = self._loops.setdefault(loop, _LoopQueue())
        if queue.leader is None and not queue.busy:  # idle: this caller's own call, at once
            queue.busy = True
            try:
                await self._send(entries)
            finally:
                queue.busy = False
                if queue.waiting:  # those who came meanwhile: the next call is the leader's
                    queue.leader = loop.create_task(self._lead(queue), name="redbatch-add")
            return
        done: asyncio.Future[None] = loop.create_future()
        queue.waiting.append((entries, done))  # a leader takes it: the running one, or the next
        await done

    async def _lead(self, queue: _LoopQueue) -> None:
        # Single-threaded asyncio: nothing runs between the emptiness check and the
        # ``finally``, so a request queued after the last call always finds a leader.
        try:
            while queue.waiting:
                group = self._take_group(queue.waiting)
                if not group:
                    continue
                try:
                    if len(group) == 1:
                        await self._send(group[0][0])
                    else:
                        await self._send([entry for entries, _ in group for entry in entries])
                except Exception as exc:  # noqa: BLE001 - handed to every caller of the call
                    for _, done in group:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                except BaseException as exc:  # cancelled: the loop is going away
                    failure = StoreUnavailable(
                        f"the store call carrying these items was interrupted ({type(exc).__name__}):"
                        " they may or may not be stored"
                    )
                    for _, done in group:
                        if not done.done():
                            done.set_exception(failure)
                    raise
                for _, done in group:
                    if not done.done():
                        done.set_result(None)
        finally:
            queue.leader = None
            while queue.waiting:  # only when the leader itself was cancelled
                _, done = queue.waiting.popleft()
                if not done.done():
                    done.set_exception(StoreUnavailable("the event loop stopped before these were sent"))

    def _take_group(
        self, waiting: deque[tuple[list[Entry], asyncio.Future[None]]]
    ) -> list[tuple[list[Entry], asyncio.Future[None]]]:
        """The front requests whose callers still wait, within the bounds (the first one
        whatever its size)."""
        group: list[tuple[list[Entry], asyncio.Future[None]]] = []
        count = size = 0
        while waiting:
            entries, done = waiting[0]
            if done.cancelled():
                waiting.popleft()
                continue
            if group:
                count += len(entries)
                size += sum(len(e.payload) + len(e.key) for e in entries)
                if count > self.max_entries or size > self.max_bytes:
                    break
            else:
                count, size = len(entries), sum(len(e.payload) + len(e.key) for e in entries)
            group.append(waiting.popleft())
        return group


_STORE_THREADS: weakref.WeakKeyDictionary[object, Executor] = weakref.WeakKeyDictionary()
_STORE_THREADS_LOCK = threading.Lock()


def store_thread(store: object) -> Executor:
    """The one thread on which event loops make the store calls of a store without
    ``append_async`` (SQLite, memory): one per store, not one per call. A daemon thread, so
    that a store call stuck for good never holds the process open."""
    with _STORE_THREADS_LOCK:
        pool = _STORE_THREADS.get(store)
        if pool is None:
            pool = _STORE_THREADS[store] = DaemonThreadPool(1, thread_name_prefix="redbatch-store")
        return pool
