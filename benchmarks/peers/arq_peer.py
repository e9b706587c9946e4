"""arq: the no-op job, its producer and its worker.

arq has no bulk enqueue, so jobs are submitted with ``await pool.enqueue_job`` one at a
time. The worker runs up to ``max_jobs`` jobs at once (32, as in the no-op benchmarks arq is
usually measured with) and keeps arq's default ``poll_delay`` of 0.5 s: each poll starts up
to ``queue_read_limit`` (5 x ``max_jobs``) jobs. Jobs are encoded as JSON (arq's default is
pickle, which redbatch does not use; the jobs carry one float either way).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker, func

from benchmarks.peers.common import note_started, paced_async

NAME = "arq"
DISTRIBUTION = "arq"
QUEUE = "bench"
ENQUEUE_API = "`enqueue_job`, one at a time (no bulk call)"
SETTINGS = "`max_jobs={c}`, default `poll_delay=0.5`, JSON serializer"


def check() -> None:
    """Importing this module needs ``arq``; nothing more to check."""


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


async def noop(ctx: Any, t: float) -> None:
    note_started(t)


async def _pool(url: str) -> ArqRedis:
    return await create_pool(
        RedisSettings.from_dsn(url),
        job_serializer=_dumps,
        job_deserializer=json.loads,
        default_queue_name=QUEUE,
    )


def enqueue(url: str, count: int) -> float:
    async def main() -> float:
        pool = await _pool(url)
        try:
            started = time.perf_counter()
            for _ in range(count):
                await pool.enqueue_job("noop", 0.0)
            return time.perf_counter() - started
        finally:
            await pool.aclose()

    return asyncio.run(main())


def submit_paced(url: str, count: int, rate: float) -> None:
    async def main() -> None:
        pool = await _pool(url)
        try:
            async for _ in paced_async(count, rate):
                await pool.enqueue_job("noop", time.time())
        finally:
            await pool.aclose()

    asyncio.run(main())


def run_worker(url: str, concurrency: int, ready: Callable[[], None]) -> None:
    async def startup(ctx: Any) -> None:
        ready()

    worker = Worker(
        functions=[func(noop, name="noop")],
        redis_settings=RedisSettings.from_dsn(url),
        queue_name=QUEUE,
        max_jobs=concurrency,
        on_startup=startup,
        job_serializer=_dumps,
        job_deserializer=json.loads,
    )
    worker.run()  # SIGTERM: finish running jobs, then return
