"""Coalesced adds: concurrent adds of one batcher share store calls, on every store."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from redbatch import Batcher, InvalidItem, StoreUnavailable
from redbatch.coalesce import MAX_BYTES, MAX_ENTRIES
from redbatch.stores.base import Store
from redbatch.types import Entry, QueueSpec
from tests.conformance.test_worker import DEADLINE, wait_until

THREADS = 16


class CountingStore:
    """The store, with the size of every append recorded and hooks run before the n-th one."""

    def __init__(self, store: Store, delay: float = 0.0) -> None:
        self.store = store
        self.delay = delay
        self.calls: list[int] = []
        self.threads: list[int] = []
        self.before: dict[int, Callable[[], None]] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def append(self, spec: QueueSpec, entries: Sequence[Entry], now_ms: int) -> None:
        self._count(entries)
        if self.delay:
            time.sleep(self.delay)  # a slow store, not synchronisation
        self.store.append(spec, entries, now_ms)

    def __getattribute__(self, name: str) -> Any:
        # append_async only where the store has it: a batcher looks for it to choose its path
        if name == "append_async" and not hasattr(object.__getattribute__(self, "store"), name):
            raise AttributeError(name)
        return object.__getattribute__(self, name)

    async def append_async(self, spec: QueueSpec, entries: Sequence[Entry], now_ms: int) -> None:
        self._count(entries)
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow store, not synchronisation
        await self.store.append_async(spec, entries, now_ms)  # type: ignore[attr-defined]

    def _count(self, entries: Sequence[Entry]) -> None:
        with self._lock:
            self.calls.append(len(entries))
            self.threads.append(threading.get_ident())
            number = len(self.calls)
        hook = self.before.get(number)
        if hook is not None:
            hook()


def batcher_on(store: Any, **options: Any) -> Batcher:
    options.setdefault("max_items", 100_000)
    options.setdefault("max_wait", 600.0)
    return Batcher(store, "co", **options)


def in_threads(count: int, body: Callable[[int], None]) -> dict[int, BaseException]:
    """Run ``body(i)`` on ``count`` threads started together; the exception of each that raised."""
    barrier = threading.Barrier(count)
    errors: dict[int, BaseException] = {}

    def run(index: int) -> None:
        barrier.wait(DEADLINE)
        try:
            body(index)
        except BaseException as exc:
            errors[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive(), "an add did not return"
    return errors


def pending(b: Batcher, key: str) -> list[Any]:
    return [p.value for p in b.peek(key, limit=100_000)]


def gate_first_call(counting: CountingStore, b: Batcher, waiting: int) -> threading.Event:
    """Hold the first append until ``waiting`` requests are queued (it included)."""
    gate = threading.Event()

    def hold() -> None:
        wait_until(lambda: b._coalescer.queued >= waiting)
        gate.set()

    counting.before[1] = hold
    return gate


def test_many_threads_adding_at_once_land_exactly_once_in_order(store: Store) -> None:
    counting = CountingStore(store)
    b = batcher_on(counting)
    per_thread = 40

    def add(thread: int) -> None:
        for n in range(per_thread):
            if n % 10 == 9:
                b.add_many([(f"k{(thread + n) % 3}", [thread, n, "many"]), ("k-many", [thread, n])])
            else:
                b.add(f"k{(thread + n) % 3}", [thread, n])

    assert in_threads(THREADS, add) == {}
    seen: dict[tuple[str, int], list[int]] = defaultdict(list)
    everything = []
    for key in ("k0", "k1", "k2", "k-many"):
        for item in pending(b, key):
            seen[key, item[0]].append(item[1])
            everything.append((key, tuple(item)))
    assert len(everything) == len(set(everything)) == THREADS * (per_thread + per_thread // 10)
    for numbers in seen.values():  # each thread's items, per key, in the order it added them
        assert numbers == sorted(numbers)
    assert sum(counting.calls) == len(everything) and len(counting.calls) <= THREADS * per_thread


def test_an_invalid_item_fails_only_its_own_caller(store: Store) -> None:
    counting = CountingStore(store)
    b = batcher_on(counting)
    gate_first_call(counting, b, THREADS - 1)  # all the valid adds share a call

    def add(thread: int) -> None:
        if thread == 3:
            b.add("k", {"bad": {1, 2}})
        else:
            b.add("k", thread)

    errors = in_threads(THREADS, add)
    assert list(errors) == [3] and isinstance(errors[3], InvalidItem)
    assert sorted(pending(b, "k")) == [t for t in range(THREADS) if t != 3]


def test_a_store_failure_reaches_every_caller_of_its_call(store: Store) -> None:
    counting = CountingStore(store)
    b = batcher_on(counting)
    gate_first_call(counting, b, THREADS)

    def fail_once() -> None:
        raise StoreUnavailable("the store went away for one call")

    counting.before[2] = fail_once  # the call carrying the 15 adds that queued behind the first
    errors = in_threads(THREADS, lambda thread: b.add("k", thread))
    assert counting.calls == [1, THREADS - 1]
    assert len(errors) == THREADS - 1
    assert all(isinstance(e, StoreUnavailable) for e in errors.values())
    (stored,) = pending(b, "k")
    assert stored not in errors
    b.add("k", "after")  # the failure ended with its call
    assert pending(b, "k") == [stored, "after"]


def test_the_rules_retry_covers_the_whole_group(store: Store) -> None:
    counting = CountingStore(store)
    b = batcher_on(counting)
    gate_first_call(counting, b, THREADS)
    newer = Batcher(store, "co", max_items=50, max_wait=600.0, dedupe=True)
    counting.before[2] = lambda: store.publish_rules(newer.spec, int(time.time() * 1000))
    errors = in_threads(THREADS, lambda thread: b.add("k", thread % 8))  # equal pairs
    assert errors == {}
    assert b.spec.version == newer.spec.version
    assert counting.calls == [1, THREADS - 1, THREADS - 1]  # refused, then retried, together
    first, *retried = pending(b, "k")  # the first was stored without dedupe, the rest with it
    assert sorted(retried) == list(range(8)) and first in range(8)


def leading(b: Batcher, counting: CountingStore, key: str, item: Any) -> threading.Thread:
    """An add on a thread of its own, returned once its store call (the first) has started."""
    thread = threading.Thread(target=b.add, args=(key, item))
    thread.start()
    wait_until(lambda: len(counting.calls) == 1)
    return thread


def test_a_group_is_bounded(store: Store) -> None:
    counting = CountingStore(store)
    b = batcher_on(counting)
    gate_first_call(counting, b, 6)
    first = leading(b, counting, "k", "first")
    share = MAX_ENTRIES * 2 // 5  # five requests of 400 wait behind the first add
    assert in_threads(5, lambda thread: b.add_many([(f"k{thread}", n) for n in range(share)])) == {}
    first.join(DEADLINE)
    assert counting.calls == [1, 2 * share, 2 * share, share]
    big = MAX_ENTRIES + 500
    b.add_many([("big", n) for n in range(big)])  # never split: it goes alone
    assert counting.calls[-1] == big
    assert pending(b, "big") == list(range(big))


def test_a_group_is_bounded_in_bytes(store: Store) -> None:
    counting = CountingStore(store)
    b = batcher_on(counting)
    gate_first_call(counting, b, 6)
    first = leading(b, counting, "k", "first")
    large = "x" * (MAX_BYTES // 3 - 100)  # three fit in a call, four do not
    assert in_threads(5, lambda thread: b.add(f"k{thread}", [thread, large])) == {}
    first.join(DEADLINE)
    assert counting.calls == [1, 3, 2]


def test_sixteen_concurrent_adds_take_fewer_store_calls(store: Store) -> None:
    counting = CountingStore(store, delay=0.05)
    b = batcher_on(counting)
    assert in_threads(THREADS, lambda thread: b.add("k", thread)) == {}
    assert sorted(pending(b, "k")) == list(range(THREADS))
    assert len(counting.calls) < THREADS, counting.calls


def test_a_lone_add_makes_its_own_call_at_once(store: Store) -> None:
    counting = CountingStore(store)
    b = batcher_on(counting)
    caller = threading.get_ident()
    threads: list[int] = []
    counting.before[1] = lambda: threads.append(threading.get_ident())
    b.add("k", 1)
    assert threads == [caller] and counting.calls == [1]


def test_arrival_is_never_before_the_add_started(store: Store) -> None:
    ticks = itertools.count(1_700_000_000_000)
    clock: Callable[[], int] = lambda: next(ticks)  # noqa: E731 - every reading is later
    counting = CountingStore(store, delay=0.01)
    b = batcher_on(counting, clock=clock)
    started: dict[int, int] = {}

    def add(thread: int) -> None:
        for n in range(5):
            started[thread * 10 + n] = clock()
            b.add("k", thread * 10 + n)

    assert in_threads(8, add) == {}
    for item in b.peek("k", limit=1000):
        assert item.arrived_at is not None
        assert round(item.arrived_at * 1000) > started[item.value]


def test_concurrent_add_async_calls_share_store_calls(store: Store) -> None:
    counting = CountingStore(store, delay=0.05)
    b = batcher_on(counting)

    async def main() -> None:
        await asyncio.gather(*(b.add_async("k", n) for n in range(THREADS)))
        await b.add_many_async([("k", "many-1"), ("k", "many-2")])

    asyncio.run(main())
    assert sorted(map(str, pending(b, "k"))) == sorted([*map(str, range(THREADS)), "many-1", "many-2"])
    assert len(counting.calls) < THREADS + 1, counting.calls
