"""Figure 7: items lost when producers and flushers run at the same time.

Two producer processes add ``loss_items`` items, each with a unique ``seq``, to a few hot
keys while two flusher processes hand batches over; handlers record every ``seq`` they
receive. Lost = items added that no handler received (for the baselines, split in the notes
into items deleted unhandled and items stranded in Redis with nothing left to flush them).

- redbatch: two worker processes, ``max_items`` small, ``max_wait`` short.
- per-item round trips: producers flush keys they fill; two stale-batch workers scan
  every ``max_wait`` seconds.
- list + lock: the producer that takes a chat's lock processes it on a background thread
  (as a web handler does), so producers and processors overlap.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from benchmarks.baselines.list_lock import ListLockBatcher
from benchmarks.baselines.per_item import PerItemBatcher
from benchmarks.context import Context
from benchmarks.figures.common import StepFailed, flag_errors, produce_in_processes, start_redbatch_workers
from benchmarks.ledger import Ledger
from benchmarks.procs import Children
from benchmarks.results import Measurement
from benchmarks.subjects import CELERY, LIST_LOCK, PER_ITEM, AdderSpec, StoreTarget, make_adder

FIGURE = "7. loss"
CASE = "items lost"
PRODUCERS = 2
FLUSHERS = 2
QUIET = 3.0
"""Seconds without a newly handled item after which a lossy subject is taken as finished."""


def run(ctx: Context) -> list[Measurement]:
    s = ctx.sizes
    shape = (
        f"{s.loss_items:,} items, {PRODUCERS} producer + {FLUSHERS} flusher processes, {s.loss_keys} keys, "
        f"max_items {s.loss_max_items}, max_wait {s.loss_max_wait:g} s"
    )
    out: list[Measurement] = []
    for target in ctx.stores:
        if not target.shared:
            continue
        ctx.log(f"{FIGURE}: {target.subject}")
        out.append(_measure(ctx, target.subject, shape, lambda target=target: _redbatch_once(ctx, target)))
    ctx.log(f"{FIGURE}: {PER_ITEM}")
    out.append(_measure(ctx, PER_ITEM, shape, lambda: _per_item_once(ctx)))
    ctx.log(f"{FIGURE}: {LIST_LOCK}")
    out.append(_measure(ctx, LIST_LOCK, shape, lambda: _list_lock_once(ctx)))
    out.append(
        Measurement(FIGURE, CASE, CELERY, "items", skipped="no read-then-delete step (acks per message)")
    )
    return out


def _measure(ctx: Context, subject: str, shape: str, once: Any) -> Measurement:
    m = Measurement(FIGURE, CASE, subject, "items")
    details = []
    for _ in range(ctx.sizes.runs):
        lost, detail = once()
        m.runs.append(float(lost))
        details.append(detail)
    m.note = f"{shape}; " + " | ".join(details)
    return m


def _count(ctx: Context, ledger: Ledger, stranded: int) -> tuple[int, str]:
    seqs = ledger.seqs()
    distinct = set(seqs)
    expected = set(range(ctx.sizes.loss_items))
    lost = len(expected - distinct)
    detail = f"{len(seqs) - len(distinct)} duplicates"
    if lost or stranded:
        detail = f"{lost - stranded} deleted unhandled, {stranded} stranded; {detail}"
    return lost, detail


def _redbatch_once(ctx: Context, target: StoreTarget) -> tuple[int, str]:
    s = ctx.sizes
    ctx.reset()
    url = target.fresh()
    ledger = ctx.ledger()
    try:
        with Children() as children:
            start_redbatch_workers(
                children,
                ctx,
                url,
                FLUSHERS,
                record="seqs",
                max_items=s.loss_max_items,
                max_wait=s.loss_max_wait,
            )
            spec = AdderSpec(
                target.subject,
                ctx.data_url,
                store_url=url,
                max_items=s.loss_max_items,
                max_wait=s.loss_max_wait,
            )
            produce_in_processes(ctx, spec, processes=PRODUCERS, total=s.loss_items, keys=s.loss_keys)
            ledger.wait_handled(s.loss_items, timeout=s.step_timeout, quiet=QUIET + s.loss_max_wait)
        adder: Any = make_adder(spec)
        try:
            stranded = adder.batcher.stats().buffered_items
        finally:
            adder.close()
        lost, detail = _count(ctx, ledger, stranded)
        return lost, flag_errors(detail, ledger.errors())
    finally:
        ledger.close()


def per_item_flusher(redis_url: str, stats_url: str, max_items: int, max_wait: float, budget: float) -> None:
    """Body of a spawned stale-batch worker for the loss figure."""
    ledger = Ledger(stats_url)

    def handle(key: str, items: list[Any], created_at: float) -> None:
        ledger.record(len(items), seqs=[item["seq"] for item in items])

    batcher = PerItemBatcher(
        redis.Redis.from_url(redis_url), max_items=max_items, max_wait=max_wait, handler=handle
    )
    ledger.ready()
    try:
        batcher.stale_worker(
            max_wait, stop=lambda: ledger.client.exists("bench:stop") == 1, deadline=time.monotonic() + budget
        )
    finally:
        ledger.close()


def _per_item_once(ctx: Context) -> tuple[int, str]:
    s = ctx.sizes
    ctx.reset()
    ledger = ctx.ledger()
    try:
        with Children() as flushers:
            for _ in range(FLUSHERS):
                flushers.function(
                    per_item_flusher,
                    ctx.data_url,
                    ctx.stats_url,
                    s.loss_max_items,
                    s.loss_max_wait,
                    s.step_timeout,
                )
            if not ledger.wait_ready(FLUSHERS, timeout=60):
                raise StepFailed("the stale-batch workers did not start")
            spec = AdderSpec(
                PER_ITEM, ctx.data_url, stats_url=ctx.stats_url, max_items=s.loss_max_items,
                max_wait=s.loss_max_wait, record="seqs", flush_when_full=True,
            )  # fmt: skip
            produce_in_processes(ctx, spec, processes=PRODUCERS, total=s.loss_items, keys=s.loss_keys)
            ledger.wait_handled(s.loss_items, timeout=s.step_timeout, quiet=QUIET + s.loss_max_wait)
            ledger.client.set("bench:stop", 1)
            flushers.join_functions(timeout=30)
        with redis.Redis.from_url(ctx.data_url) as client:
            stranded = PerItemBatcher(client).buffered()
        return _count(ctx, ledger, stranded)
    finally:
        ledger.close()


def _list_lock_once(ctx: Context) -> tuple[int, str]:
    s = ctx.sizes
    ctx.reset()
    ledger = ctx.ledger()
    try:
        spec = AdderSpec(
            LIST_LOCK, ctx.data_url, stats_url=ctx.stats_url, record="seqs", process_in_background=True
        )
        produce_in_processes(ctx, spec, processes=PRODUCERS, total=s.loss_items, keys=s.loss_keys)
        with redis.Redis.from_url(ctx.data_url) as client:
            stranded = ListLockBatcher(client).buffered()
        return _count(ctx, ledger, stranded)
    finally:
        ledger.close()
