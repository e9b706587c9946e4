"""What only the Redis store does: entries written by hand, scripts, refusals, timeouts,
partitions. The conformance suite covers the behaviour every store shares."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from redis.crc import key_slot

import redbatch
import redbatch.stores.redis
from redbatch import Batcher, CorruptItem, RedbatchError, StoreUnavailable, engine
from redbatch.jobrecords import (
    JOBS_PREFIX,
    JobOutcome,
    JobStatus,
    Lane,
    NewGroup,
    NewJob,
    OutcomeKind,
    callback_job_id,
)
from redbatch.stores.redis import RedisStore
from redbatch.stores.redis.client import JOB_SCRIPTS
from redbatch.types import QueueSpec
from tests.conformance.helpers import ack, claim, claim_one, fail, items, make
from tests.conftest import FakeClock
from tests.servers import RedisServer, free_port


@pytest.fixture(params=["redis", "redis-partitioned"])
def store_kind(request: pytest.FixtureRequest) -> str:
    """The conftest's ``store`` fixture, on Redis only."""
    return str(request.param)


def redis_key(store: RedisStore, batcher: Batcher, suffix: str, key: str) -> str:
    """A key of the documented layout: ``{prefix:batcher:partition}:<suffix><key>``."""
    partition = zlib.crc32(key.encode()) % store.partitions
    return f"{{{store.prefix}:{batcher.name}:{partition}}}:{suffix}{key}"


# ---------------------------------------------------------------- the state machine


def test_counters_a_previous_version_wrote_under_its_field_names_still_count(
    store: RedisStore, clock: FakeClock
) -> None:
    """Before the stats hash took the engine's names it held 'buffered' and 'last_flush'."""
    b = make(store, clock, max_items=10, max_wait=1)
    b.add_many([("k", 1), ("k", 2), ("j", 3)])
    clock.advance(1)
    k_batch, j_batch = sorted(claim(b), key=lambda c: c.lease.key, reverse=True)
    assert ack(b, k_batch)
    flushed_at = clock.now
    b.add_many([("k", 4), ("k", 5)])
    before = b.stats()
    for part in store._partitions(b.name):  # the fields as the previous version left them
        for new, old in (("buffered_items", "buffered"), ("last_flush_at", "last_flush")):
            value = store.client.hget(part.stats, new)
            if value is not None:
                store.client.hdel(part.stats, new)
                store.client.hset(part.stats, old, value)
    assert not any(store.client.hexists(p.stats, "buffered_items") for p in store._partitions(b.name))
    assert b.stats() == before
    assert (before.buffered_items, before.in_flight, before.flushed_batches) == (2, 1, 1)

    clock.advance(1)
    (k_again,) = claim(b)  # takes k's 2 items: under the new name, from the old name's 2
    assert ack(b, k_again) and ack(b, j_batch)
    s = b.stats()
    assert (s.buffered_items, s.in_flight, s.flushed_batches, s.flushed_items) == (0, 0, 3, 5)
    assert s.last_flush_at == clock.now / 1000 > flushed_at / 1000  # the later of the two fields


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


# ---------------------------------------------------------------- partitions


def keys_by_partition(partitions: int, per_partition: int) -> list[list[str]]:
    """Key names grouped by the partition they hash to."""
    found: list[list[str]] = [[] for _ in range(partitions)]
    n = 0
    while min(len(keys) for keys in found) < per_partition:
        key = f"key-{n}"
        keys = found[zlib.crc32(key.encode()) % partitions]
        if len(keys) < per_partition:
            keys.append(key)
        n += 1
    return found


def test_due_work_is_served_earliest_deadline_first_across_partitions(
    redis_server: RedisServer, clock: FakeClock
) -> None:
    store = RedisStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:12]}", partitions=4)
    b = make(store, clock, max_wait=5)
    groups = keys_by_partition(4, 3)
    # Deadlines one second apart, the earliest in the last partition and the
    # partitions taking turns, so that partition order and deadline order disagree.
    in_deadline_order = [groups[p][n] for n in range(3) for p in (3, 1, 2, 0)]
    for key in in_deadline_order:
        b.add(key, key)
        clock.advance(1)
    clock.advance(5)
    served: list[str] = []
    while batches := claim(b, limit=3):
        assert len(batches) == 3
        served += [c.lease.key for c in batches]
    assert served == in_deadline_order
    store.close()


