"""When a key is handed over, and with which items: the batching rules on every store."""

from __future__ import annotations

from redbatch.stores.base import Store
from tests.conformance.helpers import ack, claim, claim_one, items, make
from tests.conftest import FakeClock


def test_a_key_is_not_due_before_max_wait(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=5)
    b.add("k", 1)
    clock.advance(4.999)
    assert claim(b) == []
    clock.advance(0.001)
    assert items(claim_one(b)) == [1]


def test_a_full_key_is_due_at_once(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_items=3, max_wait=60)
    b.add_many([("k", 1), ("k", 2)])
    assert claim(b) == []
    b.add("k", 3)
    assert items(claim_one(b)) == [1, 2, 3]


def test_a_batch_holds_at_most_max_items_and_the_rest_follow(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_items=2, max_wait=60)
    b.add_many([("k", i) for i in range(5)])
    first = claim_one(b)
    assert items(first) == [0, 1]
    assert ack(b, first)
    second = claim_one(b)
    assert items(second) == [2, 3]
    assert ack(b, second)
    assert claim(b) == []  # one item left, not full, not old
    clock.advance(60)
    assert items(claim_one(b)) == [4]


def test_max_wait_counts_from_each_items_own_arrival(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_items=2, max_wait=10)
    b.add("k", "old")
    clock.advance(6)
    b.add_many([("k", "mid"), ("k", "new")])  # full: due now, takes old+mid
    first = claim_one(b)
    assert items(first) == ["old", "mid"]
    assert ack(b, first)
    clock.advance(9.999)  # "new" arrived 9.999 s ago
    assert claim(b) == []
    clock.advance(0.001)
    assert items(claim_one(b)) == ["new"]


def test_idle_flushes_a_quiet_key_and_each_add_postpones_it(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=30, idle=2)
    b.add("k", 1)
    clock.advance(1.5)
    b.add("k", 2)
    clock.advance(1.5)
    assert claim(b) == []  # quiet for 1.5 s only
    clock.advance(0.5)
    assert items(claim_one(b)) == [1, 2]


def test_max_wait_bounds_a_key_that_never_goes_quiet(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=3, idle=1)
    for i in range(6):
        b.add("k", i)
        clock.advance(0.5)
    assert items(claim_one(b)) == [0, 1, 2, 3, 4, 5]


def test_one_batch_per_key_and_later_items_form_the_next_batch(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_items=2, max_wait=1)
    b.add_many([("k", 1), ("k", 2)])
    running = claim_one(b)
    b.add_many([("k", 3), ("k", 4), ("k", 5)])  # arrive mid-batch: key is full again, but busy
    clock.advance(5)
    assert claim(b) == []
    assert ack(b, running)
    assert items(claim_one(b)) == [3, 4]


def test_items_come_in_arrival_order_across_add_and_add_many(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_items=100, max_wait=1)
    b.add("k", "a")
    b.add_many([("other", 0), ("k", "b"), ("k", "c")])
    b.add("k", "d")
    clock.advance(1)
    by_key = {c.lease.key: items(c) for c in claim(b)}
    assert by_key == {"k": ["a", "b", "c", "d"], "other": [0]}


def test_different_keys_are_claimed_together_up_to_the_limit(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=1)
    b.add_many([(f"k{i}", i) for i in range(7)])
    clock.advance(1)
    first = claim(b, limit=4)
    assert len(first) == 4
    rest = claim(b, limit=10)
    assert len(rest) == 3
    assert {c.lease.key for c in first + rest} == {f"k{i}" for i in range(7)}


def test_keys_are_claimed_in_deadline_order(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=5)
    for key in ("c", "a", "b"):
        b.add(key, key)
        clock.advance(1)
    clock.advance(5)
    assert [c.lease.key for c in claim(b, limit=1)] == ["c"]
    assert [c.lease.key for c in claim(b, limit=2)] == ["a", "b"]


