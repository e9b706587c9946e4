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
leader wakes the new front request, whose caller leads the next call, then hands its outcome
(nothing, or the exception) to each request it carried. So:

- a lone caller finds the queue empty and makes its call at once: a lock and a deque, no
  thread hop, no wait for company;
- every caller returns only once the call carrying its entries has returned (they are as
  durable as the store makes them), and gets that call's exception if it failed;
- one call of a batcher is on its way at a time, so calls (and a thread's adds) reach the
  store in the order they were made.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable

from redbatch.errors import StoreUnavailable
from redbatch.types import Entry

MAX_ENTRIES = 1_000
"""Entries per store call, at most (one larger ``add_many`` goes alone)."""
MAX_BYTES = 1 << 20
"""Bytes of keys and payloads per store call, at most (one larger request goes alone)."""


class _Request:
    """One caller's entries, waiting in the queue.

    ``wakeup`` exists for callers that wait: a lock taken when made, which the waiter blocks
    on and a leader releases (once) to wake it. A bare lock, rather than an Event, costs a
    C call each way where an Event costs a Condition, a few microseconds per add.
    """

    __slots__ = ("done", "entries", "error", "taken", "wakeup")

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.taken = False  # in a group whose store call is on its way
        self.done = False
        self.error: BaseException | None = None
        self.wakeup: threading.Lock | None = None

    def size(self) -> int:
        return sum(len(e.payload) + len(e.key) for e in self.entries)


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
        """Wait until a leader carried ``request``, or handed this caller the lead."""
        assert request.wakeup is not None
        try:
            request.wakeup.acquire()
        except BaseException:  # interrupted (KeyboardInterrupt): leave the queue unblocked
            with self._lock:
                if not request.taken and request in self._queue:
                    leading = self._queue[0] is request
                    self._queue.remove(request)
                    if leading:
                        self._wake_front()
            raise

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
                entries, size = len(first.entries), first.size()
                for member in itertools.islice(self._queue, 1, None):
                    entries += len(member.entries)
                    size += member.size()
                    if entries > self.max_entries or size > self.max_bytes:
                        break
                    member.taken = True
                    group.append(member)
            return group

    def _finish(self, group: list[_Request], error: BaseException | None) -> None:
        """Tell the group's other callers the outcome; wake the next leader, if any."""
        if error is not None and not isinstance(error, Exception):
            error = StoreUnavailable(
                f"the store call carrying these items was interrupted ({type(error).__name__}) in "
                "another thread: they may or may not be stored"
            )
        with self._lock:
            for _ in group:
                self._queue.popleft()  # the group is the queue's front, in order
            self._wake_front()  # first: the next call waits for its leader, not for the others
            for member in group[1:]:  # the first is the leader's own
                assert member.wakeup is not None
                member.error = error
                member.done = True
                member.wakeup.release()

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
