"""connect(): URLs, defaults, credentials, and clear errors within a bounded time."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

import redbatch
from redbatch import ConfigError, StoreUnavailable
from redbatch.stores import REDIS_OPTIONS, REDIS_PY_OPTIONS, REDIS_PY_TLS_OPTIONS, SQLITE_OPTIONS
from redbatch.stores.base import mask_url
from redbatch.stores.memory import MemoryStore
from redbatch.stores.redis import RedisStore
from redbatch.stores.sqlite import SQLiteStore
from tests.servers import RedisServer, free_port

README = Path(__file__).resolve().parents[1] / "README.md"


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


@pytest.mark.parametrize("url", ["postgres://x/y", "http://localhost", "nonsense", "redis+cluster2://x"])
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


# Bad URLs that carry a password, each with the password it must never show.
BAD_URLS_WITH_PASSWORDS = [
    ("reddis://user:pw-scheme@host/0", "pw-scheme"),  # unknown scheme
    ("sqlite://user:pw-sqlite@/x.db", "pw-sqlite"),  # a sqlite URL takes no credentials
    ("sqlite://:pw-sqlite-host@somehost/x.db", "pw-sqlite-host"),
    ("redis://:pw-port@host:port/0", "pw-port"),  # a port that is not a number
    ("rediss://app:pw-tls-port@host:notaport/0", "pw-tls-port"),
    ("redis://app:pw-range@host:99999/0", "pw-range"),  # a port out of range
    ("redis://app:pw-ipv6@[::1/0", "pw-ipv6"),  # urlsplit itself refuses it
    ("redis://app:pw-db@127.0.0.1:6379/notadb", "pw-db"),
    ("redis://app:pw-slash/ish@127.0.0.1:6379/0", "pw-slash/ish"),  # unescaped "/" in a password
    ("redis://app:pw?quest@127.0.0.1:6379/0", "pw?quest"),  # unescaped "?" in a password
    ("memory://app:pw-memory@somewhere", "pw-memory"),
]


def shown(exc: BaseException) -> str:
    """What a traceback would show of an exception and those chained to it, less source lines."""
    text = ""
    current: BaseException | None = exc
    while current is not None:
        text += repr(current) + "".join(traceback.format_exception_only(current))
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return text


@pytest.mark.parametrize(("url", "password"), BAD_URLS_WITH_PASSWORDS)
def test_a_bad_url_is_a_config_error_that_never_shows_its_password(url: str, password: str) -> None:
    with pytest.raises(ConfigError) as caught:
        redbatch.connect(url, check=False)
    assert password not in shown(caught.value)
    assert "***" in str(caught.value) or "@" not in str(caught.value)


@pytest.mark.parametrize(("url", "password"), BAD_URLS_WITH_PASSWORDS)
def test_mask_url_never_raises_and_hides_any_password(url: str, password: str) -> None:
    assert password not in mask_url(url)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("redis://app:s3cret@host:6379/0", "redis://app:***@host:6379/0"),
        ("rediss://:s3cret@host/0?partitions=2", "rediss://:***@host/0?partitions=2"),
        ("redis://app:s3cret@[::1]:6379/0", "redis://app:***@[::1]:6379/0"),
        ("redis://app@host:6379/0", "redis://app@host:6379/0"),  # a user name is no secret
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("memory://", "memory://"),
        ("nonsense", "nonsense"),
    ],
)
def test_mask_url_keeps_everything_but_the_password(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_a_non_string_url_does_not_show_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        redbatch.connect(["redis://app:pw-list@host/0"])  # type: ignore[arg-type]
    assert "pw-list" not in shown(caught.value)


def test_the_command_line_prints_one_line_without_the_password() -> None:
    """The issue's case, end to end: a bad port once printed a 122-line traceback."""
    url = "redis://:pw-cli@host:port/0"
    proc = subprocess.run(
        [sys.executable, "-m", "redbatch", "stats", "orders", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "pw-cli" not in output
    assert len(output.strip().splitlines()) == 1, output
    assert "ConfigError" in output and "port" in output


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
    with pytest.raises(redbatch.StoreUnavailable) as caught:
        redbatch.connect(f"redis://app:wrong@127.0.0.1:{acl_server.port}/0")
    assert "wrong" not in str(caught.value)


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


# ---------------------------------------------------------------- URL options


def readme_url_options() -> list[tuple[str, str, str]]:
    """(scheme, option name, value) for each option of the README's URL options table, as written."""
    options = []
    for line in README.read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`?"):
            for scheme in re.findall(r"`(\w+)://`", cells[1]):
                written = re.findall(r"`\?(\w+)=([^`]+)`", cells[0])
                options += [(scheme, name, value) for name, value in written]
    return options


def test_the_readme_documents_every_url_option_and_no_other() -> None:
    documented = {name for _, name, _ in readme_url_options()}
    assert documented == {*REDIS_OPTIONS, *REDIS_PY_OPTIONS, *REDIS_PY_TLS_OPTIONS, *SQLITE_OPTIONS}


@pytest.mark.parametrize(("scheme", "name", "value"), readme_url_options())
def test_every_documented_url_option_is_taken_as_written(
    scheme: str, name: str, value: str, tmp_path: Path
) -> None:
    if scheme == "sqlite":
        store = redbatch.connect(f"sqlite:///{tmp_path / 'x.db'}?{name}={value}")
        assert synchronous_of(store) == SYNCHRONOUS_VALUES[value]
        store.close()
        return
    query = f"{name}={value}" + ("&replicas=1" if name == "replicas_timeout" else "")
    store = redbatch.connect(f"{scheme}://127.0.0.1:{free_port()}/0?{query}", check=False)
    assert isinstance(store, RedisStore)
    kwargs = store.client.connection_pool.connection_kwargs
    assert not set(REDIS_OPTIONS) & set(kwargs)  # redbatch's own options never reach redis-py
    if name == "partitions":
        assert store.partitions == int(value)
    elif name == "replicas":
        assert store.replicas == int(value)
    elif name == "replicas_timeout":
        assert store.replicas_timeout_ms == round(float(value) * 1000)
    else:
        assert str(kwargs[name]).lower() == value.lower()
    store.close()


def test_the_readme_redis_url_with_partitions_works_on_a_real_server(redis_server: RedisServer) -> None:
    """The README's ``redis://host:port/0?partitions=4``; it used to raise a TypeError from redis-py."""
    url = f"redis://127.0.0.1:{redis_server.port}/0?partitions=4&client_name=rb-docs"
    store = redbatch.connect(url, prefix=f"docs{time.monotonic_ns()}")
    assert isinstance(store, RedisStore)
    assert store.partitions == 4
    assert store.client.client_getname() == "rb-docs"
    batcher = redbatch.Batcher(store, "documented", max_wait=60)
    batcher.add_many([(f"k{n}", n) for n in range(8)])
    assert [p.value for p in batcher.peek("k5")] == [5]
    store.close()
    assert redbatch.connect(url, partitions=4, check=False).partitions == 4  # type: ignore[attr-defined]
    with pytest.raises(redbatch.ConfigError, match="disagrees"):
        redbatch.connect(url, partitions=2, check=False)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis://h/0?partitons=4", "unknown option 'partitons'"),
        ("redis://h/0?partitions=4&retry_on_timeout=true", "unknown option 'retry_on_timeout'"),
        ("redis://h/0?decode_responses=true", "unknown option 'decode_responses'"),
        ("redis://h/0?db=3", "unknown option 'db'"),
        ("redis://h/0?socket_timeout=5", "REDBATCH_SOCKET_TIMEOUT"),
        ("redis://h/0?ssl_ca_certs=/ca.pem", "rediss://"),
        ("rediss://h/0?ssl_password=x", "unknown option 'ssl_password'"),
        ("redis://h/0?partitions=4&partitions=2", "given twice"),
        ("redis://h/0?partitions=", "needs a value"),
        ("redis://h/0?partitions=four", "whole number"),
        ("redis://h/0?partitions=0", "between 1 and 1024"),
        ("rediss://h/0?ssl_cert_reqs=maybe", "none, optional, required"),
        ("sqlite:///x.db?mode=memory", "unknown option 'mode'"),
        ("memory://?durable=yes", "unknown option 'durable'"),
        ("memory://somewhere", "memory:// alone"),
    ],
)
def test_unknown_and_invalid_url_options_are_refused_by_name(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        redbatch.connect(url, check=False)


def test_an_unknown_setting_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'partitons'"):
        redbatch.connect("memory://", partitons=4)


# ---------------------------------------------------------------- SQLite's synchronous mode

SYNCHRONOUS_VALUES = {"normal": 1, "full": 2}
"""What ``PRAGMA synchronous`` reads for each mode."""


def synchronous_of(store: redbatch.Store) -> int:
    """The mode of the connection the store writes through (this thread's)."""
    assert isinstance(store, SQLiteStore)
    with store._read() as cur:
        return int(cur.execute("PRAGMA synchronous").fetchone()[0])


@pytest.mark.parametrize(
    ("query", "environment", "override", "expected"),
    [
        ("", None, None, "full"),
        ("?synchronous=normal", None, None, "normal"),
        ("?synchronous=FULL", None, None, "full"),
        ("", "normal", None, "normal"),
        ("", "NORMAL", None, "normal"),
        ("?synchronous=full", "normal", None, "full"),  # the URL wins
        ("", "full", "normal", "normal"),
        ("?synchronous=normal", None, "normal", "normal"),
    ],
)
def test_the_sqlite_synchronous_mode_reaches_the_connection(
    query: str,
    environment: str | None,
    override: str | None,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if environment is not None:
        monkeypatch.setenv("REDBATCH_SQLITE_SYNCHRONOUS", environment)
    overrides = {} if override is None else {"sqlite_synchronous": override}
    store = redbatch.connect(f"sqlite:///{tmp_path / 'x.db'}{query}", **overrides)
    try:
        assert synchronous_of(store) == SYNCHRONOUS_VALUES[expected]
        redbatch.Batcher(store, "b").add("k", 1)  # a write, then a read on another thread
        seen: list[int] = []
        thread = threading.Thread(target=lambda: seen.append(synchronous_of(store)))
        thread.start()
        thread.join(10)
        assert seen == [SYNCHRONOUS_VALUES[expected]]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("query", "environment", "override", "complaint"),
    [
        ("?synchronous=off", None, None, "option 'synchronous' must be one of full, normal"),
        ("?synchronous=extra", None, None, "option 'synchronous' must be one of full, normal"),
        ("?synchronous=", None, None, "needs a value"),
        ("?synchronous=full&synchronous=normal", None, None, "given twice"),
        ("?synchronus=normal", None, None, "unknown option 'synchronus'"),
        ("", "off", None, "sqlite_synchronous"),
        ("", None, "0", "sqlite_synchronous"),
        ("?synchronous=full", None, "normal", "disagrees"),
    ],
)
def test_a_bad_sqlite_synchronous_mode_is_refused_by_name(
    query: str,
    environment: str | None,
    override: str | None,
    complaint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if environment is not None:
        monkeypatch.setenv("REDBATCH_SQLITE_SYNCHRONOUS", environment)
    overrides = {} if override is None else {"sqlite_synchronous": override}
    with pytest.raises(ConfigError, match=re.escape(complaint)):
        redbatch.connect(f"sqlite:///{tmp_path / 'x.db'}{query}", **overrides)
    assert not (tmp_path / "x.db").exists()  # refused before the file was made
