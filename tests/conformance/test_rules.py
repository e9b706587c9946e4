"""A batcher's rules are one thing the store holds: published by workers, adopted by producers.

Issue 12: a producer and a worker that configured the same batcher differently each computed
deadlines with their own settings. Now the store records the rules; ``append`` is refused
when the producer's differ, and the producer adopts the store's before it retries.
"""

from __future__ import annotations

import logging
import threading

import pytest

import redbatch
from redbatch import Batch, Batcher, Worker
from redbatch.errors import NotFound
from redbatch.stores.base import Store
from redbatch.types import ClaimedBatch
from tests.conformance.helpers import ack, claim, claim_one, items, make
from tests.conformance.test_worker import running, wait_until
from tests.conftest import FakeClock

WORKER_DEADLINE = 10.0  # far below the producer's 60 s default: only the worker's rules fit


def keys_of(batches: list[ClaimedBatch]) -> list[str]:
    return sorted(b.lease.key for b in batches)


# ---------------------------------------------------------------- publish and adopt


def test_a_producer_adopts_the_rules_a_worker_published(
    store: Store, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    producer = Batcher(store, "b", clock=clock)  # defaults: max_wait 60 s
    worker_side = Batcher(store, "b", max_wait=0.05, clock=clock)
    assert store.publish_rules(worker_side.spec, clock()) is None

    with caplog.at_level(logging.WARNING, logger="redbatch"):
        producer.add("k", 1)
        producer.add("k", 2)
    assert store.next_due_ms(worker_side.spec) == clock() + 50
    assert producer.spec == worker_side.spec
    assert producer.configured.max_wait_ms == 60_000, "what the process asked for is kept"
    adopted = [r for r in caplog.records if "this process configured" in r.getMessage()]
    assert len(adopted) == 1, "one warning per change, not per add"
    assert "max_wait=0.05s" in adopted[0].getMessage() and "max_wait=60s" in adopted[0].getMessage()

    clock.advance(0.049)
    assert claim(worker_side) == []
    clock.advance(0.001)
    assert items(claim_one(worker_side)) == [1, 2]


def test_the_first_add_records_the_rules_when_the_store_holds_none(store: Store, clock: FakeClock) -> None:
    assert store.stored_rules("b") is None
    first = make(store, clock, max_wait=7)
    first.add("k", 1)
    assert store.stored_rules("b") == first.spec
    other = make(store, clock, max_wait=9)
    other.add("k", 2)
    assert other.spec == first.spec, "a producer never overrides recorded rules"
    assert store.stored_rules("b") == first.spec


def test_publishing_returns_what_it_replaced_and_is_idempotent(store: Store, clock: FakeClock) -> None:
    a = make(store, clock, max_wait=1)
    b = make(store, clock, max_wait=2, lease=3)
    assert store.publish_rules(a.spec, clock()) is None
    assert store.publish_rules(a.spec, clock()) == a.spec
    assert store.publish_rules(b.spec, clock()) == a.spec
    assert store.stored_rules("b") == b.spec
    assert store.stored_rules("other") is None


def test_the_version_names_the_rules_not_the_batcher(store: Store, clock: FakeClock) -> None:
    a, same, other = make(store, clock, name="a"), make(store, clock, name="z"), make(store, clock, idle=1)
    assert len(a.spec.version) == 16
    assert a.spec.version == same.spec.version
    assert a.spec.version != other.spec.version


# ---------------------------------------------------------------- rescheduling open keys


def test_publishing_changed_rules_reschedules_waiting_keys(store: Store, clock: FakeClock) -> None:
    old = make(store, clock, max_wait=60)
    start = clock()
    old.add("busy", 0)
    old.flush("busy")
    busy = claim_one(old)  # running, leased for 10 s
    old.add_many([("waiting", 1), ("flushed", 2)])
    old.flush("flushed")
    clock.advance(1)

    new = make(store, clock, max_wait=5)
    assert store.publish_rules(new.spec, clock()) == old.spec

    assert keys_of(claim(new)) == ["flushed"], "a key already due stays due"
    clock.advance(3.999)
    assert claim(new) == []
    clock.advance(0.001)
    assert items(claim_one(new)) == [1], "the waiting key is due 5 s after its item arrived"
    assert store.next_due_ms(new.spec) == start + 10_000, "a running batch keeps its lease"
    assert ack(new, busy)


def test_publishing_reschedules_every_open_key(store: Store, clock: FakeClock) -> None:
    old = make(store, clock, max_wait=3600)
    old.add_many((f"k{n}", n) for n in range(1200))  # several chunks of the Redis scan
    new = make(store, clock, max_wait=1)
    store.publish_rules(new.spec, clock())
    assert claim(new) == []
    clock.advance(1)
    assert len(claim(new, 2000)) == 1200


def test_a_debounce_published_later_applies_to_open_keys(store: Store, clock: FakeClock) -> None:
    old = make(store, clock, max_wait=60)
    old.add("k", 1)
    store.publish_rules(make(store, clock, max_wait=60, idle=2).spec, clock())
    clock.advance(1.999)
    assert claim(old) == []
    clock.advance(0.001)
    assert items(claim_one(old)) == [1]


def test_a_fuller_rule_makes_a_full_key_due_at_once(store: Store, clock: FakeClock) -> None:
    old = make(store, clock, max_items=10, max_wait=60)
    old.add_many([("k", 1), ("k", 2), ("k", 3)])
    store.publish_rules(make(store, clock, max_items=3, max_wait=60).spec, clock())
    assert items(claim_one(old)) == [1, 2, 3]


# ---------------------------------------------------------------- dedupe


def test_dedupe_is_adopted_from_the_store(store: Store, clock: FakeClock) -> None:
    worker_side = make(store, clock, dedupe=True)
    producer = make(store, clock, dedupe=False)
    store.publish_rules(worker_side.spec, clock())
    producer.add_many([("k", {"a": 1, "b": 2}), ("k", {"b": 2, "a": 1})])  # re-encoded with digests
    producer.add("k", {"a": 1, "b": 2})
    assert [p.value for p in producer.peek("k")] == [{"a": 1, "b": 2}]


def test_dedupe_turned_off_and_on_again_forgets_claimed_items(store: Store, clock: FakeClock) -> None:
    on, off = make(store, clock, dedupe=True), make(store, clock, dedupe=False)
    store.publish_rules(on.spec, clock())
    on.add("k", "x")
    store.publish_rules(off.spec, clock())
    off.flush()
    batch = claim_one(off)  # claimed under dedupe off: its digest must not linger
    assert ack(off, batch)
    store.publish_rules(on.spec, clock())
    on.add("k", "x")
    assert [p.value for p in on.peek("k")] == ["x"]


def test_a_refused_add_many_is_stored_once_whole(store: Store, clock: FakeClock) -> None:
    producer = make(store, clock, max_wait=60)
    producer.add("first", 0)
    store.publish_rules(make(store, clock, max_wait=1).spec, clock())
    producer.add_many((f"k{n}", n) for n in range(30))  # spread over every partition
    assert producer.stats().buffered_items == 31
    clock.advance(1)
    assert len(claim(producer)) == 31


# ---------------------------------------------------------------- Batcher.open


def test_open_builds_a_batcher_from_the_stored_rules(store: Store, clock: FakeClock) -> None:
    with pytest.raises(NotFound, match="never-used"):
        Batcher.open(store, "never-used")
    made = make(store, clock, max_items=7, max_wait=0.25, idle=0.1, dedupe=True, max_attempts=3, lease=2)
    made.add("k", 1)
    opened = Batcher.open(store, "b", clock=clock)
    assert opened.spec == made.spec
    assert opened.configured == made.spec
    assert [p.value for p in opened.peek("k")] == [1]


# ---------------------------------------------------------------- workers


def test_a_worker_publishes_its_rules_before_serving(store: Store) -> None:
    producer = Batcher(store, "late")  # defaults: items would wait 60 s
    producer.add("k", "before")
    worker_side = Batcher(store, "late", max_wait=0.05, lease=5)
    done = threading.Event()
    seen: list[object] = []

    @worker_side.handler
    def handle(batch: Batch) -> None:
        seen.extend(batch.items)
        if "after" in seen:
            done.set()

    with running(Worker(store, [worker_side], handle_signals=False)):
        assert store.stored_rules("late") == worker_side.configured
        producer.add("k", "after")
        assert done.wait(WORKER_DEADLINE), f"delivered only {seen}"
    assert sorted(map(str, seen)) == ["after", "before"]


def test_a_running_worker_adopts_rules_another_worker_published(
    store: Store, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(redbatch.worker, "RULES_REFRESH", 0.05)
    mine = Batcher(store, "shared", max_wait=60, lease=5)
    mine.handler(lambda batch: None)
    theirs = Batcher(store, "shared", max_wait=0.5, lease=2)
    with (
        caplog.at_level(logging.WARNING, logger="redbatch"),
        running(Worker(store, [mine], handle_signals=False)),
    ):
        store.publish_rules(theirs.configured, mine.clock())
        wait_until(lambda: mine.spec == theirs.configured, WORKER_DEADLINE)
    assert mine.configured.lease_ms == 5000
    assert any("this process configured" in r.getMessage() for r in caplog.records)
