"""Figure 2: ``add_many`` throughput: calls of 1,000 items spread over 100 keys, against the
raw ceilings: on Redis one multi-value RPUSH per key, all keys pipelined in one round trip; on
SQLite one bare executemany of the store's rows in one transaction."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from benchmarks.baselines.raw_redis import redis_benchmark, redis_benchmark_available
from benchmarks.baselines.raw_sqlite import RawExecutemany
from benchmarks.context import Context
from benchmarks.items import encode, keyed_items
from benchmarks.results import Measurement
from benchmarks.subjects import (
    CELERY,
    LIST_LOCK,
    PER_ITEM,
    RAW,
    RAW_SQLITE,
    REDBATCH_SQLITE,
    REDIS_BENCHMARK,
    AdderSpec,
    make_adder,
)

FIGURE = "2. add_many"
CASE = "bulk calls, 1 connection"

Calls = list[Sequence[tuple[str, Any]]]


def _calls(ctx: Context, *, pre_encoded: bool) -> Calls:
    s = ctx.sizes
    calls: Calls = []
    for c in range(s.add_many_calls):
        pairs = keyed_items(c * s.add_many_batch, s.add_many_batch, s.payload_bytes, s.add_many_keys)
        calls.append([(k, encode(v)) for k, v in pairs] if pre_encoded else pairs)
    return calls


def _time_calls(add_many: Callable[[Sequence[tuple[str, Any]]], Any], calls: Calls) -> float:
    add_many(calls[0][:10])  # warm-up: connection and script cache
    started = time.perf_counter()
    for pairs in calls:
        add_many(pairs)
    elapsed = time.perf_counter() - started
    return sum(len(p) for p in calls) / elapsed


def run(ctx: Context) -> list[Measurement]:
    s = ctx.sizes
    shape = f"{s.add_many_calls} calls of {s.add_many_batch:,} items over {s.add_many_keys} keys"
    out: list[Measurement] = []
    subjects = [(t.subject, t) for t in ctx.stores] + [(RAW, None)]
    for subject, target in subjects:
        ctx.log(f"{FIGURE}: {subject}")
        note = shape if target else f"{shape}; pipelined RPUSH per key, pre-encoded"
        m = Measurement(FIGURE, CASE, subject, "items/s", note=note)
        calls = _calls(ctx, pre_encoded=target is None)
        for _ in range(s.runs):
            ctx.reset()
            store_url = target.fresh() if target else ""
            adder: Any = make_adder(AdderSpec(subject, ctx.data_url, store_url=store_url, max_wait=60.0))
            try:
                m.runs.append(_time_calls(adder.add_many, calls))
            finally:
                adder.close()
        out.append(m)
    for subject in (PER_ITEM, LIST_LOCK, CELERY):
        out.append(Measurement(FIGURE, CASE, subject, "items/s", skipped="no bulk add in this pattern"))
    if any(t.subject == REDBATCH_SQLITE for t in ctx.stores):
        out.append(_raw_sqlite(ctx, shape))
    out.append(_redis_benchmark(ctx))
    return out


def _raw_sqlite(ctx: Context, shape: str) -> Measurement:
    ctx.log(f"{FIGURE}: {RAW_SQLITE}")
    note = f"{shape}; one executemany of the store's pending rows per call, pre-encoded, synchronous=FULL"
    m = Measurement(FIGURE, CASE, RAW_SQLITE, "items/s", note=note)
    calls = _calls(ctx, pre_encoded=True)
    for run in range(ctx.sizes.runs):
        raw = RawExecutemany(str(ctx.workdir / f"raw-executemany-{run}.db"))
        try:
            m.runs.append(_time_calls(raw.add_many, calls))
        finally:
            raw.close()
    return m


def _redis_benchmark(ctx: Context) -> Measurement:
    s = ctx.sizes
    m = Measurement(FIGURE, CASE, REDIS_BENCHMARK, "items/s")
    if not redis_benchmark_available():
        m.skipped = "redis-benchmark not installed"
        return m
    ctx.log(f"{FIGURE}: redis-benchmark -c 1 -P 100")
    for _ in range(s.runs):
        ctx.reset()
        rates = redis_benchmark(
            ctx.server.port, tests="rpush", requests=s.redis_benchmark_requests * 5,
            clients=1, pipeline=100, data_size=s.payload_bytes,
        )  # fmt: skip
        m.runs.append(rates.get("rpush", 0.0))
    m.note = f"RPUSH -c 1 -P 100 -d {s.payload_bytes}: one value per command, 100 commands per round trip"
    return m
