"""Calling a batcher's handler on one claimed batch, and judging how the call ended.

The worker (``worker.py``) decides when a batch runs and writes its outcome to the store;
this module runs the handler once and says what to write: nothing (it succeeded) or a
``Failure``. It decodes the stored payloads into the handler's ``Batch``, calls an async
handler on the event loop or a sync one on a handler thread (and awaits, on the loop, what
a sync-looking handler returns), enforces the batcher's ``timeout``, and reads the indexes
of an ``ItemsFailed``. A sync handler's whole attempt (decode, call, time, judge) is one
``SyncCall``, run on a handler thread: for one-item batches and jobs, a task and a chain of
coroutines on the loop around a call of microseconds were the worker's main cost.

It also states what the worker serves (``Served``): a batcher (``BatchQueue`` here) or a job
queue (``redbatch.jobrunner.JobQueue``) presents the same face, so both go through one
claim, lease, heartbeat, retry and dead-letter path and differ only in how an attempt runs
and how a success is written (``ack`` or ``finish_jobs``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from redbatch.batcher import Batcher
from redbatch.daemon_pool import DaemonThreadPool
from redbatch.errors import ItemsFailed
from redbatch.hooks import HandlerOutcome
from redbatch.stores.base import LoopCalls, Store
from redbatch.types import Batch, ClaimedBatch, Lease, QueueSpec

# The worker's logger, not one of this module's own: a handler past its timeout is news of
# the worker, and operators (and tests) filter the worker's records by this name.
log = logging.getLogger("redbatch.worker")

MAX_ERROR_LENGTH = 4000
"""How much of a handler's traceback (its last characters) a failure records."""


@dataclass(frozen=True)
class Failure:
    """What to record for a failed attempt.

    ``retryable`` is False for data no retry can repair (straight to dead letters); ``keep``
    holds the indexes of the only items that failed (an ``ItemsFailed``), None for all.
    """

    error: str
    retryable: bool = True
    keep: tuple[int, ...] | None = None


@dataclass(frozen=True)
class HandlerRun:
    """How one handler call ended: the outcome, what it raised, and how long it took."""

    outcome: HandlerOutcome
    error: BaseException | None
    duration: float  # seconds

    def failure(self, batcher: Batcher, size: int) -> Failure | None:
        """The failure to record for this call of a handler on ``size`` items; None when the
        attempt succeeded (or an ``ItemsFailed`` named no item)."""
        if self.outcome == "timed_out":
            return Failure(f"handler timed out after {batcher.timeout} seconds")
        if isinstance(self.error, ItemsFailed):
            # Indexes name items of the batch as it was handed over: the handler's list is its
            # own to change, the claimed payloads are what the store will shrink.
            return items_failed(self.error, size)
        return None if self.error is None else handler_failure(self.error)


def corrupt(exc: ValueError) -> Attempt:
    """The attempt of a batch whose stored data cannot be decoded: no retry can repair it,
    so it goes straight to dead letters."""
    return Attempt(None, Failure(f"corrupt data: {exc}", retryable=False), None)


def _handler_args(claimed: ClaimedBatch) -> tuple[Batch] | Attempt:
    try:
        return (decode_batch(claimed),)
    except ValueError as exc:
        return corrupt(exc)


def decode_batch(claimed: ClaimedBatch) -> Batch:
    """Turn a claimed batch into the handler's ``Batch``; ValueError on corrupt payloads."""
    return Batch(
        id=claimed.lease.batch_id,
        key=claimed.lease.key,
        items=[orjson.loads(p) for p in claimed.payloads],
        attempt=claimed.attempt,
        created_at=claimed.created_at / 1000,
        arrived_at=tuple(a / 1000 for a in claimed.arrived_at),
    )


async def run_call(
    fn: Callable[..., Any], args: tuple[Any, ...], timeout: float | None
) -> tuple[HandlerRun, Any]:
    """Call the async function ``fn(*args)`` (a handler or a job function) on the loop, in
    this task, to its end or its ``timeout``: how it ended, and what it returned (None
    unless it succeeded). Sync functions run on a handler thread instead (``SyncCall``).

    Whatever it raises, ``SystemExit`` and ``KeyboardInterrupt`` included, is a failed call,
    never the worker's end. Only the worker's own cancellation of this task (a second
    signal abandons the batch) propagates.
    """
    started = time.monotonic()
    deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
    return await _ended(started, _call_async(fn, args, deadline))


async def _call_async(
    fn: Callable[..., Any], args: tuple[Any, ...], deadline: float | None
) -> tuple[bool, Any]:
    return await _await_within(fn(*args), deadline)


