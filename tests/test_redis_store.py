"""What only the Redis store does: entries written by hand, scripts, refusals, timeouts,
partitions. The conformance suite covers the behaviour every store shares."""

from __future__ import annotations

import zlib

import pytest

from redbatch import Batcher, CorruptItem
from redbatch.stores.redis import RedisStore
from tests.conformance.helpers import ack, claim, fail, items, make
from tests.conftest import FakeClock


@pytest.fixture(params=["redis", "redis-partitioned"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """The conftest's ``store`` fixture, on Redis only."""
    return str(request.param)


def redis_key(store: RedisStore, batcher: Batcher, suffix: str, key: str) -> str:
    """A key of the documented layout: ``{prefix:batcher:partition}:<suffix><key>``."""
    partition = zlib.crc32(key.encode()) % store.partitions
    return f"{{{store.prefix}:{batcher.name}:{partition}}}:{suffix}{key}"


# ---------------------------------------------------------------- entries written by hand


def test_an_unframed_entry_next_in_line_is_dead_lettered_on_its_turn(
    store: RedisStore, clock: FakeClock
) -> None:
    b = make(store, clock, max_items=1, max_wait=1)
    b.add("k", 1)
    store.client.rpush(redis_key(store, b, "i:", "k"), b"hello")
    b.add("k", 3)
    clock.advance(1)
    (first,) = claim(b)
    assert items(first) == [1]
    assert ack(b, first)
    (third,) = claim(b, limit=1)  # "hello" went to dead letters on the way, taking no attempt
    assert items(third) == [3] and third.attempt == 1
    (dead,) = b.dead_letters()
    assert dead.items == [CorruptItem(b"hello", dead.items[0].reason)]
    assert dead.attempts == 0 and dead.error.startswith("corrupt data: entry 1 of 1 is not framed")
    assert b.stats().buffered_items == 0


def test_a_retry_whose_entries_were_edited_by_hand_is_dead_lettered(
    store: RedisStore, clock: FakeClock
) -> None:
    b = make(store, clock, max_wait=1)
    b.add_many([("k", 1), ("k", 2), ("other", 3)])
    clock.advance(1)
    for claimed in claim(b):
        assert fail(b, claimed, retry_in=1)
    store.client.lset(redis_key(store, b, "b:", "k"), 1, b"garbage")
    clock.advance(1)
    (retried,) = claim(b)
    assert retried.lease.key == "other" and retried.attempt == 2
    (dead,) = b.dead_letters()
    assert (dead.key, dead.attempts) == ("k", 1)
    assert dead.items == [1, CorruptItem(b"garbage", dead.items[1].reason)]
    s = b.stats()
    assert (s.in_flight, s.retrying, s.dead) == (1, 0, 1)
