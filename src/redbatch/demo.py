"""The first-run demo: a synthetic chat load through a real Batcher and Worker, shown live.

``redbatch demo`` produces chat messages over a few hundred conversations (some users type
several messages in quick succession), lets a worker in a background thread answer each
batch with one simulated reply, and ends with a summary. It runs on the default store, so a
run that is interrupted leaves its pending messages in the store and the next run delivers
them: the point of a durable store.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from redbatch.batcher import Batcher
from redbatch.errors import StoreUnavailable
from redbatch.stores.base import Store
from redbatch.types import Batch, BatcherStats, system_clock
from redbatch.worker import Worker

log = logging.getLogger("redbatch.demo")

BATCHER_NAME = "demo-chat"
TICK = 0.05  # seconds between producer steps
REFRESH = 0.25  # seconds between live-view refreshes (each reads the batcher's stats)
DRAIN_SECONDS = 10.0  # at most this long to deliver what is pending once producing stops
BURST_SHARE = 0.15  # share of message groups that are bursts rather than single messages

_LINES = (
    "hi, quick question about my order",
    "is the blue one back in stock?",
    "thanks!",
    "can I change the delivery address?",
    "it says payment failed but I was charged",
    "ok",
    "what are your opening hours on sunday",
    "never mind, found it",
    "how long does a refund take?",
    "the app keeps logging me out",
)
_BURST_LINES = ("wait", "actually", "also", "one more thing", "sorry, typo", "??", "hello?", "and")


def demo_batcher(store: Store) -> Batcher:
    """The demo's batcher: up to 10 messages per reply, none waiting over 2 s, 0.5 s debounce.

    The lease is short so that batches of a demo killed with SIGKILL come back within a few
    seconds of the next run instead of the default 30.
    """
    return Batcher(store, BATCHER_NAME, max_items=10, max_wait=2.0, idle=0.5, lease=5.0)


# ---------------------------------------------------------------- the synthetic load


class ChatLoad:
    """Synthetic chat traffic: a few conversations are busy, most are quiet, some users burst."""

    def __init__(self, conversations: int, rng: random.Random) -> None:
        self.rng = rng
        self.keys = [f"conv-{n:04d}" for n in range(conversations)]
        self.users = {key: f"user-{rng.randrange(100_000):05d}" for key in self.keys}
        self.seq = dict.fromkeys(self.keys, 0)
        # Zipf-like popularity: conversation n talks about 1/(n+1)^0.8 as often as the first.
        weights = [1 / (n + 1) ** 0.8 for n in range(conversations)]
        self._cumulative = [sum(weights[: n + 1]) for n in range(conversations)]

    def next_groups(self, count: int) -> list[list[tuple[str, dict[str, Any]]]]:
        """About ``count`` messages as groups: a group of one, or a burst of 3-8 in one key."""
        groups: list[list[tuple[str, dict[str, Any]]]] = []
        produced = 0
        while produced < count:
            key = self.rng.choices(self.keys, cum_weights=self._cumulative)[0]
            size = self.rng.randint(3, 8) if self.rng.random() < BURST_SHARE else 1
            size = min(size, count - produced)
            groups.append([(key, self._message(key, burst=n > 0)) for n in range(size)])
            produced += size
        return groups

    def _message(self, key: str, *, burst: bool) -> dict[str, Any]:
        self.seq[key] += 1
        text = self.rng.choice(_BURST_LINES if burst else _LINES)
        return {"conversation": key, "user": self.users[key], "text": text, "seq": self.seq[key]}


# ---------------------------------------------------------------- the handler's tally


@dataclass
class Deliveries:
    """What the handler saw, across worker threads. Waits only for this run's items."""

    run_started_at: float
    batches: int = 0
    items: int = 0
    resumed: int = 0  # items that arrived before this run started
    waits_ms: list[float] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, batch: Batch, handed_over_at: float) -> None:
        with self._lock:
            self.batches += 1
            self.items += len(batch.items)
            for arrived_at in batch.arrived_at:
                if arrived_at < self.run_started_at:
                    self.resumed += 1
                else:
                    self.waits_ms.append((handed_over_at - arrived_at) * 1000)

    def counts(self) -> tuple[int, int, int]:
        """Batches, items, and items of earlier runs delivered so far."""
        with self._lock:
            return self.batches, self.items, self.resumed

    def waits(self) -> list[float]:
        with self._lock:
            return list(self.waits_ms)


