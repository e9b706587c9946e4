"""Figure 11: no-op jobs per second through one worker process (``redbatch.Jobs``).

Jobs are pre-loaded with ``Jobs.submit_many`` (1,000 per call, not timed), then one worker
process starts (``benchmarks/worker_proc.py --jobs``, 16 handler threads, a sync no-op
function); the clock runs from its ready signal to the last job run, as the function
records it. Every job is a one-item batch with its record moved in the same store step
(claimed: running; finished: succeeded), so this is figure 3's 1-item-batch case plus the
job records. ``benchmarks/jobs.py`` compares job queues of other libraries; this figure is
redbatch's own, beside its batches, in the same run.
"""

from __future__ import annotations

import time

import redbatch
from benchmarks.context import Context
from benchmarks.figures.common import StepFailed, flag_errors, start_redbatch_workers, worker_errors
from benchmarks.procs import Children
from benchmarks.results import Measurement
from benchmarks.subjects import StoreTarget
from redbatch.stores.base import JobStore

FIGURE = "11. jobs per worker"
QUEUE = "bench"
CASE = "1 worker process, no-op jobs"


def run(ctx: Context) -> list[Measurement]:
    out = []
    for target in ctx.stores:
        if not target.shared:
            continue
        m = Measurement(FIGURE, CASE, target.subject, "jobs/s")
        ctx.log(f"{FIGURE}: {target.subject}")
        errors = 0
        loads = []
        for _ in range(ctx.sizes.runs):
            measured = _once(ctx, target)
            if measured is None:
                m.skipped = "this store has no job operations"
                break
            rate, load = measured
            errors += worker_errors(ctx)
            m.runs.append(rate)
            loads.append(load)
        if not m.skipped:
            note = (
                f"{ctx.sizes.jobs_items:,} jobs pre-loaded with submit_many; 16 handler threads; "
                f"submitted at {min(loads):,.0f} jobs/s"
            )
            m.note = flag_errors(note, errors)
        out.append(m)
    return out


def _once(ctx: Context, target: StoreTarget) -> tuple[float, float] | None:
    count = ctx.sizes.jobs_items
    ctx.reset()
    url = target.fresh()
    store = redbatch.connect(url)
    try:
        if not isinstance(store, JobStore):
            return None
        jobs = redbatch.Jobs(store, QUEUE)
        started = time.perf_counter()
        for first in range(0, count, 1000):
            jobs.submit_many([("noop", n) for n in range(first, min(count, first + 1000))])
        load_rate = count / (time.perf_counter() - started)
    finally:
        store.close()
    with Children() as children:
        start_redbatch_workers(children, ctx, url, 1, jobs=True, name=QUEUE)
        ledger = ctx.ledger()
        try:
            if not ledger.wait_handled(count, timeout=ctx.sizes.step_timeout):
                raise StepFailed(f"only {ledger.handled():,} of {count:,} jobs run in time")
            return count / (ledger.last_handled() - ledger.first_ready()), load_rate
        finally:
            ledger.close()
