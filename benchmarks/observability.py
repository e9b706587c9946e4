"""``python -m benchmarks.observability``: the cost of metrics, a worker's throughput with
``redbatch.metrics`` on and off.

For each store (a ``redis-server`` the script starts on a free loopback port, and a SQLite
file), ``--items`` items are pre-loaded in full keys, then one in-process ``Worker`` drains
them to a no-op handler, timed from its start to the last item handled. "off" runs the
worker with no hooks; "on" runs it with ``metrics.instrument``'s hooks and a thread
scraping the registry (the store's counters included) every ``--scrape-interval`` seconds,
as Prometheus would. Runs alternate off/on, ``--runs`` times each; the table shows medians
and on/off. Two batch sizes: full batches of 100 items (hooks run once per 100 items) and
1-item batches (once per item: the worst case).

Figures taken on a busy machine are noise: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redbatch
from benchmarks.redis_server import RedisServer
from redbatch import metrics


@contextmanager
def stores(workdir: Path, which: list[str]) -> Iterator[dict[str, str]]:
    urls: dict[str, str] = {}
    server = None
    try:
        if "redis" in which:
            server = RedisServer(workdir).start()
            urls["redis"] = server.url()
        if "sqlite" in which:
            urls["sqlite"] = f"sqlite:///{workdir / 'bench.db'}"
        yield urls
    finally:
        if server is not None:
            server.stop()


def once(url: str, name: str, items: int, batch: int, with_metrics: bool, scrape_every: float) -> float:
    """Items per second drained by one worker; ``name`` is fresh, so runs never share data."""
    store = redbatch.connect(url)
    try:
        batcher = redbatch.Batcher(store, name, max_items=batch, max_wait=60)
        keys = items // batch
        for first in range(0, items, 1000):
            batcher.add_many((f"k{n % keys}", {"n": n}) for n in range(first, min(items, first + 1000)))
        handled = 0
        lock = threading.Lock()
        done = threading.Event()

        @batcher.handler
        def handle(b: redbatch.Batch) -> None:
            nonlocal handled
            with lock:
                handled += len(b.items)
                if handled >= items:
                    done.set()

        instruments = metrics.instrument([batcher]) if with_metrics else None
        hooks = instruments.hooks if instruments is not None else None
        worker = redbatch.Worker(store, [batcher], concurrency=16, handle_signals=False, hooks=hooks)
        stop_scraping = threading.Event()

        def scrape() -> None:
            assert instruments is not None
            while not stop_scraping.wait(scrape_every):
                metrics.render(instruments.registry)

        scraper = threading.Thread(target=scrape, daemon=True) if instruments is not None else None
        started = time.perf_counter()
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        if scraper is not None:
            scraper.start()
        if not done.wait(300):
            raise RuntimeError(f"only {handled} of {items} items handled in 300 s")
        elapsed = time.perf_counter() - started
        stop_scraping.set()
        worker.stop()
        thread.join(60)
        if instruments is not None:
            flushed = instruments.registry.get_sample_value(
                "redbatch_batches_flushed_total", {"batcher": name}
            )
            assert flushed is not None and flushed > 0
        return items / elapsed
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--single-items", type=int, default=4_000, help="items of the 1-item batch case")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scrape-interval", type=float, default=1.0)
    parser.add_argument("--store", action="append", choices=("redis", "sqlite"), help="default: both")
    args = parser.parse_args()
    which = args.store or ["redis", "sqlite"]
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rows = []
    with tempfile.TemporaryDirectory() as workdir, stores(Path(workdir), which) as urls:
        serial = 0
        for kind, url in urls.items():
            for batch, items in ((100, args.items), (1, args.single_items)):
                rates: dict[bool, list[float]] = {False: [], True: []}
                for _ in range(args.runs):
                    for with_metrics in (False, True):
                        serial += 1
                        rate = once(url, f"obs{serial}", items, batch, with_metrics, args.scrape_interval)
                        rates[with_metrics].append(rate)
                off, on = statistics.median(rates[False]), statistics.median(rates[True])
                rows.append((kind, batch, items, off, on, rates))
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'store':7} {'batch':>5} {'items':>7} {'off items/s':>12} {'on items/s':>11} {'on/off':>7}  runs")
    for kind, batch, items, off, on, rates in rows:
        runs = " ".join(f"{a:,.0f}/{b:,.0f}" for a, b in zip(rates[False], rates[True], strict=True))
        print(f"{kind:7} {batch:>5} {items:>7,} {off:>12,.0f} {on:>11,.0f} {on / off:>7.3f}  {runs}")


if __name__ == "__main__":
    main()
