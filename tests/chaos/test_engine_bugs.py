"""Minimal reproductions of redbatch bugs the chaos harness led to.

Each test states the behaviour the product promises and guards a bug the harness found
(all fixed). A few seconds each, on the memory store or a private redis-server.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import redbatch
from redbatch import Batch, Batcher, Worker
from tests.servers import RedisServer, free_port

DEADLINE = 10.0


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; return whether it held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@contextlib.contextmanager
def running(worker: Worker) -> Iterator[list[BaseException]]:
    """Run ``worker`` on a thread; yield the exceptions ``run`` raised (none, normally)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            worker.run()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert worker.started.wait(DEADLINE)
    try:
        yield raised
    finally:
        with contextlib.suppress(RuntimeError):  # see test_stop_after_run_returned
            worker.stop()
        thread.join(DEADLINE)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test alone: these tests make it read-only or full."""
    server = RedisServer(free_port(), tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def test_hung_handler_does_not_dead_letter_batches_that_never_ran(caplog: pytest.LogCaptureFixture) -> None:
    """A sync handler past its timeout keeps its slot until its thread returns (Python cannot
    stop it); batches waiting for that slot wait, and are neither timed out nor dead-lettered."""
    store = redbatch.connect("memory://")
    batcher = Batcher(
        store, "starve", max_items=1, max_wait=0.0, lease=1.0, timeout=0.3, max_attempts=2, backoff=0.01
    )
    called: list[str] = []
    release = threading.Event()

    @batcher.handler
    def handle(batch: Batch) -> None:
        called.append(batch.key)
        if batch.key == "stuck" and batch.attempt == 1:
            release.wait(DEADLINE)  # a handler stuck on I/O, past its timeout

    def timed_out() -> bool:
        return any("passed its 0.3 s timeout" in r.getMessage() for r in caplog.records)

    worker = Worker(store, [batcher], concurrency=1, handle_signals=False)
    try:
        with caplog.at_level(logging.WARNING, logger="redbatch.worker"), running(worker):
            batcher.add("stuck", 1)
            assert wait_until(lambda: "stuck" in called)
            batcher.add("healthy", 2)
            assert wait_until(timed_out)  # healthy now waits for the only slot
            release.set()
            assert wait_until(lambda: "healthy" in called and batcher.stats().in_flight == 0)
    finally:
        release.set()
    assert batcher.dead_letters() == []
    assert called.count("healthy") == 1


def test_worker_that_reclaims_its_own_batch_keeps_heartbeating_it() -> None:
    """After a store outage lets the lease lapse, the worker that still runs the batch wins it
    back: the running call takes the new lease, the batch is not run a second time, and it is
    acknowledged once with no refusal."""
    store = redbatch.connect("memory://")
    batcher = Batcher(store, "self", max_items=1, max_wait=0.0, lease=0.6, max_attempts=10, backoff=0.01)
    outage_until = time.monotonic() + 0.9
    real_heartbeat = store.heartbeat

    def heartbeat(*args: Any) -> list[bool]:
        if time.monotonic() < outage_until:  # a short store outage: heartbeats fail, the lease lapses
            raise redbatch.StoreUnavailable("simulated outage")
        return real_heartbeat(*args)

    store.heartbeat = heartbeat  # type: ignore[method-assign]
    attempts: list[int] = []

    @batcher.handler
    def handle(batch: Batch) -> None:
        attempts.append(batch.attempt)
        time.sleep(2.0)  # outlives the outage by far

    worker = Worker(store, [batcher], concurrency=4, handle_signals=False)
    with running(worker):
        batcher.add("k", 1)
        assert wait_until(lambda: batcher.stats().flushed_batches == 1)
        time.sleep(1.0)  # longer than a lease: nothing may run the batch again meanwhile
    assert attempts == [1]
    assert (worker.counters.succeeded, worker.counters.refused) == (1, 0)


def test_timed_out_handler_does_not_overlap_the_next_batch_of_its_key() -> None:
    store = redbatch.connect("memory://")
    batcher = Batcher(store, "zombie", max_items=1, max_wait=0.0, lease=1.0, timeout=0.3, backoff=0.01)
    calls: list[tuple[float, float, int]] = []

    @batcher.handler
    def handle(batch: Batch) -> None:
        start = time.monotonic()
        if batch.items == ["hang"] and batch.attempt == 1:
            time.sleep(1.5)  # past its timeout; Python cannot stop the thread
        calls.append((start, time.monotonic(), batch.attempt))

    with running(Worker(store, [batcher], concurrency=4, handle_signals=False)):
        batcher.add("k", "hang")
        batcher.add("k", "next")
        assert wait_until(lambda: len(calls) == 3)
    overlaps = [(a, b) for a, b in itertools.combinations(sorted(calls), 2) if b[0] < a[1]]
    assert overlaps == []


def test_read_only_redis_does_not_kill_the_worker(private_redis: RedisServer) -> None:
    store = redbatch.connect(private_redis.url)
    batcher = Batcher(store, "ro", max_items=100, max_wait=0.5, lease=1.0)
    handled: list[str] = []
    batcher.handler(lambda batch: handled.append(batch.key))
    admin = redis.Redis(port=private_redis.port)
    try:
        with running(Worker(store, [batcher], concurrency=2, handle_signals=False)) as raised:
            batcher.add("k", 1)
            admin.replicaof("127.0.0.1", free_port())  # now a replica of nothing: writes refused
            wait_until(lambda: bool(raised), 2.0)  # the key falls due at 0.5 s
            admin.replicaof("NO", "ONE")
            wait_until(lambda: bool(handled or raised), 3.0)
    finally:
        admin.close()
        store.close()
    assert raised == []
    assert handled == ["k"]


@pytest.mark.parametrize("condition", ["out of memory", "read-only"])
def test_store_refusals_are_redbatch_errors(private_redis: RedisServer, condition: str) -> None:
    store = redbatch.connect(private_redis.url)
    batcher = Batcher(store, "refused", max_items=100, max_wait=60)
    admin = redis.Redis(port=private_redis.port)
    try:
        if condition == "out of memory":
            admin.config_set("maxmemory-policy", "noeviction")
            admin.config_set("maxmemory", 1)  # every write that allocates is refused
        else:
            admin.replicaof("127.0.0.1", free_port())
        with pytest.raises(redbatch.RedbatchError):
            batcher.add("k", {"x": 1})
    finally:
        admin.config_set("maxmemory", 0)
        admin.replicaof("NO", "ONE")
        admin.close()
        store.close()


def test_stop_after_run_returned() -> None:
    store = redbatch.connect("memory://")
    batcher = Batcher(store, "stop", max_items=1, max_wait=0.0)
    batcher.handler(lambda batch: None)
    worker = Worker(store, [batcher], handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.started.wait(DEADLINE)
    worker.stop()
    thread.join(DEADLINE)
    assert not thread.is_alive()
    worker.stop()  # a second stop (a shutdown hook, a signal) must be harmless


def test_no_lease_lost_warning_for_a_batch_that_was_acked(caplog: pytest.LogCaptureFixture) -> None:
    """A heartbeat refused because its batch was acked meanwhile is no lost lease (fixed in 32c35cd)."""
    store = redbatch.connect("memory://")
    batcher = Batcher(store, "race", max_items=1, max_wait=0.0, lease=0.6)  # heartbeat every 0.2 s
    real_heartbeat, real_ack = store.heartbeat, store.ack
    acked = threading.Event()

    def ack(*args: Any) -> bool:
        held = real_ack(*args)
        acked.set()
        return held

    def heartbeat(*args: Any) -> list[bool]:
        acked.wait(DEADLINE)  # the store answers this heartbeat just after the batch's ack
        return real_heartbeat(*args)

    store.ack = ack  # type: ignore[method-assign]
    store.heartbeat = heartbeat  # type: ignore[method-assign]

    @batcher.handler
    def handle(batch: Batch) -> None:
        time.sleep(0.3)  # one heartbeat is sent while this runs

    def lease_lost_warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if "lost the lease" in r.getMessage()]

    worker = Worker(store, [batcher], concurrency=2, handle_signals=False)
    with caplog.at_level(logging.WARNING, logger="redbatch.worker"), running(worker):
        batcher.add("k", 1)
        assert wait_until(lambda: worker.counters.succeeded == 1)
        wait_until(lambda: bool(lease_lost_warnings()), 0.5)  # the racing heartbeat's answer
    assert worker.counters.refused == 0
    assert lease_lost_warnings() == []


def test_poison_item_does_not_sink_its_whole_batch() -> None:
    """Guarantee 7: a handler names the poison item (``ItemsFailed``); only it is dead-lettered."""
    store = redbatch.connect("memory://")
    batcher = Batcher(store, "poison", max_items=3, max_wait=0.0, max_attempts=2, backoff=0.01)
    delivered: list[str] = []

    @batcher.handler
    def handle(batch: Batch) -> None:
        delivered.extend(item for item in batch.items if item != "bad")
        if "bad" in batch.items:
            raise redbatch.ItemsFailed([batch.items.index("bad")], "poison")

    with running(Worker(store, [batcher], concurrency=2, handle_signals=False)):
        batcher.add_many([("k", "good-1"), ("k", "bad"), ("k", "good-2")])
        assert wait_until(lambda: bool(batcher.dead_letters()) and batcher.stats().in_flight == 0)
    assert sorted(delivered) == ["good-1", "good-2"]
    assert [letter.items for letter in batcher.dead_letters()] == [["bad"]]
