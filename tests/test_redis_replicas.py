"""``replicas=N``: every write returns only once N replicas confirm it (WAIT, in the same round
trip), on a real master and replica; NotReplicated when they do not; and, slow, no
acknowledged add lost across real Sentinel failovers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import redbatch
from redbatch import Batch, Batcher, NotReplicated
from redbatch.stores.redis import RedisStore
from tests.servers import RedisServer, free_port


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A master and one replica, the replica online (its first sync done)."""
    master = RedisServer(free_port(), tmp_path / "master", ("--repl-diskless-sync-delay", "0"))
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    master.start()
    replica = RedisServer(free_port(), tmp_path / "replica", ("--replicaof", "127.0.0.1", str(master.port)))
    try:
        replica.start()
        with redis.Redis(port=master.port) as client:
            deadline = time.monotonic() + 20
            while client.info("replication").get("slave0", {}).get("state") != "online":
                assert time.monotonic() < deadline, "the replica did not come online"
                time.sleep(0.02)
        yield master, replica
    finally:
        replica.stop()
        master.stop()


CONFIRM = "replicas=1&replicas_timeout=3"  # ample on a loaded machine: these writes must go through
REFUSE = "replicas=1&replicas_timeout=0.3"  # the replica is stopped: this is how long it takes


def open_store(master: RedisServer, options: str = CONFIRM, prefix: str = "") -> RedisStore:
    prefix = prefix or f"r{uuid.uuid4().hex[:8]}"
    store = redbatch.connect(f"{master.url}?{options}", prefix=prefix, socket_timeout=5)
    assert isinstance(store, RedisStore)
    return store


def test_an_add_is_on_the_replica_when_it_returns(pair: tuple[RedisServer, RedisServer]) -> None:
    master, replica = pair
    store = open_store(master)
    batcher = Batcher(store, "b", max_wait=60)
    with redis.Redis(port=replica.port) as on_replica:
        for n in range(50):
            batcher.add("k", n)
            # read at once on the replica: WAIT returned only after it had the write
            assert on_replica.llen(f"{{{store.prefix}:b:0}}:i:k") == n + 1
    store.close()


def test_every_write_of_a_batch_waits_and_the_batch_goes_through(
    pair: tuple[RedisServer, RedisServer],
) -> None:
    master, _ = pair
    store = open_store(master, f"{CONFIRM}&partitions=3")
    batcher = Batcher(store, "b", max_items=5, max_wait=60)
    seen: list[int] = []

    @batcher.handler
    def handle(batch: Batch) -> None:
        seen.extend(batch.items)

    batcher.add_many([(f"k{n % 3}", n) for n in range(15)])
    worker = redbatch.Worker(store, [batcher], handle_signals=False)
    import threading  # noqa: PLC0415 - only this test runs a worker

    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while len(seen) < 15:
        assert time.monotonic() < deadline, seen
        time.sleep(0.02)
    worker.stop()
    thread.join(20)
    assert sorted(seen) == list(range(15))
    assert batcher.stats().flushed_items == 15
    store.close()


def test_a_stopped_replica_makes_writes_not_replicated(pair: tuple[RedisServer, RedisServer]) -> None:
    """SIGSTOP the replica: an add runs on the master, then WAIT times out: NotReplicated
    (a StoreUnavailable) within about replicas_timeout, the item stored on the master."""
    master, replica = pair
    patient = open_store(master)
    store = open_store(master, REFUSE, prefix=patient.prefix)
    Batcher(patient, "b", max_wait=60).add("k", 0)
    batcher = Batcher(store, "b", max_wait=60)
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(NotReplicated) as caught:
            batcher.add("k", 1)
        assert 0.25 < time.monotonic() - started < 3
        assert caught.value.confirmed == 0 and caught.value.wanted == 1
        assert isinstance(caught.value, redbatch.StoreUnavailable)
        assert [p.value for p in batcher.peek("k")] == [0, 1]  # on the master all the same
        with pytest.raises(NotReplicated):  # an operator's write too
            batcher.clear("k")
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    Batcher(patient, "b", max_wait=60).add("k", 2)  # the replica catches up: writes go through
    store.close()
    patient.close()


def test_async_adds_wait_too(pair: tuple[RedisServer, RedisServer]) -> None:
    """``add_async`` frames its command by hand (wire.py); its WAIT goes with it."""
    master, replica = pair
    patient = open_store(master)
    store = open_store(master, REFUSE, prefix=patient.prefix)

    async def adds() -> None:
        await Batcher(patient, "b", max_wait=60).add_async("k", 0)
        with redis.Redis(port=replica.port) as on_replica:
            assert on_replica.llen(f"{{{patient.prefix}:b:0}}:i:k") == 1
        assert replica.process is not None
        os.kill(replica.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(NotReplicated):
                await Batcher(store, "b", max_wait=60).add_async("k", 1)
        finally:
            os.kill(replica.process.pid, signal.SIGCONT)

    asyncio.run(adds())
    assert [p.value for p in Batcher(patient, "b", max_wait=60).peek("k")] == [0, 1]
    store.close()
    patient.close()


def test_a_transaction_over_partitions_waits_too(pair: tuple[RedisServer, RedisServer]) -> None:
    """Rules over several partitions are one MULTI: its wait follows on another connection."""
    master, replica = pair
    store = open_store(master, f"{REFUSE}&partitions=4")
    assert replica.process is not None
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(NotReplicated):
            Batcher(store, "b", max_wait=60).add("k", 0)  # the first add records the rules
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)
    store.close()


