"""Figure 10: ``add_async`` from coroutines of one event loop, one item per call: 1 and 1,000
coroutines sharing one batcher (their adds share store calls, one leader task per loop),
against as many coroutines each doing a raw ``await r.rpush`` of the pre-encoded item on
one redis.asyncio client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio

import redbatch
from benchmarks.context import Context
from benchmarks.items import encode, keyed_items
from benchmarks.results import Measurement
from benchmarks.subjects import StoreTarget

FIGURE = "10. add_async from coroutines"
RAW_ASYNC = "raw RPUSH (redis.asyncio)"


def case(coroutines: int) -> str:
    return "1 coroutine" if coroutines == 1 else f"{coroutines:,} coroutines"


async def _race(
    coroutines: int, total: int, keys: int, size: int, add: Callable[[str, Any], Awaitable[Any]]
) -> float:
    """``total`` adds shared by ``coroutines`` coroutines started together; items/s."""
    share = total // coroutines
    pairs = keyed_items(0, total, size, keys)
    go = asyncio.Event()

    async def body(index: int) -> None:
        mine = pairs[index * share : (index + 1) * share if index < coroutines - 1 else total]
        await go.wait()
        for key, item in mine:
            await add(key, item)

    tasks = [asyncio.create_task(body(i)) for i in range(coroutines)]
    await asyncio.sleep(0)  # every task is waiting at the start line
    started = time.perf_counter()
    go.set()
    await asyncio.gather(*tasks)
    return total / (time.perf_counter() - started)


def _redbatch(target: StoreTarget, coroutines: int, total: int, keys: int, size: int) -> float:
    store = redbatch.connect(target.fresh())
    batcher = redbatch.Batcher(store, "bench", max_items=100, max_wait=60.0)

    async def main() -> float:
        await batcher.add_async("warmup", {"seq": -1})  # the loop's connection, the rules record
        return await _race(coroutines, total, keys, size, batcher.add_async)

    try:
        return asyncio.run(main())
    finally:
        store.close()


def _raw(url: str, coroutines: int, total: int, keys: int, size: int) -> float:
    async def main() -> float:
        # redis-py's asyncio pool holds 100 connections by default and refuses more: give
        # every coroutine its own, so that none waits for a connection
        client = redis.asyncio.Redis.from_url(url, max_connections=max(100, coroutines))
        try:
            await client.ping()

            async def rpush(key: str, payload: bytes) -> Any:
                return await client.rpush(f"raw:{key}", payload)

            encoded: dict[int, bytes] = {}

            async def add(key: str, item: Any) -> Any:  # pre-encoded before the clock starts
                return await rpush(key, encoded[item["seq"]])

            for _, item in keyed_items(0, total, size, keys):
                encoded[item["seq"]] = encode(item)
            return await _race(coroutines, total, keys, size, add)
        finally:
            await client.aclose()

    return asyncio.run(main())


def run(ctx: Context) -> list[Measurement]:
    s = ctx.sizes
    out: list[Measurement] = []
    keys = s.add_keys
    for coroutines in s.add_coroutines:
        total = s.add_async_items if coroutines > 1 else s.add_async_items // 5
        note = f"{total:,} items over {keys:,} keys"
        for target in ctx.stores:
            ctx.log(f"{FIGURE}: {target.subject}, {case(coroutines)}")
            m = Measurement(FIGURE, case(coroutines), target.subject, "items/s", note=f"one Batcher; {note}")
            for _ in range(s.runs):
                ctx.reset()
                m.runs.append(_redbatch(target, coroutines, total, keys, s.payload_bytes))
            out.append(m)
        ctx.log(f"{FIGURE}: {RAW_ASYNC}, {case(coroutines)}")
        m = Measurement(
            FIGURE,
            case(coroutines),
            RAW_ASYNC,
            "items/s",
            note=f"one client, a connection per coroutine, pre-encoded; {note}",
        )
        for _ in range(s.runs):
            ctx.reset()
            m.runs.append(_raw(ctx.data_url, coroutines, total, keys, s.payload_bytes))
        out.append(m)
    return out