# ---------------------------------------------------------------- bounded failure

CONNECT_TIMEOUT = SOCKET_TIMEOUT = 1.0
SLACK = 0.5  # seconds of scheduling and handshake allowed on top of the configured bound
TIMEOUTS = {"connect_timeout": CONNECT_TIMEOUT, "socket_timeout": SOCKET_TIMEOUT}


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A URL of a server that accepts TCP connections (the kernel does, from the backlog)
    and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


@contextmanager
def takes_less_than(bound: float) -> Iterator[None]:
    started = time.monotonic()
    yield
    elapsed = time.monotonic() - started
    assert elapsed < bound, f"took {elapsed:.2f} s, over the {bound:.2f} s bound"


def test_connect_to_a_silent_server_fails_within_its_timeouts(silent_url: str) -> None:
    with takes_less_than(CONNECT_TIMEOUT + SOCKET_TIMEOUT + SLACK), pytest.raises(StoreUnavailable):
        redbatch.connect(silent_url, **TIMEOUTS)


def test_add_to_a_silent_server_fails_within_its_timeouts(silent_url: str) -> None:
    store = redbatch.connect(silent_url, check=False, **TIMEOUTS)
    b = Batcher(store, "b")
    with takes_less_than(CONNECT_TIMEOUT + SOCKET_TIMEOUT + SLACK), pytest.raises(StoreUnavailable):
        b.add("k", 1)
    store.close()


