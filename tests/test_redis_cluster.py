"""``redis+cluster://``: a real 3-master Redis Cluster; what only a cluster store does.

The conformance suite runs on the session's cluster too (tests/conftest.py, ``redis-cluster``).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import redbatch
from redbatch import Batcher
from redbatch.errors import PartlyStored
from redbatch.stores.redis import RedisStore
from tests.servers import RedisClusterGroup, free_port

TIMEOUTS = {"connect_timeout": 1.0, "socket_timeout": 1.0}


def open_store(cluster: RedisClusterGroup, **options: Any) -> RedisStore:
    store = redbatch.connect(cluster.url(), prefix=f"c{uuid.uuid4().hex[:8]}", **TIMEOUTS, **options)
    assert isinstance(store, RedisStore)
    return store


@pytest.fixture
def store(redis_cluster: RedisClusterGroup) -> Iterator[RedisStore]:
    opened = open_store(redis_cluster)
    try:
        yield opened
    finally:
        opened.close()


def test_a_cluster_store_spreads_a_batcher_over_every_master(store: RedisStore) -> None:
    assert store.cluster and store.partitions == 16
    masters = Counter(store.client.get_node_from_key(part.due).name for part in store._partitions("b"))
    assert len(masters) == 3, masters


def test_partitions_are_given_by_url_argument_or_environment(
    redis_cluster: RedisClusterGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    for url, options, want in [
        (redis_cluster.url() + "?partitions=4", {}, 4),
        (redis_cluster.url(), {"partitions": 2}, 2),
    ]:
        opened = redbatch.connect(url, **options)
        assert isinstance(opened, RedisStore) and opened.partitions == want
        opened.close()
    monkeypatch.setenv("REDBATCH_PARTITIONS", "5")
    opened = redbatch.connect(redis_cluster.url())
    assert isinstance(opened, RedisStore) and opened.partitions == 5
    opened.close()


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+cluster://:pw-secret@127.0.0.1:notaport", "not host:port"),
        ("redis+cluster://:pw-secret@127.0.0.1:7000,:1", "not host:port"),
        ("redis+cluster://:pw-secret@127.0.0.1:7000/0", "no databases"),
        ("redis+cluster://:pw-secret@127.0.0.1:7000?partitons=2", "unknown option 'partitons'"),
        ("redis+cluster://:pw-secret@127.0.0.1:7000?partitions=0", "between 1 and 1024"),
        ("redis+cluster://:pw-secret@127.0.0.1:7000?ssl_ca_certs=x", "unknown option 'ssl_ca_certs'"),
        ("redis+cluster://:pw-secret@127.0.0.1:7000#x", "no fragment"),
    ],
)
def test_bad_cluster_urls_are_config_errors_without_the_password(url: str, complaint: str) -> None:
    with pytest.raises(redbatch.ConfigError, match=complaint) as caught:
        redbatch.connect(url)
    assert "pw-secret" not in str(caught.value)


def test_an_unreachable_cluster_is_unavailable_without_the_password() -> None:
    with pytest.raises(redbatch.StoreUnavailable) as caught:
        redbatch.connect(f"redis+cluster://:pw-secret@127.0.0.1:{free_port()}", **TIMEOUTS)
    assert "pw-secret" not in str(caught.value)


def items_by_key(batcher: Batcher, keys: list[str]) -> dict[str, list[Any]]:
    return {key: [p.value for p in batcher.peek(key, limit=1000)] for key in keys}


def test_a_call_sent_again_after_a_dropped_reply_adds_nothing_twice(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each partition's script ran, but the replies of some were lost to a dropped
    connection: they are sent again with the same call id and add nothing twice."""
    batcher = Batcher(store, "b", max_wait=60)
    keys = [f"k{n}" for n in range(40)]
    real = store._execute
    calls = []

    def dropped_replies(pipe: Any, raise_on_error: bool = True) -> list[Any]:
        replies = real(pipe, raise_on_error)
        calls.append(len(replies))
        return [
            redis.ConnectionError("Connection reset by peer") if n % 2 else r for n, r in enumerate(replies)
        ]

    monkeypatch.setattr(store, "_execute", dropped_replies)
    assert batcher.add_many([(key, n) for n, key in enumerate(keys)] * 2) == 80
    monkeypatch.setattr(store, "_execute", real)
    assert calls and calls[0] > 1  # the call did span partitions
    assert items_by_key(batcher, keys) == {key: [n, n] for n, key in enumerate(keys)}
    assert batcher.stats().buffered_items == 80


