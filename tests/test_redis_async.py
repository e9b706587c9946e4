"""What only Redis does on the asyncio path: redis-py's asyncio client, one per event loop,
with the same scripts, the same error mapping, and nothing left open when the store closes."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import redbatch
from redbatch import Batcher, StoreUnavailable
from redbatch.stores.redis.client import MASTER_RECHECK
from tests.servers import RedisServer, SentinelGroup, TLSFiles, free_port
from tests.test_redis_store import SLACK, SOCKET_TIMEOUT, TIMEOUTS, takes_less_than
from tests.test_redis_tls_acl import authority, tls_files, tls_server  # noqa: F401 - fixtures


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path).start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            server.process.send_signal(signal.SIGCONT)
        server.stop()


def connections(server: RedisServer) -> int:
    """Clients connected to ``server``, this one's own connection left out."""
    admin = redbatch.connect(server.url).client  # type: ignore[attr-defined]
    try:
        return len(admin.client_list()) - 1
    finally:
        admin.close()


def test_scripts_are_loaded_again_after_script_flush(redis_server: RedisServer) -> None:
    store = redbatch.connect(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}")
    b = Batcher(store, "b")

    async def main() -> None:
        await b.add_async("k", 1)
        store.client.script_flush()  # type: ignore[attr-defined]
        await b.add_many_async([("k", 2), ("j", 3)])

    asyncio.run(main())
    assert [p.value for p in b.peek("k")] == [1, 2]
    store.close()


def test_the_first_add_async_after_a_restart_succeeds(own_server: RedisServer) -> None:
    store = redbatch.connect(own_server.url, **TIMEOUTS)
    b = Batcher(store, "b")

    async def main() -> None:
        await b.add_async("k", 1)  # the loop's pooled connection now points at a dead server
        own_server.stop()
        own_server.start()
        await b.add_async("k", 2)

    asyncio.run(main())
    assert [p.value for p in b.peek("k")] == [2]
    store.close()


def test_a_server_that_stopped_answering_fails_within_the_socket_timeout(own_server: RedisServer) -> None:
    store = redbatch.connect(own_server.url, **TIMEOUTS)
    b = Batcher(store, "b")

    async def main() -> None:
        await b.add_async("k", 1)
        assert own_server.process is not None
        own_server.process.send_signal(signal.SIGSTOP)
        with takes_less_than(SOCKET_TIMEOUT + SLACK), pytest.raises(StoreUnavailable):
            await asyncio.gather(*(b.add_async("k", n) for n in range(10)))
        own_server.process.send_signal(signal.SIGCONT)

    asyncio.run(main())
    store.close()


def test_closing_the_store_closes_every_loops_connections(own_server: RedisServer) -> None:
    store = redbatch.connect(own_server.url, **TIMEOUTS)
    b = Batcher(store, "b")
    assert connections(own_server) == 1  # the sync client's, from connect's PING

    async def add() -> None:
        await asyncio.gather(*(b.add_async("k", n) for n in range(10)))

    asyncio.run(add())  # asyncio.run closes its loop's client as the loop shuts down
    assert connections(own_server) == 1
    idle = asyncio.new_event_loop()  # a loop that is open but not running when the store closes
    idle.run_until_complete(add())
    stopped = asyncio.new_event_loop()  # a loop closed without shutting its generators down
    stopped.run_until_complete(add())
    stopped.close()

    async def close_from_inside() -> None:  # and the loop that runs store.close() itself
        await add()
        assert connections(own_server) == 4
        store.close()
        await asyncio.sleep(0.1)  # the running loop closes its client soon, not at once

    asyncio.run(close_from_inside())
    idle.close()
    assert connections(own_server) == 0


def test_rediss_add_async(tls_server: RedisServer, tls_files: TLSFiles) -> None:  # noqa: F811
    store = redbatch.connect(f"{tls_server.url}?ssl_ca_certs={tls_files.ca}", prefix="tls-async", **TIMEOUTS)
    b = Batcher(store, "b")

    async def main() -> None:
        await asyncio.gather(*(b.add_async("k", n) for n in range(20)))

    asyncio.run(main())
    assert sorted(p.value for p in b.peek("k")) == list(range(20))
    store.close()


def test_a_sentinel_store_adds_from_coroutines(tmp_path_factory: pytest.TempPathFactory) -> None:
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel")).start()
    try:
        store = redbatch.connect(group.url(), prefix=f"s{uuid.uuid4().hex[:8]}", **TIMEOUTS)
        b = Batcher(store, "b")
        seen: list[int] = []

        async def main() -> None:
            await asyncio.gather(*(b.add_async("k", n) for n in range(20)))
            client = await store._async_clients.get()  # type: ignore[attr-defined]
            seen.append(int((await client.connection_pool.get_master_address())[1]))

        asyncio.run(main())
        assert seen == [group.master_port()]  # the asyncio client found the master the Sentinels name
        assert sorted(p.value for p in b.peek("k")) == list(range(20))
        store.close()
    finally:
        group.stop()


def test_async_adds_leave_a_master_demoted_while_alive(tmp_path_factory: pytest.TempPathFactory) -> None:
    """test_redis_sentinel's test_writes_leave_a_master_demoted_while_alive, for the asyncio client."""
    group = SentinelGroup(tmp_path_factory.mktemp("sentinel")).start()
    prefix = f"s{uuid.uuid4().hex[:8]}"
    store = redbatch.connect(group.url(), prefix=prefix, **TIMEOUTS)
    old = group.master_port()
    took: list[float] = []

    async def main() -> None:
        b = Batcher(store, "b", max_wait=60)
        await b.add_async("k", 0)  # the asyncio pool now holds a connection to the old master
        sentinel = redis.Redis(port=(group.sentinel_ports or [])[0], socket_timeout=1.0)
        sentinel.execute_command("SENTINEL", "FAILOVER", group.service)
        sentinel.close()
        deadline = time.monotonic() + 30
        while (new := group.master_port()) == old:
            assert time.monotonic() < deadline, "the Sentinels did not fail over"
            await asyncio.sleep(0.05)  # polling the Sentinels' answer: nothing to wait on
        named_at = time.monotonic()
        on_new = redis.Redis(port=new, socket_timeout=1.0)
        n = 0
        while time.monotonic() - named_at < MASTER_RECHECK + 2.0:
            n += 1
            with contextlib.suppress(redbatch.StoreUnavailable):
                await b.add_async("k", n)
            if any(e.endswith(b":%d" % n) for e in on_new.lrange(f"{{{prefix}:b:0}}:i:k", 0, -1)):
                took.append(time.monotonic() - named_at)
                break
            await asyncio.sleep(0.05)  # one add every 50 ms, as a producer's
        on_new.close()

    try:
        asyncio.run(main())
        assert took, "still writing to the old master"
        old_client = redis.Redis(port=old, socket_timeout=1.0)
        assert old_client.info("replication")["role"] == "master"  # demoted, and alive all along
        old_client.close()
    finally:
        store.close()
        group.stop()
