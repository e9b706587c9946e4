"""The Redis store: every multi-step change is one Lua script, called by SHA.

Keys live under ``{prefix:batcher:partition}``, a hash tag, so that everything one script
touches sits in one Redis Cluster slot and a batcher can be spread over partitions (and so
over cluster nodes). Values are JSON, readable with redis-cli.

Each partition carries its own copy of the batcher's rules (``…:rules``), since a script
touches one hash tag only; every write of them covers all partitions in one MULTI, so a
producer never finds the partitions disagreeing.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import re
import threading
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any, ParamSpec, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redbatch.errors import RedbatchError, StoreUnavailable
from redbatch.stores.base import (
    LEASE_EXPIRED_ERROR,
    RulesChanged,
    Waiter,
    mask_url,
    new_batch_id,
    replaced_rules,
    unknown_dead_letters,
)
from redbatch.types import RULE_FIELDS, ClaimedBatch, DeadRecord, Entry, Lease, QueueCounters, QueueSpec

log = logging.getLogger("redbatch.store.redis")

P = ParamSpec("P")
T = TypeVar("T")
_SCRIPTS = (
    "append", "claim", "heartbeat", "ack", "fail", "clear", "flush", "replay", "purge", "rules", "reschedule"
)  # fmt: skip
_CHUNK = 500
_OTHER_RULES, _NO_RULES = -1, -2  # append.lua's refusals
_SPARE_IDS = 2  # batch ids claim.lua may use on corrupt batches it buries, beyond its limit
_WATCH_ATTEMPTS = 5
# Error prefixes of a Redis that is up but cannot take writes now; OOM included: with
# noeviction, Redis refuses writes until memory is freed.
_REFUSALS = {"READONLY", "OOM", "LOADING", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "BUSY", "NOREPLICAS"}


def _unavailable(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn redis-py's failures into redbatch errors: StoreUnavailable when Redis cannot be
    reached or refuses writes (READONLY during a failover, OOM, LOADING, ...).

    This is the one place a store operation is retried: once, when its connection turned
    out to be dropped (reset, closed, refused: errors that show at once), so that the
    first command after a Redis restart does not fail. A timeout is never retried: it
    has spent its time already, and the command may have run. redis-py's own retries,
    nested in each other (command, connect, socket connect, health check), are off:
    they multiplied the bound the timeouts promise.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            try:
                return fn(*args, **kwargs)
            except redis.ConnectionError as exc:
                if type(exc) is not redis.ConnectionError:  # authentication, LOADING, ...
                    raise
                log.info("Redis connection dropped (%s); trying once more on a new one", exc)
                return fn(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StoreUnavailable(f"Redis is unavailable: {exc}") from exc
        except redis.ResponseError as exc:
            # redis-py cuts the code off the replies it has a class for (READONLY, OOM, ...)
            reply = str(exc)
            code = exc.status_code or reply.split(" ", 1)[0]
            if not reply.startswith(code):
                reply = f"{code} {reply}"
            if code in _REFUSALS:
                raise StoreUnavailable(f"Redis refused the command: {reply}") from exc
            raise RedbatchError(f"Redis error: {reply}") from exc

    return wrapper


# An entry is "arrived_ms:digest:json" (lib.lua's digest_of reads the same framing).
_FRAMING = re.compile(rb"([0-9]+):[^:]*:")


def _read_entry(entry: bytes) -> tuple[int | None, bytes]:
    """An entry's arrival and payload. One without the framing (pushed by hand) has no arrival
    to read; its payload is the whole entry, which the batcher shows as a ``CorruptItem``
    unless it is JSON. Listing must work on anything; claims never hand such an entry out."""
    framed = _FRAMING.match(entry)
    if framed is None:
        return None, entry
    return int(framed[1]), entry[framed.end() :]


def _record(reply: Any) -> dict[str, bytes]:
    """A hash as HGETALL answers it: a dict from redis-py, a flat list from a script."""
    if isinstance(reply, dict):
        return {field.decode(): value for field, value in reply.items()}
    return {reply[i].decode(): reply[i + 1] for i in range(0, len(reply), 2)}


def _load_scripts(client: Any) -> dict[str, Any]:
    lua = resources.files("redbatch.stores.redis").joinpath("lua")
    prelude = lua.joinpath("lib.lua").read_text()
    return {
        name: client.register_script(prelude + "\n" + lua.joinpath(f"{name}.lua").read_text())
        for name in _SCRIPTS
    }


class _Partition:
    """The key names of one batcher partition."""

    __slots__ = ("age", "base", "dead", "due", "rules", "seq", "stats")

    def __init__(self, prefix: str, name: str, index: int) -> None:
        self.base = f"{{{prefix}:{name}:{index}}}:"
        self.due = self.base + "due"
        self.age = self.base + "age"
        self.stats = self.base + "stats"
        self.dead = self.base + "dead"
        self.seq = self.base + "seq"
        self.rules = self.base + "rules"


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
        # Bounded failure: connecting takes at most connect_timeout, and each reply (the
        # handshake's, a command's) at most socket_timeout, with no retry inside redis-py
        # (see _unavailable). No health check either: the pool already replaces a
        # connection the server closed, and a PING before a command only adds a wait.
        self.client: Any = client or redis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=socket_timeout,
            retry=Retry(NoBackoff(), 0),
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
        # One script over every partition the entries fall in: all or none, one round trip.
        keys: list[str] = []
        args: list[Any] = [
            now_ms, *self._rule_args(spec), int(spec.dedupe), self._channel(spec.name), spec.version
        ]  # fmt: skip
        stamp = b"%d:" % now_ms  # entries are "arrived_ms:digest:json", readable with redis-cli
        for part, keyed in by_part.items():
            keys += (part.due, part.age, part.stats, part.rules)
            args += (part.base, len(keyed))
            for key, group in keyed.items():
                args += (key, len(group))
                args += [b"%s%s:%s" % (stamp, e.digest.encode(), e.payload) for e in group]
        result = int(self._eval("append", keys, args))
        if result == _NO_RULES:  # the batcher's first append: record its rules, then retry
            self._write_rules("record", spec, now_ms)
            result = int(self._eval("append", keys, args))
        if result < 0:
            raise RulesChanged(spec.name)

    # ------------------------------------------------------------------ rules

    def _write_rules(self, mode: str, spec: QueueSpec, now_ms: int) -> list[tuple[dict[str, bytes], bool]]:
        """Run rules.lua on every partition of the batcher, in one MULTI when there are
        several, so that no append ever sees some partitions changed and others not.
        Returns, per partition, its record before and whether its keys need rescheduling."""
        parts = self._partitions(spec.name)
        rules = spec.rules()
        args = [mode, now_ms, spec.version, *(int(rules[name]) for name in RULE_FIELDS)]
        if len(parts) == 1:
            replies = [self._eval("rules", [parts[0].rules], args)]
        else:
            pipe = self.client.pipeline(transaction=True)
            for part in parts:
                self._scripts["rules"](keys=[part.rules], args=args, client=pipe)
            replies = pipe.execute()
        return [(_record(flat), bool(stale)) for flat, stale in replies]

    @_unavailable
    def publish_rules(self, spec: QueueSpec, now_ms: int) -> QueueSpec | None:
        written = self._write_rules("publish", spec, now_ms)
        for part, (_, stale) in zip(self._partitions(spec.name), written, strict=True):
            if stale:
                self._reschedule(spec, part, now_ms)
        return replaced_rules(spec.name, written[0][0])

    def _reschedule(self, spec: QueueSpec, part: _Partition, now_ms: int) -> None:
        """Reschedule a partition's keys under ``spec`` in chunks: Redis serves others between."""
        cursor: str = "0"
        while True:
            reply = self._eval(
                "reschedule",
                keys=[part.due, part.rules],
                args=[part.base, now_ms, spec.version, cursor, _CHUNK, self._channel(spec.name)],
            )
            cursor = reply.decode() if isinstance(reply, bytes) else str(reply)
            if cursor in ("0", ""):
                return

    @_unavailable
    def stored_rules(self, name: str) -> QueueSpec | None:
        record = self.client.hgetall(self._partitions(name)[0].rules)
        return QueueSpec.from_record(name, _record(record)) if record else None

    # ------------------------------------------------------------------ claiming

    @_unavailable
    def claim_due(self, spec: QueueSpec, now_ms: int, limit: int) -> list[ClaimedBatch]:
        """Lease up to ``limit`` due batches, earliest deadline first across the batcher's
        partitions: their due heads are read first, and each partition holding some of
        the ``limit`` earliest claims that many, so no partition waits behind another."""
        parts = self._partitions(spec.name)
        if limit <= 0:
            return []
        if len(parts) == 1:
            rows = self._eval("claim", *self._claim_call(spec, parts[0], now_ms, limit))
            return self._claimed(spec, now_ms, rows)
        pipe = self.client.pipeline(transaction=False)
        for part in parts:
            pipe.zrangebyscore(part.due, "-inf", now_ms, start=0, num=limit, withscores=True)
        heads = heapq.nsmallest(
            limit, ((score, key, i) for i, rows in enumerate(pipe.execute()) for key, score in rows)
        )
        claimed = self._claim_shares(
            spec, now_ms, {parts[i]: n for i, n in Counter(i for *_, i in heads).items()}
        )
        rank = {key.decode(): n for n, (_, key, _) in enumerate(heads)}
        claimed.sort(key=lambda c: rank.get(c.lease.key, len(rank)))
        return claimed

    def _claim_shares(
        self, spec: QueueSpec, now_ms: int, shares: dict[_Partition, int]
    ) -> list[ClaimedBatch]:
        """Run claim.lua on each partition for its share, in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for part, share in shares.items():
            keys, args = self._claim_call(spec, part, now_ms, share)
            pipe.execute_command("EVALSHA", self._scripts["claim"].sha, len(keys), *keys, *args)
        claimed: list[ClaimedBatch] = []
        failure: Exception | None = None
        for (part, share), reply in zip(shares.items(), pipe.execute(raise_on_error=False), strict=True):
            rows = reply
            if isinstance(reply, redis.exceptions.NoScriptError):  # SCRIPT FLUSH, a restart
                rows = self._eval("claim", *self._claim_call(spec, part, now_ms, share))
            elif isinstance(reply, Exception):
                failure = reply
                continue
            claimed += self._claimed(spec, now_ms, rows)
        if failure is not None:
            if not claimed:
                raise failure
            # What was leased is handed out, not stranded; the next claim meets the failure again.
            log.error("claiming from a partition of %s failed: %s", spec.name, failure)
        return claimed

    def _claim_call(
        self, spec: QueueSpec, part: _Partition, now_ms: int, want: int
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of claim.lua for ``want`` batches of one partition."""
        keys = [part.due, part.age, part.stats, part.dead, part.seq]
        args = [
            part.base,
            now_ms,
            want,
            spec.lease_ms,
            *self._rule_args(spec),
            spec.max_attempts,
            int(spec.dedupe),
            LEASE_EXPIRED_ERROR,
            *(new_batch_id() for _ in range(want + _SPARE_IDS)),
        ]
        return keys, args

    def _claimed(self, spec: QueueSpec, now_ms: int, rows: Any) -> list[ClaimedBatch]:
        """claim.lua's reply as batches."""
        claimed = []
        for key, batch_id, attempt, token, created, raw in rows:
            lease = Lease(key.decode(), batch_id.decode(), int(token))
            entries = [_read_entry(e) for e in raw]
            arrivals = tuple(a for a, _ in entries if a is not None)
            if len(arrivals) < len(entries):  # claim.lua buries these: this is a safety net
                why = "corrupt data: an entry is not framed as arrived_ms:digest:json"
                self.fail(spec, lease, now_ms, why, None)
                continue
            payloads = tuple(p for _, p in entries)
            claimed.append(ClaimedBatch(lease, int(attempt), int(created), payloads, arrivals))
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
    def peek(self, spec: QueueSpec, key: str, limit: int) -> list[tuple[int | None, bytes]]:
        part = self._partition_of(spec.name, key)
        return [_read_entry(e) for e in self.client.lrange(f"{part.base}i:{key}", 0, limit - 1)]

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
        gone: dict[_Partition, list[str]] = defaultdict(list)
        for i, (_, batch_id, part) in enumerate(ranked):
            meta, raw = replies[2 * i], replies[2 * i + 1]
            if not meta:  # replayed or purged meanwhile, or its record was lost
                gone[part].append(batch_id)
                continue
            entries = [_read_entry(e) for e in raw]
            records.append(
                DeadRecord(
                    batch_id=batch_id,
                    key=meta[b"key"].decode(),
                    payloads=tuple(p for _, p in entries),
                    arrived_at=tuple(a or 0 for a, _ in entries),
                    attempts=int(meta[b"attempts"]),
                    error=meta[b"error"].decode(errors="replace"),
                    created_at=int(meta[b"created"]),
                    died_at=int(meta[b"died"]),
                )
            )
        for part, batch_ids in gone.items():  # drop the index entries of lost records
            self._dropped(part, self._eval("purge", [part.dead], [part.base, "ids", *batch_ids])[2])
        return records

    @_unavailable
    def replay(self, spec: QueueSpec, batch_ids: Sequence[str] | None, now_ms: int) -> int:
        def keys(part: _Partition) -> list[str]:
            return [part.due, part.age, part.stats, part.dead]

        def head(part: _Partition) -> list[Any]:
            return [part.base, now_ms, self._channel(spec.name), int(spec.dedupe)]

        if batch_ids is not None:
            return self._by_ids(spec, "replay", batch_ids, keys, head)
        replayed = 0
        for part in self._partitions(spec.name):
            # Newest letters first, each step putting older ones in front of them; those that
            # die meanwhile (after the cutoff) are left for the next replay.
            top = self.client.zrevrange(part.dead, 0, 0, withscores=True)
            if top:
                replayed += self._drain("replay", part, keys(part), head(part), str(int(top[0][1])))
        return replayed

    @_unavailable
    def purge_dead(self, spec: QueueSpec, batch_ids: Sequence[str] | None, before_ms: int | None) -> int:
        def keys(part: _Partition) -> list[str]:
            return [part.dead]

        def head(part: _Partition) -> list[Any]:
            return [part.base]

        if batch_ids is not None:
            return self._by_ids(spec, "purge", batch_ids, keys, head)
        cutoff = "+inf" if before_ms is None else f"({before_ms}"
        return sum(self._drain("purge", p, keys(p), head(p), cutoff) for p in self._partitions(spec.name))

    def _drain(self, script: str, part: _Partition, keys: list[str], head: list[Any], cutoff: str) -> int:
        """Run a dead-letter script over a partition's letters up to ``cutoff``, a chunk a call.

        Bounded by the letters there at the start, however many die meanwhile.
        """
        left = int(self.client.zcount(part.dead, "-inf", cutoff))
        done = 0
        while left > 0:
            count, taken, dropped, _ = self._eval(script, keys, [*head, "all", _CHUNK, cutoff])
            self._dropped(part, dropped)
            done += int(count)
            left -= int(taken)
            if not taken:
                break
        return done

    def _by_ids(
        self,
        spec: QueueSpec,
        script: str,
        batch_ids: Sequence[str],
        keys_of: Callable[[_Partition], list[str]],
        head_of: Callable[[_Partition], list[Any]],
    ) -> int:
        """Run a dead-letter script on these ids, all or none: NotFound when one is unknown.

        A script checks its ids before it changes anything. With several partitions, each
        id's partition is looked up first, then one transaction runs a script per partition,
        its records watched: when one changes before the transaction runs, look again.
        """
        ids = list(dict.fromkeys(batch_ids))
        if not ids:
            return 0
        parts = self._partitions(spec.name)
        if len(parts) == 1:
            reply = self._eval(script, keys_of(parts[0]), [*head_of(parts[0]), "ids", *ids])
            return self._checked(spec, parts[0], reply)
        for _ in range(_WATCH_ATTEMPTS):
            where, unknown = self._locate(parts, ids)
            if unknown:
                for part in parts:  # each drops the index entries these may have left behind
                    reply = self._eval(script, keys_of(part), [*head_of(part), "ids", *unknown])
                    self._dropped(part, reply[2])
                raise unknown_dead_letters(spec.name, unknown)
            records = [f"{part.base}x:{i}" for part, group in where for i in group]
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(*records)
                    if pipe.exists(*records) != len(records):
                        continue  # one went meanwhile: look again
                    pipe.multi()
                    for part, group in where:
                        args = [*head_of(part), "ids", *group]
                        self._scripts[script](keys=keys_of(part), args=args, client=pipe)
                    replies = pipe.execute()
                except redis.WatchError:
                    continue
            return sum(
                self._checked(spec, part, reply) for (part, _), reply in zip(where, replies, strict=True)
            )
        raise RedbatchError(f"the dead letters of {spec.name!r} kept changing under this call; try again")

    def _locate(
        self, parts: list[_Partition], ids: list[str]
    ) -> tuple[list[tuple[_Partition, list[str]]], list[str]]:
        """The dead letters each partition holds, and the ids no partition has."""
        pipe = self.client.pipeline(transaction=False)
        for part in parts:
            for batch_id in ids:
                pipe.exists(f"{part.base}x:{batch_id}")
        found = pipe.execute()
        where: list[tuple[_Partition, list[str]]] = []
        for n, part in enumerate(parts):
            group = [i for k, i in enumerate(ids) if found[n * len(ids) + k]]
            if group:
                where.append((part, group))
        located = {i for _, group in where for i in group}
        return where, [i for i in ids if i not in located]

    def _checked(self, spec: QueueSpec, part: _Partition, reply: list[Any]) -> int:
        """The count a dead-letter script replied; NotFound for the unknown ids it names."""
        done, _, dropped, unknown = reply
        self._dropped(part, dropped)
        if unknown:
            raise unknown_dead_letters(spec.name, [i.decode() for i in unknown])
        return int(done)

    @staticmethod
    def _dropped(part: _Partition, dropped: int) -> None:
        if dropped:
            log.warning(
                "%s: dropped %d dead-letter index entries whose records were gone"
                " (evicted, or deleted by hand)",
                part.dead,
                dropped,
            )

    def waiter(self, names: Sequence[str]) -> Waiter:
        return _RedisWaiter(self.client, [self._channel(n) for n in names])

    def close(self) -> None:
        self.client.close()
