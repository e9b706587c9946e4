"""The product targets, checked against the measurements of the same run."""

from __future__ import annotations

from collections.abc import Iterable

from benchmarks.config import Sizes
from benchmarks.results import Measurement, Target, format_value
from benchmarks.subjects import (
    CELERY,
    PER_ITEM,
    RAW,
    RAW_SQLITE,
    REDBATCH_REDIS,
    REDBATCH_SQLITE,
    REDBATCH_SUBJECTS,
)

ASYNC_ITEMS_PER_SECOND = 50_000
"""1,000 coroutines of one event loop add at least this many items/s on Redis."""
THREADS_SPEED_UP = 4.0
"""16 threads of one producer add at least this many times one thread's items/s."""
PER_WORKER = 15_000.0
"""One worker process runs at least this many one-item batches, or no-op jobs, a second on
Redis (issue 11 item 4)."""
FLATNESS = 2.0
"""'Flat' for finding due work: the largest size costs at most this many times the smallest."""


def _find(
    ms: Iterable[Measurement], figure: str, subject: str, case: str | None = None
) -> Measurement | None:
    for m in ms:
        if m.figure.startswith(figure) and m.subject == subject and (case is None or m.case == case):
            return m
    return None


def _ratio_target(
    name: str, mine: Measurement | None, theirs: Measurement | None, goal: float, what: str
) -> Target | None:
    if mine is None or mine.value is None:
        return None
    subject = f"{mine.subject} ({mine.case})"
    if theirs is None or theirs.value is None or theirs.value <= 0:
        return Target(name, subject, "—", f">= {goal:g}x {what}", None, "baseline not measured")
    ratio = mine.value / theirs.value
    detail = f"{format_value(mine.value, mine.unit)} vs {format_value(theirs.value, theirs.unit)} {mine.unit}"
    return Target(name, subject, f"{ratio:.2f}x", f">= {goal:g}x {what}", ratio >= goal, detail)


def _invalid(m: Measurement, name: str, goal: str) -> Target:
    return Target(name, f"{m.subject} ({m.case})", "—", goal, None, "invalid: redbatch workers logged errors")


def check(ms: list[Measurement], sizes: Sizes) -> list[Target]:
    checked = _check(ms, sizes)
    invalid = [m for m in ms if m.subject in REDBATCH_SUBJECTS and m.invalid]
    return checked + [_invalid(m, m.figure, "a valid measurement") for m in invalid]


def _check(ms: list[Measurement], sizes: Sizes) -> list[Target]:
    targets: list[Target | None] = []
    redbatch = [m for m in ms if m.subject in REDBATCH_SUBJECTS and m.value is not None and not m.invalid]

    for m in (m for m in redbatch if m.figure.startswith("1.")):
        targets.append(_ratio_target("add vs per-item", m, _find(ms, "1.", PER_ITEM, m.case), 3, "per-item"))
    for m in (m for m in redbatch if m.figure.startswith("8.") and m.case == "16 threads"):
        one = _find(ms, "8.", m.subject, "1 thread")
        targets.append(_ratio_target("add: 16 threads vs 1", m, one, THREADS_SPEED_UP, "1 thread"))
    for m in (m for m in redbatch if m.figure.startswith("10.") and m.case == "1,000 coroutines"):
        if m.subject == REDBATCH_REDIS:
            assert m.value is not None
            goal = f">= {ASYNC_ITEMS_PER_SECOND:,} items/s"
            met = m.value >= ASYNC_ITEMS_PER_SECOND
            measured = f"{m.value:,.0f}/s"
            targets.append(Target("add_async: 1,000 coroutines", m.subject, measured, goal, met, ""))
    for m in (m for m in redbatch if m.figure.startswith("2.")):
        if m.subject == REDBATCH_SQLITE:
            raw = _find(ms, "2.", RAW_SQLITE, m.case)
            targets.append(_ratio_target("add_many vs raw executemany", m, raw, 0.5, "raw executemany"))
        else:
            raw = _find(ms, "2.", RAW, m.case)
            targets.append(_ratio_target("add_many vs raw RPUSH", m, raw, 0.6, "raw RPUSH"))
    for m in (m for m in redbatch if m.figure.startswith("3.") and "1-item" not in m.case):
        targets.append(
            _ratio_target("end-to-end vs celery", m, _find(ms, "3.", CELERY, m.case), 5, "celery-batches")
        )
    for m in (m for m in redbatch if m.figure.startswith("4.") and m.case == "p99"):
        assert m.value is not None
        keys = f"{sizes.late_keys:,} keys" + (
            "" if sizes.late_keys >= 10_000 else " (quick: fewer than 10,000)"
        )
        targets.append(Target("p99 lateness", m.subject, f"{m.value:.1f} ms", "< 20 ms", m.value < 20, keys))
    for m in redbatch:
        one_item = m.figure.startswith("3.") and "1-item" in m.case
        if m.subject == REDBATCH_REDIS and (one_item or m.figure.startswith("11.")):
            assert m.value is not None
            name = "1-item batches per worker" if one_item else "jobs per worker"
            shown = f"{format_value(m.value, m.unit)}/s"
            goal = f">= {PER_WORKER:,.0f}/s"
            targets.append(Target(name, m.subject, shown, goal, m.value >= PER_WORKER, m.note))
    targets += _flatness(redbatch)
    for m in (m for m in redbatch if m.figure.startswith("7.")):
        assert m.value is not None
        targets.append(Target("no loss", m.subject, f"{m.value:.0f} lost", "0 lost", m.value == 0, m.note))
    return [t for t in targets if t is not None]


def _flatness(redbatch: list[Measurement]) -> list[Target]:
    out = []
    series: dict[tuple[str, str], list[Measurement]] = {}
    for m in redbatch:
        if m.figure.startswith("5.") and m.param is not None:
            operation = m.case.split(",")[0]
            series.setdefault((m.subject, operation), []).append(m)
    for (subject, operation), points in series.items():
        points.sort(key=lambda m: m.param or 0)
        low, high = points[0], points[-1]
        if low is high or low.value is None or high.value is None:
            continue
        ratio = high.value / low.value
        detail = " → ".join(f"{m.param:,}: {format_value(m.value, m.unit)} {m.unit}" for m in points)
        goal = f"<= {FLATNESS:g}x from smallest to largest"
        out.append(Target(f"flat: {operation}", subject, f"{ratio:.2f}x", goal, ratio <= FLATNESS, detail))
    return out
