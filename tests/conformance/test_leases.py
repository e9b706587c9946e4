"""Leases, heartbeats and fencing: a lost worker's batch comes back, a stale worker is refused."""

from __future__ import annotations

from redbatch.stores.base import LEASE_EXPIRED_ERROR, Store
from redbatch.types import Lease
from tests.conformance.helpers import ack, claim, claim_one, fail, items, make
from tests.conftest import FakeClock


def test_a_lapsed_lease_is_reclaimed_with_the_same_id_and_items(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, lease=10, max_wait=0)
    b.add_many([("k", 1), ("k", 2)])
    first = claim_one(b)
    clock.advance(9.999)
    assert claim(b) == []
    clock.advance(0.001)
    second = claim_one(b)
    assert second.lease.batch_id == first.lease.batch_id
    assert items(second) == [1, 2]
    assert second.attempt == first.attempt + 1
    assert second.created_at == first.created_at
    assert second.lease.fencing_token > first.lease.fencing_token


def test_a_stale_worker_can_neither_ack_fail_nor_heartbeat(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, lease=1, max_wait=0)
    b.add("k", 1)
    stale = claim_one(b)
    clock.advance(1)
    fresh = claim_one(b)
    assert not ack(b, stale)
    assert not fail(b, stale)
    assert store.heartbeat(b.spec, [stale.lease, fresh.lease], clock.now + 1000) == [False, True]
    assert ack(b, fresh)
    assert b.stats().flushed_batches == 1
    assert not ack(b, fresh)  # acknowledged once only


def test_forged_leases_are_refused(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, max_wait=0)
    b.add("k", 1)
    real = claim_one(b)
    for forged in (
        Lease("k", real.lease.batch_id, real.lease.fencing_token + 1),
        Lease("k", "not-the-id", real.lease.fencing_token),
        Lease("other", real.lease.batch_id, real.lease.fencing_token),
    ):
        assert b.store.ack(b.spec, [forged], clock.now) == [False]
    assert ack(b, real)


def test_a_heartbeat_keeps_a_live_workers_batch(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, lease=3, max_wait=0)
    b.add("k", 1)
    running = claim_one(b)
    for _ in range(5):
        clock.advance(2)
        assert store.heartbeat(b.spec, [running.lease], clock.now + 3000) == [True]
        assert claim(b) == []
    assert ack(b, running)


def test_a_crash_counts_as_an_attempt_and_ends_in_dead_letters(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, lease=1, max_wait=0, max_attempts=2)
    b.add("poison", "kills its worker")
    b.add("fine", "ok")
    for attempt in (1, 2):
        batches = {c.lease.key: c for c in claim(b)}
        assert batches["poison"].attempt == attempt
        if "fine" in batches:
            assert ack(b, batches["fine"])
        clock.advance(1)  # the worker died: the lease lapses
    assert claim(b) == []
    dead = b.dead_letters()
    assert [(d.key, d.items, d.attempts) for d in dead] == [("poison", ["kills its worker"], 2)]
    assert dead[0].error == LEASE_EXPIRED_ERROR
    stats = b.stats()
    assert (stats.in_flight, stats.dead, stats.open_keys) == (0, 1, 0)


def test_items_waiting_behind_a_lost_batch_follow_it(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, lease=1, max_wait=0, max_attempts=1)
    b.add("k", "lost")
    claim_one(b)
    b.add("k", "next")
    clock.advance(1)
    nxt = claim_one(b)  # "lost" is buried, "next" is served in the same claim
    assert items(nxt) == ["next"]
    assert [d.items for d in b.dead_letters()] == [["lost"]]


def test_acknowledgements_go_in_groups_and_each_is_fenced(store: Store, clock: FakeClock) -> None:
    b = make(store, clock, lease=1, max_wait=0, max_items=1)
    b.add_many([("a", 1), ("b", 2), ("c", 3), ("a", 4)])
    first = {c.lease.key: c for c in claim(b)}
    assert store.heartbeat(b.spec, [first["a"].lease, first["b"].lease], clock.now + 5000) == [True, True]
    clock.advance(1)
    stale = first["c"]
    fresh_c = claim_one(b)  # c's lease lapsed and was reclaimed
    leases = [first["a"].lease, stale.lease, first["b"].lease]
    assert store.ack(b.spec, leases, clock.now) == [True, False, True]
    assert store.ack(b.spec, [], clock.now) == []
    s = b.stats()
    assert (s.flushed_batches, s.in_flight) == (2, 1)
    assert [items(c) for c in claim(b)] == [[4]]  # a's next batch follows its acknowledgement
    assert ack(b, fresh_c)
