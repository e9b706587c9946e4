"""Small frozen values passed between the public API, the engine and the stores.

Inside the library times are integer milliseconds since the Unix epoch, read from one
injectable clock; the public values (``Batch``, ``BatcherStats``, ...) use float seconds.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from redbatch.errors import ConfigError

Clock = Callable[[], int]
"""A function returning the current time in integer milliseconds since the epoch."""


def system_clock() -> int:
    return time.time_ns() // 1_000_000


RULE_FIELDS = ("max_items", "max_wait_ms", "idle_ms", "dedupe", "max_attempts", "lease_ms")
"""The settings a store applies itself: a batcher's *rules*, recorded once per batcher name."""


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A batcher's rules: what a store needs to know of it to apply them atomically.

    The store records one set per batcher name; ``version`` (16 hex digits of a hash of the
    rules, not of the name) lets ``append`` check in its atomic step that the producer's
    rules are the recorded ones.
    """

    name: str
    max_items: int
    max_wait_ms: int
    idle_ms: int  # 0: no debounce
    dedupe: bool
    max_attempts: int
    lease_ms: int
    version: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        canonical = orjson.dumps(self.rules(), option=orjson.OPT_SORT_KEYS)
        object.__setattr__(self, "version", hashlib.blake2b(canonical, digest_size=8).hexdigest())

    def rules(self) -> dict[str, int | bool]:
        """The rule fields by name (durations in integer milliseconds, as stores keep them)."""
        return {name: getattr(self, name) for name in RULE_FIELDS}

    @classmethod
    def from_record(cls, name: str, record: Mapping[str, Any]) -> QueueSpec:
        """Rules as a store recorded them: values may be ints, or their text (Redis, bytes)."""
        try:
            fields = {field_name: int(record[field_name]) for field_name in RULE_FIELDS}
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"batcher {name!r}: the store's record of its rules is unreadable ({exc!r}); "
                "starting a worker for it publishes them again"
            ) from None
        return cls(
            name,
            max_items=fields["max_items"],
            max_wait_ms=fields["max_wait_ms"],
            idle_ms=fields["idle_ms"],
            dedupe=bool(fields["dedupe"]),
            max_attempts=fields["max_attempts"],
            lease_ms=fields["lease_ms"],
        )

    def describe(self) -> str:
        """The rules in a line, in the units of ``Batcher``'s settings, for logs."""
        idle = f"{self.idle_ms / 1000:g}s" if self.idle_ms else "off"
        return (
            f"max_items={self.max_items} max_wait={self.max_wait_ms / 1000:g}s idle={idle} "
            f"dedupe={'on' if self.dedupe else 'off'} max_attempts={self.max_attempts} "
            f"lease={self.lease_ms / 1000:g}s"
        )


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
    """A dead letter as a store keeps it (an arrival the store cannot read is 0)."""

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

    Attributes:
        id: The batch's id, the same on every attempt (and as ``DeadLetter.id`` if it dies).
        key: The key every item was added under.
        items: The items, decoded from JSON, in arrival order; at most ``max_items``. After
            an ``ItemsFailed``, later attempts hold only the items it named.
        attempt: This attempt's number: 1 on the first call, one more on each retry or
            reclaim after a lost worker.
        created_at: When the batch was formed (its first claim), by the claiming worker's
            clock; the same on every attempt.
        arrived_at: When each item was added, by its producer's clock, in the order of
            ``items``.
    """

    id: str
    key: str
    items: list[Any]
    attempt: int
    created_at: float
    arrived_at: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class CorruptItem:
    """Stands in for an item whose stored bytes do not decode (in ``DeadLetter.items`` and
    ``PendingItem.value``), so that one bad item hides nothing else.

    Attributes:
        raw: The bytes the store holds for the item.
        reason: Why they could not be read (``"not JSON: ..."``).
    """

    raw: bytes
    reason: str


@dataclass(frozen=True, slots=True)
class PendingItem:
    """An item waiting under a key, as ``Batcher.peek`` shows it.

    Attributes:
        value: The item, decoded from JSON; a ``CorruptItem`` when its bytes do not decode.
        arrived_at: When it was added (Unix seconds, by its producer's clock); None when the
            store cannot read it either (an entry written into Redis by hand).
    """

    value: Any
    arrived_at: float | None


@dataclass(frozen=True, slots=True)
class WaitingKey:
    """A key with items waiting, as ``Batcher.oldest_keys`` lists it.

    Attributes:
        key: The key.
        oldest_arrival: When its oldest waiting item was added (Unix seconds).
        oldest_item_age: How long that item has waited (seconds, by the reader's clock).
        pending: How many items wait under it (not those of a running batch).
    """

    key: str
    oldest_arrival: float
    oldest_item_age: float
    pending: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A batch that used up its attempts (or was found corrupt), with the error of its last
    one. ``Batcher.dead_letters`` lists them; ``replay`` and ``purge_dead`` take their ids.
    Times are Unix seconds.

    Attributes:
        id: The batch's id, as ``Batch.id`` was on every attempt.
        key: The key its items were added under.
        items: Its items, decoded, in arrival order (after an ``ItemsFailed``, only the
            failed ones); an item whose bytes do not decode is a ``CorruptItem``.
        attempts: How many attempts were made.
        error: The last attempt's error: the end of the handler's traceback, or what the
            worker saw (``"handler timed out after 5.0 seconds"``, ``"lease expired: ..."``
            for a lost worker, ``"corrupt data: ..."``, ``"ItemsFailed: ..."``).
        created_at: When the batch was formed (its first claim).
        died_at: When it went to dead letters; ``dead_letter_ttl`` counts from here.
    """

    id: str
    key: str
    items: list[Any]
    attempts: int
    error: str
    created_at: float
    died_at: float


@dataclass(frozen=True, slots=True)
class BatcherStats:
    """What is happening in one batcher, across every worker and producer.

    ``Batcher.stats`` reads it from the store in one call. The counts of batches and items
    flushed are kept by the store since the batcher was first used (for ``memory://``,
    since the process started). Times are Unix seconds, durations seconds.

    Attributes:
        name: The batcher's name.
        open_keys: Keys with items waiting or a current batch (running or waiting to retry).
        buffered_items: Items waiting under their keys, not yet in a batch.
        oldest_item_age: How long the oldest waiting item has waited; None when none waits.
        in_flight: Batches leased to a worker now, those of a crashed worker included until
            their leases lapse and they are reclaimed.
        retrying: Batches waiting for their retry time.
        dead: Dead letters held.
        flushed_batches: Batches acknowledged as done.
        flushed_items: Items done: those of acknowledged batches, and those an
            ``ItemsFailed`` did not name.
        last_flush_at: When a batch was last acknowledged (by that worker's clock); None
            when none was.
        seconds_since_last_flush: Time since ``last_flush_at``, by the reading process's
            clock; None when no batch was acknowledged.
    """

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
