"""The Redis store: every multi-step change is one Lua script, called by SHA.

Keys live under ``{prefix:batcher:partition}``, a hash tag, so that everything one script
touches sits in one Redis Cluster slot and a batcher can be spread over partitions (and so
over cluster nodes). Values are JSON, readable with redis-cli. The key layout is drawn at
the top of lua/lib.lua. Every transition of ``redbatch.engine`` is made by a script, whose
header names it (``-- transition: ack``): the Python here only groups a call's keys by
partition, builds the scripts' arguments and reads their replies.

This module holds producing, claiming, the lease holders' steps and the operators' small
ones; ``Rules`` (rules.py), ``DeadLetters`` (dead_letters.py) and ``Jobs`` (jobs.py, the job
records of job queues) hold the rest.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import redis
import redis.asyncio
from redis.cluster import RedisCluster

from redbatch import engine
from redbatch.checks import item_digest
from redbatch.errors import ConfigError, PartlyStored, RedbatchError
from redbatch.jobrecords import is_jobs
from redbatch.stores.base import (
    LEASE_EXPIRED_ERROR,
    RulesChanged,
    Waiter,
    mask_url,
    new_batch_id,
    new_batch_ids,
)
from redbatch.stores.redis.client import load_scripts, new_async_client, new_client
from redbatch.stores.redis.core import Partition, read_entry
from redbatch.stores.redis.dead_letters import DeadLetters
from redbatch.stores.redis.errors import translated, unavailable, unavailable_async
from redbatch.stores.redis.jobs import Jobs
from redbatch.stores.redis.rules import Rules, record
from redbatch.stores.redis.waiter import RedisWaiter
from redbatch.stores.redis.wire import (
    AsyncClients,
    HeldConnection,
    command,
    entry_frame,
    frame,
    framed,
)
from redbatch.types import ClaimedBatch, Entry, Lease, QueueCounters, QueueSpec

log = logging.getLogger("redbatch.store.redis")

_OTHER_RULES, _NO_RULES = -1, -2  # append.lua's refusals
_MIN_CALL_TTL_MS = 60_000
_RULES_ROUNDS = 3  # a cluster partition found under other rules is sent again this often
_SPARE_IDS = 2  # batch ids claim.lua may use on corrupt batches it buries, beyond its limit
# The stats hash's fields are the engine's counter names; versions before wrote 'buffered'
# and 'last_flush'. Data they left must still count, so counters() reads both: a count
# under both names is their sum (a claim made since subtracts from the new name what the
# old one added), a time the later of the two.
_LEGACY_COUNTS = {"buffered": engine.Counter.BUFFERED_ITEMS.value}
_LAST_FLUSH_FIELDS = ("last_flush_at", "last_flush")


class RedisStore(Jobs, Rules, DeadLetters):
    """Batching state in Redis (standalone; Sentinel and Cluster come later).

    ``url``: ``redis://`` or ``rediss://`` (TLS); ``self.url`` is it with the password masked.
    ``prefix``: the start of every key and wake-up channel, so that applications can share
    a Redis. ``partitions``: how many partitions (hash tags) each batcher's keys are spread
    over, a key's chosen by crc32. ``connect_timeout``, ``socket_timeout``: seconds to
    connect, and to wait for any one reply (client.py). ``client``: a redis-py client to use
    instead of one built from ``url``, with whatever timeouts it has; ``async_client``: what
    makes its asyncio twin, one per event loop, for ``append_async`` and a worker's claims
    and acknowledgements (``LoopCalls``; without it, a given client's ``append_async`` runs
    ``append`` on a thread, and workers make those calls on threads). ``replicas``: how many replicas
    must confirm every write (WAIT, in the same round trip as the script) before it
    returns, else NotReplicated; ``replicas_timeout``: seconds that WAIT waits at most
    (under ``socket_timeout``). Not on Redis Cluster (ConfigError).
    """

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
        async_client: Callable[[], redis.asyncio.Redis] | None = None,
        replicas: int = 0,
        replicas_timeout: float = 1.0,
    ) -> None:
        self.url = mask_url(url)
        self.prefix = prefix
        self.partitions = partitions
        self.client = client or new_client(url, connect_timeout, socket_timeout)
        self.cluster = isinstance(self.client, RedisCluster)
        self.replicas, self.replicas_timeout_ms = replicas, round(replicas_timeout * 1000)
        if replicas and self.cluster:
            raise ConfigError(
                f"replicas={replicas} is not offered on Redis Cluster ({self.url}): a cluster's"
                " failover is its own, and its masters share no WAIT; use redis:// or redis+sentinel://"
            )
        if replicas < 0 or (replicas and not 0 < replicas_timeout < socket_timeout):
            raise ConfigError(
                f"replicas must be 0 or more and replicas_timeout over 0 and under socket_timeout"
                f" ({socket_timeout:g}s), not replicas={replicas}, replicas_timeout={replicas_timeout:g}"
            )
        # An append's call id (Cluster) must outlive the call and its one resend.
        self._call_ttl_ms = max(_MIN_CALL_TTL_MS, round(2000 * (connect_timeout + socket_timeout)))
        if async_client is None and client is None:
            async_client = functools.partial(new_async_client, url, connect_timeout, socket_timeout)
        self._async_clients = None if async_client is None else AsyncClients(async_client)
        self._scripts = load_scripts(self.client)
        self._parts = {}
        self._appends = HeldConnection(self.client)
        self._heads: dict[str, tuple[QueueSpec, list[str], list[bytes], list[bytes]]] = {}
        self._claim_heads: dict[str, tuple[QueueSpec, Partition, list[bytes], list[bytes]]] = {}

    # ------------------------------------------------------------------ producing

    @unavailable
    def ping(self) -> None:
        self.client.ping()

    @unavailable
    def append(self, spec: QueueSpec, entries: Sequence[Entry], now_ms: int) -> None:
        if self.cluster:
            by_part: dict[Partition, dict[str, list[Entry]]] = defaultdict(dict)
            for entry in entries:
                keyed = by_part[self._partition_of(spec.name, entry.key)]
                group = keyed.get(entry.key)
                if group is None:
                    keyed[entry.key] = [entry]
                else:
                    group.append(entry)
            self._append_each(spec, by_part, now_ms)
            return
        packed = self._append_command(spec, entries, now_ms)
        result = self._send_append(packed)
        if result == _NO_RULES:  # the batcher's first append: record its rules, then retry
            self._write_rules("record", spec, now_ms)
            result = self._send_append(packed)
        if result < 0:
            raise RulesChanged(spec.name)

    def _append_each(
        self, spec: QueueSpec, by_part: dict[Partition, dict[str, list[Entry]]], now_ms: int
    ) -> None:
        """Append on a cluster: one call per partition, all sent at once (one round trip per
        master), all with one call id (see append.lua) so that a resend never adds twice.

        Each partition is all or none. A partition answering on a dropped connection is sent
        once more; one with no rules yet gets them recorded and is sent again. When some
        partitions hold other rules (a worker is publishing new ones, partition by
        partition): if nothing was stored, RulesChanged, as on one Redis; else those are
        sent again under the rules they hold, so the call still ends whole. Any other
        failure after something was stored is PartlyStored.
        """
        call = new_batch_id()
        pipe = self._pipeline()
        for part, keyed in by_part.items():
            keys, args = self._append_call(spec, {part: keyed}, now_ms, call)
            self._queue_script(pipe, "append", keys, args)
        replies = dict(zip(by_part, self._execute(pipe, raise_on_error=False), strict=True))
        stored: set[Partition] = set()
        refused: list[Partition] = []
        failed: dict[Partition, BaseException] = {}
        for part, reply in replies.items():
            # Sent again: a script Redis lost (NoScriptError), or a dropped connection.
            resend = isinstance(reply, redis.exceptions.NoScriptError) or type(reply) is redis.ConnectionError
            if isinstance(reply, BaseException) and not resend:
                failed[part] = reply
                continue
            try:
                result = self._append_part(spec, part, by_part[part], now_ms, call, reply)
            except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                failed[part] = exc
                continue
            (stored.add if result >= 0 else refused.append)(part)
        if refused and not stored and not failed:
            raise RulesChanged(spec.name)  # nothing stored: the batcher adopts the rules, retries
        for part in refused:
            try:
                self._append_as_recorded(spec, part, by_part[part], now_ms, call)
                stored.add(part)
            except (redis.RedisError, redis.exceptions.RedisClusterException, RulesChanged) as exc:
                failed[part] = exc
        if failed:
            self._append_failed(spec, by_part, stored, failed)

    def _append_part(
        self,
        spec: QueueSpec,
        part: Partition,
        keyed: dict[str, list[Entry]],
        now_ms: int,
        call: str,
        reply: Any = None,
    ) -> int:
        """One partition's append (its pipelined ``reply``, when there is one to read):
        added count, or _OTHER_RULES. Records the rules first when the batcher has none."""
        keys, args = self._append_call(spec, {part: keyed}, now_ms, call)
        result = reply
        if reply is None or isinstance(reply, BaseException):
            result = self._eval("append", keys, args)
        if int(result) == _NO_RULES:
            self._write_rules("record", spec, now_ms)
            result = self._eval("append", keys, args)
        return int(result)

    def _append_as_recorded(
        self, spec: QueueSpec, part: Partition, keyed: dict[str, list[Entry]], now_ms: int, call: str
    ) -> None:
        """Append one partition's entries under the rules it holds (its digests made again
        when those dedupe and these did not, or the other way)."""
        for _ in range(_RULES_ROUNDS):
            recorded = QueueSpec.from_record(spec.name, record(self.client.hgetall(part.rules)))
            if recorded.dedupe != spec.dedupe:
                keyed = {
                    key: [e._replace(digest=item_digest(orjson.loads(e.payload)) if recorded.dedupe else "")
                          for e in group]
                    for key, group in keyed.items()
                }  # fmt: skip
            spec = recorded
            if self._append_part(spec, part, keyed, now_ms, call) >= 0:
                return
        raise RulesChanged(spec.name)

    @staticmethod
    def _append_failed(
        spec: QueueSpec,
        by_part: dict[Partition, dict[str, list[Entry]]],
        stored: set[Partition],
        failed: dict[Partition, BaseException],
    ) -> None:
        """Raise for a cluster append with failed partitions: their error when nothing was
        stored, else PartlyStored naming the keys stored."""
        first = next(iter(failed.values()))
        error = translated(first) or first
        if isinstance(first, RulesChanged):
            error = RedbatchError(f"batcher {spec.name!r}: its rules kept changing under this add")
        if not stored:
            raise error from first
        stored_keys = [key for part in stored for key in by_part[part]]
        failed_keys = [key for part in failed for key in by_part[part]]
        raise PartlyStored(
            f"{len(stored_keys)} of {len(stored_keys) + len(failed_keys)} keys of this add were stored,"
            f" in {len(stored)} of {len(by_part)} partitions of batcher {spec.name!r}; the others"
            f" failed: {error}",
            stored_keys,
            failed_keys,
        ) from first

    def _append_call(
        self, spec: QueueSpec, by_part: dict[Partition, dict[str, list[Entry]]], now_ms: int, call: str
    ) -> tuple[list[str], list[Any]]:
        """append.lua's keys and arguments for these partitions' entries."""
        keys: list[str] = []
        args: list[Any] = [
            now_ms, *self._rule_args(spec), int(spec.dedupe), self._channel(spec.name), spec.version,
            call, self._call_ttl_ms,
        ]  # fmt: skip
        stamp = b"%d:" % now_ms  # entries are "arrived_ms:digest:json", readable with redis-cli
        for part, keyed in by_part.items():
            keys += (part.due, part.age, part.stats, part.rules)
            args += (part.base, len(keyed))
            for key, group in keyed.items():
                args += (key, len(group))
                args += [b"%s%s:%s" % (stamp, e.digest.encode(), e.payload) for e in group]
        return keys, args

    @unavailable_async
    async def append_async(self, spec: QueueSpec, entries: Sequence[Entry], now_ms: int) -> None:
        """``append`` on this event loop's asyncio client: the same script and command."""
        if self._async_clients is None:  # a client given without an asyncio one
            await asyncio.to_thread(self.append, spec, entries, now_ms)
            return
        client = await self._async_clients.get()
        packed = self._append_command(spec, entries, now_ms)
        result = await self._send_append_async(client, packed)
        if result == _NO_RULES:  # rare: a thread rather than a second copy of the rules code
            await asyncio.to_thread(self._write_rules, "record", spec, now_ms)
            result = await self._send_append_async(client, packed)
        if result < 0:
            raise RulesChanged(spec.name)

    def _append_command(self, spec: QueueSpec, entries: Sequence[Entry], now_ms: int) -> bytes:
        """append.lua's EVALSHA, framed (see wire.py): one script over every partition the
        entries fall in, so all or none in one round trip. Each entry is framed as it is
        grouped under its key, in one pass: without dedupe as three chunks (its RESP header
        and prefix, shared by every entry of its length, its payload, CRLF) that the final
        join copies once, rather than formatted into a bytes of its own."""
        stamp = b"%d:" % now_ms  # entries are "arrived_ms:digest:json", readable with redis-cli
        by_key: dict[str, list[bytes]] = {}
        chunks = 1  # per entry
        if spec.dedupe:
            for key, payload, digest in entries:
                framed_entry = entry_frame(b"%b%b:" % (stamp, digest.encode()), payload)
                group = by_key.get(key)
                if group is None:
                    by_key[key] = [framed_entry]
                else:
                    group.append(framed_entry)
        else:
            chunks = 3
            plain = stamp + b":"  # every digest is empty
            heads: dict[int, bytes] = {}
            for key, payload, _ in entries:
                size = len(payload)
                header = heads.get(size)
                if header is None:
                    header = heads[size] = b"$%d\r\n%b" % (len(plain) + size, plain)
                group = by_key.get(key)
                if group is None:
                    by_key[key] = [header, payload, b"\r\n"]
                else:
                    group += (header, payload, b"\r\n")
        parts = self._partitions(spec.name)
        by_part: dict[Partition, dict[str, list[bytes]]]
        if len(parts) == 1:
            by_part = {parts[0]: by_key}
        else:
            by_part = defaultdict(dict)
            for key, group in by_key.items():
                by_part[self._partition_of(spec.name, key)][key] = group
        keys: list[str] = []
        body: list[bytes] = []
        for part, keyed in by_part.items():
            keys += (part.due, part.age, part.stats, part.rules)
            body += (frame(part.base), frame(len(keyed)))
            for key, group in keyed.items():
                body += (frame(key), frame(len(group) // chunks))
                body += group
        before, after = self._append_head(spec, keys)
        count = len(before) + 1 + len(after) + len(body) - (chunks - 1) * len(entries)
        return command(count, [*before, frame(now_ms), *after, *body])

    def _append_head(self, spec: QueueSpec, keys: list[str]) -> tuple[list[bytes], list[bytes]]:
        """append.lua's EVALSHA up to its keys, and its arguments after the arrival time,
        framed; kept per batcher for the last spec and keys asked for (all of its partitions'
        or its only one), as they change only with the rules: some 15 frames less per call."""
        cached = self._heads.get(spec.name)
        if cached is not None and cached[0] is spec and cached[1] == keys:
            return cached[2], cached[3]
        before = framed(["EVALSHA", self._scripts["append"].sha, len(keys), *keys])
        after = framed([
            *self._rule_args(spec), int(spec.dedupe), self._channel(spec.name), spec.version,
            "", self._call_ttl_ms,  # no call id: one script, all or none, is never sent twice
        ])  # fmt: skip
        self._heads[spec.name] = (spec, keys, before, after)
        return before, after

    def _send_append(self, packed: bytes) -> int:
        try:
            return int(self._replied(self._appends.send(packed, *self._waits())))
        except redis.exceptions.NoScriptError:  # Redis lost it (a restart, SCRIPT FLUSH)
            self.client.script_load(self._scripts["append"].script)
            return int(self._replied(self._appends.send(packed, *self._waits())))

    async def _send_append_async(self, client: redis.asyncio.Redis, packed: bytes) -> int:
        return int(await self._script_async(client, "append", packed, *self._waits()))

    # ------------------------------------------------------------------ claiming

    @unavailable
    def claim_due(self, spec: QueueSpec, now_ms: int, limit: int) -> list[ClaimedBatch]:
        """Lease up to ``limit`` due batches, earliest deadline first across the batcher's
        partitions: their due heads are read first, and each partition holding some of
        the ``limit`` earliest claims that many, so no partition waits behind another."""
        parts = self._partitions(spec.name)
        if limit <= 0:
            return []
        if len(parts) == 1:
            rows = self._eval("claim", *self._claim_call(spec, parts[0], now_ms, limit))
            return self._claimed(spec, now_ms, [rows])
        pipe = self._pipeline()
        for part in parts:
            pipe.zrangebyscore(part.due, "-inf", now_ms, start=0, num=limit, withscores=True)
        heads = _earliest(limit, self._execute(pipe))
        shares = _shares(parts, heads)
        pipe = self._pipeline()
        for part, share in shares.items():
            self._queue_script(pipe, "claim", *self._claim_call(spec, part, now_ms, share))
        replies, lost, failure = _sorted_replies(shares, self._execute(pipe, raise_on_error=False))
        replies += [self._eval("claim", *self._claim_call(spec, part, now_ms, n)) for part, n in lost]
        return self._handed_out(spec, self._claimed(spec, now_ms, replies), heads, failure)

    def calls_on_loop(self) -> bool:
        """``LoopCalls``: with an asyncio client, on one server or Sentinel, and without
        ``replicas`` (whose WAIT the loop's calls do not send)."""
        return self._async_clients is not None and not self.cluster and not self.replicas

    @unavailable_async
    async def claim_due_async(self, spec: QueueSpec, now_ms: int, limit: int) -> list[ClaimedBatch]:
        """``claim_due`` on this event loop's asyncio client (``calls_on_loop``)."""
        parts = self._partitions(spec.name)
        if limit <= 0:
            return []
        client = await self._loop_client()
        if len(parts) == 1:
            rows = await self._script_async(
                client, "claim", self._claim_command(spec, parts[0], now_ms, limit)
            )
            return await self._claimed_async(spec, now_ms, [rows])
        pipe = client.pipeline(transaction=False)
        for part in parts:
            pipe.zrangebyscore(part.due, "-inf", now_ms, start=0, num=limit, withscores=True)
        heads = _earliest(limit, await pipe.execute())
        shares = _shares(parts, heads)
        pipe = client.pipeline(transaction=False)
        for part, share in shares.items():
            keys, args = self._claim_call(spec, part, now_ms, share)
            pipe.execute_command("EVALSHA", self._scripts["claim"].sha, len(keys), *keys, *args)
        replies, lost, failure = _sorted_replies(shares, await pipe.execute(raise_on_error=False))
        for part, n in lost:
            replies.append(await self._eval_async(client, "claim", *self._claim_call(spec, part, now_ms, n)))
        return self._handed_out(spec, await self._claimed_async(spec, now_ms, replies), heads, failure)

    def _handed_out(
        self, spec: QueueSpec, claimed: list[ClaimedBatch], heads: list[tuple[float, bytes, int]],
        failure: Exception | None,
    ) -> list[ClaimedBatch]:  # fmt: skip
        """The batches of a claim over partitions in deadline order; a partition that failed
        fails the claim only when nothing was leased (what was, is handed out, not stranded:
        the next claim meets the failure again)."""
        if failure is not None:
            if not claimed:
                raise failure
            log.error("claiming from a partition of %s failed: %s", spec.name, failure)
        rank = {key.decode(): n for n, (_, key, _) in enumerate(heads)}
        claimed.sort(key=lambda c: rank.get(c.lease.key, len(rank)))
        return claimed

    def _claim_call(
        self, spec: QueueSpec, part: Partition, now_ms: int, want: int
    ) -> tuple[list[str], list[Any]]:
        """The keys and arguments of claim.lua for ``want`` batches of one partition."""
        args = [part.base, now_ms, want, *self._claim_rules(spec), *new_batch_ids(want + _SPARE_IDS)]
        return _claim_keys(part), args

    def _claim_rules(self, spec: QueueSpec) -> list[Any]:
        """claim.lua's arguments after the number of batches wanted, up to the batch ids."""
        return [
            spec.lease_ms,
            *self._rule_args(spec),
            spec.max_attempts,
            int(spec.dedupe),
            LEASE_EXPIRED_ERROR,
            self._channel(spec.name),
            "1" if is_jobs(spec.name) else "0",  # a job queue's records move too (jobs.py)
        ]

    def _claim_command(self, spec: QueueSpec, part: Partition, now_ms: int, want: int) -> bytes:
        """``_claim_call``'s EVALSHA, framed (see wire.py): its parts that change only with the
        rules are framed once per batcher, rather than encoded by redis-py argument by
        argument with each claim (some 50 arguments, most of them the batch ids: 12% of a
        busy worker's time on the loop, serving jobs)."""
        cached = self._claim_heads.get(spec.name)
        if cached is None or cached[0] is not spec or cached[1] is not part:
            keys = _claim_keys(part)
            head = framed(["EVALSHA", self._scripts["claim"].sha, len(keys), *keys, part.base])
            cached = self._claim_heads[spec.name] = (spec, part, head, framed(self._claim_rules(spec)))
        head, rules = cached[2], cached[3]
        ids = framed(new_batch_ids(want + _SPARE_IDS))
        return command(
            len(head) + 2 + len(rules) + len(ids), [*head, frame(now_ms), frame(want), *rules, *ids]
        )

    def _claimed(self, spec: QueueSpec, now_ms: int, replies: list[Any]) -> list[ClaimedBatch]:
        """claim.lua's replies as batches."""
        claimed, corrupt = _parse_claimed(replies)
        for lease in corrupt:  # claim.lua buries these: this is a safety net
            self.fail(spec, lease, now_ms, _UNFRAMED, None)
        return claimed

    async def _claimed_async(self, spec: QueueSpec, now_ms: int, replies: list[Any]) -> list[ClaimedBatch]:
        claimed, corrupt = _parse_claimed(replies)
        for lease in corrupt:  # never seen: a thread rather than an asyncio twin of ``fail``
            await asyncio.to_thread(self.fail, spec, lease, now_ms, _UNFRAMED, None)
        return claimed

    @unavailable
    def next_due_ms(self, spec: QueueSpec) -> int | None:
        pipe = self._pipeline()
        for part in self._partitions(spec.name):
            pipe.zrange(part.due, 0, 0, withscores=True)
        heads = [int(rows[0][1]) for rows in self._execute(pipe) if rows]
        return min(heads) if heads else None

    @unavailable
    def due_deadlines(self, spec: QueueSpec, now_ms: int, limit: int) -> list[int]:
        if limit <= 0:
            return []
        pipe = self._pipeline()
        for part in self._partitions(spec.name):
            pipe.zrangebyscore(part.due, "-inf", now_ms, start=0, num=limit, withscores=True)
        return sorted(int(score) for rows in self._execute(pipe) for _, score in rows)[:limit]

    # ------------------------------------------------------------------ lease holders

    def _per_partition(
        self,
        spec: QueueSpec,
        leases: Sequence[Lease],
        script: str,
        keys_of: Callable[[Partition], list[str]],
        head_of: Callable[[Partition], list[Any]],
    ) -> list[bool]:
        """Run a lease script once per partition, with (key, batch id, token) triples after
        its head arguments; return whether each lease was held, in the order given."""
        held = [False] * len(leases)
        for indexes, keys, args in self._lease_calls(spec, leases, keys_of, head_of):
            for index, ok in zip(indexes, self._eval(script, keys=keys, args=args), strict=True):
                held[index] = bool(ok)
        return held

    def _lease_calls(
        self,
        spec: QueueSpec,
        leases: Sequence[Lease],
        keys_of: Callable[[Partition], list[str]],
        head_of: Callable[[Partition], list[Any]],
    ) -> list[tuple[list[int], list[str], list[Any]]]:
        """Per partition: the indexes of its leases, and the keys and arguments of its call."""
        by_part: dict[Partition, list[int]] = defaultdict(list)
        for index, lease in enumerate(leases):
            by_part[self._partition_of(spec.name, lease.key)].append(index)
        calls = []
        for part, indexes in by_part.items():
            args = head_of(part)
            for index in indexes:
                lease = leases[index]
                args += (lease.key, lease.batch_id, lease.fencing_token)
            calls.append((indexes, keys_of(part), args))
        return calls

    @unavailable
    def heartbeat(self, spec: QueueSpec, leases: Sequence[Lease], lease_until_ms: int) -> list[bool]:
        return self._per_partition(
            spec, leases, "heartbeat", lambda p: [p.due], lambda p: [p.base, lease_until_ms]
        )

    @unavailable
    def ack(self, spec: QueueSpec, leases: Sequence[Lease], now_ms: int) -> list[bool]:
        return self._per_partition(spec, leases, "ack", *self._ack_parts(spec, now_ms))

    @unavailable_async
    async def ack_async(self, spec: QueueSpec, leases: Sequence[Lease], now_ms: int) -> list[bool]:
        """``ack`` on this event loop's asyncio client (``calls_on_loop``)."""
        client = await self._loop_client()
        held = [False] * len(leases)
        for indexes, keys, args in self._lease_calls(spec, leases, *self._ack_parts(spec, now_ms)):
            for index, ok in zip(indexes, await self._eval_async(client, "ack", keys, args), strict=True):
                held[index] = bool(ok)
        return held

    def _ack_parts(
        self, spec: QueueSpec, now_ms: int
    ) -> tuple[Callable[[Partition], list[str]], Callable[[Partition], list[Any]]]:
        return (
            lambda p: [p.due, p.stats],
            lambda p: [p.base, now_ms, *self._rule_args(spec), self._channel(spec.name)],
        )

    def _settle_args(self, spec: QueueSpec, part: Partition, lease: Lease, now_ms: int) -> list[Any]:
        return [
            part.base,
            now_ms,
            *self._rule_args(spec),
            self._channel(spec.name),
            lease.key,
            lease.batch_id,
            lease.fencing_token,
        ]

    @unavailable
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
        args.append("1" if is_jobs(spec.name) else "0")  # a job queue's records move too (jobs.py)
        return bool(self._eval("fail", keys=[part.due, part.stats, part.dead], args=args))

    # ------------------------------------------------------------------ operators

    @unavailable
    def clear(self, spec: QueueSpec, key: str) -> int:
        part = self._partition_of(spec.name, key)
        return int(self._eval("clear", keys=[part.due, part.age, part.stats], args=[part.base, key]))

    @unavailable
    def flush(self, spec: QueueSpec, key: str | None, now_ms: int) -> int:
        parts = self._partitions(spec.name) if key is None else [self._partition_of(spec.name, key)]
        made = 0
        for part in parts:
            args = [part.base, now_ms, self._channel(spec.name), key or ""]
            made += int(self._eval("flush", keys=[part.due], args=args))
        return made

    @unavailable
    def peek(self, spec: QueueSpec, key: str, limit: int) -> list[tuple[int | None, bytes]]:
        part = self._partition_of(spec.name, key)
        return [read_entry(e) for e in self.client.lrange(f"{part.base}i:{key}", 0, limit - 1)]

    @unavailable
    def counters(self, spec: QueueSpec) -> QueueCounters:
        pipe = self._pipeline()
        parts = self._partitions(spec.name)
        for part in parts:
            pipe.hgetall(part.stats)
            pipe.zcard(part.due)
            pipe.zrange(part.age, 0, 0, withscores=True)
            pipe.zcard(part.dead)
        replies = self._execute(pipe)
        totals: dict[str, int] = defaultdict(int)
        open_keys = dead = 0
        oldest: int | None = None
        last_flush: int | None = None
        for i in range(len(parts)):
            stats, due_count, age_head, dead_count = replies[4 * i : 4 * i + 4]
            for field, value in stats.items():
                name = field.decode()
                if name in _LAST_FLUSH_FIELDS:
                    last_flush = max(last_flush or 0, int(value))
                else:
                    totals[_LEGACY_COUNTS.get(name, name)] += int(value)
            open_keys += due_count
            dead += dead_count
            if age_head:
                first = int(age_head[0][1])
                oldest = first if oldest is None else min(oldest, first)
        return QueueCounters(
            open_keys=open_keys,
            buffered_items=totals[engine.Counter.BUFFERED_ITEMS],
            oldest_arrival=oldest,
            in_flight=totals["in_flight"],
            retrying=totals["retrying"],
            dead=dead,
            flushed_batches=totals[engine.Counter.FLUSHED_BATCHES],
            flushed_items=totals[engine.Counter.FLUSHED_ITEMS],
            last_flush_at=last_flush,
        )

    @unavailable
    def oldest_keys(self, spec: QueueSpec, limit: int) -> list[tuple[str, int, int]]:
        # The head of each partition's age zset (score: a key's first pending arrival), merged.
        heads: list[tuple[int, str, Partition]] = []
        for part in self._partitions(spec.name):
            for member, score in self.client.zrange(part.age, 0, limit - 1, withscores=True):
                heads.append((int(score), member.decode(), part))
        oldest = heapq.nsmallest(limit, heads, key=lambda head: (head[0], head[1]))
        pipe = self.client.pipeline(transaction=False)
        for _, key, part in oldest:
            pipe.llen(f"{part.base}i:{key}")
        return [(key, first, count) for (first, key, _), count in zip(oldest, pipe.execute(), strict=True)]

    def waiter(self, names: Sequence[str]) -> Waiter:
        return RedisWaiter(self.client, [self._channel(n) for n in names])

    def close(self) -> None:
        self._appends.close()
        self.client.close()
        if self._async_clients is not None:
            self._async_clients.close()


_UNFRAMED = "corrupt data: an entry is not framed as arrived_ms:digest:json"


def _claim_keys(part: Partition) -> list[str]:
    """claim.lua's keys for one partition."""
    return [part.due, part.age, part.stats, part.dead, part.seq]


def _parse_claimed(replies: list[Any]) -> tuple[list[ClaimedBatch], list[Lease]]:
    """claim.lua's replies as batches, and the leases of any holding an unframed entry."""
    claimed, corrupt = [], []
    for rows in replies:
        for key, batch_id, attempt, token, created, raw in rows:
            lease = Lease(key.decode(), batch_id.decode(), int(token))
            entries = [read_entry(e) for e in raw]
            arrivals = tuple(a for a, _ in entries if a is not None)
            if len(arrivals) < len(entries):
                corrupt.append(lease)
                continue
            payloads = tuple(p for _, p in entries)
            claimed.append(ClaimedBatch(lease, int(attempt), int(created), payloads, arrivals))
    return claimed, corrupt


def _earliest(limit: int, rows_per_part: list[Any]) -> list[tuple[float, bytes, int]]:
    """The ``limit`` earliest due (deadline, key, partition index) across the partitions."""
    return heapq.nsmallest(
        limit, ((score, key, i) for i, rows in enumerate(rows_per_part) for key, score in rows)
    )


def _shares(parts: list[Partition], heads: list[tuple[float, bytes, int]]) -> dict[Partition, int]:
    """How many batches each partition holding some of ``heads`` is to lease."""
    return {parts[i]: n for i, n in Counter(i for *_, i in heads).items()}


def _sorted_replies(
    shares: dict[Partition, int], replies: list[Any]
) -> tuple[list[Any], list[tuple[Partition, int]], Exception | None]:
    """A pipeline of claim.lua calls' replies: the claims, the calls Redis had lost the
    script for (SCRIPT FLUSH, a restart: to send again), and a failure, if any."""
    claims, lost, failure = [], [], None
    for (part, share), reply in zip(shares.items(), replies, strict=True):
        if isinstance(reply, redis.exceptions.NoScriptError):
            lost.append((part, share))
        elif isinstance(reply, Exception):
            failure = reply
        else:
            claims.append(reply)
    return claims, lost, failure
