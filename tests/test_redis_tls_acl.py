"""``rediss://`` against a real TLS redis-server, and an ACL user confined to its prefix.

The fixtures make a throwaway certificate authority with trustme, sign a certificate for
127.0.0.1 with it, and start redis-server with TLS only (``--port 0 --tls-port``). The ACL
server has a user who may touch only keys under the ``{app:`` hash tags and the ``app:``
channels, and no dangerous commands: what a production deployment would grant redbatch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

import redbatch
from redbatch import Batch, Batcher, Worker
from tests.servers import RedisServer, TLSFiles, free_port

TIMEOUTS = {"connect_timeout": 1.0, "socket_timeout": 1.0}
SLACK = 1.5  # seconds beyond the configured timeouts


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(authority: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    folder = tmp_path_factory.mktemp("tls")
    server = authority.issue_cert("127.0.0.1", "localhost")
    files = TLSFiles(ca=folder / "ca.pem", cert=folder / "server.pem", key=folder / "server.key")
    authority.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.cert))
    server.private_key_pem.write_to_path(str(files.key))
    return files


@pytest.fixture(scope="module")
def tls_server(tls_files: TLSFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("tls-redis"), tls=tls_files).start()
    try:
        yield server
    finally:
        server.stop()


def delivered_through_a_worker(store: redbatch.Store, name: str) -> list[int]:
    """Add items, run a worker until they come back; its wake-ups and acks use the same link."""
    batcher = Batcher(store, name, max_items=3, max_wait=0.05)
    seen: list[int] = []
    done = threading.Event()

    @batcher.handler
    def handle(batch: Batch) -> None:
        seen.extend(batch.items)
        if len(seen) >= 5:
            done.set()

    worker = Worker(store, [batcher], handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert worker.started.wait(10)
        batcher.add_many([("k", n) for n in range(5)])
        assert done.wait(10), seen
    finally:
        worker.stop()
        thread.join(10)
    assert batcher.stats().flushed_items == 5
    return seen


def test_rediss_with_the_servers_ca_carries_the_whole_flow(
    tls_server: RedisServer, tls_files: TLSFiles
) -> None:
    store = redbatch.connect(f"{tls_server.url}?ssl_ca_certs={tls_files.ca}", prefix="tls", **TIMEOUTS)
    try:
        assert delivered_through_a_worker(store, "over-tls") == [0, 1, 2, 3, 4]
    finally:
        store.close()


def test_rediss_presenting_a_client_certificate(
    tls_server: RedisServer, tls_files: TLSFiles, authority: trustme.CA, tmp_path: Path
) -> None:
    client = authority.issue_cert("redbatch-client")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert))
    client.private_key_pem.write_to_path(str(key))
    url = f"{tls_server.url}?ssl_ca_certs={tls_files.ca}&ssl_certfile={cert}&ssl_keyfile={key}"
    store = redbatch.connect(url, prefix="mtls", **TIMEOUTS)
    try:
        Batcher(store, "mtls").add("k", 1)
        assert [p.value for p in Batcher.open(store, "mtls").peek("k")] == [1]
    finally:
        store.close()


def test_a_certificate_nobody_vouched_for_fails_fast_and_says_so(tls_server: RedisServer) -> None:
    """No ssl_ca_certs: the system's CAs do not know the test authority."""
    started = time.monotonic()
    with pytest.raises(redbatch.StoreUnavailable, match=r"(?i)certificate"):
        redbatch.connect(tls_server.url, **TIMEOUTS)
    assert time.monotonic() - started < TIMEOUTS["connect_timeout"] + TIMEOUTS["socket_timeout"] + SLACK


def test_plain_redis_to_a_tls_port_fails_fast(tls_server: RedisServer) -> None:
    started = time.monotonic()
    with pytest.raises(redbatch.StoreUnavailable):
        redbatch.connect(tls_server.url.replace("rediss://", "redis://"), **TIMEOUTS)
    assert time.monotonic() - started < TIMEOUTS["connect_timeout"] + TIMEOUTS["socket_timeout"] + SLACK


# ---------------------------------------------------------------- an ACL user confined to its prefix

PASSWORD = "pfx-s3cret"


@pytest.fixture(scope="module")
def confined_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The user ``app`` may touch keys ``{app:*`` and channels ``app:*``, nothing dangerous."""
    acl = ("--user", "default", "off")
    acl += ("--user", "app", "on", f">{PASSWORD}", "~{app:*", "&app:*", "+@all", "-@dangerous")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("confined"), acl, auth=("app", PASSWORD))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def confined_url(server: RedisServer, password: str = PASSWORD) -> str:
    return f"redis://app:{password}@127.0.0.1:{server.port}/0"


def test_a_user_confined_to_the_prefix_runs_everything(confined_server: RedisServer) -> None:
    store = redbatch.connect(confined_url(confined_server), prefix="app", partitions=2, **TIMEOUTS)
    try:
        assert sorted(delivered_through_a_worker(store, "confined")) == [0, 1, 2, 3, 4]
        batcher = Batcher.open(store, "confined")
        batcher.add("k", "again")
        assert batcher.flush("k") == 1
        assert batcher.clear("k") == 1
        assert batcher.stats().open_keys == 0
        assert batcher.dead_letters() == [] and batcher.replay() == 0 and batcher.purge_dead() == 0
    finally:
        store.close()


def test_a_prefix_outside_the_users_keys_is_refused_clearly(confined_server: RedisServer) -> None:
    store = redbatch.connect(confined_url(confined_server), prefix="other", **TIMEOUTS)
    try:
        with pytest.raises(redbatch.RedbatchError, match="NOPERM") as caught:
            Batcher(store, "b").add("k", 1)
        assert PASSWORD not in str(caught.value)
    finally:
        store.close()


def test_a_wrong_password_fails_fast_without_the_secret(confined_server: RedisServer) -> None:
    started = time.monotonic()
    with pytest.raises(redbatch.StoreUnavailable) as caught:
        redbatch.connect(confined_url(confined_server, "not-the-pass"), prefix="app", **TIMEOUTS)
    assert time.monotonic() - started < TIMEOUTS["connect_timeout"] + TIMEOUTS["socket_timeout"] + SLACK
    assert "not-the-pass" not in str(caught.value) and "not-the-pass" not in repr(caught.value)