def test_tls_to_a_plain_server_fails_within_its_timeouts(redis_server: RedisServer) -> None:
    url = f"rediss://127.0.0.1:{redis_server.port}/0"
    with takes_less_than(CONNECT_TIMEOUT + SOCKET_TIMEOUT + SLACK), pytest.raises(StoreUnavailable):
        redbatch.connect(url, **TIMEOUTS)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, free to be stopped, paused or reconfigured."""
    server = RedisServer(free_port(), tmp_path).start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGCONT)
        server.stop()


def test_a_command_to_a_server_that_stopped_answering_fails_within_the_socket_timeout(
    own_server: RedisServer,
) -> None:
    store = redbatch.connect(own_server.url, **TIMEOUTS)  # the connection is made and kept
    b = Batcher(store, "b")
    b.add("k", 1)
    assert own_server.process is not None
    own_server.process.send_signal(signal.SIGSTOP)
    with takes_less_than(SOCKET_TIMEOUT + SLACK), pytest.raises(StoreUnavailable):
        b.add("k", 2)
    own_server.process.send_signal(signal.SIGCONT)
    store.close()


def test_the_first_command_after_a_restart_succeeds(own_server: RedisServer) -> None:
    store = redbatch.connect(own_server.url, **TIMEOUTS)
    b = Batcher(store, "b")
    b.add("k", 1)  # a pooled connection now points at the server about to go away
    own_server.stop()
    own_server.start()
    b.add("k", 2)
    assert b.stats().buffered_items == 1  # the new server kept nothing (no persistence)
    store.close()


def test_an_add_after_one_that_timed_out_is_answered_in_step(own_server: RedisServer) -> None:
    # Appends keep one connection between calls (wire.HeldConnection): the timed-out one's
    # late reply must not be read as the next one's.
    store = redbatch.connect(own_server.url, **TIMEOUTS)
    b = Batcher(store, "b")
    b.add("k", 1)
    assert own_server.process is not None
    own_server.process.send_signal(signal.SIGSTOP)
    with pytest.raises(StoreUnavailable):
        b.add("k", 2)
    own_server.process.send_signal(signal.SIGCONT)
    b.add("k", 3)
    b.add_many([("k", 4), ("k", 5)])
    assert [p.value for p in b.peek("k")][-3:] == [3, 4, 5]
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
def test_a_forked_child_adds_on_a_connection_of_its_own(own_server: RedisServer) -> None:
    store = redbatch.connect(own_server.url, **TIMEOUTS)
    b = Batcher(store, "b")
    b.add("k", 1)  # the parent's connection is held now
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if its adds went through
        code = 1
        try:
            b.add("k", 2)
            b.add("k", 3)
            code = 0
        finally:
            os._exit(code)
    b.add("k", 4)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    b.add("k", 5)
    assert sorted(p.value for p in b.peek("k")) == [1, 2, 3, 4, 5]
    store.close()


def test_closing_the_store_closes_the_connection_its_adds_keep(own_server: RedisServer) -> None:
    admin = redis.Redis.from_url(own_server.url)
    before = len(admin.client_list())
    store = redbatch.connect(own_server.url, **TIMEOUTS)
    b, other = Batcher(store, "b"), Batcher(store, "other")
    b.add("k", 1)
    other.add("k", 1)
    assert len(admin.client_list()) > before
    store.close()
    assert wait_for(lambda: len(admin.client_list()) == before)
    b.add("k", 2)  # a closed store connects again, as redis-py does
    assert b.stats().buffered_items == 2
    store.close()
    admin.close()


def test_a_client_given_to_the_store_gets_its_connections_back_on_close(own_server: RedisServer) -> None:
    pool = redis.ConnectionPool.from_url(own_server.url)
    client = redis.Redis(connection_pool=pool)  # its owner's: closing the store leaves it open
    store = RedisStore(own_server.url, client=client)
    b = Batcher(store, "b")
    b.add("k", 1)
    store.close()
    assert not pool._in_use_connections  # the connection appends keep is the pool's again
    assert client.ping()
    pool.disconnect()


def wait_for(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# ---------------------------------------------------------------- scripts and refusals


def test_scripts_are_loaded_again_after_script_flush(own_server: RedisServer, clock: FakeClock) -> None:
    for partitions in (1, 3):
        store = RedisStore(own_server.url, prefix=f"p{partitions}", partitions=partitions)
        b = make(store, clock, max_wait=1)
        b.add("k", 1)
        store.client.script_flush()
        b.add_many([("k", 2), ("j", 3)])
        store.client.script_flush()
        clock.advance(1)
        claimed = claim(b)
        assert sorted(items(c) for c in claimed) == [[1, 2], [3]]
        store.client.script_flush()
        assert all(ack(b, c) for c in claimed)
        store.close()


def test_claims_and_acks_on_the_loop_match_the_sync_ones_and_reload_lost_scripts(
    own_server: RedisServer, clock: FakeClock
) -> None:
    """The worker's calls on its loop (``LoopCalls``) over one and three partitions: the same
    batches in deadline order, the same acknowledgements, and a SCRIPT FLUSH survived."""
    for partitions in (1, 3):
        store = RedisStore(own_server.url, prefix=f"loop{partitions}", partitions=partitions)
        assert store.calls_on_loop()
        b = make(store, clock, max_items=2, max_wait=1)
        for n in range(6):
            b.add(f"k{n}", n)
            clock.advance(0.1)
        clock.advance(1)

        async def main(store: RedisStore, b: Batcher) -> tuple[list[Any], list[bool], list[bool]]:
            store.client.script_flush()
            first = await store.claim_due_async(b.spec, clock(), 4)
            rest = await store.claim_due_async(b.spec, clock(), 10)
            store.client.script_flush()
            held = await store.ack_async(b.spec, [c.lease for c in first + rest], clock())
            again = await store.ack_async(b.spec, [first[0].lease], clock())
            return [c.lease.key for c in first + rest], held, again

        keys, held, again = asyncio.run(main(store, b))
        assert keys == [f"k{n}" for n in range(6)]  # earliest deadline first, across partitions
        assert held == [True] * 6 and again == [False]  # acked once: a second ack is refused
        assert b.stats().in_flight == 0 and b.stats().buffered_items == 0
        store.close()


def test_the_worker_claims_on_threads_where_the_loop_calls_cannot_serve(own_server: RedisServer) -> None:
    """replicas=N needs a WAIT after each write, which the loop's calls do not send; a client
    given without an asyncio twin has no loop client at all."""
    assert not RedisStore(own_server.url, replicas=1).calls_on_loop()
    assert not RedisStore(own_server.url, client=redis.Redis(port=own_server.port)).calls_on_loop()


def test_a_read_only_replica_is_unavailable_not_an_error(own_server: RedisServer, tmp_path: Path) -> None:
    (tmp_path / "replica").mkdir()
    with redis.Redis(port=own_server.port) as admin:  # no 5 s wait before the initial sync
        admin.config_set("repl-diskless-sync-delay", 0)
    replicating = ("--replicaof", "127.0.0.1", str(own_server.port))
    replica = RedisServer(free_port(), tmp_path / "replica", replicating).start()
    try:
        on_primary = Batcher(redbatch.connect(own_server.url), "b", max_wait=0)
        on_primary.add("k", 1)
        assert on_primary.store.client.wait(1, 10_000) == 1  # the replica has the item
        on_replica = Batcher(redbatch.connect(replica.url), "b", max_wait=0)
        with pytest.raises(StoreUnavailable, match="READONLY"):
            on_replica.add("k", 2)
        with pytest.raises(StoreUnavailable, match="READONLY"):
            on_replica.store.claim_due(on_replica.spec, on_replica.clock(), 10)
        on_primary.store.close()
        on_replica.store.close()
    finally:
        replica.stop()


def test_out_of_memory_is_unavailable_and_passes(own_server: RedisServer) -> None:
    b = Batcher(redbatch.connect(own_server.url), "b")
    b.add("k", 1)
    admin = redis.Redis(port=own_server.port)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)
    with pytest.raises(StoreUnavailable, match="OOM"):
        b.add("k", 2)
    admin.config_set("maxmemory", 0)
    b.add("k", 3)
    assert [p.value for p in b.peek("k")] == [1, 3]
    admin.close()
    b.store.close()


@pytest.mark.parametrize("partitions", [1, 3])
def test_add_many_is_all_or_none_when_one_key_refuses(
    redis_server: RedisServer, clock: FakeClock, partitions: int
) -> None:
    store = RedisStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:12]}", partitions=partitions)
    b = make(store, clock)
    keys = [group[0] for group in keys_by_partition(partitions, 3)]
    keys = keys if partitions > 1 else keys_by_partition(1, 3)[0]
    store.client.set(redis_key(store, b, "i:", keys[-1]), "not a list")  # the last one refuses
    with pytest.raises(RedbatchError, match="WRONGTYPE"):
        b.add_many([(key, n) for n, key in enumerate(keys)])
    assert [b.peek(key) for key in keys[:-1]] == [[]] * (len(keys) - 1)
    s = b.stats()
    assert (s.open_keys, s.buffered_items) == (0, 0)
    store.client.delete(redis_key(store, b, "i:", keys[-1]))
    assert b.add_many([(key, n) for n, key in enumerate(keys)]) == len(keys)
    assert b.stats().buffered_items == len(keys)
    store.close()


# ---------------------------------------------------------------- the rules in every partition


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


@pytest.mark.parametrize("dedupe", [False, True], ids=["plain", "dedupe"])
def test_a_dead_letter_holding_an_unframed_entry_replays_whole(
    store: RedisStore, clock: FakeClock, dedupe: bool
) -> None:
    b = make(store, clock, dedupe=dedupe)
    b.add("k", 1)
    store.client.rpush(redis_key(store, b, "i:", "k"), b"written by hand")
    clock.advance(10)
    assert claim(b) == []  # the batch is corrupt: dead-lettered at its claim
    [letter] = b.dead_letters()
    assert letter.error.startswith("corrupt data")
    assert b.replay() == 2
    assert [p.value for p in b.peek("k")][:1] == [1]
    clock.advance(10)
    assert claim(b) == []  # dead-lettered again, still whole, nothing else harmed
    assert [d.items[0] for d in b.dead_letters()] == [1]
    b.add("k", 1)  # no digest was left behind for an item that does not wait
    assert [p.value for p in b.peek("k")] == [1]


# ---------------------------------------------------------------- job queues


def job_spec(lease_ms: int = 1000) -> QueueSpec:
    return QueueSpec(JOBS_PREFIX + "q", 1, 0, 0, False, 3, lease_ms)


def new_job(job_id: str, now: int, group: str = "", attempts: int = 2) -> NewJob:
    return NewJob(job_id, "f", orjson.dumps({"id": job_id}), now, Lane.NORMAL, attempts, 1, group)


def test_lib_lua_states_the_engines_job_transitions() -> None:
    """lib.lua's JOB_ROWS is redbatch.engine.JOB_TRANSITIONS stated again, row for row."""
    lib = resources.files("redbatch.stores.redis").joinpath("lua/lib.lua").read_text()
    table = lib[lib.index("local JOB_ROWS = {") : lib.index("local JOB_STATUSES")]
    rows = {
        name: (frozenset(re.findall(r"(\w+) = true", leaves)), enters)
        for name, leaves, enters in re.findall(r"^\s+(\w+) = \{\{([^}]*)\}, '(\w+)'\},$", table, re.M)
    }
    assert rows == dict(engine.JOB_TRANSITIONS)


