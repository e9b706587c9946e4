"""Figure 5: the cost of finding due work with 1k, 100k and 1M open keys.

redbatch: ``store.next_due_ms(spec)`` (what a worker asks before sleeping), and
``store.claim_due(spec, now, 1)`` when exactly one key is due among N open ones (each
sample fills one hot key to ``max_items`` untimed, claims it timed, acks it untimed). The
figure is the best of 5 block medians of the samples, so bursts of load on a shared machine
do not pass for growth; on Redis, Redis' own time per call is shown as well. The N open keys
hold one item each and are not due for an hour; they are loaded in bulk with ``add_many``
and grown from one size to the next.

Per-item baseline: the stale-batch worker's scan (SMEMBERS, then GET every key's
metadata), with its GETs pipelined 1,000 at a time: its best case. As written (one GET per
round trip) it costs several times more.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis

import redbatch
from benchmarks.baselines.per_item import PerItemBatcher
from benchmarks.context import Context
from benchmarks.items import make_item
from benchmarks.redis_server import admin_client
from benchmarks.results import Measurement
from benchmarks.stats import median
from benchmarks.subjects import CELERY, LIST_LOCK, PER_ITEM, REDBATCH_REDIS, StoreTarget

FIGURE = "5. find due work"
HOUR = 3600.0
LOAD_CHUNK = 1000
MAX_ITEMS = 10
BLOCKS = 5
SCAN_BUDGET_US = 10e6
"""Stop repeating the baseline's scan once the scans so far took this long."""


