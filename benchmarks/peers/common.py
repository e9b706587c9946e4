"""What every subject's no-op job and producer share: the ledger the job notes itself in,
and submission at a steady rate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

from benchmarks.ledger import Ledger

LEDGER: Ledger | None = None
"""Set by ``benchmarks.peers.worker`` in a worker process before its worker starts."""


def note_started(submitted_at: float) -> None:
    """The body of every no-op job: count it, and with a submit time (latency runs) note how
    long after submission it started. Memory only; the ledger sends it within 20 ms."""
    started = time.time()
    if LEDGER is None:
        raise RuntimeError("a benchmark job ran outside benchmarks.peers.worker")
    LEDGER.record(1, lateness=[started - submitted_at] if submitted_at else None)


def paced(count: int, rate: float) -> Iterator[int]:
    """Yield 0..count-1, the n-th at ``n / rate`` seconds after the first (absolute schedule,
    so a slow submission does not push every later one back)."""
    started = time.monotonic()
    for n in range(count):
        ahead = started + n / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
        yield n


async def paced_async(count: int, rate: float) -> AsyncIterator[int]:
    """``paced`` for an event loop."""
    started = time.monotonic()
    for n in range(count):
        ahead = started + n / rate - time.monotonic()
        if ahead > 0:
            await asyncio.sleep(ahead)
        yield n
