"""connect(): URLs, defaults, credentials, and clear errors within a bounded time."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import redbatch
from redbatch import ConfigError, StoreUnavailable
from redbatch.stores.memory import MemoryStore
from tests.servers import RedisServer, free_port


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    extra = ("--user", "default", "off", "--user", "app", "on", ">s3cret-pass", "~*", "&*", "+@all")
    server = RedisServer(free_port(), tmp_path_factory.mktemp("acl"), extra, auth=("app", "s3cret-pass"))
    yield server.start()
    server.stop()


def test_memory_url_says_it_is_not_durable(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        store = redbatch.connect("memory://")
    assert isinstance(store, MemoryStore) and not store.durable
    assert "nothing is durable" in caplog.text


@pytest.mark.parametrize("url", ["postgres://x/y", "http://localhost", "nonsense", "redis+sentinel://x"])
def test_unknown_schemes_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="unknown store URL scheme"):
        redbatch.connect(url)


def test_empty_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        redbatch.connect("")


@pytest.mark.parametrize("url", ["redis://127.0.0.1:notaport/0", "redis://127.0.0.1:6379/notadb"])
def test_malformed_redis_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError):
        redbatch.connect(url)


def test_an_unreachable_server_fails_fast_and_clearly() -> None:
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="Redis is unavailable"):
        redbatch.connect(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=1)
    assert time.monotonic() - started < 10


def test_acl_credentials_in_the_url(acl_server: RedisServer) -> None:
    url = f"redis://app:s3cret-pass@127.0.0.1:{acl_server.port}/0"
    store = redbatch.connect(url)
    assert "s3cret-pass" not in store.url and "app:***@" in store.url
    batcher = redbatch.Batcher(store, "acl", max_wait=60)
    batcher.add("k", 1)
    assert [p.value for p in batcher.peek("k")] == [1]
    store.close()


def test_wrong_credentials_are_refused(acl_server: RedisServer) -> None:
    with pytest.raises(redbatch.RedbatchError):
        redbatch.connect(f"redis://app:wrong@127.0.0.1:{acl_server.port}/0")


def test_the_environment_names_the_default_store(
    monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer
) -> None:
    monkeypatch.setenv("REDBATCH_URL", redis_server.url)
    monkeypatch.setenv("REDBATCH_PREFIX", "from-env")
    store = redbatch.connect()
    assert store.url == redis_server.url
    assert getattr(store, "prefix", None) == "from-env"
    store.close()


def test_invalid_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDBATCH_CONNECT_TIMEOUT", "-1")
    with pytest.raises(ConfigError, match="connect_timeout"):
        redbatch.connect("memory://")


def test_without_a_url_the_default_is_a_sqlite_file_here(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("redbatch.stores.sqlite")
    monkeypatch.delenv("REDBATCH_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    store = redbatch.connect()
    redbatch.Batcher(store, "here").add("k", 1)
    store.close()
    assert (tmp_path / "redbatch.db").exists()
