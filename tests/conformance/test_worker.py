"""The Worker end to end on every store: real clock, real threads, bounded by deadlines."""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest

import redbatch
from redbatch import Batch, Batcher, Worker
from redbatch.hooks import HandlerOutcome, SettleOutcome, WorkerHooks
from redbatch.stores.base import LoopCalls, Store
from redbatch.types import ClaimedBatch, Entry
from tests.conftest import FakeClock

DEADLINE = 30.0


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        time.sleep(0.01)


@contextmanager
def running(worker: Worker) -> Iterator[Worker]:
    """Run ``worker`` in a thread for the block; fail if it does not stop, or died of an error."""
    died: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:  # SystemExit too: a worker must outlive its handlers
            died.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert worker.started.wait(10)
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(DEADLINE)
        assert not thread.is_alive(), "worker did not stop"
        assert not died, f"Worker.run() raised {died[0]!r}"


class Recorder:
    """A handler that records every batch and checks one batch per key at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.batches: list[Batch] = []
        self.busy: set[str] = set()
        self.overlaps = 0

    def __call__(self, batch: Batch) -> None:
        with self.lock:
            if batch.key in self.busy:
                self.overlaps += 1
            self.busy.add(batch.key)
        time.sleep(0.001)
        with self.lock:
            self.busy.discard(batch.key)
            self.batches.append(batch)

    def items(self) -> int:
        with self.lock:
            return sum(len(b.items) for b in self.batches)


def test_concurrent_producers_lose_and_duplicate_nothing(store: Store) -> None:
    b = Batcher(store, "feedback", max_items=20, max_wait=0.05, lease=5)
    recorder = Recorder()
    b.handler(recorder)
    producers, per_producer, keys = 4, 300, 40

    def produce(p: int) -> None:
        for seq in range(0, per_producer, 3):
            b.add(f"k{seq % keys}", {"p": p, "seq": seq})
            b.add_many([(f"k{(seq + i) % keys}", {"p": p, "seq": seq + i}) for i in (1, 2)])

    with running(Worker(store, [b], concurrency=8, handle_signals=False)):
        threads = [threading.Thread(target=produce, args=(p,)) for p in range(producers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: recorder.items() >= producers * per_producer)
    delivered = [(i["p"], i["seq"]) for batch in recorder.batches for i in batch.items]
    assert sorted(delivered) == sorted((p, s) for p in range(producers) for s in range(per_producer))
    assert recorder.overlaps == 0
    last_seen: dict[tuple[str, int], int] = defaultdict(lambda: -1)
    for batch in recorder.batches:  # arrival order within a key, per producer
        for item in batch.items:
            assert item["seq"] > last_seen[batch.key, item["p"]]
            last_seen[batch.key, item["p"]] = item["seq"]
    assert b.stats().buffered_items == 0


def test_async_handlers_run_on_the_loop(store: Store) -> None:
    b = Batcher(store, "chat", max_items=3, max_wait=0.05)
    seen: list[list[Any]] = []

    @b.handler
    async def reply(batch: Batch) -> None:
        await asyncio.sleep(0.001)
        seen.append(batch.items)

    with running(Worker(store, [b], handle_signals=False)):
        b.add_many([("chat-1", "hi"), ("chat-1", "there"), ("chat-2", "yo")])
        wait_until(lambda: sum(map(len, seen)) == 3)
    assert sorted(seen) == [["hi", "there"], ["yo"]]


def test_a_failing_handler_is_retried_then_dead_lettered_and_the_worker_lives(store: Store) -> None:
    b = Batcher(store, "sink", max_items=10, max_wait=0, max_attempts=3, backoff=0.01)
    attempts: dict[str, list[int]] = defaultdict(list)

    @b.handler
    def save(batch: Batch) -> None:
        attempts[batch.key].append(batch.attempt)
        if batch.key == "poison":
            raise ValueError("cannot store this")

    with running(Worker(store, [b], handle_signals=False)):
        b.add("poison", {"x": 1})
        wait_until(lambda: b.stats().dead == 1)
        b.add("fine", 2)
        wait_until(lambda: attempts["fine"] == [1])
    assert attempts["poison"] == [1, 2, 3]
    (dead,) = b.dead_letters()
    assert dead.items == [{"x": 1}] and dead.attempts == 3
    assert "ValueError: cannot store this" in dead.error


def test_graceful_stop_finishes_in_flight_and_claims_nothing_new(store: Store) -> None:
    b = Batcher(store, "slow", max_items=1, max_wait=0)
    started, release = threading.Event(), threading.Event()
    done: list[Any] = []

    @b.handler
    def slow(batch: Batch) -> None:
        started.set()
        release.wait(DEADLINE)
        done.extend(batch.items)

    worker = Worker(store, [b], concurrency=1, handle_signals=False)
    thread = threading.Thread(target=worker.run)
    thread.start()
    b.add("k", "in flight")
    assert started.wait(DEADLINE)
    b.add("k2", "not yet claimed")
    worker.stop()
    release.set()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    assert done == ["in flight"]
    stats = b.stats()
    assert (stats.flushed_batches, stats.in_flight, stats.buffered_items) == (1, 0, 1)


def test_a_heartbeat_keeps_a_long_handler_from_running_twice(store: Store) -> None:
    b = Batcher(store, "long", max_items=1, max_wait=0, lease=0.3)
    calls: list[int] = []

    @b.handler
    def long_running(batch: Batch) -> None:
        calls.append(batch.attempt)
        time.sleep(1.2)  # the work itself: four lease lengths

    with running(Worker(store, [b], concurrency=2, handle_signals=False)) as worker:
        b.add("k", 1)
        wait_until(lambda: b.stats().flushed_batches == 1)
    assert calls == [1]
    assert worker.counters.refused == 0


def test_a_handler_past_its_timeout_is_retried(store: Store) -> None:
    b = Batcher(store, "hangs", max_items=1, max_wait=0, timeout=0.2, backoff=0.01, max_attempts=2)
    calls: list[int] = []

    @b.handler
    async def hang(batch: Batch) -> None:
        calls.append(batch.attempt)
        await asyncio.sleep(DEADLINE)

    with running(Worker(store, [b], handle_signals=False)):
        b.add("k", 1)
        wait_until(lambda: b.stats().dead == 1)
    assert calls == [1, 2]
    assert "timed out" in b.dead_letters()[0].error


def test_corrupt_data_goes_to_dead_letters_without_stopping_the_worker(store: Store) -> None:
    b = Batcher(store, "corrupt", max_items=1, max_wait=0)
    seen: list[Any] = []
    b.handler(lambda batch: seen.extend(batch.items))
    with running(Worker(store, [b], handle_signals=False)):
        store.append(b.spec, [Entry("bad", b"{not json", "")], b.clock())
        wait_until(lambda: b.stats().dead == 1)
        b.add("good", 1)
        wait_until(lambda: seen == [1])
    (dead,) = store.dead_letters(b.spec, 10, 0)
    assert dead.error.startswith("corrupt data") and dead.attempts == 1
    assert dead.payloads == (b"{not json",)


def test_one_worker_serves_several_batchers(store: Store) -> None:
    got: dict[str, list[Any]] = defaultdict(list)
    batchers = []
    for name in ("one", "two", "three"):
        batcher = Batcher(store, name, max_items=2, max_wait=0.02)
        batcher.handler(lambda batch, name=name: got[name].extend(batch.items))
        batchers.append(batcher)
    with running(Worker(store, batchers, concurrency=2, handle_signals=False)):
        for batcher in batchers:
            batcher.add_many([("k", orjson.loads(b"1")), ("j", 2), ("k", 3)])
        wait_until(lambda: all(len(got[b.name]) == 3 for b in batchers))
    assert all(sorted(got[b.name]) == [1, 2, 3] for b in batchers)


def test_add_async(store: Store) -> None:
    b = Batcher(store, "async-producer", max_wait=60)

    async def produce() -> None:
        await b.add_async("k", 1)
        await b.add_many_async([("k", 2), ("j", 3)])

    asyncio.run(produce())
    assert [p.value for p in b.peek("k")] == [1, 2]


def test_a_poison_item_does_not_sink_its_batch(store: Store) -> None:
    b = Batcher(store, "partial", max_items=10, max_wait=0.05, max_attempts=2, backoff=0.01)
    stored: list[Any] = []
    calls: list[tuple[str, list[Any]]] = []

    @b.handler
    def save(batch: Batch) -> None:
        calls.append((batch.id, list(batch.items)))
        poison = [i for i, item in enumerate(batch.items) if item == "poison"]
        stored.extend(item for item in batch.items if item != "poison")
        if poison:
            raise redbatch.ItemsFailed(poison, "cannot parse")

    with running(Worker(store, [b], handle_signals=False)):
        b.add_many([("k", "a"), ("k", "poison"), ("k", "b")])
        wait_until(lambda: b.stats().dead == 1)
    assert stored == ["a", "b"]
    assert [items for _, items in calls] == [["a", "poison", "b"], ["poison"]]
    assert len({batch_id for batch_id, _ in calls}) == 1  # one batch id throughout
    (dead,) = b.dead_letters()
    assert dead.items == ["poison"] and "cannot parse" in dead.error


@pytest.mark.parametrize(
    ("mutate", "named", "retried"),
    [
        ("clear", [1], ["poison"]),  # was read as outside an empty batch: all three retried
        ("append", [3], ["a", "poison", "b"]),  # index 3 is not in the batch handed over
        ("replace", [0], ["a"]),  # was read as the whole (one-item) batch failing
    ],
)
def test_items_failed_indexes_refer_to_the_batch_as_handed_over(
    store: Store, mutate: str, named: list[int], retried: list[Any]
) -> None:
    b = Batcher(store, "mutating", max_items=3, max_wait=60, max_attempts=2, backoff=0.01, lease=1)
    calls: list[list[Any]] = []

    @b.handler
    def save(batch: Batch) -> None:
        calls.append(list(batch.items))
        if batch.attempt > 1:
            return
        if mutate == "clear":
            batch.items.clear()
        elif mutate == "append":
            batch.items.append("extra")
        else:
            batch.items[:] = ["z"]
        raise redbatch.ItemsFailed(named, "partly failed")

    with running(Worker(store, [b], handle_signals=False)) as worker:
        b.add_many([("k", "a"), ("k", "poison"), ("k", "b")])  # full: due at once
        wait_until(lambda: b.stats().flushed_batches == 1, timeout=10)
    assert calls == [["a", "poison", "b"], retried]
    assert (worker.counters.retried, worker.counters.succeeded) == (1, 1)
    stats = b.stats()
    assert (stats.flushed_items, stats.buffered_items, stats.dead) == (3, 0, 0)


@pytest.mark.parametrize("named", [["a", 1], [[1]], [1.0]], ids=["str", "unhashable", "float"])
def test_items_failed_with_indexes_that_are_not_integers_fails_the_whole_attempt(
    store: Store, named: list[Any]
) -> None:
    """Before, sorting or hashing them raised inside the worker: the outcome was never
    recorded and the batch waited out its lease."""
    b = Batcher(store, "bad-indexes", max_items=2, max_wait=60, max_attempts=1, lease=30)

    @b.handler
    def save(batch: Batch) -> None:
        raise redbatch.ItemsFailed(named, "partly failed")

    with running(Worker(store, [b], handle_signals=False)):
        b.add_many([("k", "a"), ("k", "b")])  # full: due at once
        wait_until(lambda: b.stats().dead == 1, timeout=10)
    (dead,) = b.dead_letters()
    assert dead.items == ["a", "b"] and "not integers" in dead.error


@pytest.mark.parametrize("error", [SystemExit, KeyboardInterrupt])
@pytest.mark.parametrize("kind", ["async-timeout", "async", "sync-timeout"])
def test_a_handler_raising_a_base_exception_fails_its_batch_and_the_worker_lives(
    store: Store, error: type[BaseException], kind: str
) -> None:
    timeout = None if kind == "async" else 5.0
    b = Batcher(store, "exits", max_items=1, max_wait=0, max_attempts=2, backoff=0.01, timeout=timeout)
    poison_failed = threading.Event()
    done: list[Any] = []

    def handle(batch: Batch) -> None:
        if batch.key == "poison":
            poison_failed.set()
            raise error("from the handler")
        assert poison_failed.wait(DEADLINE)  # in flight while the poison batch fails
        done.extend(batch.items)

    async def handle_async(batch: Batch) -> None:
        await asyncio.sleep(0)
        if batch.key == "poison":
            poison_failed.set()
            raise error("from the handler")
        while not poison_failed.is_set():
            await asyncio.sleep(0.005)
        done.extend(batch.items)

    b.handler(handle if kind.startswith("sync") else handle_async)
    with running(Worker(store, [b], handle_signals=False)):
        b.add("good", "in flight beside it")
        b.add("poison", "exits")
        wait_until(lambda: b.stats().dead == 1 and b.stats().flushed_batches == 1, timeout=10)
        b.add("after", "still served")
        wait_until(lambda: "still served" in done, timeout=10)
    assert done == ["in flight beside it", "still served"]
    (dead,) = b.dead_letters()
    assert dead.attempts == 2 and f"{error.__name__}: from the handler" in dead.error


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_a_cancelled_error_from_a_handler_is_a_failed_attempt_not_an_abandoned_batch(
    store: Store, kind: str
) -> None:
    b = Batcher(store, "cancels", max_items=1, max_wait=0, backoff=0.01, lease=30, timeout=5)
    attempts: list[int] = []

    def handle(batch: Batch) -> None:
        attempts.append(batch.attempt)
        if batch.attempt == 1:
            raise asyncio.CancelledError  # e.g. a client library's request was cancelled

    async def handle_async(batch: Batch) -> None:
        handle(batch)

    b.handler(handle_async if kind == "async" else handle)
    with running(Worker(store, [b], handle_signals=False)) as worker:
        b.add("k", 1)
        wait_until(lambda: b.stats().flushed_batches == 1, timeout=10)  # not after the 30 s lease
    assert attempts == [1, 2]
    assert (worker.counters.retried, worker.counters.succeeded) == (1, 1)


def test_a_handlers_own_timeout_error_is_not_reported_as_the_batchers_timeout(store: Store) -> None:
    b = Batcher(store, "own-timeout", max_items=1, max_wait=0, max_attempts=1, timeout=5)

    @b.handler
    async def call_a_service(batch: Batch) -> None:
        raise TimeoutError("the service did not answer")

    with running(Worker(store, [b], handle_signals=False)):
        b.add("k", 1)
        wait_until(lambda: b.stats().dead == 1, timeout=10)
    (dead,) = b.dead_letters()
    assert "TimeoutError: the service did not answer" in dead.error
    assert "timed out after" not in dead.error


class AsyncCallable:
    """A handler object whose ``__call__`` is ``async def``."""

    def __init__(self, save: Callable[[Batch], Awaitable[None]]) -> None:
        self.save = save

    async def __call__(self, batch: Batch) -> None:
        await self.save(batch)


def returns_coroutine(fn: Callable[[Batch], Awaitable[None]]) -> Callable[[Batch], Awaitable[None]]:
    """A decorator whose wrapper is a plain function that returns the coroutine."""

    @functools.wraps(fn)
    def wrapper(batch: Batch) -> Awaitable[None]:
        return fn(batch)

    return wrapper


ASYNC_LOOKING_HANDLERS: dict[str, Callable[[Callable[[Batch], Awaitable[None]]], Any]] = {
    "callable-object": AsyncCallable,
    "partial-of-callable-object": lambda save: functools.partial(AsyncCallable(save)),
    "lambda": lambda save: lambda batch: save(batch),  # noqa: PLW0108 - the shape under test
    "decorator": returns_coroutine,
    "partial": functools.partial,
}


@pytest.mark.parametrize("shape", ASYNC_LOOKING_HANDLERS)
def test_a_handler_that_returns_a_coroutine_has_it_awaited(store: Store, shape: str) -> None:
    b = Batcher(store, "awaited", max_items=2, max_wait=0.01, backoff=0.01)
    calls: list[tuple[int, list[Any]]] = []
    loop_threads: set[str] = set()

    async def save(batch: Batch) -> None:
        await asyncio.sleep(0)
        loop_threads.add(threading.current_thread().name)
        calls.append((batch.attempt, batch.items))
        if batch.attempt == 1:
            raise ValueError("the first attempt fails")

    b.handler(ASYNC_LOOKING_HANDLERS[shape](save))
    with running(Worker(store, [b], handle_signals=False)):
        b.add_many([("k", 1), ("k", 2)])
        wait_until(lambda: b.stats().flushed_batches == 1, timeout=10)
    assert calls == [(1, [1, 2]), (2, [1, 2])]
    assert not any(name.startswith("redbatch-handler") for name in loop_threads), loop_threads
    if shape.endswith("callable-object"):
        assert b.handler_is_async  # run on the loop directly, no handler thread


def test_the_timeout_applies_to_a_coroutine_a_sync_looking_handler_returns(store: Store) -> None:
    b = Batcher(store, "awaited-hang", max_items=1, max_wait=0, timeout=0.2, backoff=0.01, max_attempts=2)
    calls: list[int] = []

    async def hang(batch: Batch) -> None:
        calls.append(batch.attempt)
        await asyncio.sleep(DEADLINE)

    b.handler(lambda batch: hang(batch))  # noqa: PLW0108 - a sync-looking handler
    with running(Worker(store, [b], handle_signals=False)):
        b.add("k", 1)
        wait_until(lambda: b.stats().dead == 1, timeout=10)
    assert calls == [1, 2]
    assert "timed out after 0.2 seconds" in b.dead_letters()[0].error


def test_abandoning_returns_at_once_and_no_handler_thread_holds_the_process(store: Store) -> None:
    b = Batcher(store, "abandoned", max_items=1, max_wait=0, lease=30)
    started, release = threading.Event(), threading.Event()
    handler_threads: list[threading.Thread] = []

    @b.handler
    def stuck(batch: Batch) -> None:
        handler_threads.append(threading.current_thread())
        started.set()
        release.wait(DEADLINE)

    worker = Worker(store, [b], concurrency=2, handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        b.add("k", 1)
        assert started.wait(DEADLINE)
        worker.stop()  # the first signal: wait for in-flight batches
        worker.stop(abandon=True)  # the second: give them up
        thread.join(DEADLINE)
        assert not thread.is_alive(), "run() did not return"
        assert worker.counters.abandoned == 1
        # Interpreter exit joins non-daemon threads: a stuck handler would hold the process open.
        assert [t.daemon for t in handler_threads] == [True]
        assert b.stats().in_flight == 1  # left to its lease, for another worker to reclaim
    finally:
        release.set()


def test_cancelling_run_async_abandons_in_flight_batches_to_their_leases(store: Store) -> None:
    """An application shutting down cancels the worker's task: its async handlers are
    cancelled with it (before, they ran on with nothing to record their outcome), the batch
    is left to its lease for another worker, and the cancellation reaches the caller."""
    b = Batcher(store, "cancelled", max_items=1, max_wait=0, lease=30)
    started = threading.Event()
    outcome: list[str] = []

    @b.handler
    async def slow(batch: Batch) -> None:
        started.set()
        try:
            await asyncio.sleep(DEADLINE)
            outcome.append("finished")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    async def main() -> None:
        worker = Worker(store, [b], handle_signals=False)
        task = asyncio.create_task(worker.run_async())
        b.add("k", 1)
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert worker.counters.abandoned == 1

    asyncio.run(asyncio.wait_for(main(), DEADLINE))
    assert outcome == ["cancelled"]
    assert b.stats().in_flight == 1  # left to its lease, for another worker to reclaim


def deadline_ordered(store: Store, clock: FakeClock) -> tuple[list[Batcher], list[tuple[str, str]]]:
    """A busy and a quiet batcher with keys due one second apart; the keys in deadline order."""
    busy = Batcher(store, "busy", max_items=100, max_wait=10, clock=clock)
    quiet = Batcher(store, "quiet", max_items=100, max_wait=10, clock=clock)
    order = [("busy", f"b{i}") for i in range(5)] + [("quiet", "q0")] + [("busy", f"b{i}") for i in (5, 6)]
    order.insert(1, ("quiet", "q1"))
    for name, key in order:
        (busy if name == "busy" else quiet).add(key, key)
        clock.advance(1)
    clock.advance(10)  # every key is due; the clock stays here
    return [busy, quiet], order


def test_a_saturated_worker_serves_batchers_earliest_deadline_first(store: Store) -> None:
    clock = FakeClock()
    batchers, expected = deadline_ordered(store, clock)
    served: list[tuple[str, str]] = []
    for batcher in batchers:
        batcher.handler(lambda batch, name=batcher.name: served.append((name, batch.key)))
    with running(Worker(store, batchers, concurrency=1, clock=clock, handle_signals=False)):
        wait_until(lambda: len(served) == len(expected), timeout=10)
    assert served == expected


def test_free_slots_go_to_the_earliest_deadlines_whichever_batcher_holds_them(store: Store) -> None:
    clock = FakeClock()
    batchers, expected = deadline_ordered(store, clock)
    release = threading.Event()
    started: list[tuple[str, str]] = []

    def blocked(name: str) -> Callable[[Batch], None]:
        def handle(batch: Batch) -> None:
            started.append((name, batch.key))
            release.wait(DEADLINE)

        return handle

    for batcher in batchers:
        batcher.handler(blocked(batcher.name))
    with running(Worker(store, batchers, concurrency=3, clock=clock, handle_signals=False)):
        try:
            wait_until(lambda: len(started) == 3, timeout=10)
            assert sorted(started) == sorted(expected[:3])  # not three of the first batcher's
        finally:
            release.set()
        wait_until(lambda: len(started) == len(expected), timeout=10)


def test_a_worker_with_one_batcher_claims_without_reading_deadlines_first(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = Batcher(store, "alone", max_items=1, max_wait=0)
    seen: list[Any] = []
    b.handler(lambda batch: seen.extend(batch.items))
    reads: list[str] = []
    monkeypatch.setattr(store, "due_deadlines", lambda spec, *_: reads.append(spec.name) or [])
    with running(Worker(store, [b], handle_signals=False)):
        b.add("k", 1)
        wait_until(lambda: seen == [1], timeout=10)
    assert reads == []  # one store round trip per claim, as before


class RecordingHooks(WorkerHooks):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def batch_claimed(self, batcher: Batcher, claimed: ClaimedBatch) -> None:
        self.events.append(("claimed", claimed.lease.key, claimed.attempt))

    def handler_finished(
        self,
        batcher: Batcher,
        claimed: ClaimedBatch,
        duration: float,
        outcome: HandlerOutcome,
        error: BaseException | None,
    ) -> None:
        assert duration >= 0
        self.events.append(("finished", claimed.lease.key, outcome, type(error).__name__))

    def batch_settled(self, batcher: Batcher, claimed: ClaimedBatch, outcome: SettleOutcome) -> None:
        self.events.append(("settled", claimed.lease.key, outcome))

    def lease_lost(self, batcher: Batcher, claimed: ClaimedBatch) -> None:
        self.events.append(("lost", claimed.lease.key))

    def of(self, key: str) -> list[tuple[Any, ...]]:
        return [event[:1] + event[2:] for event in list(self.events) if event[1] == key]


def test_worker_hooks_see_claims_handler_runs_settlements_and_lost_leases(store: Store) -> None:
    clock = FakeClock()  # heartbeats extend leases from this clock, which stands still
    b = Batcher(store, "hooked", max_items=1, max_wait=0, max_attempts=2, backoff=0, lease=0.3, clock=clock)
    started, release = threading.Event(), threading.Event()

    @b.handler
    def handle(batch: Batch) -> None:
        if batch.key == "bad":
            raise ValueError("no")
        if batch.key == "stolen":
            started.set()
            release.wait(DEADLINE)

    hooks = RecordingHooks()
    with running(Worker(store, [b], clock=clock, hooks=hooks, handle_signals=False)):
        b.add_many([("ok", 1), ("bad", 2), ("stolen", 3)])
        try:
            assert started.wait(DEADLINE)
            wait_until(lambda: len(hooks.of("ok")) == 3 and len(hooks.of("bad")) == 6, timeout=10)
            # Another worker, 10 s later by its clock, finds the lease lapsed and takes the batch.
            (taken,) = store.claim_due(b.spec, clock.now + 10_000, 10)
            assert taken.lease.key == "stolen"
            wait_until(lambda: ("lost",) in hooks.of("stolen"), timeout=10)
        finally:
            release.set()
        wait_until(lambda: len(hooks.of("stolen")) == 4, timeout=10)
    assert hooks.of("ok") == [("claimed", 1), ("finished", "succeeded", "NoneType"), ("settled", "acked")]
    assert hooks.of("bad") == [
        ("claimed", 1), ("finished", "failed", "ValueError"), ("settled", "retried"),
        ("claimed", 2), ("finished", "failed", "ValueError"), ("settled", "dead"),
    ]  # fmt: skip
    assert hooks.of("stolen") == [
        ("claimed", 1), ("lost",), ("finished", "succeeded", "NoneType"), ("settled", "refused"),
    ]  # fmt: skip


@pytest.mark.parametrize("error", [RuntimeError, SystemExit])
def test_a_failing_hook_is_logged_and_the_batch_goes_on(
    store: Store, error: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenHooks(WorkerHooks):
        def batch_claimed(self, batcher: Batcher, claimed: ClaimedBatch) -> None:
            raise error("broken metrics")

        def batch_settled(self, batcher: Batcher, claimed: ClaimedBatch, outcome: SettleOutcome) -> None:
            raise error("broken metrics")

    b = Batcher(store, "badly-hooked", max_items=1, max_wait=0)
    seen: list[Any] = []
    b.handler(lambda batch: seen.extend(batch.items))
    with running(Worker(store, [b], hooks=BrokenHooks(), handle_signals=False)) as worker:
        b.add("k", 1)
        wait_until(lambda: b.stats().flushed_batches == 1, timeout=10)
        wait_until(lambda: "hook batch_settled failed" in caplog.text, timeout=10)
    assert seen == [1] and worker.counters.succeeded == 1
    assert "hook batch_claimed failed" in caplog.text


def _claim_limits(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the ``limit`` of every claim the worker makes."""
    limits: list[int] = []
    claim_due = store.claim_due

    def recorded(spec: Any, now_ms: int, limit: int) -> list[ClaimedBatch]:
        limits.append(limit)
        return claim_due(spec, now_ms, limit)

    monkeypatch.setattr(store, "claim_due", recorded)
    if isinstance(store, LoopCalls):  # the worker claims on its loop where the store can
        claim_due_async = store.claim_due_async

        async def recorded_async(spec: Any, now_ms: int, limit: int) -> list[ClaimedBatch]:
            limits.append(limit)
            return await claim_due_async(spec, now_ms, limit)

        monkeypatch.setattr(store, "claim_due_async", recorded_async)
    return limits


