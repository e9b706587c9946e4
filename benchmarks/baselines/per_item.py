"""Baseline "per-item round trips": the batching every team writes by hand on Redis.

Per item::

    LPUSH batch:{key} item                       -> itemCount
    SET   batch:{key}:meta {createdAt, lastItemAt, itemCount}
    SADD  batches:index key

A key is flushed when it reaches ``max_items`` (by the producer that filled it) or when a
stale-batch worker, every ``interval`` seconds, finds it older than ``max_wait`` by reading
``SMEMBERS batches:index`` and then ``GET``-ting every key's metadata. A flush is::

    LRANGE batch:{key} 0 -1 ; handle ; DEL batch:{key} ; DEL batch:{key}:meta ; SREM batches:index key

Items pushed between the LRANGE and the DEL are deleted without being handled: the race
the loss figure counts.

``createdAt`` is remembered by the producer (the first item it pushed to the key), which
spares this baseline the ``GET`` of the old metadata the original code needs, so it pays
three round trips per item, not four.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis

INDEX = "batches:index"

Handler = Callable[[str, list[Any], float], None]
"""handler(key, items oldest first, createdAt in unix seconds)."""


def list_key(key: str) -> str:
    return f"batch:{key}"


def meta_key(key: str) -> str:
    return f"batch:{key}:meta"


def _noop(key: str, items: list[Any], created_at: float) -> None:
    return None


class PerItemBatcher:
    """One producer's or flusher's view of the pattern, on its own connection."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        max_items: int = 100,
        max_wait: float = 60.0,
        handler: Handler = _noop,
        flush_when_full: bool = True,
    ) -> None:
        self.r = client
        self.max_items = max_items
        self.max_wait = max_wait
        self.handler = handler
        self.flush_when_full = flush_when_full
        self._created: dict[str, float] = {}

    # ------------------------------------------------------------------ producing

    def add(self, key: str, item: Any) -> None:
        """Three round trips, then a flush of its own when the key is full."""
        now = time.time()
        count = int(self.r.lpush(list_key(key), json.dumps(item)))
        if count == 1 or key not in self._created:
            self._created[key] = now
        meta = {"createdAt": self._created[key], "lastItemAt": now, "itemCount": count}
        self.r.set(meta_key(key), json.dumps(meta))
        self.r.sadd(INDEX, key)
        if self.flush_when_full and count >= self.max_items:
            self.flush(key)

    def load(self, pairs: Iterable[tuple[str, Any]], chunk: int = 1000) -> None:
        """Fill Redis with the same keys and values ``add`` would write, pipelined (for the
        figures that need many open keys; not a feature of the baseline)."""
        now = time.time()
        counts: dict[str, int] = {}
        pipe = self.r.pipeline(transaction=False)
        queued = 0
        for key, item in pairs:
            counts[key] = counts.get(key, 0) + 1
            meta = {"createdAt": now, "lastItemAt": now, "itemCount": counts[key]}
            pipe.lpush(list_key(key), json.dumps(item))
            pipe.set(meta_key(key), json.dumps(meta))
            pipe.sadd(INDEX, key)
            queued += 1
            if queued >= chunk:
                pipe.execute()
                queued = 0
        if queued:
            pipe.execute()

    # ------------------------------------------------------------------ flushing

    def flush(self, key: str, created_at: float | None = None) -> int:
        """LRANGE, handle, DEL, DEL, SREM: loses whatever arrives in between.

        ``created_at`` comes from the metadata the stale worker already read (or from the
        producer's memory when it flushes a full key); it is only passed to the handler.
        """
        raw = self.r.lrange(list_key(key), 0, -1)
        if raw:
            created = created_at if created_at is not None else self._created.get(key, time.time())
            self.handler(key, [json.loads(x) for x in reversed(raw)], created)
        self.r.delete(list_key(key))
        self.r.delete(meta_key(key))
        self.r.srem(INDEX, key)
        self._created.pop(key, None)
        return len(raw)

    def find_due(self, now: float, *, pipelined: bool = False) -> list[tuple[str, float]]:
        """The stale-batch worker's scan: SMEMBERS, then GET every key's metadata.

        As written, one GET per round trip; ``pipelined`` sends them 1000 at a time (the
        kindest version of this baseline, used where the figure would otherwise take
        minutes). Either way it reads every open key to find the few that are due.
        """
        keys = [k.decode() for k in self.r.smembers(INDEX)]
        due: list[tuple[str, float]] = []
        if pipelined:
            metas: list[bytes | None] = []
            for i in range(0, len(keys), 1000):
                pipe = self.r.pipeline(transaction=False)
                for key in keys[i : i + 1000]:
                    pipe.get(meta_key(key))
                metas.extend(pipe.execute())
        else:
            metas = [self.r.get(meta_key(key)) for key in keys]
        for key, raw in zip(keys, metas, strict=True):
            if raw is None:
                continue
            meta = json.loads(raw)
            if now - meta["createdAt"] >= self.max_wait or meta["itemCount"] >= self.max_items:
                due.append((key, meta["createdAt"]))
        return due

    def stale_worker(self, interval: float, stop: Callable[[], bool], deadline: float) -> int:
        """Every ``interval`` seconds, flush every due key; until ``stop()`` or ``deadline``."""
        flushed = 0
        while not stop() and time.monotonic() < deadline:
            started = time.monotonic()
            for key, created_at in self.find_due(time.time()):
                flushed += self.flush(key, created_at)
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
        return flushed

    def open_keys(self) -> int:
        return int(self.r.scard(INDEX))

    def buffered(self) -> int:
        """Items still in lists (including lists whose index entry a race deleted)."""
        total = 0
        for name in self.r.scan_iter(match="batch:*", count=1000):
            if not name.endswith(b":meta"):
                total += int(self.r.llen(name))
        return total
