"""Shared fixtures: a real redis-server per session, a SQLite file per test, a test clock."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import redbatch
from redbatch.stores.base import Store
from tests.servers import RedisClusterGroup, RedisServer, free_port

STORES = ["memory", "sqlite", "redis", "redis-partitioned", "redis-replicated", "redis-cluster"]


class FakeClock:
    """Integer milliseconds that only move when a test moves them."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now = start_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * 1000)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path_factory.mktemp("redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterGroup]:
    """One 3-master Redis Cluster for the whole session; tests keep apart by key prefix."""
    cluster = RedisClusterGroup(tmp_path_factory.mktemp("cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A master whose one replica is online: the store under ``?replicas=1``."""
    master = RedisServer(free_port(), tmp_path_factory.mktemp("master"), ("--repl-diskless-sync-delay", "0"))
    replica = RedisServer(
        free_port(), tmp_path_factory.mktemp("replica"), ("--replicaof", "127.0.0.1", str(master.port))
    )
    try:
        master.start()
        replica.start()
        with redis.Redis(port=master.port) as client:
            deadline = time.monotonic() + 30
            while client.info("replication").get("slave0", {}).get("state") != "online":
                assert time.monotonic() < deadline, "the replica did not come online"
                time.sleep(0.02)
        yield master
    finally:
        replica.stop()
        master.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def store_url(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        pytest.importorskip("redbatch.stores.sqlite")
        return f"sqlite:///{tmp_path / 'redbatch.db'}"
    if kind == "redis-cluster":
        cluster: RedisClusterGroup = request.getfixturevalue("redis_cluster")
        return cluster.url()
    if kind == "redis-replicated":  # generous: the conformance suite is no test of timing
        master: RedisServer = request.getfixturevalue("redis_replicated")
        return f"{master.url}?replicas=1&replicas_timeout=5"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_factory(
    store_kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    """The URL and connect() options of a fresh, private store for this test."""
    url = store_url(store_kind, request, tmp_path)
    options: dict[str, str] = {}
    if store_kind.startswith("redis"):
        options["prefix"] = f"t{uuid.uuid4().hex[:12]}"
    if store_kind == "redis-partitioned":
        options["partitions"] = "3"
    yield url, options


@pytest.fixture
def store(store_factory: tuple[str, dict[str, str]]) -> Iterator[Store]:
    url, options = store_factory
    opened = redbatch.connect(url, **options)
    try:
        yield opened
    finally:
        opened.close()
