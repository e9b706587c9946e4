"""Coalesced adds from coroutines (``add_async``): one leader task per event loop, on every
store; on Redis with no thread in the way, elsewhere on one thread per store."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from typing import Any

import pytest

from redbatch import Batcher, InvalidItem, StoreUnavailable
from redbatch.stores.base import Store
from tests.conformance.test_coalescing import CountingStore, batcher_on, pending

COROUTINES = 200


def test_coroutines_adding_at_once_land_exactly_once_in_order(store: Store) -> None:
    counting = CountingStore(store)
    b = batcher_on(counting)
    per_coroutine = 10

    async def add(index: int) -> None:
        for n in range(per_coroutine):
            if n % 5 == 4:
                await b.add_many_async([(f"k{(index + n) % 3}", [index, n]), ("k-many", [index, n])])
            else:
                await b.add_async(f"k{(index + n) % 3}", [index, n])

    async def main() -> None:
        await asyncio.gather(*(add(i) for i in range(COROUTINES)))

    asyncio.run(main())
    seen: dict[tuple[str, int], list[int]] = defaultdict(list)
    everything = []
    for key in ("k0", "k1", "k2", "k-many"):
        for item in pending(b, key):
            seen[key, item[0]].append(item[1])
            everything.append((key, tuple(item)))
    assert len(everything) == len(set(everything)) == COROUTINES * (per_coroutine + per_coroutine // 5)
    for numbers in seen.values():  # each coroutine's items, per key, in the order it added them
        assert numbers == sorted(numbers)
    assert sum(counting.calls) == len(everything)
    assert len(counting.calls) <= per_coroutine * 3, counting.calls  # not one per add


def test_no_thread_per_call(store: Store) -> None:
    """With an asyncio client (Redis) every store call is made on the loop's own thread;
    without one, on one thread of the store's, the same for every call and every loop."""
    counting = CountingStore(store)
    b = batcher_on(counting)
    loop_threads = []

    async def main() -> None:
        loop_threads.append(threading.get_ident())
        for n in range(5):
            await asyncio.gather(*(b.add_async("k", [n, i]) for i in range(20)))
            await b.add_async("k", [n, "alone"])

    asyncio.run(main())
    asyncio.run(main())  # a second event loop, as a second asyncio.run makes
    # Per round: the first add's own call, one call for the 19 that came meanwhile, the lone add's.
    assert counting.calls == [1, 19, 1] * 10
    if hasattr(store, "append_async"):
        assert counting.threads == [loop_threads[0]] * 15 + [loop_threads[1]] * 15
    else:
        assert len(set(counting.threads)) == 1
        assert counting.threads[0] not in loop_threads


def test_an_invalid_item_fails_only_its_own_coroutine(store: Store) -> None:
    counting = CountingStore(store)
    b = batcher_on(counting)

    async def add(index: int) -> None:
        await b.add_async("k", {"bad": {1, 2}} if index == 3 else index)

    async def main() -> list[Any]:
        return await asyncio.gather(*(add(i) for i in range(16)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert [i for i, o in enumerate(outcomes) if o is not None] == [3]
    assert isinstance(outcomes[3], InvalidItem)
    assert counting.calls == [1, 14]  # the first add's own call; the other valid ones shared one
    assert sorted(pending(b, "k")) == [i for i in range(16) if i != 3]


def test_a_store_failure_reaches_every_coroutine_of_its_call(store: Store) -> None:
    counting = CountingStore(store)
    b = batcher_on(counting)

    def fail_once() -> None:
        raise StoreUnavailable("the store went away for one call")

    counting.before[2] = fail_once  # the call carrying the 15 adds that queued behind the first

    async def main() -> list[Any]:
        return await asyncio.gather(*(b.add_async("k", i) for i in range(16)), return_exceptions=True)

    outcomes = asyncio.run(main())
    assert counting.calls == [1, 15]
    assert outcomes[0] is None
    assert all(isinstance(o, StoreUnavailable) for o in outcomes[1:])
    assert len({id(o) for o in outcomes[1:]}) == 1  # one call, one exception
    assert pending(b, "k") == [0]

    async def after() -> None:
        await b.add_async("k", "after")

    asyncio.run(after())  # the failure ended with its call
    assert pending(b, "k") == [0, "after"]


def test_the_rules_retry_covers_the_whole_group(store: Store) -> None:
    counting = CountingStore(store)
    b = batcher_on(counting)
    newer = Batcher(store, "co", max_items=50, max_wait=600.0, dedupe=True)
    counting.before[2] = lambda: store.publish_rules(newer.spec, int(time.time() * 1000))

    async def main() -> None:
        await asyncio.gather(*(b.add_async("k", i % 8) for i in range(16)))  # equal pairs

    asyncio.run(main())
    assert b.spec.version == newer.spec.version
    assert counting.calls == [1, 15, 15]  # the first alone; then refused, and retried, together
    first, *retried = pending(b, "k")  # the first was stored without dedupe, the rest with it
    assert first == 0 and sorted(retried) == list(range(8))


def test_a_coroutine_cancelled_before_its_call_is_left_out(store: Store) -> None:
    counting = CountingStore(store, delay=0.05)
    b = batcher_on(counting)

    async def main() -> None:
        first = asyncio.create_task(b.add_async("k", "first"))
        while not counting.calls:  # the first call is on its way
            await asyncio.sleep(0)
        doomed = asyncio.create_task(b.add_async("k", "cancelled"))
        kept = asyncio.create_task(b.add_async("k", "kept"))
        await asyncio.sleep(0)  # both queued behind the call on its way
        doomed.cancel()
        await asyncio.gather(first, kept)
        with pytest.raises(asyncio.CancelledError):
            await doomed

    asyncio.run(main())
    assert pending(b, "k") == ["first", "kept"]
    assert counting.calls == [1, 1]


def test_a_coroutine_cancelled_during_its_own_call_fails_nobody_else(store: Store) -> None:
    counting = CountingStore(store, delay=0.05)
    b = batcher_on(counting)

    async def main() -> None:
        alone = asyncio.create_task(b.add_async("k", "alone"))  # its own call: the loop is idle
        while not counting.calls:
            await asyncio.sleep(0)
        later = [asyncio.create_task(b.add_async("k", n)) for n in range(5)]
        await asyncio.sleep(0)  # queued behind the call on its way
        alone.cancel()
        await asyncio.gather(*later)  # a leader task carried them: none failed
        with pytest.raises(asyncio.CancelledError):
            await alone

    asyncio.run(main())
    assert counting.calls[-1] == 5
    assert [v for v in pending(b, "k") if v != "alone"] == list(range(5))


def test_a_lone_add_async_makes_one_call_for_its_item(store: Store) -> None:
    counting = CountingStore(store)
    b = batcher_on(counting)

    async def main() -> int:
        await b.add_async("k", 1)
        return await b.add_many_async([("k", 2), ("j", 3)])

    assert asyncio.run(main()) == 2
    assert counting.calls == [1, 2]
    assert pending(b, "k") == [1, 2] and pending(b, "j") == [3]


def test_event_loops_of_several_threads_add_at_once(store: Store) -> None:
    b = batcher_on(store)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        async def main() -> None:
            await asyncio.gather(*(b.add_async(f"t{index}", n) for n in range(50)))

        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    for index in range(4):
        assert sorted(pending(b, f"t{index}")) == list(range(50))
