"""streaQ: the no-op task, its producer and its worker.

Tasks are submitted with ``Worker.enqueue_many`` (one pipeline per call of 1,000). The
worker runs ``concurrency`` tasks at once (its benchmarks use 32) with the default prefetch;
tasks are encoded as JSON (streaQ's default is pickle, which redbatch does not use).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from streaq import Worker

from benchmarks.peers.common import note_started, paced_async

NAME = "streaQ"
DISTRIBUTION = "streaq"
QUEUE = "bench"
CHUNK = 1000
ENQUEUE_API = f"`enqueue_many`, {CHUNK:,} per pipeline"
SETTINGS = "`Worker(concurrency={c})`, default prefetch, JSON serializer"


def check() -> None:
    """Importing this module needs ``streaq``; nothing more to check."""


def _worker(url: str, concurrency: int = 16, ready: Callable[[], None] | None = None) -> tuple[Any, Any]:
    """A streaQ ``Worker`` with the no-op task registered, and the task."""

    @asynccontextmanager
    async def lifespan() -> AsyncIterator[None]:
        if ready is not None:
            ready()
        yield None

    worker = Worker(
        redis_url=url,
        queue_name=QUEUE,
        concurrency=concurrency,
        serializer=json.dumps,
        deserializer=json.loads,
        lifespan=lifespan,
    )

    async def noop(t: float) -> None:
        note_started(t)

    return worker, worker.task(name="noop")(noop)


def enqueue(url: str, count: int) -> float:
    async def main() -> float:
        worker, noop = _worker(url)
        async with worker:
            started = time.perf_counter()
            for first in range(0, count, CHUNK):
                size = min(CHUNK, count - first)
                await worker.enqueue_many([noop.enqueue(0.0) for _ in range(size)])
            return time.perf_counter() - started

    return float(anyio.run(main))


def submit_paced(url: str, count: int, rate: float) -> None:
    async def main() -> None:
        worker, noop = _worker(url)
        async with worker:
            async for _ in paced_async(count, rate):
                await noop.enqueue(time.time())

    anyio.run(main)


def run_worker(url: str, concurrency: int, ready: Callable[[], None]) -> None:
    worker, _noop = _worker(url, concurrency, ready)
    worker.run_sync()  # SIGTERM: its signal handler cancels the worker's task group