def test_next_due_is_the_earliest_deadline(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=5)
    assert store.next_due_ms(b.spec) is None
    b.add("late", 1)
    clock.advance(1)
    b.add("later", 1)
    assert store.next_due_ms(b.spec) == clock.now - 1000 + 5000


def test_dedupe_collapses_equal_waiting_items(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, dedupe=True, max_wait=1)
    b.add_many([("k", {"id": 1, "x": [1]}), ("k", {"x": [1], "id": 1}), ("k", 2), ("k", 2)])
    b.add("k", 2)
    b.add("other", 2)
    clock.advance(1)
    by_key = {c.lease.key: items(c) for c in claim(b)}
    assert by_key == {"k": [{"id": 1, "x": [1]}, 2], "other": [2]}


def test_dedupe_forgets_an_item_once_it_is_claimed(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, dedupe=True, max_wait=1)
    b.add("profile", 42)
    clock.advance(1)
    running = claim_one(b)
    b.add("profile", 42)  # changed again during the recompute: must be recomputed again
    b.add("profile", 42)
    assert ack(b, running)
    clock.advance(1)
    assert items(claim_one(b)) == [42]


def test_without_dedupe_equal_items_are_all_kept(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=1)
    b.add_many([("k", 1), ("k", 1)])
    clock.advance(1)
    assert items(claim_one(b)) == [1, 1]


def test_peek_shows_pending_items_oldest_first(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_items=2, max_wait=60)
    b.add("k", "a")
    clock.advance(1)
    b.add_many([("k", "b"), ("k", "c")])
    running = claim_one(b)  # a, b
    assert [p.value for p in b.peek("k")] == ["c"]
    b.add("k", "d")
    peeked = b.peek("k", limit=1)
    assert [p.value for p in peeked] == ["c"]
    assert peeked[0].arrived_at == clock.now / 1000
    assert ack(b, running)
    assert b.peek("nothing") == []


def test_flush_makes_one_key_or_all_idle_keys_due_now(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=60)
    b.add_many([("a", 1), ("b", 2), ("c", 3)])
    assert b.flush("a") == 1
    assert [c.lease.key for c in claim(b)] == ["a"]
    assert b.flush() == 2  # a is running: not counted
    assert sorted(c.lease.key for c in claim(b)) == ["b", "c"]
    assert b.flush("nobody") == 0


def test_clear_drops_waiting_items_and_a_running_batch_finishes(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_items=2, max_wait=1)
    b.add_many([("chat", 1), ("chat", 2)])
    running = claim_one(b)
    b.add_many([("chat", 3), ("chat", 4), ("chat", 5)])
    assert b.clear("chat") == 3
    assert b.peek("chat") == []
    assert ack(b, running)
    clock.advance(10)
    assert claim(b) == []
    b.add("chat", "after the persona switch")
    clock.advance(1)
    assert items(claim_one(b)) == ["after the persona switch"]
    assert b.stats().buffered_items == 0


def test_clear_of_an_unknown_key_is_zero(store: Store, clock: FakeClock) -> None:
    assert make(store, clock).clear("nobody") == 0


def test_batchers_are_independent(store: Store, clock: FakeClock) -> None:
    one = make(store, clock, "one", max_wait=1)
    two = make(store, clock, "two", max_wait=1)
    one.add("k", "for one")
    two.add("k", "for two")
    clock.advance(1)
    assert items(claim_one(one)) == ["for one"]
    assert items(claim_one(two)) == ["for two"]


def test_a_key_already_due_stays_due_when_items_arrive(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=60, idle=5)
    b.add("flushed", 1)
    b.flush("flushed")
    b.add("flushed", 2)  # would postpone a debounce, but the key was flushed: it stays due
    b.add("overdue", 1)
    clock.advance(5)  # due by idle, not yet claimed
    b.add("overdue", 2)
    assert {c.lease.key: items(c) for c in claim(b)} == {"flushed": [1, 2], "overdue": [1, 2]}
