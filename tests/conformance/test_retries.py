"""Failed batches: retried with their id and items, then dead letters to list, replay, purge."""

from __future__ import annotations

import random

import pytest

from redbatch.stores.base import Store
from tests.conformance.helpers import ack, claim, claim_one, fail, items, make
from tests.conftest import FakeClock


def test_a_failed_batch_is_retried_at_its_time_with_its_id(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=0)
    b.add_many([("k", 1), ("k", 2)])
    first = claim_one(b)
    assert fail(b, first, retry_in=2)
    assert b.stats().retrying == 1
    b.add("k", 3)  # waits behind the retry: order within the key is kept
    clock.advance(1.999)
    assert claim(b) == []
    clock.advance(0.001)
    retry = claim_one(b)
    assert (retry.lease.batch_id, items(retry), retry.attempt) == (first.lease.batch_id, [1, 2], 2)
    assert ack(b, retry)
    assert items(claim_one(b)) == [3]


def test_a_batch_out_of_attempts_goes_to_dead_letters_with_its_error(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=0)
    b.add("k", {"bad": True})
    first = claim_one(b)
    assert fail(b, first, error="ValueError: bad item", retry_in=None)
    assert claim(b) == []
    (dead,) = b.dead_letters()
    assert (dead.id, dead.key, dead.items, dead.attempts) == (first.lease.batch_id, "k", [{"bad": True}], 1)
    assert dead.error == "ValueError: bad item"
    assert dead.died_at == clock.now / 1000
    stats = b.stats()
    assert (stats.dead, stats.in_flight, stats.retrying, stats.flushed_batches) == (1, 0, 0, 0)


def test_replay_puts_dead_items_back_first_and_due_now(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=60, max_items=100)
    b.add("k", "first")
    b.flush("k")
    assert fail(b, claim_one(b), retry_in=None)
    b.add("k", "second")
    assert b.replay() == 1
    assert b.dead_letters() == []
    replayed = claim_one(b)
    assert items(replayed) == ["first", "second"]
    assert replayed.attempt == 1


def test_replay_and_purge_by_id(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=0)
    for key in ("a", "b", "c"):
        b.add(key, key)
    for claimed in claim(b):
        assert fail(b, claimed, retry_in=None)
    ids = {d.key: d.id for d in b.dead_letters()}
    assert b.replay([ids["a"]]) == 1
    assert b.purge_dead([ids["b"]]) == 1
    assert [d.key for d in b.dead_letters()] == ["c"]
    assert [items(c) for c in claim(b)] == [["a"]]


def test_purge_by_age_and_all(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=0)
    b.add("old", 1)
    assert fail(b, claim_one(b), retry_in=None)
    clock.advance(100)
    b.add("young", 2)
    assert fail(b, claim_one(b), retry_in=None)
    assert b.purge_dead(older_than=50) == 1
    assert [d.key for d in b.dead_letters()] == ["young"]
    assert b.purge_dead() == 1
    assert b.stats().dead == 0


def test_dead_letters_page_oldest_first(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=0)
    for i in range(5):
        b.add(f"k{i}", i)
        assert fail(b, claim_one(b), retry_in=None)
        clock.advance(1)
    assert [d.items[0] for d in b.dead_letters(limit=2)] == [0, 1]
    assert [d.items[0] for d in b.dead_letters(limit=2, offset=2)] == [2, 3]


def test_clear_drops_a_batch_waiting_to_retry(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=0)
    b.add_many([("k", 1), ("k", 2)])
    assert fail(b, claim_one(b))
    assert b.clear("k") == 2
    clock.advance(60)
    assert claim(b) == []
    assert b.stats().retrying == 0


@pytest.mark.parametrize("attempt", [1, 2, 5, 20])
def test_backoff_grows_exponentially_with_jitter_and_a_cap(
    store: Store, clock: FakeClock, attempt: int
) -> None:
    b = make(store, clock, max_attempts=50, backoff=1, max_backoff=10)
    delay = min(10_000, 1000 * 2 ** (attempt - 1))
    seen = {b.retry_at(attempt, 0, random.Random(seed)) for seed in range(50)}
    assert all(delay / 2 <= s <= delay for s in seen)
    assert len(seen) > 1  # jittered


def test_no_retry_after_the_last_attempt(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_attempts=3)
    assert b.retry_at(2, 0) is not None
    assert b.retry_at(3, 0) is None


def test_a_partial_failure_shrinks_the_batch_to_its_failed_items(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=0)
    b.add_many([("k", "ok-0"), ("k", "poison-1"), ("k", "ok-2"), ("k", "poison-3")])
    first = claim_one(b)
    now = clock.now
    assert store.fail(b.spec, first.lease, now, "2 bad items", now + 1000, keep=[1, 3])
    assert b.stats().flushed_items == 2
    clock.advance(1)
    retry = claim_one(b)
    assert (retry.lease.batch_id, items(retry), retry.attempt) == (
        first.lease.batch_id,
        ["poison-1", "poison-3"],
        2,
    )
    assert store.fail(b.spec, retry.lease, clock.now, "still bad", None, keep=[1])
    (dead,) = b.dead_letters()
    assert (dead.id, dead.items, dead.error) == (first.lease.batch_id, ["poison-3"], "still bad")
    s = b.stats()
    assert (s.flushed_items, s.flushed_batches, s.dead, s.open_keys) == (3, 0, 1, 0)
