"""Data found corrupt in a store: shown for what it is, dead-lettered with a reason, and
harmless to everything else."""

from __future__ import annotations

import sqlite3
import zlib
from contextlib import closing

import pytest

from redbatch import Batcher, CorruptItem
from redbatch.stores.base import Store
from redbatch.stores.redis import RedisStore
from redbatch.stores.sqlite import SQLiteStore
from redbatch.types import Entry
from redbatch.worker import decode_batch
from tests.conformance.helpers import ack, claim, claim_one, fail, make
from tests.conftest import FakeClock


def test_an_item_that_does_not_decode_is_listed_with_its_raw_bytes(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=0)
    b.add("k", {"fine": 1})
    store.append(b.spec, [Entry("k", b"{not json", "")], clock())
    fine, bad = b.peek("k")
    assert fine.value == {"fine": 1}
    assert isinstance(bad.value, CorruptItem) and bad.value.raw == b"{not json"
    assert "not JSON" in bad.value.reason
    assert fail(b, claim_one(b), "corrupt data: an item is not JSON", retry_in=None)
    clock.advance(1)
    b.add("k", "next")  # a later dead letter of the same batcher lists as well
    assert fail(b, claim_one(b), "boom", retry_in=None)
    first, second = b.dead_letters()
    assert first.items[0] == {"fine": 1}
    assert first.items[1] == CorruptItem(b"{not json", bad.value.reason)
    assert first.error == "corrupt data: an item is not JSON"
    assert second.items == ["next"]


def add_corrupt_item(store: Store, batcher: Batcher, key: str) -> bytes:
    """Leave one more item pending under ``key``, spoiled the way a hand at the store's own
    tools would; return the bytes the store now holds for it."""
    if isinstance(store, RedisStore):  # RPUSH on the documented layout, without the framing
        partition = zlib.crc32(key.encode()) % store.partitions
        store.client.rpush(f"{{{store.prefix}:{batcher.name}:{partition}}}:i:{key}", b"hello")
        return b"hello"
    if isinstance(store, SQLiteStore):
        batcher.add(key, "to be spoiled")
        with closing(sqlite3.connect(store.path)) as conn, conn:
            conn.execute("UPDATE pending SET payload = 'not json {' WHERE id = (SELECT MAX(id) FROM pending)")
        return b"not json {"
    store.append(batcher.spec, [Entry(key, b"{not json", "")], batcher.clock())
    return b"{not json"


@pytest.mark.parametrize("dedupe", [False, True], ids=["plain", "dedupe"])
def test_a_corrupt_pending_item_goes_to_dead_letters_and_harms_no_other_key(
    store: Store, clock: FakeClock, dedupe: bool
) -> None:
    b = make(store, clock, max_wait=1, dedupe=dedupe)
    b.add_many([("good-1", 1), ("bad", 2), ("good-2", 3)])
    raw = add_corrupt_item(store, b, "bad")
    fine, bad = b.peek("bad")
    assert fine.value == 2 and bad.value == CorruptItem(raw, bad.value.reason)
    clock.advance(1)
    handled = {}
    for claimed in claim(b):  # what a worker does with each batch
        try:
            handled[claimed.lease.key] = (claimed.attempt, decode_batch(claimed).items)
        except ValueError as exc:
            assert fail(b, claimed, f"corrupt data: {exc}", retry_in=None)
        else:
            assert ack(b, claimed)
    assert handled == {"good-1": (1, [1]), "good-2": (1, [3])}
    (dead,) = b.dead_letters()
    assert dead.key == "bad" and dead.error.startswith("corrupt data")
    assert dead.items == [2, CorruptItem(raw, bad.value.reason)]
    s = b.stats()
    assert (s.in_flight, s.dead, s.flushed_batches, s.open_keys, s.buffered_items) == (0, 1, 2, 0, 0)
    assert claim(b) == []
