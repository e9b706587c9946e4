"""The part of the Redis store that records a batcher's rules in every partition.

Each partition carries its own copy of the batcher's rules (``…:rules``), since a script
touches one hash tag only; every write of them covers all partitions in one MULTI, so a
producer never finds the partitions disagreeing. On Redis Cluster the partitions sit on
several masters, which share no MULTI: the copies are written one partition after another,
and an append that meets some partitions changed and others not is handled by the store's
append (store.py, ``_append_each``).
"""

from __future__ import annotations

from typing import Any

from redbatch.stores.base import replaced_rules
from redbatch.stores.redis.core import Partition, RedisCore
from redbatch.stores.redis.errors import unavailable
from redbatch.types import RULE_FIELDS, QueueSpec

_CHUNK = 500  # keys rescheduled per script call: Redis serves other clients between calls


def record(reply: Any) -> dict[str, bytes]:
    """A hash as HGETALL answers it: a dict from redis-py, a flat list from a script."""
    if isinstance(reply, dict):
        return {field.decode(): value for field, value in reply.items()}
    return {reply[i].decode(): reply[i + 1] for i in range(0, len(reply), 2)}


class Rules(RedisCore):
    """``publish_rules`` and ``stored_rules`` of ``RedisStore``."""

    def _write_rules(self, mode: str, spec: QueueSpec, now_ms: int) -> list[tuple[dict[str, bytes], bool]]:
        """Run rules.lua on every partition of the batcher, in one MULTI when there are
        several (one at a time on a cluster), so that no append ever sees some partitions
        changed and others not.
        Returns, per partition, its record before and whether its keys need rescheduling."""
        parts = self._partitions(spec.name)
        rules = spec.rules()
        args = [mode, now_ms, spec.version, *(int(rules[name]) for name in RULE_FIELDS)]
        if len(parts) == 1 or self.cluster:
            replies = [self._eval("rules", [part.rules], args) for part in parts]
        else:
            pipe = self.client.pipeline(transaction=True)
            for part in parts:
                self._scripts["rules"](keys=[part.rules], args=args, client=pipe)
            replies = self._transact(pipe)
        return [(record(flat), bool(stale)) for flat, stale in replies]

    @unavailable
    def publish_rules(self, spec: QueueSpec, now_ms: int) -> QueueSpec | None:
        written = self._write_rules("publish", spec, now_ms)
        for part, (_, stale) in zip(self._partitions(spec.name), written, strict=True):
            if stale:
                self._reschedule(spec, part, now_ms)
        return replaced_rules(spec.name, written[0][0])

    def _reschedule(self, spec: QueueSpec, part: Partition, now_ms: int) -> None:
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

    @unavailable
    def stored_rules(self, name: str) -> QueueSpec | None:
        stored = self.client.hgetall(self._partitions(name)[0].rules)
        return QueueSpec.from_record(name, record(stored)) if stored else None
