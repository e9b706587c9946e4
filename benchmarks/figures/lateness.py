"""Figure 4: how late a time-triggered batch is handed over.

``keys`` keys each get one item, their arrivals spread evenly over ``spread`` seconds, with
``max_items`` out of reach so only ``max_wait`` triggers. Lateness of an item is the time
its handler started minus (its arrival + ``max_wait``). One worker process is running before
the first item arrives. The per-item baseline's stale-batch worker scans every
``late_scan_interval`` seconds, one GET per key, as written.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

from benchmarks.baselines.per_item import PerItemBatcher
from benchmarks.context import Context
from benchmarks.figures.common import StepFailed, flag_errors, start_redbatch_workers, worker_errors
from benchmarks.items import make_item
from benchmarks.ledger import Ledger
from benchmarks.procs import Children
from benchmarks.results import Measurement
from benchmarks.stats import percentile
from benchmarks.subjects import CELERY, LIST_LOCK, PER_ITEM, AdderSpec, StoreTarget, make_adder

FIGURE = "4. lateness"
CASES = (("p50", 50.0), ("p99", 99.0), ("max", 100.0))
NEVER = 1_000_000
TICKS_PER_SECOND = 50


def run(ctx: Context) -> list[Measurement]:
    s = ctx.sizes
    out: list[Measurement] = []
    shape = f"{s.late_keys:,} keys, 1 item each, arrivals over {s.late_spread:g} s, max_wait {s.max_wait:g} s"
    for target in ctx.stores:
        if not target.shared:
            continue
        ctx.log(f"{FIGURE}: {target.subject}")
        samples, errors = [], 0
        for _ in range(s.runs):
            samples.append(_redbatch_once(ctx, target))
            errors += worker_errors(ctx)
        out += _measurements(target.subject, samples, flag_errors(f"{shape}; 1 worker process", errors))
    ctx.log(f"{FIGURE}: {PER_ITEM}")
    samples = [_per_item_once(ctx) for _ in range(s.runs)]
    out += _measurements(PER_ITEM, samples, f"{shape}; stale scan every {s.late_scan_interval:g} s")
    for subject, why in ((LIST_LOCK, "no time trigger"), (CELERY, "no per-key deadline")):
        out.append(Measurement(FIGURE, "p99", subject, "ms", skipped=why))
    return out


def _measurements(subject: str, samples: list[list[float]], note: str) -> list[Measurement]:
    out = []
    for case, pct in CASES:
        runs = [percentile(sample, pct) * 1000 for sample in samples]
        out.append(Measurement(FIGURE, case, subject, "ms", runs=runs, note=note if case == "p99" else ""))
    return out


def spread_arrivals(ctx: Context, add_many: Callable[[list[tuple[str, Any]]], Any]) -> None:
    """One item per key, in ticks, so that arrivals (and deadlines) spread evenly."""
    s = ctx.sizes
    ticks = max(1, int(s.late_spread * TICKS_PER_SECOND))
    per_tick = -(-s.late_keys // ticks)
    started = time.monotonic()
    for tick in range(ticks):
        first = tick * per_tick
        if first >= s.late_keys:
            break
        pause = started + tick / TICKS_PER_SECOND - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        add_many(
            [
                (f"k{i}", make_item(i, s.payload_bytes))
                for i in range(first, min(first + per_tick, s.late_keys))
            ]
        )


def _collect(ctx: Context, ledger: Ledger) -> list[float]:
    s = ctx.sizes
    if not ledger.wait_handled(s.late_keys, timeout=s.late_spread + s.max_wait + ctx.sizes.step_timeout):
        raise StepFailed(f"only {ledger.handled():,} of {s.late_keys:,} items handed over in time")
    return ledger.lateness()


def _redbatch_once(ctx: Context, target: StoreTarget) -> list[float]:
    s = ctx.sizes
    ctx.reset()
    url = target.fresh()
    ledger = ctx.ledger()
    adder: Any = make_adder(
        AdderSpec(target.subject, ctx.data_url, store_url=url, max_items=NEVER, max_wait=s.max_wait)
    )
    try:
        with Children() as children:
            start_redbatch_workers(
                children, ctx, url, 1, record="lateness", max_items=NEVER, max_wait=s.max_wait
            )
            adder.add_many([("warmup", make_item(-1, s.payload_bytes))])
            if not ledger.wait_handled(1, timeout=s.max_wait + 30):
                raise StepFailed("the warm-up item was not handed over")
            ledger.reset()
            spread_arrivals(ctx, adder.add_many)
            return _collect(ctx, ledger)
    finally:
        adder.close()
        ledger.close()


def per_item_flusher(redis_url: str, stats_url: str, max_wait: float, interval: float, budget: float) -> None:
    """Body of the spawned stale-batch worker: scan, flush due keys, record lateness."""
    ledger = Ledger(stats_url)

    def handle(key: str, items: list[Any], created_at: float) -> None:
        late = time.time() - (created_at + max_wait)
        ledger.record(len(items), lateness=[late] * len(items))

    batcher = PerItemBatcher(
        redis.Redis.from_url(redis_url), max_items=NEVER, max_wait=max_wait, handler=handle
    )
    ledger.ready()
    try:
        batcher.stale_worker(
            interval, stop=lambda: ledger.client.exists("bench:stop") == 1, deadline=time.monotonic() + budget
        )
    finally:
        ledger.close()


def _per_item_once(ctx: Context) -> list[float]:
    s = ctx.sizes
    ctx.reset()
    ledger = ctx.ledger()
    adder: Any = make_adder(AdderSpec(PER_ITEM, ctx.data_url, max_items=NEVER, max_wait=s.max_wait))
    budget = s.late_spread + s.max_wait + s.step_timeout
    try:
        with Children() as children:
            children.function(
                per_item_flusher, ctx.data_url, ctx.stats_url, s.max_wait, s.late_scan_interval, budget
            )
            if not ledger.wait_ready(1, timeout=60):
                raise StepFailed("the stale-batch worker did not start")

            def add_many(pairs: list[tuple[str, Any]]) -> None:
                for key, item in pairs:
                    adder.add(key, item)

            spread_arrivals(ctx, add_many)
            try:
                return _collect(ctx, ledger)
            finally:
                ledger.client.set("bench:stop", 1)
                children.join_functions(timeout=s.late_scan_interval + 30)
    finally:
        adder.close()
        ledger.close()
