"""Stores, and ``connect``: a URL in, a store out.

A URL's query holds options. redbatch's own (``?partitions=4``) are taken off before the URL
reaches redis-py, which hands every query option it does not know to its connection class
as a keyword argument: ``?partitions=4`` used to end in a TypeError from deep inside it.
redis-py gets only the few options listed here; anything else is refused with ConfigError
naming it, so a typo (``?partitons=4``) is never silently ignored. Every error quotes the
URL through ``mask_url``: a password never reaches a message, a log or a traceback.
"""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import SplitResult, parse_qsl, unquote_plus, urlsplit, urlunsplit

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from redbatch.errors import ConfigError
from redbatch.settings import Settings
from redbatch.stores.base import Store, Waiter, mask_url
from redbatch.stores.memory import MemoryStore

__all__ = ["Store", "Waiter", "MemoryStore", "connect"]

SCHEMES = ("sqlite", "redis", "rediss", "redis+sentinel", "redis+cluster", "memory")
SENTINEL_PORT = 26379
REDIS_PORT = 6379
CLUSTER_PARTITIONS = 16
"""Partitions per batcher on a cluster store unless set: 16 hash tags land on every master of
a small cluster (3 to 6) with several each, so each master serves a share of the keys."""
REDIS_OPTIONS = ("partitions", "replicas", "replicas_timeout")
"""redbatch's own options of a Redis URL."""
REPLICAS_TIMEOUT = 1.0
"""Seconds a write waits for its replicas under ``replicas=N`` unless ``replicas_timeout`` says."""
REDIS_PY_OPTIONS = ("client_name",)
"""redis-py options a Redis URL may carry. The others are refused: timeouts and retries are
redbatch's settings, and ``decode_responses``, ``protocol`` or ``db`` would change what the
store reads back or where it writes."""
REDIS_PY_TLS_OPTIONS = (
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
"""redis-py options for ``rediss://`` only: a private CA, client certificates, verification."""
SQLITE_OPTIONS = ("synchronous",)
"""Options of a SQLite URL."""
_CHOICES = {
    "synchronous": ("full", "normal"),
    "ssl_cert_reqs": ("none", "optional", "required"),
    "ssl_check_hostname": ("true", "false", "yes", "no", "1", "0"),
}


def connect(url: str | None = None, *, check: bool = True, **overrides: object) -> Store:
    """Open the store a URL names; without one, ``REDBATCH_URL`` or ``sqlite:///./redbatch.db``.

    ``overrides`` are settings (``prefix``, ``partitions``, ``connect_timeout``, ...), which
    otherwise come from ``REDBATCH_*`` variables. ``check`` makes a round trip to the store so
    that an unreachable server fails here, within ``connect_timeout`` seconds, with
    ``StoreUnavailable``.

    The URL forms (the README's "Stores and settings" has them as tables):

    - ``sqlite:///relative/path.db`` (from the working directory) or
      ``sqlite:////absolute/path.db``: one SQLite file in WAL mode, durable, shared by the
      processes of one host. The file's folder is created when missing. No host or
      fragment; ``:memory:`` is refused (use ``memory://``). One query option:
      ``synchronous=full`` (the default: a commit survives a power cut) or
      ``synchronous=normal`` (a commit survives a crash of any process, but the last ones
      may roll back on a power cut or an OS crash; each add skips an fsync). It wins over
      ``REDBATCH_SQLITE_SYNCHRONOUS``, and a ``sqlite_synchronous=`` argument that
      disagrees is a ConfigError.
    - ``redis://[user:password@]host:port/db`` and ``rediss://...`` (TLS): Redis, for many
      hosts. The database (the path) must be a number. Query options, each at most once:
      ``partitions=N`` (1 to 1024: spread each batcher over N hash tags; it wins over
      ``REDBATCH_PARTITIONS``, and a ``partitions=`` argument that disagrees is a
      ConfigError) and ``client_name=NAME``; with ``rediss://`` also
      ``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_certfile``, ``ssl_keyfile``,
      ``ssl_cert_reqs`` (``none``, ``optional`` or ``required``) and
      ``ssl_check_hostname`` (``true`` or ``false``). Also ``replicas=N`` (0 to 16):
      every write returns only once N replicas confirm it (a ``WAIT`` in the same round
      trip), else ``NotReplicated`` after ``replicas_timeout`` seconds (default 1, over 0,
      at most 60, under ``socket_timeout``); the README's "Replicated writes" says what
      that guarantees. Any other option is refused.
    - ``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``: the Redis
      master that these Sentinels (port 26379 by default) name for ``service``, followed
      across failovers; the credentials are the master's. Options as for ``redis://``
      (``partitions``, ``client_name``, ``replicas``, ``replicas_timeout``).
    - ``redis+cluster://[user:password@]host:port[,host:port...]``: Redis Cluster, found
      through any of these nodes (port 6379 by default); no database. Options
      ``partitions`` (default 16 here, unless given as an argument or by
      ``REDBATCH_PARTITIONS``: enough to spread each batcher over the masters) and
      ``client_name`` (``replicas`` is refused: a cluster fails over on its own, and its
      masters share no ``WAIT``). ``add_many`` over several partitions is all or none per
      partition, never twice (``PartlyStored`` when only some were stored; the README's
      "Cluster" says more).
    - ``memory://``: this process's memory, for tests; not durable (it logs a warning).

    Errors quote the URL with its password masked.

    Args:
        url: The store's URL; None (the default) reads ``REDBATCH_URL``, else uses
            ``sqlite:///./redbatch.db``.
        check: For Redis, send a PING now, so that an unreachable server fails here rather
            than at the first ``add``. Default True. SQLite opens its file (and creates its
            tables) here either way; ``memory://`` has nothing to check.
        **overrides: Settings, each overriding its ``REDBATCH_*`` environment variable
            (which overrides the default):

            - ``prefix`` (``REDBATCH_PREFIX``, default ``"redbatch"``): the prefix of every
              Redis key, 1 to 64 characters.
            - ``partitions`` (``REDBATCH_PARTITIONS``, default 1): Redis partitions (hash
              tags) per batcher, 1 to 1024; a URL's ``?partitions=`` wins over it.
            - ``connect_timeout`` (``REDBATCH_CONNECT_TIMEOUT``, default 3): seconds to
              reach Redis before ``StoreUnavailable``; over 0, at most 60.
            - ``socket_timeout`` (``REDBATCH_SOCKET_TIMEOUT``, default 10): seconds one Redis
              command may take before ``StoreUnavailable``; over 0, at most 300.
            - ``sqlite_busy_timeout`` (``REDBATCH_SQLITE_BUSY_TIMEOUT``, default 5): seconds
              a SQLite writer waits for another's lock before ``StoreUnavailable``; over 0,
              at most 300.
            - ``sqlite_synchronous`` (``REDBATCH_SQLITE_SYNCHRONOUS``, default ``"full"``):
              ``"full"`` or ``"normal"``, as the URL's ``?synchronous=``, which wins.

            Settings a store does not use are checked and ignored.

    Returns:
        The store: pass it to ``Batcher`` and ``Worker``; ``store.url`` is its URL with any
        password masked.

    Raises:
        ConfigError: The URL is malformed, has an unknown scheme, or holds an unknown,
            repeated, empty or out-of-range option; or an override is not a setting, or a
            setting (given or read from the environment) is out of range.
        StoreUnavailable: Redis (with ``check``) could not be reached within
            ``connect_timeout`` plus ``socket_timeout`` seconds, refused the connection
            (wrong credentials) or the PING; or the SQLite file, or its folder, could not
            be opened or created, or was made by a newer redbatch.
    """
    settings = _settings(url, overrides)
    if not isinstance(settings.url, str) or not settings.url:
        raise ConfigError("a store URL must be a non-empty string")
    masked = mask_url(settings.url)
    try:
        parts = urlsplit(settings.url)
    except ValueError:  # an unbalanced [ or ] around an IPv6 host
        raise ConfigError(f"invalid store URL {masked}: its host is not a valid IPv6 address") from None
    scheme = parts.scheme.lower()
    if scheme == "memory":
        if parts.netloc or parts.path or parts.fragment:
            raise ConfigError(f"invalid store URL {masked}: write memory:// alone")
        _options(parts, masked, ())
        return MemoryStore(settings.url)
    if scheme in ("redis", "rediss"):
        from redbatch.stores.redis import RedisStore  # noqa: PLC0415 - load redis-py only when used

        redis_url, partitions = _redis_url(parts, masked, settings.partitions)
        _same_partitions(overrides, settings.partitions, partitions, masked)
        replicas, replicas_timeout = _replicas(_options(parts, masked, _redis_allowed(parts)), masked)
        redis_store = RedisStore(
            redis_url,
            prefix=settings.prefix,
            partitions=partitions,
            connect_timeout=settings.connect_timeout,
            socket_timeout=settings.socket_timeout,
            replicas=replicas,
            replicas_timeout=replicas_timeout,
        )
        if check:
            redis_store.ping()
        return redis_store
    if scheme == "redis+sentinel":
        return _sentinel_store(settings, parts, masked, overrides, check)
    if scheme == "redis+cluster":
        return _cluster_store(settings, parts, masked, overrides, check)
    if scheme == "sqlite":
        from redbatch.stores.sqlite import SQLiteStore, sqlite_path  # noqa: PLC0415 - on demand

        synchronous = _options(parts, masked, SQLITE_OPTIONS).get("synchronous", settings.sqlite_synchronous)
        if "sqlite_synchronous" in overrides and settings.sqlite_synchronous != synchronous.lower():
            raise ConfigError(
                f"sqlite_synchronous={settings.sqlite_synchronous!r} disagrees with the URL's"
                f" ?synchronous={synchronous} ({masked}); give it once"
            )
        sqlite_store: Store = SQLiteStore(
            sqlite_path(settings.url, SQLITE_OPTIONS),
            busy_timeout=settings.sqlite_busy_timeout,
            synchronous=synchronous,
            url=settings.url,
        )
        return sqlite_store
    raise ConfigError(f"unknown store URL scheme {parts.scheme!r} in {masked}; use one of {SCHEMES}")


def _same_partitions(overrides: dict[str, object], setting: int, from_url: int, masked: str) -> None:
    if "partitions" in overrides and setting != from_url:
        raise ConfigError(
            f"partitions={setting} disagrees with the URL's ?partitions={from_url} ({masked}); give it once"
        )


def _sentinel_store(
    settings: Settings, parts: SplitResult, masked: str, overrides: dict[str, object], check: bool
) -> Store:
    """``redis+sentinel://[user:password@]host:port[,host:port...]/service[/db]``."""
    from redbatch.stores.redis import RedisStore  # noqa: PLC0415 - load redis-py only when used
    from redbatch.stores.redis.client import (  # noqa: PLC0415
        new_async_sentinel_client,
        new_sentinel_client,
    )

    if parts.fragment:
        raise ConfigError(f"invalid Sentinel URL {masked}: it takes no fragment")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    sentinels = [_sentinel_address(host, masked) for host in hosts.split(",")]
    service, _, database = parts.path.strip("/").partition("/")
    if not service:
        raise ConfigError(f"invalid Sentinel URL {masked}: name the master's service, as in .../mymaster")
    if database and not database.isdigit():
        raise ConfigError(f"invalid Sentinel URL {masked}: the database after the service must be a number")
    options = _options(parts, masked, REDIS_OPTIONS + REDIS_PY_OPTIONS)
    partitions = _partitions(options.get("partitions"), settings.partitions, masked)
    _same_partitions(overrides, settings.partitions, partitions, masked)
    replicas, replicas_timeout = _replicas(options, masked)
    master = {
        "service": unquote_plus(service),
        "username": unquote_plus(username) or None,
        "password": unquote_plus(password) if userinfo and ":" in userinfo else None,
        "db": int(database or 0),
        "client_name": options.get("client_name"),
        "connect_timeout": settings.connect_timeout,
        "socket_timeout": settings.socket_timeout,
    }
    store = RedisStore(
        settings.url,
        prefix=settings.prefix,
        partitions=partitions,
        socket_timeout=settings.socket_timeout,
        client=new_sentinel_client(sentinels, **master),  # type: ignore[arg-type]
        async_client=functools.partial(new_async_sentinel_client, sentinels, **master),  # type: ignore[arg-type]
        replicas=replicas,
        replicas_timeout=replicas_timeout,
    )
    if check:
        store.ping()
    return store


def _cluster_store(
    settings: Settings, parts: SplitResult, masked: str, overrides: dict[str, object], check: bool
) -> Store:
    """``redis+cluster://[user:password@]host:port[,host:port...][/]``: any nodes of the cluster."""
    from redbatch.stores.redis import RedisStore  # noqa: PLC0415 - load redis-py only when used
    from redbatch.stores.redis.client import new_cluster_client  # noqa: PLC0415
    from redbatch.stores.redis.errors import unavailable  # noqa: PLC0415

    if parts.fragment:
        raise ConfigError(f"invalid Cluster URL {masked}: it takes no fragment")
    if parts.path.strip("/"):
        raise ConfigError(f"invalid Cluster URL {masked}: a cluster has no databases, so no path")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    nodes = [_address(host, masked, "Cluster", REDIS_PORT) for host in hosts.split(",")]
    options = _options(parts, masked, REDIS_OPTIONS + REDIS_PY_OPTIONS)
    if "replicas" in options or "replicas_timeout" in options:
        raise ConfigError(
            f"replicas= is not offered on Redis Cluster ({masked}): a cluster fails over on its own"
            " and its masters share no WAIT; use redis:// or redis+sentinel:// for replicated writes"
        )
    # model_fields_set holds partitions when given as an argument or by REDBATCH_PARTITIONS
    default = settings.partitions if "partitions" in settings.model_fields_set else CLUSTER_PARTITIONS
    partitions = _partitions(options.get("partitions"), default, masked)
    _same_partitions(overrides, settings.partitions, partitions, masked)

    @unavailable
    def client() -> Any:  # building it asks the nodes for the cluster's map
        return new_cluster_client(
            nodes,
            username=unquote_plus(username) or None,
            password=unquote_plus(password) if userinfo and ":" in userinfo else None,
            client_name=options.get("client_name"),
            connect_timeout=settings.connect_timeout,
            socket_timeout=settings.socket_timeout,
        )

    store = RedisStore(settings.url, prefix=settings.prefix, partitions=partitions, client=client())
    if check:
        store.ping()
    return store


def _sentinel_address(host: str, masked: str) -> tuple[str, int]:
    """One ``host:port`` of a Sentinel URL (``[v6]:port`` for IPv6; the port defaults to 26379)."""
    return _address(host, masked, "Sentinel", SENTINEL_PORT)


def _address(host: str, masked: str, kind: str, default_port: int) -> tuple[str, int]:
    """One ``host:port`` of a URL that lists several (``[v6]:port`` for IPv6)."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        name, _, port = host.partition(":")
    if not name or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ConfigError(f"invalid {kind} URL {masked}: {host!r} is not host:port")
    return name, int(port or default_port)


def _settings(url: str | None, overrides: dict[str, object]) -> Settings:
    unknown = sorted(set(overrides) - set(Settings.model_fields))
    if unknown:
        names = ", ".join(Settings.model_fields)
        raise ConfigError(f"unknown setting {unknown[0]!r}; the settings are {names}")
    try:
        return Settings(**({"url": url} if url is not None else {}), **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        raise ConfigError(f"invalid redbatch settings: {problems}") from None


def _problem(error: ErrorDetails) -> str:
    """One setting's problem; the URL's value is left out, as it may hold a password."""
    name = ".".join(str(part) for part in error["loc"])
    shown = "" if name == "url" else f" (got {error['input']!r})"
    return f"{name}: {error['msg']}{shown}"


def _options(parts: SplitResult, masked: str, allowed: tuple[str, ...]) -> dict[str, str]:
    """The URL's query options, each given once with a value, all of them in ``allowed``."""
    options: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in allowed:
            hint = (
                f"set it with connect({name}=...) or REDBATCH_{name.upper()}"
                if name in Settings.model_fields
                else f"{parts.scheme}:// takes {', '.join(allowed) if allowed else 'no options'}"
            )
            raise ConfigError(f"unknown option {name!r} in {masked}; {hint}")
        if name in options:
            raise ConfigError(f"option {name!r} is given twice in {masked}")
        if not value:
            raise ConfigError(f"option {name!r} needs a value in {masked}")
        choices = _CHOICES.get(name)
        if choices and value.lower() not in choices:
            raise ConfigError(f"option {name!r} must be one of {', '.join(choices)} in {masked}")
        options[name] = value
    return options


def _redis_url(parts: SplitResult, masked: str, default_partitions: int) -> tuple[str, int]:
    """Check what redis-py checks only once it connects; return its URL and the partitions.

    The URL handed on is the user's, less redbatch's own options.
    """
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:  # its message quotes the port, which may be part of a password
        raise ConfigError(f"invalid Redis URL {masked}: the port must be a number from 0 to 65535") from None
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ConfigError(f"invalid Redis URL {masked}: the database (the path) must be a number, as in /0")
    allowed = _redis_allowed(parts)
    if parts.scheme.lower() != "rediss":
        for name, _ in parse_qsl(parts.query, keep_blank_values=True):
            if name in REDIS_PY_TLS_OPTIONS:
                raise ConfigError(f"option {name!r} is for TLS connections: write rediss:// ({masked})")
    options = _options(parts, masked, allowed)
    partitions = _partitions(options.get("partitions"), default_partitions, masked)
    kept = [
        segment
        for segment in parts.query.split("&")
        if segment and unquote_plus(segment.partition("=")[0]) not in REDIS_OPTIONS
    ]
    return urlunsplit(parts._replace(query="&".join(kept))), partitions


def _redis_allowed(parts: SplitResult) -> tuple[str, ...]:
    """The query options a ``redis://`` or ``rediss://`` URL may carry."""
    allowed = REDIS_OPTIONS + REDIS_PY_OPTIONS
    return allowed + REDIS_PY_TLS_OPTIONS if parts.scheme.lower() == "rediss" else allowed


def _replicas(options: dict[str, str], masked: str) -> tuple[int, float]:
    """``replicas`` (0 to 16) and ``replicas_timeout`` (seconds, over 0, at most 60)."""
    try:
        replicas = int(options.get("replicas", "0"))
        timeout = float(options.get("replicas_timeout", REPLICAS_TIMEOUT))
    except ValueError:
        raise ConfigError(
            f"options 'replicas' (a whole number) and 'replicas_timeout' (seconds) are malformed in {masked}"
        ) from None
    if not 0 <= replicas <= 16:
        raise ConfigError(f"replicas must be between 0 and 16, not {replicas} ({masked})")
    if not 0 < timeout <= 60:  # NaN fails too
        raise ConfigError(
            f"replicas_timeout must be over 0 and at most 60 seconds, not {timeout:g} ({masked})"
        )
    if "replicas_timeout" in options and not replicas:
        raise ConfigError(f"replicas_timeout is given without replicas=N in {masked}")
    return replicas, timeout


def _partitions(value: str | None, default: int, masked: str) -> int:
    if value is None:
        return default
    try:
        partitions = int(value)
    except ValueError:
        raise ConfigError(f"option 'partitions' must be a whole number in {masked}") from None
    if not 1 <= partitions <= 1024:
        raise ConfigError(f"partitions must be between 1 and 1024, not {partitions}")
    return partitions
