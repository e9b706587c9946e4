"""The worker: claim due batches, run them with bounded concurrency, keep their leases by
heartbeat, and acknowledge, retry or dead-letter each one.

One asyncio loop does the scheduling. Claims and acknowledgements run on the loop itself
where the store can (Redis: ``stores.base.LoopCalls``); other store calls are blocking and
run on a small thread pool. Sync handlers run on ``concurrency`` daemon threads, async
handlers on the loop. Both pools hand their finished calls back to the loop in bursts
(``DaemonThreadPool.call``): for one-item batches and jobs, the hops between threads, not
the store, were the cost. A sync
handler's whole attempt (decode, call, judge: ``handlers.SyncCall``) runs on its thread and
reaches the loop as one callback (``call_then``); a task runs only what needs the loop: an
async handler, the coroutine a sync-looking one returned, or writing a failure.
The loop sleeps until the earliest deadline in the store, a producer's wake-up, a finished
handler or a stop request, never on a fixed poll interval (a two second cap only guards
against a lost wake-up message). Free slots go to due batches earliest deadline first,
across every batcher the worker serves. Calling a handler and judging how the call ended
(timeouts, ``ItemsFailed``, corrupt data) is ``redbatch.handlers``' job. Job queues
(``redbatch.Jobs``) are served through the same path: both present the worker one face
(``handlers.Served``), and only how an attempt runs and how a success is written differ
(``redbatch.jobrunner``).

About 700 lines, 120 of them reference docstrings: the scheduling loop, leases,
acknowledgements and lifecycle read best together, as arq keeps its worker in one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import signal
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from redbatch.batcher import Batcher
from redbatch.daemon_pool import DaemonThreadPool
from redbatch.errors import ConfigError, StoreUnavailable
from redbatch.handlers import (
    Attempt,
    Awaiting,
    BatchQueue,
    Failure,
    Served,
    decode_batch,  # noqa: F401 - tests and tools import it from here
    passed_timeout,
)
from redbatch.hooks import SettleOutcome, WorkerHooks
from redbatch.jobrunner import JobQueue
from redbatch.jobs import Jobs
from redbatch.logs import batch_fields
from redbatch.stores.base import LoopCalls, Store, Waiter
from redbatch.types import ClaimedBatch, Clock, system_clock

log = logging.getLogger("redbatch.worker")

T = TypeVar("T")
P = ParamSpec("P")
MAX_SLEEP = 2.0
JANITOR_INTERVAL = 60.0
RULES_REFRESH = 10.0
"""Seconds between looks at the rules the store holds, to adopt those another worker published."""
QUICK_HANDLER = 0.005
"""Seconds: while handlers take less on average, the worker claims batches ahead."""
QUICK_WEIGHT = 0.1
"""The weight of the last handler call in that average."""
ACK_GROUP = 512
"""The most batches acknowledged in one store call."""
STORE_ERROR_PAUSE = 0.5
"""Seconds before trying a failing store again."""


@dataclass(eq=False)
class _Running:
    """A batch this worker runs: from its claim until its outcome is written, or it is
    abandoned. A sync handler's call runs on a handler thread with no task; a task runs an
    async handler, the rest of a sync one that returned a coroutine, or writes a failure."""

    served: Served
    claimed: ClaimedBatch
    task: asyncio.Task[None] | None = None
    timer: asyncio.TimerHandle | None = None  # logs a sync call passing its timeout
    lost: bool = False
    settling: bool = False  # its outcome is being written: a refused heartbeat is no loss
    waiting: bool = False  # claimed ahead: no slot yet (``Worker._free_slots``)
    then: tuple[Served, ClaimedBatch] | None = None  # its next attempt, claimed while this one settled
    gone: bool = False  # abandoned: whatever its call or its store write brings is dropped

    @property
    def batch_id(self) -> str:
        return self.claimed.lease.batch_id


@dataclass
class WorkerCounters:
    """What this worker did since it started (``Worker.counters``); the store's counters,
    across every worker, are ``Batcher.stats()``.

    Attributes:
        claimed: Batches this worker leased (a batch it won back while still running it
            counts again).
        succeeded: Batches acknowledged as done.
        retried: Failed attempts recorded with a retry to come.
        dead_lettered: Batches this worker moved to dead letters (used up their attempts,
            or held corrupt data).
        refused: Outcomes the store refused because another worker had taken the lease.
        abandoned: Batches given up by ``stop(abandon=True)`` or a second signal, left to
            their leases.
    """

    claimed: int = 0
    succeeded: int = 0
    retried: int = 0
    dead_lettered: int = 0
    refused: int = 0
    abandoned: int = 0


class Worker:
    """Runs the handlers of ``batchers`` (and the functions of job queues) until stopped
    (SIGTERM/SIGINT, or ``stop()``).

    When it starts, the worker publishes each batcher's configured rules to the store (the
    last worker to start defines them), then claims due batches, runs their handlers and
    records each outcome: acknowledged, retried with backoff, or dead-lettered. A store
    failure is logged and retried; it never ends the worker, nor does a handler's.

    On stop it claims nothing new and lets in-flight batches finish; a second signal (or
    ``stop(abandon=True)``) abandons them: ``run()`` returns at once, and their leases lapse
    so another worker reclaims them. Python cannot stop a thread, so a sync handler may
    still be running then; handler threads are daemon threads and do not hold the process
    open, but nothing heartbeats their batches any more, so end the process soon after
    ``run()`` returns, as ``redbatch worker`` does. A worker runs once: once stopped, make
    a new one. Constructing a Worker does no I/O.

    Args:
        store: The store every batcher uses: the very object each batcher was given.
        batchers: The batchers and job queues (``Jobs``) to serve, at least one, each
            with a handler (a job queue: at least one function) and a name of its own. Free
            slots go to their due batches and jobs earliest deadline first.
        concurrency: How many handlers (or job functions) run at once, across all batchers;
            each sync handler call takes one of this many handler threads. A batch holds its
            slot until its handler returns; writing its outcome does not (at most
            ``concurrency`` more batches may be waiting for that). While handlers return
            within about 5 ms on average, up to ``concurrency`` more batches are claimed
            ahead and start as slots free, each under its lease and heartbeated. An
            integer, at least 1; default 16.
        clock: The time in integer epoch milliseconds; tests inject a fake one. Default:
            the system clock.
        handle_signals: Install SIGTERM and SIGINT handlers while running: the first signal
            stops the worker, the second abandons in-flight batches. Only possible on the
            main thread; elsewhere it is turned off. Default True.
        hooks: A ``WorkerHooks`` to hear of claims, handler runs, settlements and lost
            leases, for metrics and tracing; default none.

    Attributes:
        counters: A ``WorkerCounters`` of what this worker did.
        started: A ``threading.Event`` set once the worker has published its rules and
            serves; ``started.wait()`` from another thread waits for it.

    Raises:
        ConfigError: ``concurrency`` is not an integer of at least 1, ``batchers`` is empty,
            two batchers (or two job queues) share a name, a batcher has no handler, a job
            queue no function, or one uses another store than ``store``.
    """

    def __init__(
        self,
        store: Store,
        batchers: Sequence[Batcher | Jobs],
        *,
        concurrency: int = 16,
        clock: Clock = system_clock,
        handle_signals: bool = True,
        hooks: WorkerHooks | None = None,
    ) -> None:
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError(f"concurrency must be an integer >= 1, not {concurrency!r}")
        if not batchers:
            raise ConfigError("a worker needs at least one batcher")
        served: list[Served] = [BatchQueue(b) if isinstance(b, Batcher) else JobQueue(b) for b in batchers]
        names = [s.name for s in served]
        if len(set(names)) != len(names):
            raise ConfigError(f"batcher names must be unique in a worker: {names}")
        for batcher in batchers:
            if isinstance(batcher, Batcher) and batcher.handler_fn is None:
                raise ConfigError(f"batcher {batcher.name!r} has no handler")
            if isinstance(batcher, Jobs) and not batcher.functions:
                raise ConfigError(f"job queue {batcher.name!r} has no function")
            if batcher.store is not store:
                raise ConfigError(f"{batcher!r} uses another store than the worker")
        self.store = store
        # Claims and acknowledgements on the loop itself where the store can (Redis): the
        # busiest store calls, with no thread hop around them.
        self._loop_calls = store if isinstance(store, LoopCalls) and store.calls_on_loop() else None
        self.batchers = list(batchers)
        self._served = served
        self.concurrency = concurrency
        self.clock = clock
        self.handle_signals = handle_signals
        self.hooks = hooks if hooks is not None else WorkerHooks()
        self._hooked = type(self.hooks) is not WorkerHooks  # the bare class's hooks do nothing
        self.counters = WorkerCounters()
        self._running: dict[str, _Running] = {}  # by batch id: handlers running, outcomes being written
        self._handling = 0  # of those, the ones whose handler has not returned: what concurrency caps
        self._waiting: deque[_Running] = deque()  # claimed ahead, for the next free slot
        self._handler_seconds = QUICK_HANDLER  # how long handlers take, a moving average
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested = threading.Event()
        self._stop_event: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._signals = 0
        self._abandoning = False
        self._acks: dict[str, list[tuple[Any, _Running]]] = {}  # outcomes to acknowledge, by name
        self._ackers: dict[str, asyncio.Task[None]] = {}
        self._published: set[str] = set()  # batchers whose rules this worker published
        self.started = threading.Event()

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> None:
        """Run until stopped. Blocks; call from a process's main thread to get signals.

        Runs ``run_async`` in a new event loop (``asyncio.run``), so it cannot be called
        from a thread whose event loop is running: await ``run_async`` there. Returns once
        the worker stopped and its in-flight batches finished (or were abandoned). Store
        failures are logged and retried, not raised.
        """
        asyncio.run(self.run_async())

    def stop(self, *, abandon: bool = False) -> None:
        """Ask the worker to stop: no new claims, in-flight batches finish. Thread-safe.

        Returns at once, without waiting for ``run()`` to return. Called before ``run()``,
        the worker publishes its rules and returns without claiming anything. Safe from any
        thread, a handler or a hook included.

        Args:
            abandon: Give in-flight batches up instead of letting them finish: ``run()``
                returns at once, and their leases lapse so another worker reclaims them (see
                the class docstring). Default False.
        """
        self._stop_requested.set()
        loop, event = self._loop, self._stop_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # the loop already closed: run() returned
                loop.call_soon_threadsafe(event.set)
                if abandon:
                    loop.call_soon_threadsafe(self._abandon)

    def _abandon(self) -> None:
        """Give every in-flight batch up to its lease: its outcome, if it comes, is dropped."""
        self._abandoning = True
        for running in list(self._running.values()):
            running.gone = True
            if running.task is not None:
                running.task.cancel()
            if running.timer is not None:
                running.timer.cancel()
            if not (running.settling or running.waiting):
                self._handling -= 1
            self.counters.abandoned += 1
            fields = batch_fields(running.served.name, running.claimed)
            log.warning("batch %s abandoned; its lease will lapse", fields["batch_id"], extra=fields)
        self._running.clear()
        self._waiting.clear()
        if self._changed is not None:
            self._changed.set()

    async def run_async(self) -> None:
        """Run until stopped, on the running event loop: ``run`` for async applications.

        Async handlers and hooks run on this loop, so nothing else on it may block for long
        (a blocked loop stops heartbeats and loses leases). Store calls and sync handlers
        run on the worker's own threads. Signal handlers are installed on this loop when
        ``handle_signals`` is set and this is the main thread.

        To stop it, call ``stop()`` and await it. Cancelling its task (an application
        shutting down) abandons in-flight batches, as ``stop(abandon=True)`` does: their
        handlers are cancelled (a sync handler's thread cannot be, and runs on unrecorded),
        their leases lapse and another worker runs them again; then the cancellation
        propagates.
        """
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        self._changed = asyncio.Event()
        if self._stop_requested.is_set():
            self._stop_event.set()
        self._store_pool = DaemonThreadPool(6, thread_name_prefix="redbatch-store")
        self._handler_pool = DaemonThreadPool(self.concurrency, thread_name_prefix="redbatch-handler")
        self._wake_pool = ThreadPoolExecutor(1, thread_name_prefix="redbatch-wake")
        self._install_signal_handlers()
        await self._sync_rules()  # before serving: claims and producers then follow these rules
        waiter = self.store.waiter([s.name for s in self._served])
        background = [
            asyncio.create_task(self._heartbeat_loop(), name="redbatch-heartbeat"),
            asyncio.create_task(self._janitor_loop(), name="redbatch-janitor"),
            asyncio.create_task(self._rules_loop(), name="redbatch-rules"),
        ]
        log.info(
            "worker started on %s: %s, concurrency %d",
            self.store.url,
            [s.name for s in self._served],
            self.concurrency,
        )
        self.started.set()
        try:
            await self._serve(waiter)
            await self._drain()
        except asyncio.CancelledError:
            # Cancelled from outside: give in-flight batches up to their leases rather than
            # leave their handlers running with no loop left to record their outcome.
            self._abandon()
            await self._drain()
            raise
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            waiter.close()
            self._remove_signal_handlers()
            self._handler_pool.shutdown(wait=False, cancel_futures=True)
            self._wake_pool.shutdown(wait=False, cancel_futures=True)
            self._store_pool.shutdown(wait=True)
            self._loop = None
            log.info("worker stopped")

    def _install_signal_handlers(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            self.handle_signals = False
            return
        assert self._loop is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._on_signal, sig)

    def _remove_signal_handlers(self) -> None:
        if self.handle_signals and self._loop is not None:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("%s: finishing %d in-flight batches, claiming nothing new", sig.name, len(self._running))
            self.stop()
            return
        log.warning("%s again: abandoning %d in-flight batches to their leases", sig.name, len(self._running))
        self.stop(abandon=True)

    # ------------------------------------------------------------------ scheduling

    async def _serve(self, waiter: Waiter) -> None:
        assert self._stop_event is not None and self._changed is not None
        wake: asyncio.Future[bool] | None = None
        rotation = 0
        while not self._stop_event.is_set():
            self._changed.clear()
            claimed = await self._claim_round(rotation)
            rotation += 1
            if claimed and self._free_slots() > 0:
                continue
            timeout = await self._time_to_next_due()
            if wake is None or wake.done():
                wake = self._loop_().run_in_executor(self._wake_pool, waiter.wait, MAX_SLEEP)
            await self._wait_any(wake, timeout)

    async def _wait_any(self, wake: asyncio.Future[bool], timeout: float) -> None:
        assert self._stop_event is not None and self._changed is not None
        changed = asyncio.ensure_future(self._changed.wait())
        stopped = asyncio.ensure_future(self._stop_event.wait())
        waits: set[asyncio.Future[Any]] = {wake, changed, stopped}
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
            stopped.cancel()

    def _free_slots(self) -> int:
        """Batches to claim now: a slot is a handler's, from its claim until it returns.

        A batch whose outcome is being written holds no slot (its handler is done), so the
        next claim overlaps the last acknowledgement; at most ``concurrency`` such batches
        wait on the store, which keeps a slow store from piling them up. While handlers are
        quick (``QUICK_HANDLER``), the worker also claims up to ``concurrency`` batches
        ahead, which start the moment a slot frees: the next claim's round trip overlaps the
        handlers instead of following them. Slow handlers get none, so no batch waits here
        behind them while another worker could run it.
        """
        ahead = self.concurrency if self._handler_seconds < QUICK_HANDLER else 0
        slots = self.concurrency + ahead - self._handling - len(self._waiting)
        slots = min(slots, 2 * self.concurrency + ahead - len(self._running))
        if self._waiting and 2 * slots < self.concurrency:
            return 0  # batches claimed ahead feed the slots meanwhile: claim more at once, later
        return slots

    async def _claim_round(self, rotation: int) -> int:
        free = self._free_slots()
        if free <= 0:
            return 0
        if len(self._served) == 1:
            shares = [(self._served[0], free)]  # the store serves its keys in deadline order
        else:
            shares = await self._shares(free, rotation)
        claimed = 0
        for served, share in shares:
            try:
                if self._loop_calls is not None:
                    batches = await self._loop_calls.claim_due_async(served.spec, self.clock(), share)
                else:
                    batches = await self._call(self.store.claim_due, served.spec, self.clock(), share)
            except Exception as exc:  # noqa: BLE001 - a store failure never kills the worker
                log.error("claiming from %s failed: %s", served.name, exc)
                await asyncio.sleep(STORE_ERROR_PAUSE)
                continue
            for batch in batches:
                self._start(served, batch)
            claimed += len(batches)
        return claimed

    async def _shares(self, free: int, rotation: int) -> list[tuple[Served, int]]:
        """Share ``free`` slots among the batchers earliest deadline first.

        Each batcher gets as many slots as it holds of the ``free`` earliest due deadlines
        across all of them, so when the worker cannot keep up, waits grow evenly and no
        batcher starves behind another. Equal deadlines go to the batchers in turn.
        """
        now = self.clock()
        try:
            deadlines = await asyncio.gather(
                *(self._call(self.store.due_deadlines, s.spec, now, free) for s in self._served)
            )
        except Exception as exc:  # noqa: BLE001 - a store failure never kills the worker
            log.error("reading due deadlines failed: %s", exc)
            await asyncio.sleep(STORE_ERROR_PAUSE)
            return []
        count = len(self._served)
        earliest = heapq.nsmallest(
            free,
            ((due, (i - rotation) % count, i) for i, scores in enumerate(deadlines) for due in scores),
        )
        shares = Counter(i for *_, i in earliest)  # first seen first: the most overdue claims first
        return [(self._served[i], share) for i, share in shares.items()]

    async def _time_to_next_due(self) -> float:
        if self._free_slots() <= 0:
            return MAX_SLEEP  # woken by a finished handler
        soonest: int | None = None
        for served in self._served:
            try:
                due = await self._call(self.store.next_due_ms, served.spec)
            except Exception as exc:  # noqa: BLE001 - a store failure never kills the worker
                log.error("reading deadlines of %s failed: %s", served.name, exc)
                return STORE_ERROR_PAUSE
            if due is not None and (soonest is None or due < soonest):
                soonest = due
        if soonest is None:
            return MAX_SLEEP
        return min(MAX_SLEEP, max(0.001, (soonest - self.clock()) / 1000))

    # ------------------------------------------------------------------ running batches

    def _start(self, served: Served, claimed: ClaimedBatch) -> None:
        existing = self._running.get(claimed.lease.batch_id)
        if existing is not None and existing.settling:
            # Claimed again (a retry due at once) while its last attempt's failure is still
            # being written here: it starts once that is recorded, so hooks and counters
            # see the attempts in order.
            existing.then = (served, claimed)
            return
        self.counters.claimed += 1
        if self._hooked:
            self._hook(self.hooks.batch_claimed, served.source, claimed)
        if existing is not None:
            # This worker lost the lease (a store outage stopped its heartbeats) and won it
            # back: the handler still runs here, so it takes the new lease instead of a
            # second run of the same batch beside it.
            existing.claimed = claimed
            existing.lost = False
            log.info(
                "re-leased batch %s, still running here",
                claimed.lease.batch_id,
                extra=batch_fields(served.name, claimed),
            )
            return
        running = _Running(served, claimed)
        self._running[claimed.lease.batch_id] = running
        if self._handling < self.concurrency:
            self._begin(running)
        else:  # claimed ahead: it starts the moment a slot frees
            running.waiting = True
            self._waiting.append(running)

    def _begin(self, running: _Running) -> None:
        """Run a claimed batch's handler in a slot of its own."""
        self._handling += 1
        served, claimed = running.served, running.claimed
        call = served.sync_call(claimed)
        if call is None:  # an async handler: a task on the loop
            running.task = asyncio.create_task(self._run(running), name=f"redbatch-{claimed.lease.batch_id}")
            return
        if call.timeout is not None:
            running.timer = self._loop_().call_later(call.timeout, passed_timeout, call.label, call.timeout)
        self._handler_pool.call_then(call.run, functools.partial(self._ran, running))

    def _ran(self, running: _Running, error: BaseException | None, ran: Attempt | Awaiting | None) -> None:
        """On the loop: a ``SyncCall`` returned (or raised ``error``)."""
        if running.timer is not None:
            running.timer.cancel()
        if running.gone:  # abandoned while its thread ran
            return
        if error is not None:
            self._unrecorded(running, error)
        elif isinstance(ran, Awaiting):  # a sync-looking handler returned a coroutine
            running.task = asyncio.create_task(self._run(running, ran), name=f"redbatch-{running.batch_id}")
        else:
            assert ran is not None
            self._attempted(running, ran)

    async def _run(self, running: _Running, awaiting: Awaiting | None = None) -> None:
        """An attempt that runs on the loop: an async handler's, or the rest of a sync one's."""
        try:
            if awaiting is None:
                attempt = await running.served.attempt(running.claimed, self._handler_pool)
            else:
                attempt = await awaiting.finish()
        except asyncio.CancelledError:
            return  # abandoned: ``_abandon`` counted it
        except Exception as exc:  # noqa: BLE001 - a batch's trouble never ends the worker
            self._unrecorded(running, exc)
            return
        self._attempted(running, attempt)

    def _attempted(self, running: _Running, attempt: Attempt) -> None:
        """The handler returned: free its slot and write the outcome (a success goes with the
        next acknowledgement; a failure has a task of its own)."""
        served, claimed = running.served, running.claimed
        if (run := attempt.run) is not None and self._hooked:
            self._hook(
                self.hooks.handler_finished, served.source, claimed, run.duration, run.outcome, run.error
            )
        if run is not None:  # how quick handlers are decides whether to claim ahead
            self._handler_seconds += (run.duration - self._handler_seconds) * QUICK_WEIGHT
        running.settling = True
        self._slot_freed()  # the next batch starts, or is claimed, while this one is written
        if attempt.failure is None:
            self._finish(served, attempt.done_under(claimed.lease), running)
        else:
            running.task = asyncio.create_task(
                self._fail(running, attempt.failure), name=f"redbatch-{running.batch_id}"
            )

    async def _fail(self, running: _Running, failure: Failure) -> None:
        served, claimed = running.served, running.claimed
        lease = claimed.lease
        now = self.clock()
        retry_at = served.retry_at(claimed, now) if failure.retryable else None
        try:
            held = await self._call(
                self.store.fail, served.spec, lease, now, failure.error, retry_at, failure.keep
            )
        except asyncio.CancelledError:
            return  # abandoned: ``_abandon`` counted it
        except Exception as exc:  # noqa: BLE001 - the lease lapses and the batch is retried
            self._unrecorded(running, exc)
            return
        log.warning(
            "batch %s of %s/%s failed (attempt %d): %s",
            lease.batch_id,
            served.name,
            lease.key,
            claimed.attempt,
            failure.error.strip().splitlines()[-1],
            extra=batch_fields(served.name, claimed),
        )
        self._settled(running, "retried" if retry_at is not None else "dead", held)

    def _settled(self, running: _Running, outcome: SettleOutcome, held: bool) -> None:
        """The store took the outcome (``held``) or refused it: the batch is done here."""
        served, claimed = running.served, running.claimed
        if not held:
            self.counters.refused += 1
            lease = claimed.lease
            log.warning(
                "batch %s of %s/%s was reclaimed by another worker; %s refused",
                lease.batch_id,
                served.name,
                lease.key,
                outcome,
                extra=batch_fields(served.name, claimed),
            )
            outcome = "refused"
        elif outcome == "acked":
            self.counters.succeeded += 1
        elif outcome == "retried":
            self.counters.retried += 1
        else:
            self.counters.dead_lettered += 1
        if self._hooked:
            self._hook(self.hooks.batch_settled, served.source, claimed, outcome)
        self._forget(running)

    def _unrecorded(self, running: _Running, exc: BaseException) -> None:
        """The attempt's outcome could not be written (or worked out): the lease lapses and
        the batch is retried."""
        fields = batch_fields(running.served.name, running.claimed)
        if isinstance(exc, StoreUnavailable):
            log.error("could not record the outcome of batch %s: %s", fields["batch_id"], exc, extra=fields)
        else:
            log.error(
                "could not record the outcome of batch %s", fields["batch_id"], exc_info=exc, extra=fields
            )
        if not running.settling:
            self._slot_freed()
        self._forget(running)

    def _slot_freed(self) -> None:
        """A handler returned: its slot goes to the first batch claimed ahead, if any."""
        self._handling -= 1
        while self._waiting and self._handling < self.concurrency:
            running = self._waiting.popleft()
            running.waiting = False
            if running.lost:  # its lease lapsed while it waited: another worker runs it
                self._forget(running)
            else:
                self._begin(running)
        self._changed_().set()

    def _forget(self, running: _Running) -> None:
        if self._running.get(running.batch_id) is running:
            del self._running[running.batch_id]
        self._changed_().set()
        if running.then is not None:  # its next attempt, claimed meanwhile
            self._start(*running.then)

    def _finish(self, served: Served, result: Any, running: _Running) -> None:
        """Acknowledge with group commit: batches (or jobs) that finish while an
        acknowledgement is on its way to the store go together in the next one, one round
        trip (one SQLite transaction) for many. ``result`` is what ``served.finish`` takes:
        a batch's lease (``ack``), or a job's outcome (``finish_jobs``)."""
        self._acks.setdefault(served.name, []).append((result, running))
        if served.name not in self._ackers:
            task = asyncio.create_task(self._ack_loop(served), name=f"redbatch-ack-{served.name}")
            self._ackers[served.name] = task

    async def _ack_loop(self, served: Served) -> None:
        # Single-threaded asyncio: nothing runs between the emptiness check and the ``finally``,
        # so an acknowledgement queued after the last round always finds this task or a new one.
        try:
            while pending := self._acks.get(served.name):
                group, self._acks[served.name] = pending[:ACK_GROUP], pending[ACK_GROUP:]
                results = [result for result, _ in group]
                try:
                    if self._loop_calls is not None:
                        held = await served.finish_async(self._loop_calls, results, self.clock())
                    else:
                        held = await self._call(served.finish, results, self.clock())
                except Exception as exc:  # noqa: BLE001 - the outcome of every batch in the group
                    for _, running in group:
                        if not running.gone:
                            self._unrecorded(running, exc)
                    continue
                for (_, running), ok in zip(group, held, strict=True):
                    if not running.gone:  # abandoned while on its way
                        self._settled(running, "acked", ok)
        finally:
            del self._ackers[served.name]

    async def _heartbeat_loop(self) -> None:
        while True:
            # Read each round: adopted rules may have shortened a lease.
            await asyncio.sleep(min(s.spec.lease_ms for s in self._served) / 3000)
            for served in self._served:
                runs = [r for r in list(self._running.values()) if r.served is served and not r.lost]
                if not runs:
                    continue
                leases = [r.claimed.lease for r in runs]
                try:
                    held = await self._call(
                        self.store.heartbeat, served.spec, leases, self.clock() + served.spec.lease_ms
                    )
                except Exception as exc:  # noqa: BLE001 - a heartbeat loop must outlive store errors
                    log.error("heartbeat for %s failed: %s", served.name, exc)
                    continue
                for run, ok in zip(runs, held, strict=True):
                    if not ok and not run.settling:
                        run.lost = True
                        log.warning(
                            "lost the lease of batch %s of %s/%s",
                            run.claimed.lease.batch_id,
                            served.name,
                            run.claimed.lease.key,
                            extra=batch_fields(served.name, run.claimed),
                        )
                        self._hook(self.hooks.lease_lost, served.source, run.claimed)

    async def _janitor_loop(self) -> None:
        while True:
            # Old dead letters of batchers; finished jobs and groups past their retention.
            for served in self._served:
                try:
                    await self._call(served.housekeeping, self.clock())
                except Exception as exc:  # noqa: BLE001 - housekeeping must outlive store errors
                    log.error("cleaning up old records of %s failed: %s", served.name, exc)
            await asyncio.sleep(JANITOR_INTERVAL)

    async def _rules_loop(self) -> None:
        while True:
            await asyncio.sleep(RULES_REFRESH)
            await self._sync_rules()

    async def _sync_rules(self) -> None:
        """Publish each batcher's configured rules once, then adopt whatever the store holds.

        The last worker to start defines a batcher's rules: workers started before it adopt
        them here within ``RULES_REFRESH`` seconds, producers at their next add. A store
        failure is logged and the batcher tried again next round.
        """
        for served in self._served:
            try:
                stored = None
                if served.name in self._published:
                    stored = await self._call(self.store.stored_rules, served.name)
                if stored is None:  # not yet published, or the record is gone (a flushed Redis)
                    await self._publish_rules(served)
                else:
                    served.adopt_rules(stored)
            except Exception as exc:  # noqa: BLE001 - a store failure never kills the worker
                log.error("publishing or reading the rules of %s failed: %s", served.name, exc)

    async def _publish_rules(self, served: Served) -> None:
        rules = served.configured
        previous = await self._call(self.store.publish_rules, rules, self.clock())
        self._published.add(served.name)
        served.adopt_rules(rules)
        if previous is None:
            log.info("batcher %s: published its rules {%s}", served.name, rules.describe())
        elif previous.version != rules.version:
            log.warning(
                "batcher %s: published {%s}, replacing {%s}; waiting keys rescheduled, producers "
                "and other workers adopt them",
                served.name,
                rules.describe(),
                previous.describe(),
            )

    async def _drain(self) -> None:
        if self._abandoning:  # some may have started after the abandon, in a last claim round
            self._abandon()
        if self._running:
            log.info("waiting for %d in-flight batches", len(self._running))
        while self._running:  # each batch's end sets ``_changed``
            self._changed_().clear()
            await self._changed_().wait()

    # ------------------------------------------------------------------ helpers

    def _hook(self, hook: Callable[P, None], *args: P.args, **kwargs: P.kwargs) -> None:
        """Call a hook; its failure is logged, never a batch's failure nor the worker's end."""
        try:
            hook(*args, **kwargs)
        except (asyncio.CancelledError, KeyboardInterrupt):
            raise  # the worker's own cancellation, or a real Ctrl-C on the loop's thread
        except BaseException:
            log.exception("worker hook %s failed", getattr(hook, "__name__", hook))

    def _loop_(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def _changed_(self) -> asyncio.Event:
        assert self._changed is not None
        return self._changed

    async def _call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a blocking store call on the store pool; typed, so a protocol change shows."""
        return await self._store_pool.call(fn, *args, **kwargs)