async def _ended(started: float, call: Awaitable[tuple[bool, Any]]) -> tuple[HandlerRun, Any]:
    """Await ``call`` (what ``_call_async`` or ``_await_within`` return) and say how the
    call that began at ``started`` (``time.monotonic``) ended, and what it returned."""
    error: BaseException | None = None
    outcome: HandlerOutcome = "succeeded"
    value: Any = None
    try:
        timed_out, value = await call
        if timed_out:
            outcome = "timed_out"
    except asyncio.CancelledError as exc:
        if cancelled_by_worker():
            raise
        error = exc  # raised by the handler, not a cancellation of it
    except BaseException as exc:  # noqa: BLE001 - a handler's failure never kills the worker
        error = exc
    if error is not None:
        outcome = "failed"
    return HandlerRun(outcome, error, time.monotonic() - started), value


async def _await_within(result: Any, deadline: float | None) -> tuple[bool, Any]:
    """(False, ``result``) when it is not awaitable; else await it until ``deadline`` (loop
    time): (True, None) past it, else (False, what it gave)."""
    if not inspect.isawaitable(result):
        return False, result
    # asyncio.timeout awaits in this task; asyncio.wait_for would wrap the handler in a
    # task of its own, whose SystemExit or KeyboardInterrupt asyncio re-raises out of the
    # event loop, ending the worker.
    try:
        async with asyncio.timeout_at(deadline) as scope:
            value = await result
    except TimeoutError:
        if scope.expired():
            return True, None
        raise  # the handler's own TimeoutError, not the batcher's timeout
    return False, value


def passed_timeout(label: str, timeout: float) -> None:
    """Log that a sync handler ran past its timeout (the worker's timer, on the loop).

    Python cannot stop a thread: a sync handler past its timeout keeps its key, its lease
    (heartbeats go on) and its worker slot until it returns, so no other batch of the key
    runs meanwhile and nothing queues behind its thread; then ``SyncCall.run`` fails the
    attempt. Async handlers are cancelled at their timeout instead.
    """
    log.warning(
        "sync handler of %s passed its %s s timeout; it cannot be interrupted, so "
        "the key stays leased until it returns, then the attempt fails",
        label, timeout,
    )  # fmt: skip


def cancelled_by_worker() -> bool:
    """True when the running task is being cancelled (a second signal abandons its batch),
    not merely handed a CancelledError that a handler raised or let escape."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def handler_failure(exc: BaseException) -> Failure:
    """The failure a handler's exception records: the end of its traceback."""
    return Failure("".join(traceback.format_exception(exc))[-MAX_ERROR_LENGTH:])


def items_failed(exc: ItemsFailed, size: int) -> Failure | None:
    """The failure a handler reported for some items; None when it named none."""
    if any(isinstance(i, bool) or not isinstance(i, int) for i in exc.indexes):
        return Failure(
            f"ItemsFailed named indexes that are not integers: {list(exc.indexes)!r}; {exc.reason}"
        )
    indexes = sorted(set(exc.indexes))
    if not indexes:
        return None
    if not 0 <= indexes[0] <= indexes[-1] < size:
        return Failure(f"ItemsFailed named indexes outside the batch of {size}: {indexes}; {exc.reason}")
    if len(indexes) == size:
        return Failure(f"ItemsFailed: {exc.reason}")
    return Failure(f"ItemsFailed: {exc.reason}", keep=tuple(indexes))


# ---------------------------------------------------------------- what a worker serves


@dataclass(frozen=True)
class Attempt:
    """How one attempt ended: ``done`` (what ``Served.finish`` takes) on success, else the
    ``failure``; ``run`` for the hooks (None when the data was too corrupt to hand over)."""

    done: Any
    failure: Failure | None
    run: HandlerRun | None

    def done_under(self, lease: Lease) -> Any:
        """``done`` under ``lease``: a worker that won back the lease of a batch it still ran
        (a store outage stopped its heartbeats) settles under the new lease, not the one
        the attempt started with, which the store no longer honours."""
        if isinstance(self.done, Lease):
            return lease
        if self.done.lease is lease:  # the lease it started under: nearly always
            return self.done
        return dataclasses.replace(self.done, lease=lease)


@dataclass(frozen=True, slots=True)
class SyncCall:
    """A sync handler's (or job function's) whole attempt, run on a handler thread.

    ``run`` prepares the arguments (decodes the batch: a corrupt one is an ``Attempt`` at
    once), calls the function, times it and judges how it ended, so the worker hears of a
    finished attempt once, in a callback on its loop (``DaemonThreadPool.call_then``). Python
    cannot stop a thread: a call past ``timeout`` fails when it returns, as ``run_call``'s
    does; the worker's timer only logs it passing (``passed_timeout``).
    """

    prepare: Callable[[], tuple[Any, ...] | Attempt]
    fn: Callable[..., Any]
    timeout: float | None
    label: str  # what the timeout's warning names; made only when there is a timeout
    judge: Callable[[HandlerRun, Any], Attempt]  # how the call ended, what it returned

    def run(self) -> Attempt | Awaiting:
        """On a handler thread: the attempt, or (the function returned an awaitable, as a
        lambda around an async function does) what the loop must still await."""
        prepared = self.prepare()
        if isinstance(prepared, Attempt):
            return prepared
        started = time.monotonic()
        try:
            value = self.fn(*prepared)
        except BaseException as exc:  # noqa: BLE001 - a handler's failure never kills the worker
            return self.judge(HandlerRun("failed", exc, time.monotonic() - started), None)
        duration = time.monotonic() - started
        if inspect.isawaitable(value):
            return Awaiting(self, value, started)
        if self.timeout is not None and duration > self.timeout:
            return self.judge(HandlerRun("timed_out", None, duration), None)
        return self.judge(HandlerRun("succeeded", None, duration), value)


