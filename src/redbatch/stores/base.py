"""The store protocol: the few atomic operations batching (and later jobs) is built on.

Every operation is one atomic step in the store (a Lua script, a SQL transaction, a locked
section). A key's state is its pending items plus at most one *current batch*, which is
either ``running`` (leased to a worker until ``lease_until``) or ``waiting`` (to be retried at
``retry_at``). Each batcher has one deadline index whose score for a key is the next moment
the key needs attention: its flush deadline while idle, its lease expiry while running, its
retry time while waiting. ``claim_due`` therefore serves new batches, retries and batches
of crashed workers through one path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from redbatch.types import ClaimedBatch, DeadRecord, Entry, Lease, QueueCounters, QueueSpec

LEASE_EXPIRED_ERROR = "lease expired: the worker running this batch was lost"


@runtime_checkable
class Waiter(Protocol):
    """Blocks a worker until work may have become due, or a timeout."""

    def wait(self, timeout: float) -> bool:
        """Return True when woken by a producer, False on timeout."""

    def close(self) -> None: ...


@runtime_checkable
class Store(Protocol):
    """Where all of redbatch's state lives. See the module docstring for the model."""

    url: str
    """The store's URL with any password masked, for logs and display."""

    durable: bool
    """False for stores that lose everything when the process exits."""

    def append(self, spec: QueueSpec, entries: Sequence[Entry], now_ms: int) -> None:
        """Add items under their keys, all or none, and reschedule each key's deadline."""

    def claim_due(self, spec: QueueSpec, now_ms: int, limit: int) -> list[ClaimedBatch]:
        """Lease up to ``limit`` due batches: retries, lapsed leases, or new batches.

        A batch whose lease lapsed after its last allowed attempt goes to dead letters
        instead (a crash counts as an attempt).
        """

    def next_due_ms(self, spec: QueueSpec) -> int | None:
        """The earliest deadline in the index, or None when nothing is open."""

    def due_deadlines(self, spec: QueueSpec, now_ms: int, limit: int) -> list[int]:
        """The deadline-index scores of up to ``limit`` keys due at ``now_ms``, ascending.

        A read, O(log n + limit): a worker serving several batchers shares its free slots
        among them earliest deadline first. A key listed here may still yield no batch
        when claimed (it is buried, or has nothing left), so it is an upper bound.
        """

    def heartbeat(self, spec: QueueSpec, leases: Sequence[Lease], lease_until_ms: int) -> list[bool]:
        """Extend leases that are still held; False for each one lost to another worker."""

    def ack(self, spec: QueueSpec, leases: Sequence[Lease], now_ms: int) -> list[bool]:
        """Finish batches in one step; False (and nothing changed) for each lease that was lost.

        Workers acknowledge in groups: every batch finished while the previous
        acknowledgement was on its way goes in the next one (group commit).
        """

    def fail(
        self,
        spec: QueueSpec,
        lease: Lease,
        now_ms: int,
        error: str,
        retry_at_ms: int | None,
        keep: Sequence[int] | None = None,
    ) -> bool:
        """Schedule a retry at ``retry_at_ms``, or dead-letter the batch when it is None.

        With ``keep`` (sorted item indexes), only those items failed: the batch keeps its id
        and shrinks to them first, and the others count as flushed.
        """

    def clear(self, spec: QueueSpec, key: str) -> int:
        """Drop a key's pending items and any batch waiting to retry; return how many items."""

    def flush(self, spec: QueueSpec, key: str | None, now_ms: int) -> int:
        """Make a key (or every key) due now; return how many keys were made due."""

    def peek(self, spec: QueueSpec, key: str, limit: int) -> list[tuple[int, bytes]]:
        """A key's oldest pending items as (arrived_at_ms, payload)."""

    def counters(self, spec: QueueSpec) -> QueueCounters: ...

    def dead_letters(self, spec: QueueSpec, limit: int, offset: int) -> list[DeadRecord]:
        """Dead letters, oldest first."""

    def replay(self, spec: QueueSpec, batch_ids: Sequence[str] | None, now_ms: int) -> int:
        """Put dead letters' items back in front of their keys' pending items, due now."""

    def purge_dead(self, spec: QueueSpec, batch_ids: Sequence[str] | None, before_ms: int | None) -> int:
        """Delete dead letters by id, or those that died before ``before_ms``, or all."""

    def waiter(self, names: Sequence[str]) -> Waiter:
        """A waiter woken when a key of one of these batchers may have become due."""

    def close(self) -> None: ...


def due_at(spec: QueueSpec, first_ms: int, last_ms: int, pending: int, now_ms: int) -> int:
    """When a key with ``pending`` items (oldest at ``first_ms``, newest at ``last_ms``) is due.

    This is the batching rule; the Lua scripts state it again because they run in Redis.
    """
    if pending >= spec.max_items:
        return now_ms
    deadline = first_ms + spec.max_wait_ms
    if spec.idle_ms:
        deadline = min(deadline, last_ms + spec.idle_ms)
    return deadline


def new_batch_id() -> str:
    """A unique, roughly time-ordered id: 12 hex digits of milliseconds, 16 random."""
    return f"{time.time_ns() // 1_000_000:012x}{os.urandom(8).hex()}"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs and display."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
