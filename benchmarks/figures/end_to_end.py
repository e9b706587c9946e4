"""Figure 3: end-to-end throughput to a no-op handler, with 1 and 2 worker processes.

Items are pre-loaded (every key full, ``max_items`` = ``flush_every`` = 100), then the
workers start; the clock runs from the first worker's ready signal to the moment the last
item was handled, as recorded by the handlers. Loading is not timed (its rate is in the
notes). Handlers only note each batch in memory (see ``benchmarks.ledger``), alike for
every subject.

A last case gives redbatch batches of one item (``max_items=1``): items/s is then batches/s,
a worker's scheduling capacity, which is what figure 4's deadlines draw on.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks.context import Context
from benchmarks.figures.common import (
    StepFailed,
    flag_errors,
    start_celery_workers,
    start_redbatch_workers,
    worker_errors,
)
from benchmarks.items import keyed_items
from benchmarks.procs import Children
from benchmarks.results import Measurement
from benchmarks.subjects import CELERY, LIST_LOCK, PER_ITEM, AdderSpec, StoreTarget, make_adder

FIGURE = "3. end-to-end"


def case_name(workers: int) -> str:
    return f"{workers} worker process" + ("es" if workers > 1 else "")


def run(ctx: Context) -> list[Measurement]:
    s = ctx.sizes
    out: list[Measurement] = []
    for workers in s.e2e_workers:
        case = case_name(workers)
        for target in ctx.stores:
            m = Measurement(FIGURE, case, target.subject, "items/s")
            if not target.shared:
                m.skipped = "store is per-process"
            else:
                ctx.log(f"{FIGURE}: {target.subject}, {case}")
                loads = []
                errors = 0
                for _ in range(s.runs):
                    rate, load = _redbatch_once(ctx, target, workers)
                    errors += worker_errors(ctx)
                    m.runs.append(rate)
                    loads.append(load)
                m.note = flag_errors(
                    f"{s.e2e_items:,} items pre-loaded in full keys of {s.batch_size}; "
                    f"16 handler threads per worker; loaded at {min(loads):,.0f} items/s",
                    errors,
                )
            out.append(m)
        ctx.log(f"{FIGURE}: {CELERY}, {case}")
        m = Measurement(FIGURE, case, CELERY, "items/s")
        loads = []
        for _ in range(s.runs):
            rate, load = _celery_once(ctx, workers)
            m.runs.append(rate)
            loads.append(load)
        m.note = (
            f"{s.e2e_celery_items:,} messages pre-loaded with delay(); flush_every={s.batch_size}, "
            f"--pool=solo, prefetch unlimited; loaded at {min(loads):,.0f} items/s"
        )
        out.append(m)
        for subject in (PER_ITEM, LIST_LOCK):
            out.append(Measurement(FIGURE, case, subject, "items/s", skipped="see figures 4 and 7"))
    out += _single_item_batches(ctx)
    return out


def _single_item_batches(ctx: Context) -> list[Measurement]:
    s = ctx.sizes
    out = []
    for target in ctx.stores:
        if not target.shared:
            continue
        case = f"{case_name(1)}, 1-item batches"
        ctx.log(f"{FIGURE}: {target.subject}, {case}")
        m = Measurement(FIGURE, case, target.subject, "items/s")
        errors = 0
        for _ in range(s.runs):
            rate, _load = _redbatch_once(ctx, target, 1, items=s.e2e_single_items, batch=1)
            errors += worker_errors(ctx)
            m.runs.append(rate)
        note = f"{s.e2e_single_items:,} keys of 1 item, max_items=1: batches handed over per second"
        m.note = flag_errors(note, errors)
        out.append(m)
    return out


def _redbatch_once(
    ctx: Context, target: StoreTarget, workers: int, *, items: int | None = None, batch: int | None = None
) -> tuple[float, float]:
    s = ctx.sizes
    items = s.e2e_items if items is None else items
    batch = s.batch_size if batch is None else batch
    ctx.reset()
    url = target.fresh()
    adder: Any = make_adder(
        AdderSpec(target.subject, ctx.data_url, store_url=url, max_items=batch, max_wait=s.max_wait)
    )
    keys = items // batch
    chunk = 1000
    started = time.perf_counter()
    try:
        for first in range(0, items, chunk):
            pairs = keyed_items(first, min(chunk, items - first), s.payload_bytes, keys)
            adder.add_many(sorted(pairs, key=lambda pair: pair[0]))
    finally:
        adder.close()
    load_rate = items / (time.perf_counter() - started)
    with Children() as children:
        start_redbatch_workers(children, ctx, url, workers, max_items=batch, max_wait=s.max_wait)
        return _drain_rate(ctx, items), load_rate


def _celery_once(ctx: Context, workers: int) -> tuple[float, float]:
    s = ctx.sizes
    ctx.reset()
    producer: Any = make_adder(AdderSpec(CELERY, ctx.data_url))
    keys = s.e2e_celery_items // s.batch_size
    started = time.perf_counter()
    try:
        for key, item in keyed_items(0, s.e2e_celery_items, s.payload_bytes, keys):
            producer.add(key, item)
    finally:
        producer.close()
    load_rate = s.e2e_celery_items / (time.perf_counter() - started)
    with Children() as children:
        start_celery_workers(children, ctx, workers, flush_every=s.batch_size, flush_interval=s.max_wait)
        return _drain_rate(ctx, s.e2e_celery_items), load_rate


def _drain_rate(ctx: Context, items: int) -> float:
    ledger = ctx.ledger()
    try:
        if not ledger.wait_handled(items, timeout=ctx.sizes.step_timeout):
            raise StepFailed(f"only {ledger.handled():,} of {items:,} items handled in time")
        return items / (ledger.last_handled() - ledger.first_ready())
    finally:
        ledger.close()