def test_every_job_transition_is_cited_by_the_script_that_makes_it() -> None:
    """As test_engine.py checks ``-- transition: NAME`` for the engine's table, this checks
    ``-- job transition: NAME`` for JOB_TRANSITIONS: each row cited, no other name."""
    lua = resources.files("redbatch.stores.redis").joinpath("lua")
    cited = {
        name
        for script in lua.iterdir()
        if script.name.endswith(".lua")
        for name in re.findall(r"-- job transition: (\w+)", script.read_text())
    }
    assert cited == set(engine.JOB_TRANSITIONS)


def test_a_job_queue_has_one_partition_whatever_the_store_has(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:12]}", partitions=3)
    assert [p.base for p in store._partitions(job_spec().name)] == [f"{{{store.prefix}:jobs:q:0}}:"]
    assert len(store._partitions("batcher")) == 3
    store.close()


def persistent_server(port: int, directory: Path) -> RedisServer:
    """A redis-server that writes every change to its append-only file before answering."""
    return RedisServer(port, directory, ("--appendonly", "yes", "--appendfsync", "always"))


def test_job_state_survives_a_redis_server_restart(tmp_path: Path, clock: FakeClock) -> None:
    server = persistent_server(free_port(), tmp_path).start()
    try:
        store = RedisStore(server.url)
        q = job_spec(lease_ms=60_000)
        members = [new_job(f"m{i}", clock.now, group="g") for i in range(3)]
        store.submit_jobs(q, members, NewGroup("g", b'"cb"', "cb"), clock.now)
        store.submit_jobs(q, [new_job("solo", clock.now)], None, clock.now)
        claimed = {c.lease.key: c for c in store.claim_due(q, clock.now, 10)}
        ok = JobOutcome(claimed["m0"].lease, OutcomeKind.SUCCEEDED, b"42")
        assert store.finish_jobs(q, [ok], clock.now) == [True]
        assert store.fail(q, claimed["m1"].lease, clock.now, "boom", None)
        assert store.job_progress(q, claimed["m2"].lease, 0.5, "half")
        before = (
            store.get_jobs(q, ["m0", "m1", "m2", "solo"]),
            store.get_group(q, "g"),
            store.job_counts(q),
            store.list_jobs(q, None, None, 10, None),
            store.counters(q),
        )
        store.close()

        server.stop()  # SIGKILL: only what the append-only file holds comes back
        server.start()

        store = RedisStore(server.url)
        after = (
            store.get_jobs(q, ["m0", "m1", "m2", "solo"]),
            store.get_group(q, "g"),
            store.job_counts(q),
            store.list_jobs(q, None, None, 10, None),
            store.counters(q),
        )
        assert after == before
        # and the work goes on from where it was: the group ends, its callback is due
        done = JobOutcome(claimed["m2"].lease, OutcomeKind.SUCCEEDED, b"1")
        assert store.finish_jobs(q, [done], clock.now) == [True]
        assert {c.lease.key for c in store.claim_due(q, clock.now, 10)} == {callback_job_id("g", 1)}
        group = store.get_group(q, "g")
        assert group is not None and group.counts[JobStatus.FAILED] == 1 and group.finished_at == clock.now
        store.close()
    finally:
        server.stop()


