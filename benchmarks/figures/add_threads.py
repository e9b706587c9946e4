"""Figure 8: ``add`` from threads of one process, one item per call: 1, 16 and 64 threads
sharing one batcher (so their adds share store calls), against per-item round trips from as
many threads sharing one Redis client."""

from __future__ import annotations

from benchmarks.context import Context
from benchmarks.figures.common import produce_in_threads
from benchmarks.results import Measurement
from benchmarks.subjects import PER_ITEM, AdderSpec

FIGURE = "8. add from threads"


def case(threads: int) -> str:
    return "1 thread" if threads == 1 else f"{threads} threads"


def run(ctx: Context) -> list[Measurement]:
    s = ctx.sizes
    out: list[Measurement] = []
    keys = s.add_keys
    for threads in s.add_threads:
        subjects = [(t.subject, t) for t in ctx.stores if t.shared] + [(PER_ITEM, None)]
        for subject, target in subjects:
            ctx.log(f"{FIGURE}: {subject}, {case(threads)}")
            how = "one Batcher" if target else "one redis client, LPUSH+SET+SADD"
            note = f"{how}; {s.add_thread_items:,} items over {keys:,} keys"
            m = Measurement(FIGURE, case(threads), subject, "items/s", note=note, param=threads)
            for _ in range(s.runs):
                ctx.reset()
                store_url = target.fresh() if target else ""
                spec = AdderSpec(
                    subject, ctx.data_url, store_url=store_url, max_wait=60.0, flush_when_full=True
                )
                m.runs.append(
                    produce_in_threads(ctx, spec, threads=threads, total=s.add_thread_items, keys=keys)
                )
            out.append(m)
    return out
