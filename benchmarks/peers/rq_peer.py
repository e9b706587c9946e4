"""RQ: the no-op job, its producer and its worker.

Jobs are submitted with ``Queue.enqueue_many`` (one pipeline per call of 1,000). Each
worker process is an RQ ``SimpleWorker``: RQ's notes on performance (docs/benchmark.md)
name it for jobs of single-digit milliseconds, where the default ``Worker``'s fork per job
dominates; it runs one job at a time (RQ has no in-process concurrency). Jobs are encoded
with RQ's ``JSONSerializer`` (its default is pickle).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from benchmarks.peers.common import note_started, paced

NAME = "RQ"
DISTRIBUTION = "rq"
QUEUE = "bench"
CHUNK = 1000
ENQUEUE_API = f"`enqueue_many`, {CHUNK:,} per pipeline"
SETTINGS = "`SimpleWorker` (no fork per job), one job at a time, `JSONSerializer`"


def check() -> None:
    """Importing this module needs ``rq``; nothing more to check."""


def noop(t: float) -> None:
    note_started(t)


def _queue(url: str) -> Queue:
    return Queue(QUEUE, connection=redis.Redis.from_url(url), serializer=JSONSerializer)


def enqueue(url: str, count: int) -> float:
    queue = _queue(url)
    try:
        started = time.perf_counter()
        for first in range(0, count, CHUNK):
            size = min(CHUNK, count - first)
            queue.enqueue_many([Queue.prepare_data(noop, args=(0.0,)) for _ in range(size)])
        return time.perf_counter() - started
    finally:
        queue.connection.close()


def submit_paced(url: str, count: int, rate: float) -> None:
    queue = _queue(url)
    try:
        for _ in paced(count, rate):
            queue.enqueue(noop, time.time())
    finally:
        queue.connection.close()


def run_worker(url: str, concurrency: int, ready: Callable[[], None]) -> None:
    queue = _queue(url)
    worker = SimpleWorker([queue], connection=queue.connection, serializer=JSONSerializer)
    ready()
    worker.work(logging_level="WARNING")  # SIGTERM: a warm shutdown after the current job