class KeysSeen:
    """Wraps a store's ``_eval`` (every script call of a one-partition queue goes through
    it) to record the KEYS each script is given, then calls the script as before."""

    def __init__(self, store: RedisStore) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self._eval = store._eval
        store._eval = self  # type: ignore[method-assign]

    def __call__(self, name: str, keys: list[str], args: list[Any]) -> Any:
        self.calls.append((name, list(keys)))
        return self._eval(name, keys, args)


def run_every_job_step(store: RedisStore, clock: FakeClock) -> None:
    """Every job operation, and claim and fail on a job queue, each at least once."""
    q = job_spec()
    members = [new_job(f"m{i}", clock.now, group="g", attempts=1) for i in range(4)]
    store.submit_jobs(q, members, NewGroup("g", b'"cb"', "cb"), clock.now)
    store.submit_jobs(q, [new_job("solo", clock.now), new_job("later", clock.now + 60_000)], None, clock.now)
    claimed = {c.lease.key: c for c in store.claim_due(q, clock.now, 10)}
    assert store.job_progress(q, claimed["m0"].lease, 0.5, "half")
    assert store.heartbeat(q, [claimed["m0"].lease], clock.now + 1000) == [True]
    assert store.fail(q, claimed["solo"].lease, clock.now, "again", clock.now)
    assert store.fail(q, claimed["m1"].lease, clock.now, "dead", None)
    advance = JobOutcome(claimed["m2"].lease, OutcomeKind.ADVANCE, b"1", b'"next"', clock.now, "g")
    assert store.finish_jobs(q, [advance], clock.now) == [True]
    assert store.cancel_job(q, "m0", clock.now) == JobStatus.RUNNING
    assert store.cancel_job(q, "later", clock.now) == JobStatus.CANCELLED
    clock.advance(2)  # m3's lease lapses with its only attempt used: buried
    claimed = {c.lease.key: c for c in store.claim_due(q, clock.now, 10)}
    assert set(claimed) == {"solo", "m2"}
    outcomes = [JobOutcome(c.lease, OutcomeKind.SUCCEEDED, b"2") for c in claimed.values()]
    assert store.finish_jobs(q, outcomes, clock.now) == [True, True]
    assert store.retry_jobs(q, ["m1", "m3"], None, clock.now, clock.now) == ["m1", "m3"]
    store.list_jobs(q, JobStatus.PENDING, "g", 10, None)
    store.get_jobs(q, ["m0"])
    store.get_group(q, "g")
    store.job_counts(q)
    clock.advance(60)
    assert store.cleanup_jobs(q, clock.now, 100) >= 2  # solo and later at least


