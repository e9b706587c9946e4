"""Figure 1: ``add`` throughput, one item per call, from one producer on one connection and
from several producer processes."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from benchmarks.baselines.raw_redis import redis_benchmark, redis_benchmark_available
from benchmarks.context import Context
from benchmarks.figures.common import produce
from benchmarks.results import Measurement
from benchmarks.subjects import CELERY, LIST_LOCK, PER_ITEM, RAW, REDIS_BENCHMARK, AdderSpec, StoreTarget

FIGURE = "1. add"


def _repeat(
    ctx: Context, make_spec: Callable[[], AdderSpec], processes: int, total: int, keys: int
) -> list[float]:
    """``runs`` measurements, each on an emptied server with a freshly made spec."""
    runs = []
    for _ in range(ctx.sizes.runs):
        ctx.reset()
        runs.append(produce(ctx, make_spec(), processes=processes, total=total, keys=keys))
    return runs


def _case(processes: int) -> str:
    return "1 producer, 1 connection" if processes == 1 else f"{processes} producer processes"


def run(ctx: Context) -> list[Measurement]:
    s = ctx.sizes
    out: list[Measurement] = []
    keys = s.add_keys
    for processes in (1, s.add_producers):
        case = _case(processes)
        for target in ctx.stores:
            m = Measurement(
                FIGURE, case, target.subject, "items/s", note=f"{s.add_items:,} items over {keys:,} keys"
            )
            if processes > 1 and not target.shared:
                m.skipped = "store is per-process"
            else:
                ctx.log(f"{FIGURE}: {target.subject}, {case}")
                make = partial(_redbatch_spec, ctx, target)
                m.runs = _repeat(ctx, make, processes, s.add_items, keys)
            out.append(m)

        baselines = [
            (AdderSpec(PER_ITEM, ctx.data_url, flush_when_full=True), s.add_items, "LPUSH+SET+SADD"),
            (AdderSpec(LIST_LOCK, ctx.data_url), s.add_items, "RPUSH+SET NX"),
            (AdderSpec(CELERY, ctx.data_url), s.celery_add_items, "task.delay(); no worker"),
            (AdderSpec(RAW, ctx.data_url), s.add_items, "1 RPUSH per item, pre-encoded"),
        ]
        for spec, count, how in baselines:
            ctx.log(f"{FIGURE}: {spec.subject}, {case}")
            note = f"{how}; {count:,} items over {keys:,} keys"
            m = Measurement(FIGURE, case, spec.subject, "items/s", note=note)
            m.runs = _repeat(ctx, partial(lambda spec: spec, spec), processes, count, keys)
            out.append(m)

        out.append(_redis_benchmark(ctx, case, clients=processes))
    return out


def _redbatch_spec(ctx: Context, target: StoreTarget) -> AdderSpec:
    return AdderSpec(target.subject, ctx.data_url, store_url=target.fresh(), max_wait=60.0)


def _redis_benchmark(ctx: Context, case: str, *, clients: int) -> Measurement:
    s = ctx.sizes
    m = Measurement(FIGURE, case, REDIS_BENCHMARK, "items/s")
    if not redis_benchmark_available():
        m.skipped = "redis-benchmark not installed"
        return m
    ctx.log(f"{FIGURE}: redis-benchmark -c {clients} -P 1")
    lpush: list[float] = []
    for _ in range(s.runs):
        ctx.reset()
        rates = redis_benchmark(
            ctx.server.port, requests=s.redis_benchmark_requests, clients=clients, data_size=s.payload_bytes
        )
        m.runs.append(rates.get("rpush", 0.0))
        lpush.append(rates.get("lpush", 0.0))
    lpush.sort()
    m.note = f"RPUSH -c {clients} -P 1 -d {s.payload_bytes} (LPUSH {lpush[len(lpush) // 2]:,.0f}/s)"
    return m
