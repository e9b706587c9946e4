"""The Redis store: every multi-step change is one Lua script, called by SHA.

Keys live under ``{prefix:batcher:partition}``, a hash tag, so that everything one script
touches sits in one Redis Cluster slot and a batcher can be spread over partitions (and so
over cluster nodes). Values are JSON, readable with redis-cli.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, ParamSpec, TypeVar

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from redbatch.errors import RedbatchError, StoreUnavailable
from redbatch.stores.base import LEASE_EXPIRED_ERROR, Waiter, mask_url, new_batch_id
from redbatch.types import ClaimedBatch, DeadRecord, Entry, Lease, QueueCounters, QueueSpec

log = logging.getLogger("redbatch.store.redis")

P = ParamSpec("P")
T = TypeVar("T")
_SCRIPTS = ("append", "claim", "heartbeat", "ack", "fail", "clear", "flush", "replay", "purge")
_CHUNK = 500
# Error prefixes of a Redis that is up but cannot take writes now; OOM included: with
# noeviction, Redis refuses writes until memory is freed.
_REFUSALS = {"READONLY", "OOM", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY", "NOREPLICAS"}


def _unavailable(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn redis-py's failures into redbatch errors: StoreUnavailable when Redis cannot be
    reached or refuses writes (READONLY during a failover, OOM, LOADING, ...)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc
        except redis.ResponseError as exc:
            if str(exc).split(" ", 1)[0] in _REFUSALS or isinstance(exc, redis.ReadOnlyError):
                raise StoreUnavailable(f"Redis refused the command: {exc}") from exc
            raise RedbatchError(f"Redis error: {exc}") from exc

    return wrapper


def _split_entry(entry: bytes) -> tuple[int, str, bytes]:
    arrived, digest, payload = entry.split(b":", 2)
    return int(arrived), digest.decode(), payload


def _load_scripts(client: Any) -> dict[str, Any]:
    lua = resources.files("redbatch.stores").joinpath("lua")
    prelude = lua.joinpath("lib.lua").read_text()
    return {
        name: client.register_script(prelude + "\n" + lua.joinpath(f"{name}.lua").read_text())
        for name in _SCRIPTS
    }


class _Partition:
    """The key names of one batcher partition."""

    __slots__ = ("age", "base", "dead", "due", "seq", "stats")

    def __init__(self, prefix: str, name: str, index: int) -> None:
        self.base = f"{{{prefix}:{name}:{index}}}:"
        self.due = self.base + "due"
        self.age = self.base + "age"
        self.stats = self.base + "stats"
        self.dead = self.base + "dead"
        self.seq = self.base + "seq"


class _RedisWaiter:
    """Woken by the PUBLISH a script sends when a key becomes due sooner than any other.

    ``close`` may come from another thread while ``wait`` reads the connection; it then
    publishes on the waiter's own channel, and the waiting thread closes the connection.
    """

    def __init__(self, client: Any, channels: list[str]) -> None:
        self._client = client
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._own = f"{channels[0]}:waiter:{new_batch_id()}"
        self._channels = [*channels, self._own]
        self._subscribed = False
        self._lock = threading.Lock()
        self._waiting = False
        self._closed = False

    def wait(self, timeout: float) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._waiting = True
        try:
            return self._wait(time.monotonic() + timeout)
        finally:
            with self._lock:
                self._waiting = False
                if self._closed:
                    self._pubsub.close()

    def _wait(self, deadline: float) -> bool:
        try:
            if not self._subscribed:
                self._pubsub.subscribe(*self._channels)
                self._subscribed = True
            woke = False
            while (remaining := deadline - time.monotonic()) > 0 or woke:
                message = self._pubsub.get_message(timeout=0 if woke else remaining)
                if message is None:
                    return woke
                if message.get("channel") == self._own.encode():
                    return woke
                if message.get("type") == "message":
                    woke = True
            return woke
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            log.warning("wake-up channel lost (%s); relying on deadlines until it is back", exc)
            self._subscribed = False
            with contextlib.suppress(Exception):  # the connection is already broken
                self._pubsub.reset()
            time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))
            return False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if not self._waiting:
                self._pubsub.close()
                return
        # If this fails the waiting thread still returns, by its own timeout.
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            self._client.publish(self._own, b"close")


class RedisStore:
    """Batching state in Redis (standalone; Sentinel and Cluster come later)."""

    durable = True

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "redbatch",
        partitions: int = 1,
        connect_timeout: float = 3.0,
        socket_timeout: float = 10.0,
        client: redis.Redis | None = None,
    ) -> None:
        self.url = mask_url(url)
        self.prefix = prefix
        self.partitions = partitions
        # redis-py's reply types are unions of every reply shape: the scripts' replies are
        # known, so the client is typed loosely rather than cast at every call.
        self.client: Any = client or redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )
        self._scripts = _load_scripts(self.client)
        self._parts: dict[str, list[_Partition]] = {}

    def _eval(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA the named script; load it first if Redis lost it (restart, SCRIPT FLUSH).

        Calling ``execute_command`` directly saves redis-py's per-call argument filtering,
        a few microseconds on every ``add``.
        """
        script = self._scripts[name]
        try:
            return self.client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return script(keys=keys, args=args)

    def _partitions(self, name: str) -> list[_Partition]:
        parts = self._parts.get(name)
        if parts is None:
            parts = self._parts[name] = [_Partition(self.prefix, name, i) for i in range(self.partitions)]
        return parts

    def _partition_of(self, name: str, key: str) -> _Partition:
        parts = self._partitions(name)
        if len(parts) == 1:
            return parts[0]
        return parts[zlib.crc32(key.encode()) % len(parts)]

    def _channel(self, name: str) -> str:
        return f"{self.prefix}:wake:{name}"

    @staticmethod
    def _rule_args(spec: QueueSpec) -> list[int]:
        return [spec.max_items, spec.max_wait_ms, spec.idle_ms]

    # ------------------------------------------------------------------ producing

    @_unavailable
    def ping(self) -> None:
        self.client.ping()

    @_unavailable
    def append(self, spec: QueueSpec, entries: Sequence[Entry], now_ms: int) -> None:
        by_part: dict[_Partition, dict[str, list[Entry]]] = defaultdict(dict)
        for entry in entries:
            keyed = by_part[self._partition_of(spec.name, entry.key)]
            group = keyed.get(entry.key)
            if group is None:
                keyed[entry.key] = [entry]
            else:
                group.append(entry)
        calls: list[tuple[list[str], list[Any]]] = []
        stamp = b"%d:" % now_ms  # entries are "arrived_ms:digest:json", readable with redis-cli
        for part, keyed in by_part.items():
            args: list[Any] = [
                part.base,
                now_ms,
                *self._rule_args(spec),
                int(spec.dedupe),
                self._channel(spec.name),
            ]
            for key, group in keyed.items():
                args += (key, len(group))
                args += [b"%s%s:%s" % (stamp, e.digest.encode(), e.payload) for e in group]
            calls.append(([part.due, part.age, part.stats], args))
        if len(calls) == 1:  # one script, atomic by itself, one round trip
            self._eval("append", *calls[0])
            return
        # Several partitions: MULTI keeps add_many all-or-none on a single server.
        pipe = self.client.pipeline(transaction=True)
        for keys, args in calls:
            self._scripts["append"](keys=keys, args=args, client=pipe)
        pipe.execute()

    # ------------------------------------------------------------------ claiming

    @_unavailable
    def claim_due(self, spec: QueueSpec, now_ms: int, limit: int) -> list[ClaimedBatch]:
        claimed: list[ClaimedBatch] = []
        for part in self._partitions(spec.name):
            want = limit - len(claimed)
            if want <= 0:
                break
            rows = self._eval(
                "claim",
                keys=[part.due, part.age, part.stats, part.dead, part.seq],
                args=[
                    part.base,
                    now_ms,
                    want,
                    spec.lease_ms,
                    *self._rule_args(spec),
                    spec.max_attempts,
                    int(spec.dedupe),
                    LEASE_EXPIRED_ERROR,
                    *(new_batch_id() for _ in range(want)),
                ],
            )
            for key, batch_id, attempt, token, created, raw in rows:
                split = [_split_entry(e) for e in raw]
                claimed.append(
                    ClaimedBatch(
                        Lease(key.decode(), batch_id.decode(), int(token)),
                        int(attempt),
                        int(created),
                        tuple(p for _, _, p in split),
                        tuple(a for a, _, _ in split),
                    )
                )
        return claimed

    @_unavailable
    def next_due_ms(self, spec: QueueSpec) -> int | None:
        pipe = self.client.pipeline(transaction=False)
        for part in self._partitions(spec.name):
            pipe.zrange(part.due, 0, 0, withscores=True)
        heads = [int(rows[0][1]) for rows in pipe.execute() if rows]
        return min(heads) if heads else None

    @_unavailable
    def due_deadlines(self, spec: QueueSpec, now_ms: int, limit: int) -> list[int]:
        if limit <= 0:
            return []
        pipe = self.client.pipeline(transaction=False)
        for part in self._partitions(spec.name):
            pipe.zrangebyscore(part.due, "-inf", now_ms, start=0, num=limit, withscores=True)
        return sorted(int(score) for rows in pipe.execute() for _, score in rows)[:limit]

    # ------------------------------------------------------------------ lease holders

    def _per_partition(
        self,
        spec: QueueSpec,
        leases: Sequence[Lease],
        script: str,
        keys_of: Callable[[_Partition], list[str]],
        head_of: Callable[[_Partition], list[Any]],
    ) -> list[bool]:
        """Run a lease script once per partition, with (key, batch id, token) triples after
        its head arguments; return whether each lease was held, in the order given."""
        by_part: dict[_Partition, list[int]] = defaultdict(list)
        for index, lease in enumerate(leases):
            by_part[self._partition_of(spec.name, lease.key)].append(index)
        held = [False] * len(leases)
        for part, indexes in by_part.items():
            args = head_of(part)
            for index in indexes:
                lease = leases[index]
                args += (lease.key, lease.batch_id, lease.fencing_token)
            results = self._eval(script, keys=keys_of(part), args=args)
            for index, ok in zip(indexes, results, strict=True):
                held[index] = bool(ok)
        return held

    @_unavailable
    def heartbeat(self, spec: QueueSpec, leases: Sequence[Lease], lease_until_ms: int) -> list[bool]:
        return self._per_partition(
            spec, leases, "heartbeat", lambda p: [p.due], lambda p: [p.base, lease_until_ms]
        )

    @_unavailable
    def ack(self, spec: QueueSpec, leases: Sequence[Lease], now_ms: int) -> list[bool]:
        return self._per_partition(
            spec,
            leases,
            "ack",
            lambda p: [p.due, p.stats],
            lambda p: [p.base, now_ms, *self._rule_args(spec), self._channel(spec.name)],
        )

    def _settle_args(self, spec: QueueSpec, part: _Partition, lease: Lease, now_ms: int) -> list[Any]:
        return [
            part.base,
            now_ms,
            *self._rule_args(spec),
            self._channel(spec.name),
            lease.key,
            lease.batch_id,
            lease.fencing_token,
        ]

    @_unavailable
    def fail(
        self,
        spec: QueueSpec,
        lease: Lease,
        now_ms: int,
        error: str,
        retry_at_ms: int | None,
        keep: Sequence[int] | None = None,
    ) -> bool:
        part = self._partition_of(spec.name, lease.key)
        args = self._settle_args(spec, part, lease, now_ms)
        args += (error, "" if retry_at_ms is None else retry_at_ms)
        args.append("" if keep is None else ",".join(map(str, keep)))
        return bool(self._eval("fail", keys=[part.due, part.stats, part.dead], args=args))

    # ------------------------------------------------------------------ operators

    @_unavailable
    def clear(self, spec: QueueSpec, key: str) -> int:
        part = self._partition_of(spec.name, key)
        return int(self._eval("clear", keys=[part.due, part.age, part.stats], args=[part.base, key]))

    @_unavailable
    def flush(self, spec: QueueSpec, key: str | None, now_ms: int) -> int:
        parts = self._partitions(spec.name) if key is None else [self._partition_of(spec.name, key)]
        made = 0
        for part in parts:
            args = [part.base, now_ms, self._channel(spec.name), key or ""]
            made += int(self._eval("flush", keys=[part.due], args=args))
        return made

    @_unavailable
    def peek(self, spec: QueueSpec, key: str, limit: int) -> list[tuple[int, bytes]]:
        part = self._partition_of(spec.name, key)
        rows = self.client.lrange(f"{part.base}i:{key}", 0, limit - 1)
        return [(arrived, payload) for arrived, _, payload in map(_split_entry, rows)]

    @_unavailable
    def counters(self, spec: QueueSpec) -> QueueCounters:
        pipe = self.client.pipeline(transaction=False)
        parts = self._partitions(spec.name)
        for part in parts:
            pipe.hgetall(part.stats)
            pipe.zcard(part.due)
            pipe.zrange(part.age, 0, 0, withscores=True)
            pipe.zcard(part.dead)
        replies = pipe.execute()
        totals: dict[str, int] = defaultdict(int)
        open_keys = dead = 0
        oldest: int | None = None
        last_flush: int | None = None
        for i in range(len(parts)):
            stats, due_count, age_head, dead_count = replies[4 * i : 4 * i + 4]
            for field, value in stats.items():
                name = field.decode()
                if name == "last_flush":
                    last_flush = max(last_flush or 0, int(value))
                else:
                    totals[name] += int(value)
            open_keys += due_count
            dead += dead_count
            if age_head:
                first = int(age_head[0][1])
                oldest = first if oldest is None else min(oldest, first)
        return QueueCounters(
            open_keys=open_keys,
            buffered_items=totals["buffered"],
            oldest_arrival=oldest,
            in_flight=totals["in_flight"],
            retrying=totals["retrying"],
            dead=dead,
            flushed_batches=totals["flushed_batches"],
            flushed_items=totals["flushed_items"],
            last_flush_at=last_flush,
        )

    @_unavailable
    def dead_letters(self, spec: QueueSpec, limit: int, offset: int) -> list[DeadRecord]:
        ranked: list[tuple[float, str, _Partition]] = []
        for part in self._partitions(spec.name):
            for member, score in self.client.zrange(part.dead, 0, offset + limit - 1, withscores=True):
                ranked.append((score, member.decode(), part))
        ranked.sort(key=lambda row: (row[0], row[1]))
        ranked = ranked[offset : offset + limit]
        pipe = self.client.pipeline(transaction=False)
        for _, batch_id, part in ranked:
            pipe.hgetall(f"{part.base}x:{batch_id}")
            pipe.lrange(f"{part.base}xi:{batch_id}", 0, -1)
        replies = pipe.execute()
        records = []
        for i, (_, batch_id, _) in enumerate(ranked):
            meta, raw = replies[2 * i], replies[2 * i + 1]
            if not meta:
                continue  # purged meanwhile
            split = [_split_entry(e) for e in raw]
            records.append(
                DeadRecord(
                    batch_id=batch_id,
                    key=meta[b"key"].decode(),
                    payloads=tuple(p for _, _, p in split),
                    arrived_at=tuple(a for a, _, _ in split),
                    attempts=int(meta[b"attempts"]),
                    error=meta[b"error"].decode(errors="replace"),
                    created_at=int(meta[b"created"]),
                    died_at=int(meta[b"died"]),
                )
            )
        return records

    def _dead_ids(self, part: _Partition, before_ms: int | None) -> list[str]:
        top = "+inf" if before_ms is None else f"({before_ms}"
        rows = self.client.zrangebyscore(part.dead, "-inf", top, start=0, num=_CHUNK)
        return [r.decode() for r in rows]

    @_unavailable
    def replay(self, spec: QueueSpec, batch_ids: Sequence[str] | None, now_ms: int) -> int:
        replayed = 0
        for part in self._partitions(spec.name):
            keys = [part.due, part.age, part.stats, part.dead]
            head = [part.base, now_ms, self._channel(spec.name), int(spec.dedupe)]
            if batch_ids is not None:
                for i in range(0, len(batch_ids), _CHUNK):
                    replayed += int(
                        self._eval("replay", keys=keys, args=head + list(batch_ids[i : i + _CHUNK]))
                    )
                continue
            while ids := self._dead_ids(part, None):
                replayed += int(self._eval("replay", keys=keys, args=head + ids))
        return replayed

    @_unavailable
    def purge_dead(self, spec: QueueSpec, batch_ids: Sequence[str] | None, before_ms: int | None) -> int:
        purged = 0
        for part in self._partitions(spec.name):
            if batch_ids is not None:
                for i in range(0, len(batch_ids), _CHUNK):
                    args = [part.base, *batch_ids[i : i + _CHUNK]]
                    purged += int(self._eval("purge", keys=[part.dead], args=args))
                continue
            while ids := self._dead_ids(part, before_ms):
                purged += int(self._eval("purge", keys=[part.dead], args=[part.base, *ids]))
        return purged

    def waiter(self, names: Sequence[str]) -> Waiter:
        return _RedisWaiter(self.client, [self._channel(n) for n in names])

    def close(self) -> None:
        self.client.close()
