"""Figure 6: memory per buffered item beyond its payload.

``items`` items of ``payload_bytes`` (encoded JSON) wait under keys of ``items_per_key``
each. For Redis subjects: (INFO used_memory after - before) / items - payload bytes, on an
emptied server whose scripts are already cached. For celery-batches, the messages wait in
the broker's queue (no worker running). For SQLite: growth of the database file and its
WAL per item, beyond the payload (not Redis memory, shown for completeness).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import redis

from benchmarks.baselines.list_lock import LOCK_TTL, lock_key, queue_key
from benchmarks.context import Context
from benchmarks.items import encode, keyed_items
from benchmarks.results import Measurement
from benchmarks.subjects import (
    CELERY,
    LIST_LOCK,
    PER_ITEM,
    RAW,
    REDBATCH_REDIS,
    REDBATCH_SQLITE,
    REDBATCH_SUBJECTS,
    AdderSpec,
    StoreTarget,
    make_adder,
)

FIGURE = "6. memory"
CASE = "per buffered item, beyond payload"
CHUNK = 1000


def run(ctx: Context) -> list[Measurement]:
    s = ctx.sizes
    out: list[Measurement] = []
    shape = f"{s.mem_items:,} items, {s.mem_items_per_key} per key, {s.payload_bytes} B payloads"
    for target in ctx.stores:
        if target.subject == REDBATCH_REDIS:
            ctx.log(f"{FIGURE}: {target.subject}")
            out.append(_redis_subject(ctx, target.subject, target, s.mem_items, f"{shape}; INFO used_memory"))
        elif target.subject == REDBATCH_SQLITE:
            ctx.log(f"{FIGURE}: {target.subject}")
            out.append(_sqlite(ctx, target, shape))
    for subject in (PER_ITEM, LIST_LOCK, RAW):
        ctx.log(f"{FIGURE}: {subject}")
        out.append(_redis_subject(ctx, subject, None, s.mem_items, f"{shape}; INFO used_memory"))
    ctx.log(f"{FIGURE}: {CELERY}")
    celery_shape = (
        f"{s.mem_celery_items:,} messages waiting in the broker queue, {s.payload_bytes} B payloads"
    )
    out.append(_redis_subject(ctx, CELERY, None, s.mem_celery_items, celery_shape))
    return out


def _fill(ctx: Context, subject: str, items: int, store_url: str = "") -> None:
    """Buffer ``items`` items in ``subject`` the fastest way its data structures allow."""
    s = ctx.sizes
    keys = max(1, items // s.mem_items_per_key)
    spec = AdderSpec(subject, ctx.data_url, store_url=store_url, max_items=10**6, max_wait=3600.0)
    adder: Any = make_adder(spec)
    chunks = [
        keyed_items(first, min(CHUNK, items - first), s.payload_bytes, keys)
        for first in range(0, items, CHUNK)
    ]
    try:
        if subject in REDBATCH_SUBJECTS:
            for pairs in chunks:
                adder.add_many(pairs)
        elif subject == RAW:
            for pairs in chunks:
                adder.add_many([(k, encode(v)) for k, v in pairs])
        elif subject == PER_ITEM:
            for pairs in chunks:
                adder.batcher.load(pairs)
        elif subject == LIST_LOCK:
            for pairs in chunks:
                _fill_list_lock(adder.client, pairs)
        else:
            for pairs in chunks:
                for key, item in pairs:
                    adder.add(key, item)
    finally:
        adder.close()


def _fill_list_lock(client: redis.Redis, pairs: list[tuple[str, Any]]) -> None:
    """Messages waiting while each chat's lock is held: the lists plus one lock per chat."""
    pipe = client.pipeline(transaction=False)
    for key, item in pairs:
        pipe.rpush(queue_key(key), json.dumps(item))
        pipe.set(lock_key(key), "1", nx=True, ex=LOCK_TTL)
    pipe.execute()


def _redis_subject(
    ctx: Context, subject: str, target: StoreTarget | None, items: int, note: str
) -> Measurement:
    s = ctx.sizes
    m = Measurement(FIGURE, CASE, subject, "B/item", note=note)
    url = target.fresh() if target else ""
    _fill(ctx, subject, 10, url)  # scripts cached, pools open: not counted
    ctx.reset()
    before = ctx.server.used_memory()
    _fill(ctx, subject, items, url)
    after = ctx.server.used_memory()
    m.runs = [(after - before) / items - s.payload_bytes]
    ctx.reset()
    return m


def _db_bytes(path: Path) -> int:
    return sum(os.path.getsize(p) for p in (path, Path(f"{path}-wal")) if p.exists())


def _sqlite(ctx: Context, target: StoreTarget, shape: str) -> Measurement:
    s = ctx.sizes
    m = Measurement(
        FIGURE, CASE, target.subject, "B/item", note=f"{shape}; on disk: database + WAL file growth"
    )
    url = target.fresh()
    path = Path(url.removeprefix("sqlite:///"))
    _fill(ctx, target.subject, 10, url)
    before = _db_bytes(path)
    _fill(ctx, target.subject, s.mem_items, url)
    m.runs = [(_db_bytes(path) - before) / s.mem_items - s.payload_bytes]
    return m