def test_a_partition_failing_between_others_leaves_them_stored_whole(store: RedisStore) -> None:
    """All or none per partition: one partition refuses the call (a key of the wrong type,
    written by hand), the others store their keys whole; PartlyStored says which."""
    batcher = Batcher(store, "b", max_wait=60)
    keys = [f"k{n}" for n in range(60)]
    broken = store._partition_of("b", "k0")
    store.client.set(f"{broken.base}i:k0", "not a list")
    with pytest.raises(PartlyStored, match="WRONGTYPE") as caught:
        batcher.add_many([(key, f"{key}-{m}") for key in keys for m in range(3)])
    failed = {k for k in keys if store._partition_of("b", k) is broken}
    assert caught.value.failed_keys == failed
    assert caught.value.stored_keys == set(keys) - failed
    for key in keys[1:]:  # k0 is the broken one
        want = [] if key in failed else [f"{key}-{m}" for m in range(3)]
        assert [p.value for p in batcher.peek(key)] == want
    assert batcher.stats().buffered_items == 3 * len(caught.value.stored_keys)


def test_a_master_down_before_the_call_stores_nothing(tmp_path: Path) -> None:
    """redis-py connects to every master before it sends a pipeline: a master found down
    then fails the whole call, nothing stored."""
    cluster = RedisClusterGroup(tmp_path).start()
    try:
        store = open_store(cluster)
        batcher = Batcher(store, "b", max_wait=60)
        batcher.add("warm", 0)
        assert cluster.servers is not None
        cluster.servers[0].stop()
        with pytest.raises(redbatch.StoreUnavailable) as caught:
            batcher.add_many([(f"k{n}", n) for n in range(60)])
        assert not isinstance(caught.value, PartlyStored)
        up = [s for s in cluster.servers[1:]]
        for server in up:
            client = redis.Redis(port=server.port)
            assert [k for k in client.keys("*") if b":i:k" in k] == []
            client.close()
        store.close()
    finally:
        cluster.stop()


def test_an_add_meeting_rules_published_to_some_partitions_only_is_stored_once(store: RedisStore) -> None:
    """On a cluster, rules are written one partition after another: an add that finds some
    partitions already changed stores those under the new rules, the rest as they were."""
    old = Batcher(store, "b", max_wait=60)
    old.add("warm", 0)
    new = Batcher(store, "b", max_wait=30)
    parts = store._partitions("b")
    rules = new.spec.rules()
    args = ["publish", 0, new.spec.version, *(int(rules[name]) for name in redbatch.types.RULE_FIELDS)]
    for part in parts[: len(parts) // 2]:  # a publisher half-way through
        store._eval("rules", [part.rules], args)
    keys = [f"k{n}" for n in range(64)]
    assert old.add_many([(key, key) for key in keys]) == 64
    assert items_by_key(old, keys) == {key: [key] for key in keys}
    assert old.stats().buffered_items == 65


def woken(waiter: Any, timeout: float) -> bool:
    """Whether a wake-up comes within ``timeout``; a wait may also end early without one
    (a subscription's confirmation read), which is no wake-up."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if waiter.wait(left):
            return True
    return False


def test_wake_ups_from_every_master_reach_a_waiting_worker(store: RedisStore) -> None:
    batcher = Batcher(store, "b", max_wait=60, max_items=1)
    batcher.add("warm", 0)
    waiter = store.waiter(["b"])
    try:
        woken(waiter, 0.2)  # the warm-up's own wake-up may still be crossing the cluster bus
        seen = set()
        for n in range(64):
            key = f"k{n}"
            node = store.client.get_node_from_key(store._partition_of("b", key).due).name
            if node in seen:
                continue
            batcher.add(key, n)  # full at once: due now, so it wakes
            assert woken(waiter, 5.0), node
            seen.add(node)
        assert len(seen) == 3
    finally:
        waiter.close()


def test_a_store_opens_while_the_master_of_slot_0_is_dead(tmp_path: Path) -> None:
    """redis-py sends COMMAND to the first master of the map when it builds a cluster client:
    a process started while that master is down (before its failover: the chaos harness's
    replacement workers) still opens the store, with no hidden retries once it is built."""
    cluster = RedisClusterGroup(tmp_path).start()
    try:
        masters = cluster.masters_now()
        first = next(port for port, ranges in masters.items() if any(a == 0 for a, _ in ranges))
        cluster.server(first).stop()
        store = open_store(cluster)
        try:
            assert store.client.retry.get_retries() == 0
            assert store.client.get_default_node().port != first
        finally:
            store.close()
    finally:
        cluster.stop()