def test_a_replica_answering_is_unavailable_not_an_error(pair: tuple[RedisServer, RedisServer]) -> None:
    """What a Sentinel client meets on a demoted master: a call that writes nothing runs,
    then its WAIT is refused; that is StoreUnavailable (retry later), as READONLY is."""
    _, replica = pair
    store = open_store(replica)
    with pytest.raises(redbatch.StoreUnavailable, match="replica"):
        Batcher(store, "b", max_wait=60).flush("nothing-here")
    with pytest.raises(redbatch.StoreUnavailable):  # READONLY, or the same when it read first
        Batcher(store, "b", max_wait=60).add("k", 0)
    store.close()


def test_a_lost_script_is_loaded_again(pair: tuple[RedisServer, RedisServer]) -> None:
    master, _ = pair
    store = open_store(master)
    batcher = Batcher(store, "b", max_wait=60)
    batcher.add("k", 0)
    with redis.Redis(port=master.port) as client:
        client.script_flush()
    batcher.add("k", 1)
    assert [p.value for p in batcher.peek("k")] == [0, 1]
    store.close()


def test_no_replica_at_all_is_not_replicated_in_bounded_time(redis_server: RedisServer) -> None:
    store = open_store(redis_server, "replicas=2&replicas_timeout=0.2")
    started = time.monotonic()
    with pytest.raises(NotReplicated, match="0 of the 2 replicas"):
        Batcher(store, "b", max_wait=60).add("k", 0)
    assert time.monotonic() - started < 2
    store.close()


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis://:pw-secret@127.0.0.1:1/0?replicas=x", "malformed"),
        ("redis://:pw-secret@127.0.0.1:1/0?replicas=-1", "between 0 and 16"),
        ("redis://:pw-secret@127.0.0.1:1/0?replicas=17", "between 0 and 16"),
        ("redis://:pw-secret@127.0.0.1:1/0?replicas=1&replicas_timeout=0", "over 0"),
        ("redis://:pw-secret@127.0.0.1:1/0?replicas=1&replicas_timeout=nan", "over 0"),
        ("redis://:pw-secret@127.0.0.1:1/0?replicas_timeout=1", "without replicas"),
        ("redis://:pw-secret@127.0.0.1:1/0?replicas=1&replicas_timeout=20", "under socket_timeout"),
        ("redis+sentinel://:pw-secret@127.0.0.1:1/m?replicas=1&replicas_timeout=-1", "over 0"),
        ("redis+cluster://:pw-secret@127.0.0.1:1?replicas=1", "not offered on Redis Cluster"),
        ("memory://?replicas=1", "unknown option 'replicas'"),
        ("sqlite:///x.db?replicas=1", "unknown option 'replicas'"),
    ],
)
def test_bad_replica_options_are_config_errors(url: str, complaint: str) -> None:
    with pytest.raises(redbatch.ConfigError, match=complaint) as caught:
        redbatch.connect(url, check=False)
    assert "pw-secret" not in str(caught.value)


def test_replicas_options_reach_the_store(redis_server: RedisServer) -> None:
    store = redbatch.connect(f"{redis_server.url}?replicas=2&replicas_timeout=0.25", check=False)
    assert isinstance(store, RedisStore)
    assert (store.replicas, store.replicas_timeout_ms) == (2, 250)
    assert "replicas" not in str(store.client.connection_pool.connection_kwargs)
    store.close()


@pytest.mark.slow
def test_replicas_1_loses_no_acknowledged_add_across_sentinel_failovers(tmp_path: Path) -> None:
    """The short run of ``python -m benchmarks.failover``: SIGKILL the master under load,
    three times; every add that returned under replicas=1 is drained afterwards.

    Not covered, and measured by the benchmark instead: a failover of a *live* master (its
    pings late for down-after-milliseconds on a loaded machine), which keeps taking and
    confirming writes until the Sentinels demote it: a run where one happened is skipped,
    saying so, rather than passed or failed on it."""
    from benchmarks.failover import run_mode  # noqa: PLC0415 - the benchmark's own harness

    outcome = run_mode(1, failovers=3, load_s=0.5, workdir=tmp_path, log=False)
    assert sum(outcome.acked_per_failover) > 0
    if any(outcome.extra_switches):
        pytest.skip(f"the Sentinels failed over a live master: {outcome.extra_switches}")
    assert outcome.lost_per_failover == [0, 0, 0]
