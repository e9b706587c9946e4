"""What only the Redis store does: its copy of a batcher's rules in every partition.

The protocol's semantics are the conformance suite's job.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

import redbatch
from redbatch import Batcher
from redbatch.stores.redis import RedisStore
from tests.conformance.helpers import claim, claim_one, items
from tests.conftest import FakeClock
from tests.servers import RedisServer


@pytest.fixture(params=[1, 3], ids=["one-partition", "three-partitions"])
def redis_store(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[RedisStore]:
    store = redbatch.connect(redis_server.url, prefix=f"t{uuid.uuid4().hex[:12]}", partitions=request.param)
    assert isinstance(store, RedisStore)
    try:
        yield store
    finally:
        store.close()


def test_every_partition_holds_the_same_rules(redis_store: RedisStore, clock: FakeClock) -> None:
    b = Batcher(redis_store, "b", max_wait=3, clock=clock)
    b.add("k", 1)
    redis_store.publish_rules(Batcher(redis_store, "b", max_wait=2, clock=clock).spec, clock())
    versions = {redis_store.client.hget(part.rules, "version") for part in redis_store._partitions("b")}
    assert len(versions) == 1 and None not in versions


def test_a_publish_cut_short_is_finished_by_the_next_start(redis_store: RedisStore, clock: FakeClock) -> None:
    old = Batcher(redis_store, "b", max_wait=60, clock=clock)
    old.add_many((f"k{n}", n) for n in range(10))
    new = Batcher(redis_store, "b", max_wait=1, clock=clock)
    redis_store._write_rules("publish", new.spec, clock())  # a worker killed before rescheduling
    clock.advance(1)
    assert claim(old) == []
    assert redis_store.publish_rules(new.spec, clock()) == new.spec  # the same rules: nothing replaced
    assert len(claim(new)) == 10


def test_a_hand_edited_record_is_a_clear_error_not_a_loop(redis_store: RedisStore, clock: FakeClock) -> None:
    b = Batcher(redis_store, "b", clock=clock)
    b.add("k", 1)
    for part in redis_store._partitions("b"):
        redis_store.client.hset(part.rules, "max_items", "many")
    with pytest.raises(redbatch.ConfigError, match="unreadable"):
        Batcher.open(redis_store, "b")
    assert redis_store.publish_rules(b.configured, clock()) is None  # a worker's start repairs it
    assert Batcher.open(redis_store, "b").spec == b.spec
    b.add("k", 2)
    clock.advance(60)
    assert items(claim_one(b)) == [1, 2]
