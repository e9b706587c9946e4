"""A thread pool whose threads never keep the process alive, for sync handlers and store calls.

``concurrent.futures.ThreadPoolExecutor`` joins its threads when the interpreter exits, so a
sync handler stuck for good holds the process open after the worker gave up on it (a
second SIGTERM): nothing heartbeats its lease any more, and once the lease lapses another
worker runs the batch beside it. Python cannot stop a thread; the worker can only make sure
the thread does not outlive the process. Like ``ThreadPoolExecutor``, the pool starts
threads as work arrives, up to ``max_workers``, and reuses idle ones.

``call`` is the event loop's way in, and the reason this pool is fast enough for one-item
batches: ``loop.run_in_executor`` chains a ``concurrent.futures.Future`` to an asyncio one
and wakes the loop once per finished call (a write to its self-pipe, a loop iteration). Here
a finished call goes on a list, and one wake-up of the loop hands over every call that
finished before the loop came round to it. ``call_then`` goes one step further for the
worker's sync handlers: no future at all, the handover calls the caller's callback with the
outcome, so a one-item batch costs the loop one plain call instead of a future, a task
wake-up and a chain of coroutines.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

Then = Callable[[BaseException | None, Any], None]
"""What ``call_then`` calls on the loop with a call's outcome: (its exception, None) or
(None, what it returned)."""


class _Then:
    """Stands in for a future in a ``call_then`` job: the callback, and the loop to call it on."""

    __slots__ = ("loop", "then")

    def __init__(self, then: Then, loop: asyncio.AbstractEventLoop) -> None:
        self.then = then
        self.loop = loop

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self.loop

    def cancelled(self) -> bool:
        return False


# A job: what to settle (a concurrent future from ``submit``, an asyncio one from ``call``, a
# callback from ``call_then``) and the call itself.
_Job = tuple["Future[Any] | asyncio.Future[Any] | _Then", Callable[[], Any]]


class DaemonThreadPool(Executor):
    def __init__(self, max_workers: int, thread_name_prefix: str) -> None:
        self._max_workers = max_workers
        self._prefix = thread_name_prefix
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # released by a thread each time it finishes a job
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        # Outcomes of ``call`` jobs not yet handed to the loop: (future, exception, result).
        self._finished: collections.deque[tuple[asyncio.Future[Any] | _Then, BaseException | None, Any]] = (
            collections.deque()
        )
        self._handover_due = False  # a handover is scheduled on the loop and has not begun

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        self._put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> asyncio.Future[T]:
        """Run ``fn`` on a pool thread; an asyncio future of its outcome, on the running loop.

        Cancelling the future before a thread takes the call means it never runs; a call
        already running runs to its end, and its outcome is dropped.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._put((future, functools.partial(fn, *args, **kwargs)))
        return future

    def call_then(self, fn: Callable[[], T], then: Callable[[BaseException | None, T | None], None]) -> None:
        """Run ``fn()`` on a pool thread, then ``then(exception, result)`` on the running loop.

        ``then`` runs in the loop's handover of finished calls, with (None, what ``fn``
        returned) or (what it raised, None); what ``then`` raises goes to the loop's
        exception handler. It is never called for a call left queued at ``shutdown``.
        """
        self._put((_Then(then, asyncio.get_running_loop()), fn))

    def _put(self, job: _Job) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot submit to a pool that was shut down")
            self._jobs.put(job)
            if not self._idle.acquire(blocking=False) and len(self._threads) < self._max_workers:
                name = f"{self._prefix}_{len(self._threads)}"
                thread = threading.Thread(target=self._serve, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                while True:
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        break
                    if job is not None:
                        _cancel(job[0])
            for _ in self._threads:
                self._jobs.put(None)
        if wait:
            for thread in self._threads:
                thread.join()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, call = job
            del job  # hold nothing of a finished job while waiting for the next
            if isinstance(future, Future):
                _run_concurrent(future, call)
            elif not future.cancelled():  # read across threads: at worst a cancelled call runs
                self._run_for_loop(future, call)
            del future, call
            self._idle.release()

    def _run_for_loop(self, future: asyncio.Future[Any] | _Then, call: Callable[[], Any]) -> None:
        try:
            outcome: tuple[asyncio.Future[Any] | _Then, BaseException | None, Any] = (future, None, call())
        except StopIteration as exc:  # an asyncio future refuses it, as a coroutine does
            outcome = (future, RuntimeError(f"the call raised StopIteration: {exc!r}"), None)
        except BaseException as exc:  # noqa: BLE001 - the waiter on the future gets it
            outcome = (future, exc, None)
        # Appended before the flag is read, and the handover clears the flag before it
        # reads the list: an outcome is never left behind (at worst a handover finds none).
        self._finished.append(outcome)
        if not self._handover_due:
            self._handover_due = True
            # A closed loop raises RuntimeError: nobody waits for the outcome any more.
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:
        """On the loop: settle the futures of every call that finished."""
        self._handover_due = False
        finished = self._finished
        while finished:
            future, exc, result = finished.popleft()
            if isinstance(future, _Then):
                try:
                    future.then(exc, result)
                except BaseException as error:  # noqa: BLE001 - the other outcomes still go out
                    future.loop.call_exception_handler(
                        {"message": "a call_then callback failed", "exception": error}
                    )
                continue
            if future.cancelled():
                continue
            if exc is None:
                future.set_result(result)
            else:
                future.set_exception(exc)


def _run_concurrent(future: Future[Any], call: Callable[[], Any]) -> None:
    if future.set_running_or_notify_cancel():
        try:
            result = call()
        except BaseException as exc:  # noqa: BLE001 - the waiter on the future gets it
            future.set_exception(exc)
        else:
            future.set_result(result)


def _cancel(future: Future[Any] | asyncio.Future[Any] | _Then) -> None:
    if isinstance(future, _Then):
        return  # never called: the caller is going away
    if isinstance(future, Future):
        future.cancel()
    else:  # its loop's own future: cancelled there, unless the loop is gone
        with contextlib.suppress(RuntimeError):
            future.get_loop().call_soon_threadsafe(future.cancel)