@dataclass(frozen=True, slots=True)
class Awaiting:
    """What a sync-looking function returned that is awaitable: ``finish`` awaits it on the
    loop, within what is left of the call's timeout, and judges the attempt."""

    call: SyncCall
    value: Awaitable[Any]
    started: float  # time.monotonic() when the call began

    async def finish(self) -> Attempt:
        timeout = self.call.timeout
        deadline = None
        if timeout is not None:
            deadline = asyncio.get_running_loop().time() + timeout - (time.monotonic() - self.started)
        run, value = await _ended(self.started, _await_within(self.value, deadline))
        return self.call.judge(run, value)


class Served(Protocol):
    """A batcher or a job queue, as a worker serves it: one engine queue (``spec``)."""

    source: Any  # the Batcher or Jobs itself, handed to hooks
    store: Store
    name: str  # its engine name, unique in a worker

    @property
    def spec(self) -> QueueSpec: ...
    @property
    def configured(self) -> QueueSpec: ...
    def adopt_rules(self, rules: QueueSpec) -> None: ...
    def sync_call(self, claimed: ClaimedBatch) -> SyncCall | None:
        """The attempt as one call for a handler thread; None when ``attempt`` must run it
        (an async function, or a payload that says so only once decoded)."""
        ...

    async def attempt(self, claimed: ClaimedBatch, pool: DaemonThreadPool) -> Attempt:
        """The attempt on the loop, when ``sync_call`` gave None; ``pool`` runs blocking
        store reads it needs."""
        ...

    def retry_at(self, claimed: ClaimedBatch, now_ms: int) -> int | None: ...
    def finish(self, dones: Sequence[Any], now_ms: int) -> list[bool]: ...
    async def finish_async(self, calls: LoopCalls, dones: Sequence[Any], now_ms: int) -> list[bool]:
        """``finish`` through the store's calls on the loop."""
        ...

    def housekeeping(self, now_ms: int) -> None: ...


class BatchQueue:
    """A batcher as a worker serves it: its handler on each batch, ``ack`` on success."""

    def __init__(self, batcher: Batcher) -> None:
        self.source = self.batcher = batcher
        self.store = batcher.store
        self.name = batcher.name

    @property
    def spec(self) -> QueueSpec:
        return self.batcher.spec

    @property
    def configured(self) -> QueueSpec:
        return self.batcher.configured

    def adopt_rules(self, rules: QueueSpec) -> None:
        self.batcher.adopt_rules(rules)

    def sync_call(self, claimed: ClaimedBatch) -> SyncCall | None:
        batcher = self.batcher
        if batcher.handler_is_async:
            return None
        assert batcher.handler_fn is not None
        label = (
            ""
            if batcher.timeout is None
            else f"batch {claimed.lease.batch_id} of {batcher.name}/{claimed.lease.key}"
        )
        return SyncCall(
            functools.partial(_handler_args, claimed), batcher.handler_fn, batcher.timeout, label,
            functools.partial(self._judge, claimed),
        )  # fmt: skip

    async def attempt(self, claimed: ClaimedBatch, pool: DaemonThreadPool) -> Attempt:
        assert self.batcher.handler_fn is not None and self.batcher.handler_is_async
        args = _handler_args(claimed)
        if isinstance(args, Attempt):
            return args
        run, _ = await run_call(self.batcher.handler_fn, args, self.batcher.timeout)
        return self._judge(claimed, run, None)

    def _judge(self, claimed: ClaimedBatch, run: HandlerRun, value: Any) -> Attempt:
        failure = run.failure(self.batcher, len(claimed.payloads))
        return Attempt(claimed.lease if failure is None else None, failure, run)

    def retry_at(self, claimed: ClaimedBatch, now_ms: int) -> int | None:
        return self.batcher.retry_at(claimed.attempt, now_ms)

    def finish(self, dones: Sequence[Lease], now_ms: int) -> list[bool]:
        return self.store.ack(self.spec, dones, now_ms)

    async def finish_async(self, calls: LoopCalls, dones: Sequence[Lease], now_ms: int) -> list[bool]:
        return await calls.ack_async(self.spec, dones, now_ms)

    def housekeeping(self, now_ms: int) -> None:
        if self.batcher.dead_letter_ttl_ms is not None:
            self.store.purge_dead(self.spec, None, now_ms - self.batcher.dead_letter_ttl_ms)
