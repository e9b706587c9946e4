"""Helpers shared by the figures: producer fan-out and worker start-up."""

from __future__ import annotations

import queue
import subprocess
import threading
from typing import Any

from benchmarks.baselines import celery_batches_app
from benchmarks.context import Context
from benchmarks.procs import SPAWN, Children
from benchmarks.subjects import AdderSpec, Span, make_adder, produce_with, producer_process


class StepFailed(RuntimeError):
    """A producer or worker did not finish within the step's time limit."""


def produce(
    ctx: Context,
    spec: AdderSpec,
    *,
    processes: int,
    total: int,
    keys: int,
    start_seq: int = 0,
    warmup: int = 20,
) -> float:
    """Add ``total`` items with ``processes`` producers (one: in this process); items/s.

    Throughput is counted from the first producer's start to the last one's finish; spawned
    producers connect and warm up first, then start together at a barrier.
    """
    size = ctx.sizes.payload_bytes
    if processes == 1:
        adder = make_adder(spec)
        try:
            span = produce_with(adder, start_seq, total, keys, size, warmup=warmup)
        finally:
            adder.close()
        return span.items / max(1e-9, span.finished - span.started)
    spans = produce_in_processes(
        ctx, spec, processes=processes, total=total, keys=keys, start_seq=start_seq, warmup=warmup
    )
    started = min(s.started for s in spans)
    finished = max(s.finished for s in spans)
    return sum(s.items for s in spans) / max(1e-9, finished - started)


def produce_in_threads(
    ctx: Context, spec: AdderSpec, *, threads: int, total: int, keys: int, warmup: int = 20
) -> float:
    """Add ``total`` items from ``threads`` threads of this process sharing one adder; items/s.

    The threads build their items, then start together at a barrier; throughput is counted
    from the first one's start to the last one's finish.
    """
    size = ctx.sizes.payload_bytes
    share = total // threads
    adder = make_adder(spec)
    barrier = threading.Barrier(threads)
    spans: list[Span] = []
    errors: list[BaseException] = []

    def body(index: int) -> None:
        count = share if index < threads - 1 else total - share * (threads - 1)
        try:
            spans.append(
                produce_with(
                    adder,
                    index * share,
                    count,
                    keys,
                    size,
                    warmup=warmup if index == 0 else 0,
                    barrier=barrier,
                )
            )
        except BaseException as exc:  # reported below; the others must not wait for ever
            errors.append(exc)
            barrier.abort()

    try:
        workers = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(ctx.sizes.step_timeout)
            if worker.is_alive():
                raise StepFailed(f"a {spec.subject} producer thread did not finish in time")
    finally:
        adder.close()
    if errors:
        raise StepFailed(f"a {spec.subject} producer thread failed: {errors[0]!r}") from errors[0]
    started = min(s.started for s in spans)
    finished = max(s.finished for s in spans)
    return sum(s.items for s in spans) / max(1e-9, finished - started)


def produce_in_processes(
    ctx: Context,
    spec: AdderSpec,
    *,
    processes: int,
    total: int,
    keys: int,
    start_seq: int = 0,
    warmup: int = 0,
) -> list[Span]:
    """Run ``processes`` spawned producers sharing ``total`` items; their spans."""
    barrier = SPAWN.Barrier(processes)
    results: Any = SPAWN.Queue()
    share = total // processes
    size = ctx.sizes.payload_bytes
    spans: list[Span] = []
    with Children() as children:
        for index in range(processes):
            count = share if index < processes - 1 else total - share * (processes - 1)
            first = start_seq + index * share
            children.function(producer_process, spec, first, count, keys, size, warmup, barrier, results)
        for _ in range(processes):
            try:
                spans.append(results.get(timeout=ctx.sizes.step_timeout))
            except queue.Empty:
                barrier.abort()
                raise StepFailed(f"a {spec.subject} producer did not report in time") from None
        if not children.join_functions(timeout=30):
            raise StepFailed(f"a {spec.subject} producer failed")
    return spans


def start_redbatch_workers(
    children: Children,
    ctx: Context,
    store_url: str,
    count: int,
    *,
    record: str = "count",
    max_items: int = 100,
    max_wait: float = 1.0,
    concurrency: int = 16,
    jobs: bool = False,
    name: str = "bench",
) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` worker processes and wait until each said it is ready (``jobs``:
    serving the job queue ``name`` with a no-op function, not a batcher)."""
    args = [
        "--store", store_url, "--stats", ctx.stats_url, "--max-items", str(max_items),
        "--max-wait", str(max_wait), "--record", record, "--concurrency", str(concurrency),
        "--name", name, *(["--jobs"] if jobs else []),
    ]  # fmt: skip
    workers = [children.module("benchmarks.worker_proc", args) for _ in range(count)]
    _wait_ready(ctx, workers, count, "redbatch worker")
    return workers


def start_celery_workers(
    children: Children, ctx: Context, count: int, *, flush_every: int, flush_interval: float
) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` single-process Celery workers and wait for their ``worker_ready``."""
    env = {
        "BENCH_BROKER_URL": ctx.data_url,
        "BENCH_STATS_URL": ctx.stats_url,
        "BENCH_FLUSH_EVERY": str(flush_every),
        "BENCH_FLUSH_INTERVAL": str(flush_interval),
    }
    workers = [
        children.module("celery", celery_batches_app.worker_args(index), env=env) for index in range(count)
    ]
    _wait_ready(ctx, workers, count, "celery worker")
    return workers


def _wait_ready(ctx: Context, workers: list[subprocess.Popen[bytes]], count: int, what: str) -> None:
    ledger = ctx.ledger()
    try:
        if not ledger.wait_ready(count, timeout=60):
            codes = [w.poll() for w in workers]
            raise StepFailed(f"{what}s not ready within 60 s (exit codes {codes})")
    finally:
        ledger.close()


def worker_errors(ctx: Context) -> int:
    """ERROR records the redbatch workers of the last step logged (after they stopped)."""
    ledger = ctx.ledger()
    try:
        return ledger.errors()
    finally:
        ledger.close()


def flag_errors(note: str, errors: int) -> str:
    if not errors:
        return note
    return f"INVALID: redbatch workers logged {errors:,} errors (see stderr); {note}"