def test_every_job_script_touches_one_slot(own_server: RedisServer, clock: FakeClock) -> None:
    """Cluster-ready: every key a job script is given, and every key a job step writes
    (whether given or built inside the script), shares the queue's one hash tag."""
    store = RedisStore(own_server.url, prefix="app", partitions=3)
    tag = "{app:jobs:q:0}:"
    admin = redis.Redis(port=own_server.port)
    admin.config_set("notify-keyspace-events", "KA")
    watcher = admin.pubsub()
    watcher.psubscribe("__keyspace@0__:*")
    watcher.subscribe("end-of-test")
    seen = KeysSeen(store)

    run_every_job_step(store, clock)

    admin.publish("end-of-test", "1")  # delivered after every notification before it
    written: set[str] = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        message = watcher.get_message(timeout=1)
        if message is None or message["type"] not in ("pmessage", "message"):
            continue
        if message["channel"] == b"end-of-test":
            break
        written.add(message["channel"].decode().removeprefix("__keyspace@0__:"))
    else:
        pytest.fail("the end of the test's notifications never came")
    watcher.close()
    admin.close()
    store.close()

    scripts = {name for name, _ in seen.calls}
    assert scripts >= {*JOB_SCRIPTS, "claim", "fail", "heartbeat"}
    given = {key for _, keys in seen.calls for key in keys}
    assert written and given
    assert {key for key in given | written if not key.startswith(tag)} == set()
    assert {key_slot(key.encode()) for key in given | written} == {key_slot(tag.encode())}


