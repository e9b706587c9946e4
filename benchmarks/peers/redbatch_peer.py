"""redbatch's jobs (``redbatch.Jobs``, issue 8): the no-op job, its producer and its worker.

Written against the planned API (``Jobs(store, name)``, ``@jobs.function(name)``,
``submit``, ``submit_many``, ``Worker(store, [jobs], concurrency=N)``); until that exists in
this checkout, ``check`` raises and the row reads "not available". Jobs are submitted with
``submit_many`` (one store call per 1,000); the worker runs ``concurrency`` jobs at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redbatch
from benchmarks.peers.common import note_started, paced

NAME = "redbatch"
DISTRIBUTION = "redbatch"
QUEUE = "bench"
PREFIX = "rbjobs"
CHUNK = 1000
ENQUEUE_API = f"`submit_many`, {CHUNK:,} per call"
SETTINGS = "`Worker(store, [jobs], concurrency={c})`, JSON"


def check() -> None:
    missing = [name for name in ("Jobs", "Worker") if not hasattr(redbatch, name)]
    if missing:
        raise AttributeError(f"redbatch has no {', '.join(missing)} in this checkout (issue 8)")


def _jobs(url: str) -> tuple[Any, Any]:
    """The store and a ``Jobs`` queue with the no-op function registered."""
    store = redbatch.connect(url, prefix=PREFIX)
    jobs = redbatch.Jobs(store, QUEUE)  # type: ignore[attr-defined]

    @jobs.function("noop")  # type: ignore[untyped-decorator]
    async def noop(params: dict[str, Any], ctx: Any) -> None:
        note_started(params["t"])

    return store, jobs


def enqueue(url: str, count: int) -> float:
    store, jobs = _jobs(url)
    try:
        started = time.perf_counter()
        for first in range(0, count, CHUNK):
            size = min(CHUNK, count - first)
            jobs.submit_many([("noop", {"t": 0.0}) for _ in range(size)])
        return time.perf_counter() - started
    finally:
        store.close()


def submit_paced(url: str, count: int, rate: float) -> None:
    store, jobs = _jobs(url)
    try:
        for _ in paced(count, rate):
            jobs.submit("noop", {"t": time.time()})
    finally:
        store.close()


def run_worker(url: str, concurrency: int, ready: Callable[[], None]) -> None:
    store, jobs = _jobs(url)
    try:
        worker = redbatch.Worker(store, [jobs], concurrency=concurrency)
        ready()
        worker.run()  # main thread: SIGTERM stops it gracefully
    finally:
        store.close()
