"""SAQ (``saq``, Redis queue): the no-op job, its producer and its worker.

SAQ has no bulk enqueue (``Queue.map`` waits for the results), so jobs are submitted with
``await queue.enqueue`` one at a time. The worker runs ``concurrency`` jobs at once, the
setting its README and benchmarks tune; SAQ encodes jobs as JSON by default.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from saq import Queue, Worker
from saq.queue.redis import RedisQueue

from benchmarks.peers.common import note_started, paced_async

NAME = "SAQ"
DISTRIBUTION = "saq"
QUEUE = "bench"
ENQUEUE_API = "`queue.enqueue`, one at a time (no bulk call)"
SETTINGS = "`Worker(concurrency={c})`, JSON (its default)"


def check() -> None:
    """Importing this module needs ``saq[redis]``; nothing more to check."""


async def noop(ctx: Any, *, t: float) -> None:
    note_started(t)


def _queue(url: str) -> RedisQueue:
    queue = Queue.from_url(url, name=QUEUE)
    assert isinstance(queue, RedisQueue)
    return queue


def enqueue(url: str, count: int) -> float:
    async def main() -> float:
        queue = _queue(url)
        await queue.connect()
        try:
            started = time.perf_counter()
            for _ in range(count):
                await queue.enqueue("noop", t=0.0)
            return time.perf_counter() - started
        finally:
            await queue.disconnect()

    return asyncio.run(main())


def submit_paced(url: str, count: int, rate: float) -> None:
    async def main() -> None:
        queue = _queue(url)
        await queue.connect()
        try:
            async for _ in paced_async(count, rate):
                await queue.enqueue("noop", t=time.time())
        finally:
            await queue.disconnect()

    asyncio.run(main())


def run_worker(url: str, concurrency: int, ready: Callable[[], None]) -> None:
    async def startup(ctx: Any) -> None:
        ready()

    worker = Worker(_queue(url), [("noop", noop)], concurrency=concurrency, startup=startup)
    asyncio.run(worker.start())  # SIGTERM sets its stop event