def label(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def _server_usec(client: redis.Redis | None, command: str) -> float | None:
    """Redis' own microseconds per call of ``command`` since the last CONFIG RESETSTAT."""
    if client is None:
        return None
    stats = client.info("commandstats").get(f"cmdstat_{command}")
    return float(stats["usec_per_call"]) if stats else None


def _reset_server_stats(client: redis.Redis | None) -> None:
    if client is not None:
        client.config_resetstat()


def best_block_median(samples: list[float], blocks: int = BLOCKS) -> float:
    """The lowest median of ``blocks`` consecutive slices of ``samples``: a call's cost with
    the bursts of a busy machine left out (as ``timeit`` takes the best repetition)."""
    size = max(1, len(samples) // blocks)
    return min(median(samples[i : i + size]) for i in range(0, len(samples) - size + 1, size))


def _timed(fn: Callable[[], Any], samples: int) -> list[float]:
    """Microseconds of each of ``samples`` calls of ``fn()``."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1e6)
    return times


class _Loader:
    """Grows the number of open keys within a time budget; says how far it got."""

    def __init__(self, add_chunk: Callable[[int, int], None], budget: float) -> None:
        self.add_chunk = add_chunk
        self.loaded = 0
        self.deadline = time.monotonic() + budget
        self.elapsed = 0.0

    def grow_to(self, n: int) -> bool:
        started = time.monotonic()
        while self.loaded < n:
            if time.monotonic() > self.deadline:
                return False
            count = min(LOAD_CHUNK, n - self.loaded)
            self.add_chunk(self.loaded, count)
            self.loaded += count
        self.elapsed += time.monotonic() - started
        return True

    @property
    def rate(self) -> float:
        return self.loaded / self.elapsed if self.elapsed else 0.0


def run(ctx: Context) -> list[Measurement]:
    out: list[Measurement] = []
    try:
        for target in ctx.stores:
            out += _redbatch(ctx, target)
        out += _per_item(ctx)
    finally:
        ctx.reset()  # give the million keys' memory back before the next figure
    for subject, why in (
        (LIST_LOCK, "no deadline: processing starts on arrival"),
        (CELERY, "no per-key deadline"),
    ):
        out.append(Measurement(FIGURE, "scan", subject, "µs", skipped=why))
    return out


def _redbatch(ctx: Context, target: StoreTarget) -> list[Measurement]:
    s = ctx.sizes
    ctx.reset()
    store = redbatch.connect(target.fresh())
    batcher = redbatch.Batcher(store, "bench", max_items=MAX_ITEMS, max_wait=HOUR)
    spec = batcher.spec
    item = make_item(0, s.payload_bytes)

    def add_chunk(first: int, count: int) -> None:
        batcher.add_many([(f"open{i}", item) for i in range(first, first + count)])

    server = admin_client(ctx.data_url) if target.subject == REDBATCH_REDIS else None
    claim_server_usec: list[float] = []

    def claim_one() -> float:
        batcher.add_many([("hot", item)] * MAX_ITEMS)
        _reset_server_stats(server)
        started = time.perf_counter()
        claimed = store.claim_due(spec, batcher.clock(), 1)
        elapsed = (time.perf_counter() - started) * 1e6
        usec = _server_usec(server, "evalsha")
        if usec is not None:
            claim_server_usec.append(usec)
        if len(claimed) != 1 or claimed[0].lease.key != "hot":
            raise RuntimeError(f"claim_due returned {[c.lease.key for c in claimed]}, not the hot key")
        if store.ack(spec, [claimed[0].lease], batcher.clock()) != [True]:
            raise RuntimeError("the hot key's batch could not be acknowledged")
        return elapsed

    out = []
    loader = _Loader(add_chunk, s.due_load_budget)
    try:
        for n in s.due_sizes:
            ctx.log(f"{FIGURE}: {target.subject}, loading {label(n)} open keys")
            complete = loader.grow_to(n)
            short = "" if complete else f"load budget spent: {loader.loaded:,} keys loaded"
            note = f"loaded at {loader.rate:,.0f} keys/s" + (f"; {short}" if short else "")
            if not complete:
                for op in ("next_due_ms", "claim_due(1)"):
                    out.append(
                        Measurement(
                            FIGURE,
                            f"{op}, {label(n)} open keys",
                            target.subject,
                            "µs",
                            skipped=short,
                            param=n,
                        )
                    )
                break
            _reset_server_stats(server)
            next_due = _timed(lambda: store.next_due_ms(spec), s.due_next_samples)
            next_server = _server_usec(server, "zrange")
            claim_server_usec.clear()
            claims = [claim_one() for _ in range(s.due_claim_samples)]
            how = f"best of {BLOCKS} block medians"
            rows = [
                ("next_due_ms", best_block_median(next_due), f"{how}, {s.due_next_samples} calls; {note}"),
                (
                    "claim_due(1)",
                    best_block_median(claims),
                    f"{how}, {s.due_claim_samples} claims, 1 key due",
                ),
            ]
            if next_server is not None:
                server_note = "Redis' own time per call (INFO commandstats), immune to client noise"
                rows.append(("next_due_ms (Redis-side)", next_server, f"ZRANGE; {server_note}"))
                rows.append(
                    ("claim_due(1) (Redis-side)", median(claim_server_usec), f"EVALSHA; {server_note}")
                )
            for op, value, text in rows:
                case = f"{op}, {label(n)} open keys"
                out.append(Measurement(FIGURE, case, target.subject, "µs", runs=[value], note=text, param=n))
    finally:
        store.close()
        if server is not None:
            server.close()
    return out


def _per_item(ctx: Context) -> list[Measurement]:
    s = ctx.sizes
    ctx.reset()
    client = admin_client(ctx.data_url)
    batcher = PerItemBatcher(client, max_items=MAX_ITEMS, max_wait=HOUR)
    item = make_item(0, s.payload_bytes)
    out = []

    def add_chunk(first: int, count: int) -> None:
        batcher.load((f"open{i}", item) for i in range(first, first + count))

    loader = _Loader(add_chunk, s.due_load_budget)
    try:
        for n in s.due_sizes:
            ctx.log(f"{FIGURE}: {PER_ITEM}, loading {label(n)} open keys")
            case = f"stale scan, {label(n)} open keys"
            if not loader.grow_to(n):
                out.append(
                    Measurement(
                        FIGURE,
                        case,
                        PER_ITEM,
                        "µs",
                        skipped=f"load budget spent at {loader.loaded:,}",
                        param=n,
                    )
                )
                break
            client.set("batch:hot:meta", '{"createdAt": 0, "lastItemAt": 0, "itemCount": 1}')
            client.sadd("batches:index", "hot")
            scans: list[float] = []
            while len(scans) < s.due_scan_samples and sum(scans) < SCAN_BUDGET_US:
                started = time.perf_counter()
                due = batcher.find_due(time.time(), pipelined=True)
                scans.append((time.perf_counter() - started) * 1e6)
                if [k for k, _ in due] != ["hot"]:
                    raise RuntimeError(f"the scan found {len(due)} due keys, not the hot one")
            client.srem("batches:index", "hot")
            out.append(
                Measurement(FIGURE, case, PER_ITEM, "µs", runs=scans, param=n,
                            note=f"SMEMBERS + GET each meta, pipelined by 1,000; {len(scans)} scans")
            )  # fmt: skip
    finally:
        client.close()
    return out