def reply_composer(deliveries: Deliveries, rng: random.Random) -> Callable[[Batch], None]:
    """A handler that 'composes one reply' per batch (a short sleep) and records the waits."""

    def compose_reply(batch: Batch) -> None:
        handed_over_at = time.time()
        time.sleep(rng.uniform(0.005, 0.02))
        deliveries.record(batch, handed_over_at)

    return compose_reply


# ---------------------------------------------------------------- Ctrl-C and the worker thread


class Interrupts:
    """Counts SIGINT/SIGTERM: the first ends producing, the second cuts the drain short.

    The handler only increments a counter (taking a lock in a signal handler can deadlock);
    the loops look at it every tick. A third signal gets Python's default behaviour.
    """

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[int, Any] = {}

    @property
    def stop_requested(self) -> bool:
        return self.count >= 1

    @property
    def hurry(self) -> bool:
        return self.count >= 2

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if self.count >= 2:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)

    @contextmanager
    def installed(self) -> Iterator[Interrupts]:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._on_signal)
        try:
            yield self
        finally:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)


@contextmanager
def worker_in_thread(worker: Worker, start_timeout: float = 10.0) -> Iterator[None]:
    """Run ``worker`` in a background thread for the block; stop and join it after."""
    failures: list[Exception] = []

    def run() -> None:
        try:
            worker.run()
        except Exception as exc:  # noqa: BLE001 - re-raised in the main thread below
            failures.append(exc)

    thread = threading.Thread(target=run, name="redbatch-demo-worker", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not worker.started.wait(0.05) and thread.is_alive() and time.monotonic() < deadline:
        pass
    try:
        if failures:
            raise failures[0]
        if not worker.started.is_set():
            raise StoreUnavailable(f"the demo's worker did not start within {start_timeout:g} seconds")
        yield
    finally:
        worker.stop()
        thread.join(DRAIN_SECONDS)
    if failures:
        raise failures[0]


# ---------------------------------------------------------------- the run


@dataclass(frozen=True)
class DemoOptions:
    seconds: float = 20.0
    conversations: int = 300
    rate: float = 200.0  # messages per second
    seed: int | None = None


@dataclass(frozen=True)
class DemoSummary:
    store_url: str
    durable: bool
    elapsed: float
    interrupted: bool
    added: int
    resumed_at_start: int
    batches: int
    delivered: int
    resumed_delivered: int
    wait_p50_ms: float | None
    wait_p99_ms: float | None
    still_pending: int

    @property
    def mean_batch_size(self) -> float | None:
        return self.delivered / self.batches if self.batches else None


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


class DemoRun:
    """One run of the demo: produce for a while, drain, and summarise."""

    def __init__(self, store: Store, options: DemoOptions, console: Console) -> None:
        self.store = store
        self.options = options
        self.console = console
        self.rng = random.Random(options.seed)
        self.batcher = demo_batcher(store)
        # The store's clock counts whole milliseconds: items of this run arrive at or after this.
        self.deliveries = Deliveries(run_started_at=system_clock() / 1000)
        self.batcher.handler(reply_composer(self.deliveries, random.Random(self.rng.random())))
        self.interrupts = Interrupts()
        self.added = 0
        self.phase = "producing"
        self.started = time.monotonic()
        self._last_stats: BatcherStats | None = None
        self._next_refresh = 0.0

    def run(self) -> DemoSummary:
        with self.interrupts.installed():  # from the start: an early Ctrl-C still ends cleanly
            leftover = self.batcher.stats()
            self._announce(leftover)
            worker = Worker(self.store, [self.batcher], handle_signals=False)
            live = Live(self._view(), console=self.console, transient=True, auto_refresh=False)
            with worker_in_thread(worker), live:
                self._produce(live)
                self.phase = "delivering what is pending"
                self._drain(live)
            return self._summary(leftover, self.batcher.stats())

    def _announce(self, leftover: BatcherStats) -> None:
        opts = self.options
        self.console.print(
            f"redbatch demo on [bold]{self.store.url}[/]: {opts.conversations} conversations, "
            f"about {opts.rate:g} messages/s for {opts.seconds:g} s. Ctrl-C ends it early."
        )
        if leftover.buffered_items:
            self.console.print(f"resuming {leftover.buffered_items} items left by the previous run")
        unfinished = leftover.in_flight + leftover.retrying
        if unfinished:
            were = "batch of the previous run was" if unfinished == 1 else "batches of the previous run were"
            self.console.print(f"{unfinished} {were} unfinished: back when the 5 s lease lapses")

    def _produce(self, live: Live) -> None:
        load = ChatLoad(self.options.conversations, self.rng)
        deadline = self.started + self.options.seconds
        next_tick = time.monotonic()
        budget = 0.0
        while not self.interrupts.stop_requested and time.monotonic() < deadline:
            budget += self.options.rate * TICK
            count = int(budget)
            budget -= count
            for group in load.next_groups(count):
                if len(group) == 1:
                    self.batcher.add(*group[0])
                else:
                    self.batcher.add_many(group)
                self.added += len(group)
            self._refresh(live)
            next_tick = max(next_tick + TICK, time.monotonic() - 1.0)  # a slow store lowers the rate
            time.sleep(max(0.0, min(next_tick, deadline) - time.monotonic()))

    def _drain(self, live: Live) -> None:
        """Flush every key and wait, at most DRAIN_SECONDS, until nothing is pending."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while not self.interrupts.hurry and time.monotonic() < deadline:
            self.batcher.flush()  # keys busy with a batch at the last flush get due here
            stats = self.batcher.stats()
            self._refresh(live, stats, force=True)
            if stats.buffered_items == 0 and stats.in_flight == 0 and stats.retrying == 0:
                return
            time.sleep(0.1)

    def _refresh(self, live: Live, stats: BatcherStats | None = None, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH
        self._last_stats = stats or self.batcher.stats()
        live.update(self._view(), refresh=True)

    def _view(self) -> Panel:
        batches, delivered, _ = self.deliveries.counts()
        stats = self._last_stats
        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="left", style="dim")
        grid.add_column(justify="right")
        grid.add_row("elapsed", f"{time.monotonic() - self.started:.1f} s / {self.options.seconds:g} s")
        grid.add_row("items added", f"{self.added:,}")
        grid.add_row("batches flushed", f"{batches:,}")
        grid.add_row("items delivered", f"{delivered:,}")
        grid.add_row("keys pending", "-" if stats is None else f"{stats.open_keys:,}")
        grid.add_row("items buffered", "-" if stats is None else f"{stats.buffered_items:,}")
        title = f"redbatch demo: {self.phase}"
        return Panel(grid, title=title, subtitle="Ctrl-C to stop", expand=False)

    def _summary(self, leftover: BatcherStats, final: BatcherStats) -> DemoSummary:
        waits = self.deliveries.waits()  # the worker has stopped: the counts are final
        batches, delivered, resumed = self.deliveries.counts()
        return DemoSummary(
            store_url=self.store.url,
            durable=self.store.durable,
            elapsed=time.monotonic() - self.started,
            interrupted=self.interrupts.stop_requested,
            added=self.added,
            resumed_at_start=leftover.buffered_items,
            batches=batches,
            delivered=delivered,
            resumed_delivered=resumed,
            wait_p50_ms=percentile(waits, 0.50),
            wait_p99_ms=percentile(waits, 0.99),
            still_pending=final.buffered_items,
        )


def run_demo(store: Store, options: DemoOptions, console: Console) -> DemoSummary:
    """Run the demo on ``store``, print its summary, and return it."""
    summary = DemoRun(store, options, console).run()
    console.print(summary_view(summary))
    return summary


# ---------------------------------------------------------------- the summary


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def summary_view(summary: DemoSummary) -> Group:
    table = Table(title="redbatch demo: summary", show_header=False, title_justify="left")
    table.add_column(style="dim")
    table.add_column(justify="right")
    table.add_row("store", summary.store_url)
    ran = f"{summary.elapsed:.1f} s" + (" (stopped by Ctrl-C)" if summary.interrupted else "")
    table.add_row("ran for", ran)
    table.add_row("items added", f"{summary.added:,}")
    if summary.resumed_at_start or summary.resumed_delivered:
        # Counted by the handler: includes batches a killed run left unfinished.
        table.add_row("items resumed from the previous run", f"{summary.resumed_delivered:,}")
    table.add_row("batches", f"{summary.batches:,}")
    table.add_row("items delivered", f"{summary.delivered:,}")
    mean = summary.mean_batch_size
    table.add_row("mean batch size", "-" if mean is None else f"{mean:.2f}")
    table.add_row("wait p50 / p99", f"{_ms(summary.wait_p50_ms)} / {_ms(summary.wait_p99_ms)}")
    table.add_row("items still pending", f"{summary.still_pending:,}")
    return Group(table, _closing_line(summary))


def _closing_line(summary: DemoSummary) -> str:
    if summary.still_pending and summary.durable:
        return "[yellow]run `redbatch demo` again: it delivers what is still pending.[/]"
    if summary.still_pending:
        return "[yellow]the pending items are lost with this process: the store is not durable.[/]"
    if not summary.durable:
        return "[green]nothing lost.[/] With the default SQLite store, an interrupted run resumes."
    return (
        "[green]nothing lost.[/] Waits are from arrival to hand-over (max_wait 2 s, idle 0.5 s). "
        "Press Ctrl-C mid-run, then run the demo again: it resumes what was pending."
    )


# ---------------------------------------------------------------- redbatch serve --demo


SERVE_DEMO_RATE = 40.0
"""Messages per second ``redbatch serve --demo`` produces: enough to watch batches form."""


class ChatProducer:
    """The demo's chat load on a thread of its own, until stopped: ``redbatch serve --demo``
    runs it beside the service and its in-process worker. A store error is logged and the
    producer tries again on its next tick, as a real producer would."""

    def __init__(self, batcher: Batcher, conversations: int = 300, rate: float = SERVE_DEMO_RATE) -> None:
        self.batcher = batcher
        self.rate = rate
        self.load = ChatLoad(conversations, random.Random())
        self.added = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redbatch-demo-producer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()

    def _run(self) -> None:
        budget = 0.0
        while not self._stop.wait(TICK):  # the tick paces the load; stop() ends it at once
            budget += self.rate * TICK
            count = int(budget)
            budget -= count
            try:
                for group in self.load.next_groups(count):
                    self.added += self.batcher.add_many(group)
            except StoreUnavailable as exc:
                log.warning("the demo's producer could not add: %s", exc)


def demo_service(store: Store, concurrency: int = 16) -> tuple[Worker, ChatProducer, str]:
    """What ``redbatch serve --demo`` runs beside the service: a worker answering the demo's
    chat batcher, the producer of its load, and a line saying what a previous run left."""
    batcher = demo_batcher(store)
    batcher.handler(reply_composer(Deliveries(run_started_at=system_clock() / 1000), random.Random()))
    leftover = batcher.stats()
    waiting = leftover.buffered_items + leftover.in_flight + leftover.retrying
    note = f"resuming {leftover.buffered_items:,} items left by the previous run" if waiting else ""
    worker = Worker(store, [batcher], concurrency=concurrency, handle_signals=False)
    return worker, ChatProducer(batcher), note
