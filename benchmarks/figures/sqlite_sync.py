"""Figure 9: SQLite ``add`` in both synchronous modes: ``full`` (the default: an fsync per
commit, a returned add survives a power cut) and ``normal`` (``?synchronous=normal``: no fsync
per commit, a returned add survives any process crash but not a power cut), from one producer
and from 4 producer processes started together."""

from __future__ import annotations

from benchmarks.context import Context
from benchmarks.figures.common import produce
from benchmarks.results import Measurement
from benchmarks.subjects import REDBATCH_SQLITE, AdderSpec

FIGURE = "9. SQLite synchronous modes"
MODES = ("full", "normal")


def case(processes: int, mode: str) -> str:
    who = "1 producer" if processes == 1 else f"{processes} producer processes"
    return f"{who}, synchronous={mode}"


def run(ctx: Context) -> list[Measurement]:
    s = ctx.sizes
    out: list[Measurement] = []
    sqlite = [t for t in ctx.stores if t.subject == REDBATCH_SQLITE]
    for processes in (1, s.add_producers):
        for mode in MODES:
            m = Measurement(
                FIGURE, case(processes, mode), REDBATCH_SQLITE, "items/s",
                note=f"{s.add_items:,} items over {s.add_keys:,} keys, one add per item",
            )  # fmt: skip
            if not sqlite:
                m.skipped = "no SQLite store"
                out.append(m)
                continue
            ctx.log(f"{FIGURE}: {m.case}")
            for _ in range(s.runs):
                url = f"{sqlite[0].fresh()}?synchronous={mode}"
                spec = AdderSpec(REDBATCH_SQLITE, ctx.data_url, store_url=url, max_wait=60.0)
                m.runs.append(produce(ctx, spec, processes=processes, total=s.add_items, keys=s.add_keys))
            out.append(m)
    return out