def test_quick_handlers_get_batches_claimed_ahead_and_each_runs_once(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = Batcher(store, "ahead", max_items=1, max_wait=0)
    b.add_many([(f"k{i}", i) for i in range(60)])
    limits = _claim_limits(store, monkeypatch)
    seen: list[int] = []
    running_now, most = 0, 0
    lock = threading.Lock()

    @b.handler
    def quick(batch: Batch) -> None:
        nonlocal running_now, most
        with lock:
            running_now += 1
            most = max(most, running_now)
        seen.extend(batch.items)
        with lock:
            running_now -= 1

    with running(Worker(store, [b], concurrency=2, handle_signals=False)):
        wait_until(lambda: len(seen) == 60, timeout=10)
    assert sorted(seen) == list(range(60))
    assert max(limits) > 2  # claimed beyond the free slots: ahead
    assert most <= 2  # yet never more handlers at once than the concurrency


def test_slow_handlers_get_nothing_claimed_ahead(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch claimed ahead would wait behind a slow handler while another worker could run it."""
    b = Batcher(store, "behind", max_items=1, max_wait=0)
    b.add_many([(f"k{i}", i) for i in range(6)])
    limits = _claim_limits(store, monkeypatch)
    seen: list[int] = []
    pause = threading.Event()

    @b.handler
    def slow(batch: Batch) -> None:
        pause.wait(0.02)  # never set: 20 ms, four times the quick mark
        seen.extend(batch.items)

    with running(Worker(store, [b], concurrency=2, handle_signals=False)):
        wait_until(lambda: len(seen) == 6, timeout=10)
    assert limits and max(limits) <= 2
