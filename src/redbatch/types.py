"""Small frozen values passed between the public API, the engine and the stores.

Inside the library times are integer milliseconds since the Unix epoch, read from one
injectable clock; the public values (``Batch``, ``BatcherStats``, ...) use float seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

Clock = Callable[[], int]
"""A function returning the current time in integer milliseconds since the epoch."""


def system_clock() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """What a store needs to know of a batcher to apply its rules atomically."""

    name: str
    max_items: int
    max_wait_ms: int
    idle_ms: int  # 0: no debounce
    dedupe: bool
    max_attempts: int
    lease_ms: int


class Entry(NamedTuple):
    """One validated item, encoded, ready to be appended under ``key``.

    A NamedTuple rather than a frozen dataclass: ``add_many`` builds one per item, and
    a tuple is built several times faster.
    """

    key: str
    payload: bytes  # UTF-8 JSON
    digest: str  # dedupe identity of the item ('' when the batcher does not dedupe)


@dataclass(frozen=True, slots=True)
class Lease:
    """A worker's claim on one batch: every write for the batch must present it."""

    key: str
    batch_id: str
    fencing_token: int


@dataclass(frozen=True, slots=True)
class ClaimedBatch:
    """A batch as a store hands it out: raw payloads, not yet decoded."""

    lease: Lease
    attempt: int
    created_at: int
    payloads: tuple[bytes, ...]
    arrived_at: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class QueueCounters:
    """Raw counters a store reports for one batcher."""

    open_keys: int
    buffered_items: int
    oldest_arrival: int | None
    in_flight: int
    retrying: int
    dead: int
    flushed_batches: int
    flushed_items: int
    last_flush_at: int | None


@dataclass(frozen=True, slots=True)
class DeadRecord:
    """A dead letter as a store keeps it."""

    batch_id: str
    key: str
    payloads: tuple[bytes, ...]
    arrived_at: tuple[int, ...]
    attempts: int
    error: str
    created_at: int
    died_at: int


# ---------------------------------------------------------------- public values


@dataclass(frozen=True, slots=True)
class Batch:
    """The items of one key handed to a handler in one call.

    ``id`` is stable across retries and reclaims, so sinks can be idempotent on it.
    ``items`` is the handler's own list: changing it changes nothing stored, and the indexes
    of an ``ItemsFailed`` always refer to the items as they were handed over.
    Times are Unix seconds.
    """

    id: str
    key: str
    items: list[Any]
    attempt: int
    created_at: float
    arrived_at: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class PendingItem:
    """An item waiting under a key, as ``Batcher.peek`` shows it."""

    value: Any
    arrived_at: float


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A batch that used up its attempts, with the error of its last one."""

    id: str
    key: str
    items: list[Any]
    attempts: int
    error: str
    created_at: float
    died_at: float


@dataclass(frozen=True, slots=True)
class BatcherStats:
    """What is happening in one batcher, across every worker and producer."""

    name: str
    open_keys: int
    buffered_items: int
    oldest_item_age: float | None
    in_flight: int
    retrying: int
    dead: int
    flushed_batches: int
    flushed_items: int
    last_flush_at: float | None
    seconds_since_last_flush: float | None
