"""The part of the Redis store that lists, replays and purges dead letters.

A dead letter is a record (``x:<batch id>``), its entries (``xi:<batch id>``) and an entry in
the partition's ``dead`` index, scored by its time of death. Eviction or a hand DEL can take
a record and leave its index entry behind: every path here drops such entries and logs it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import redis

from redbatch.errors import RedbatchError
from redbatch.stores.base import unknown_dead_letters
from redbatch.stores.redis.core import Partition, RedisCore, read_entry
from redbatch.stores.redis.errors import unavailable
from redbatch.types import DeadRecord, QueueSpec

log = logging.getLogger("redbatch.store.redis")

_CHUNK = 500  # letters replayed or purged per script call: Redis serves other clients between
_WATCH_ATTEMPTS = 5


class DeadLetters(RedisCore):
    """``dead_letters``, ``replay`` and ``purge_dead`` of ``RedisStore``."""

    @unavailable
    def dead_letters(self, spec: QueueSpec, limit: int, offset: int) -> list[DeadRecord]:
        parts = self._partitions(spec.name)
        ranked: list[tuple[float, str, Partition]] = []
        if len(parts) == 1:  # the page itself: O(log n + limit) at any offset
            for member, score in self.client.zrange(
                parts[0].dead, offset, offset + limit - 1, withscores=True
            ):
                ranked.append((score, member.decode(), parts[0]))
        else:  # each partition's first offset + limit, merged: deep pages cost their offset
            for part in parts:
                for member, score in self.client.zrange(part.dead, 0, offset + limit - 1, withscores=True):
                    ranked.append((score, member.decode(), part))
            ranked.sort(key=lambda row: (row[0], row[1]))
            ranked = ranked[offset : offset + limit]
        pipe = self._pipeline()
        for _, batch_id, part in ranked:
            pipe.hgetall(f"{part.base}x:{batch_id}")
            pipe.lrange(f"{part.base}xi:{batch_id}", 0, -1)
        replies = self._execute(pipe)
        records = []
        gone: dict[Partition, list[str]] = defaultdict(list)
        for i, (_, batch_id, part) in enumerate(ranked):
            meta, raw = replies[2 * i], replies[2 * i + 1]
            if not meta:  # replayed or purged meanwhile, or its record was lost
                gone[part].append(batch_id)
                continue
            entries = [read_entry(e) for e in raw]
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

    @unavailable
    def replay(self, spec: QueueSpec, batch_ids: Sequence[str] | None, now_ms: int) -> int:
        def keys(part: Partition) -> list[str]:
            return [part.due, part.age, part.stats, part.dead]

        def head(part: Partition) -> list[Any]:
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

    @unavailable
    def purge_dead(self, spec: QueueSpec, batch_ids: Sequence[str] | None, before_ms: int | None) -> int:
        def keys(part: Partition) -> list[str]:
            return [part.dead]

        def head(part: Partition) -> list[Any]:
            return [part.base]

        if batch_ids is not None:
            return self._by_ids(spec, "purge", batch_ids, keys, head)
        cutoff = "+inf" if before_ms is None else f"({before_ms}"
        return sum(self._drain("purge", p, keys(p), head(p), cutoff) for p in self._partitions(spec.name))

    def _drain(self, script: str, part: Partition, keys: list[str], head: list[Any], cutoff: str) -> int:
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
        keys_of: Callable[[Partition], list[str]],
        head_of: Callable[[Partition], list[Any]],
    ) -> int:
        """Run a dead-letter script on these ids, all or none: NotFound when one is unknown.

        A script checks its ids before it changes anything. With several partitions, each
        id's partition is looked up first, then one transaction runs a script per partition,
        its records watched: when one changes before the transaction runs, look again. On
        Redis Cluster, where masters share no transaction, the scripts run one after
        another, after a last look that every record is still there: should another client
        replay or purge one of the ids after that look, the partitions before it are done
        and NotFound names it.
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
            if self.cluster:  # no MULTI across masters: partition by partition, each all or none
                if not self._all_exist(records):
                    continue  # one went meanwhile: look again
                replies = [self._eval(script, keys_of(p), [*head_of(p), "ids", *group]) for p, group in where]
                return sum(
                    self._checked(spec, part, reply) for (part, _), reply in zip(where, replies, strict=True)
                )
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(*records)
                    if pipe.exists(*records) != len(records):
                        continue  # one went meanwhile: look again
                    pipe.multi()
                    for part, group in where:
                        args = [*head_of(part), "ids", *group]
                        self._scripts[script](keys=keys_of(part), args=args, client=pipe)
                    replies = self._transact(pipe)
                except redis.WatchError:
                    continue
            return sum(
                self._checked(spec, part, reply) for (part, _), reply in zip(where, replies, strict=True)
            )
        raise RedbatchError(f"the dead letters of {spec.name!r} kept changing under this call; try again")

    def _all_exist(self, records: list[str]) -> bool:
        pipe = self._pipeline()
        for name in records:
            pipe.exists(name)
        return all(self._execute(pipe))

    def _locate(
        self, parts: list[Partition], ids: list[str]
    ) -> tuple[list[tuple[Partition, list[str]]], list[str]]:
        """The dead letters each partition holds, and the ids no partition has."""
        pipe = self._pipeline()
        for part in parts:
            for batch_id in ids:
                pipe.exists(f"{part.base}x:{batch_id}")
        found = self._execute(pipe)
        where: list[tuple[Partition, list[str]]] = []
        for n, part in enumerate(parts):
            group = [i for k, i in enumerate(ids) if found[n * len(ids) + k]]
            if group:
                where.append((part, group))
        located = {i for _, group in where for i in group}
        return where, [i for i in ids if i not in located]

    def _checked(self, spec: QueueSpec, part: Partition, reply: list[Any]) -> int:
        """The count a dead-letter script replied; NotFound for the unknown ids it names."""
        done, _, dropped, unknown = reply
        self._dropped(part, dropped)
        if unknown:
            raise unknown_dead_letters(spec.name, [i.decode() for i in unknown])
        return int(done)

    @staticmethod
    def _dropped(part: Partition, dropped: int) -> None:
        if dropped:
            log.warning(
                "%s: dropped %d dead-letter index entries whose records were gone"
                " (evicted, or deleted by hand)",
                part.dead,
                dropped,
            )