def test_cleanup_takes_a_group_whole_even_past_its_limit_when_it_comes_first(
    store: RedisStore, clock: FakeClock
) -> None:
    q = job_spec()
    store.submit_jobs(q, [new_job("solo", clock.now)], None, clock.now)
    store.submit_jobs(q, [new_job(f"m{i}", clock.now, group="g") for i in range(3)], NewGroup("g"), clock.now)
    claimed = store.claim_due(q, clock.now, 10)
    by_key = {c.lease.key: c for c in claimed}
    assert store.finish_jobs(q, [JobOutcome(by_key["solo"].lease, OutcomeKind.SUCCEEDED)], clock.now)
    clock.advance(1)
    others = [JobOutcome(c.lease, OutcomeKind.SUCCEEDED) for c in claimed if c.lease.key != "solo"]
    assert store.finish_jobs(q, others, clock.now) == [True] * 3
    clock.advance(1)
    assert store.cleanup_jobs(q, clock.now, 2) == 1  # solo; the group of 3 would pass the limit
    assert store.get_group(q, "g") is not None
    assert store.cleanup_jobs(q, clock.now, 2) == 3  # first in line: it goes whole
    assert store.get_group(q, "g") is None
    assert store.list_jobs(q, None, None, 10, None).jobs == []
    assert store.cleanup_jobs(q, clock.now, 2) == 0


def test_job_operations_refuse_bad_input_and_store_nothing(store: RedisStore, clock: FakeClock) -> None:
    q = job_spec()
    with pytest.raises(redbatch.ConfigError, match="names group"):
        store.submit_jobs(q, [new_job("a", clock.now), new_job("b", clock.now, group="g")], None, clock.now)
    with pytest.raises(redbatch.ConfigError, match="names group"):
        store.submit_jobs(q, [new_job("a", clock.now, group="h")], NewGroup("g"), clock.now)
    assert store.get_jobs(q, ["a", "b"]) == [None, None] and store.get_group(q, "g") is None
    with pytest.raises(redbatch.ConfigError, match="not a job queue"):
        store.submit_jobs(QueueSpec("b", 1, 0, 0, False, 3, 1000), [new_job("a", clock.now)], None, clock.now)
    store.submit_jobs(q, [new_job(f"j{i}", clock.now) for i in range(3)], None, clock.now)
    (running,) = store.claim_due(q, clock.now, 1)
    for fraction in (-0.1, 1.5, float("nan")):
        with pytest.raises(redbatch.ConfigError, match="fraction"):
            store.job_progress(q, running.lease, fraction, "")
    page = store.list_jobs(q, None, None, 1, None)
    assert page.cursor is not None
    with pytest.raises(redbatch.ConfigError, match="another query"):
        store.list_jobs(q, JobStatus.PENDING, None, 1, page.cursor)
    for garbage in ("", "not a cursor", "W10="):
        with pytest.raises(redbatch.ConfigError, match="not a cursor"):
            store.list_jobs(q, None, None, 1, garbage)
    with pytest.raises(redbatch.ConfigError, match="limit"):
        store.list_jobs(q, None, None, 0, None)
    with pytest.raises(redbatch.NotFound):
        store.cancel_job(q, "nope", clock.now)
