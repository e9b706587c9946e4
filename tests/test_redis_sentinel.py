"""``redis+sentinel://``: a master with two replicas and three Sentinels, all real
redis-servers on loopback ports, and a failover in the middle of a run."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import redis

import redbatch
from redbatch import Batch, Batcher, Worker
from redbatch.stores.redis import RedisStore
from redbatch.stores.redis.client import MASTER_RECHECK
from tests.servers import SentinelGroup, free_port

TIMEOUTS = {"connect_timeout": 1.0, "socket_timeout": 1.0}
FAILOVER = 30.0  # seconds a test waits for the Sentinels to promote a replica, at most


@pytest.fixture
def group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    sentinels = SentinelGroup(tmp_path_factory.mktemp("sentinel")).start()
    try:
        yield sentinels
    finally:
        sentinels.stop()


def test_a_sentinel_url_opens_the_master_it_names(group: SentinelGroup) -> None:
    store = redbatch.connect(f"{group.url()}?partitions=2", prefix=f"s{uuid.uuid4().hex[:8]}", **TIMEOUTS)
    try:
        assert isinstance(store, RedisStore) and store.partitions == 2
        assert store.client.connection_pool.get_master_address()[1] == group.master_port()
        batcher = Batcher(store, "b", max_wait=60)
        batcher.add_many([(f"k{n}", n) for n in range(10)])
        assert [p.value for p in batcher.peek("k3")] == [3]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://:pw-secret@127.0.0.1:26379", "name the master's service"),
        ("redis+sentinel://:pw-secret@127.0.0.1:notaport/mymaster", "not host:port"),
        ("redis+sentinel://:pw-secret@127.0.0.1:26379,:1/mymaster", "not host:port"),
        ("redis+sentinel://:pw-secret@127.0.0.1:26379/mymaster/zero", "must be a number"),
        ("redis+sentinel://:pw-secret@127.0.0.1:26379/mymaster?partitons=2", "unknown option 'partitons'"),
        ("redis+sentinel://:pw-secret@127.0.0.1:26379/mymaster#x", "no fragment"),
    ],
)
def test_bad_sentinel_urls_are_config_errors_without_the_password(url: str, complaint: str) -> None:
    with pytest.raises(redbatch.ConfigError, match=complaint) as caught:
        redbatch.connect(url)
    assert "pw-secret" not in str(caught.value)


def test_no_sentinel_answering_fails_fast() -> None:
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{free_port()}/mymaster"
    started = time.monotonic()
    with pytest.raises(redbatch.StoreUnavailable):
        redbatch.connect(url, **TIMEOUTS)
    assert time.monotonic() - started < 2 * (TIMEOUTS["connect_timeout"] + TIMEOUTS["socket_timeout"]) + 1


def add_until_stored(batcher: Batcher, key: str, item: int, deadline: float) -> None:
    """An add that is retried while the store is unavailable (a failover under way)."""
    while True:
        try:
            batcher.add(key, item)
            return
        except redbatch.StoreUnavailable:
            assert time.monotonic() < deadline, "the store did not come back after the failover"
            time.sleep(0.05)


def test_a_failover_keeps_producer_and_worker_going_and_loses_nothing_replicated(
    group: SentinelGroup,
) -> None:
    """Kill the master with SIGKILL mid-run: the Sentinels promote a replica, producer and
    worker follow it without a restart, and every item whose add returned is delivered.
    (Replication is asynchronous: the items are on the replicas before the kill, as WAIT
    confirms, so this failover can lose none of them.)"""
    store = redbatch.connect(group.url(), prefix=f"f{uuid.uuid4().hex[:8]}", **TIMEOUTS)
    batcher = Batcher(store, "failover", max_items=5, max_wait=0.05, lease=1.0, backoff=0.05)
    delivered: Counter[int] = Counter()
    lock = threading.Lock()

    @batcher.handler
    def handle(batch: Batch) -> None:
        with lock:
            delivered.update(batch.items)

    worker = Worker(store, [batcher], handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.started.wait(10)
        before = list(range(200))
        for n in before:
            batcher.add(f"k{n % 20}", n)
        old_master = group.master_port()
        master = redis.Redis(port=old_master, socket_timeout=5)
        assert master.execute_command("WAIT", 2, 5000) == 2  # both replicas have every write
        master.close()
        group.server(old_master).stop()  # SIGKILL

        deadline = time.monotonic() + FAILOVER
        after = list(range(200, 400))
        for n in after:
            add_until_stored(batcher, f"k{n % 20}", n, deadline)
        assert group.master_port() != old_master

        wait_until = time.monotonic() + FAILOVER
        while set(before + after) - set(delivered):
            assert time.monotonic() < wait_until, sorted(set(before + after) - set(delivered))[:20]
            time.sleep(0.05)
    finally:
        worker.stop()
        thread.join(FAILOVER)
        store.close()
    assert not thread.is_alive()
    assert set(delivered) == set(before + after)  # at least once; a batch in flight may run twice


def test_writes_leave_a_master_demoted_while_alive(group: SentinelGroup) -> None:
    """A failover Sentinel makes without a crash (SENTINEL FAILOVER here; in the chaos run, one
    Sentinel started on its own) leaves the old master a master for seconds: a producer that
    reuses its one pooled connection must stop writing there within MASTER_RECHECK, or every
    add of those seconds is dropped when the old master resyncs as a replica."""
    prefix = f"s{uuid.uuid4().hex[:8]}"
    store = redbatch.connect(group.url(), prefix=prefix, **TIMEOUTS)
    old = group.master_port()
    try:
        batcher = Batcher(store, "b", max_wait=60)
        batcher.add("k", 0)  # the pool now holds a connection to the old master
        sentinel = redis.Redis(port=(group.sentinel_ports or [])[0], socket_timeout=1.0)
        sentinel.execute_command("SENTINEL", "FAILOVER", group.service)
        sentinel.close()
        deadline = time.monotonic() + FAILOVER
        while (new := group.master_port()) == old:
            assert time.monotonic() < deadline, "the Sentinels did not fail over"
            time.sleep(0.05)  # polling the Sentinels' answer: nothing to wait on
        named_at = time.monotonic()
        on_new = redbatch.connect(f"redis://127.0.0.1:{new}/0", prefix=prefix, **TIMEOUTS)
        old_client = redis.Redis(port=old, socket_timeout=1.0)
        try:
            n = 0
            while True:
                n += 1
                add_until_stored(batcher, "k", n, deadline)
                if n in [p.value for p in Batcher(on_new, "b", max_wait=60).peek("k")]:
                    break
                assert time.monotonic() - named_at < MASTER_RECHECK + 2.0, "still writing to the old master"
                time.sleep(0.05)  # one add every 50 ms, as a producer's
            # The case this test is about: the old master still took writes all along.
            assert old_client.info("replication")["role"] == "master"
        finally:
            old_client.close()
            on_new.close()
    finally:
        store.close()
