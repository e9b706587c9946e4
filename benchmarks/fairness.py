"""``python -m benchmarks.fairness``: do waits grow evenly when a worker cannot keep up?

One worker process's worth of handler slots (``--concurrency``, each batch taking
``--handler-ms``) is offered about twice the batches it can serve, on keys spread over the
partitions of one Redis batcher (``--partitions``) and over two batchers of one worker. Every
key takes one item per batch, so each item is its own batch and its wait (arrival to
hand-over) is the scheduling delay; after the load stops the worker drains what is left,
so every item's wait counts. With earliest deadline first the waits grow evenly
across partitions and batchers; serving partition 0 (or the first batcher) first starves
the others.

Only the public API is used, so the same script measures an older checkout of redbatch as
well (run it with that checkout's interpreter and ``PYTHONPATH``). It starts its own
``redis-server`` on a free loopback port and stops it at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import redbatch
from benchmarks.redis_server import RedisServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--handler-ms", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=8.0, help="how long the load is offered")
    parser.add_argument("--overload", type=float, default=2.0, help="offered / served batches")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir, RedisServer(Path(workdir)) as server:
        store = redbatch.connect(server.url(), prefix="fair", partitions=args.partitions)
        names = ("busy", "quiet")
        batchers = {
            name: redbatch.Batcher(store, name, max_items=1, max_wait=0.0, lease=30) for name in names
        }
        waits: dict[tuple[str, int], list[float]] = defaultdict(list)
        lock = threading.Lock()

        def handler_for(name: str) -> Callable[[redbatch.Batch], None]:
            def handle(batch: redbatch.Batch) -> None:
                time.sleep(args.handler_ms / 1000)
                wait = time.time() - batch.arrived_at[0]
                part = zlib.crc32(batch.key.encode()) % args.partitions
                with lock:
                    waits[(name, part)].append(wait)

            return handle

        for name, batcher in batchers.items():
            batcher.handler(handler_for(name))
        worker = redbatch.Worker(
            store, list(batchers.values()), concurrency=args.concurrency, handle_signals=False
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        worker.started.wait(10)

        capacity = args.concurrency / (args.handler_ms / 1000)  # batches per second
        rate = capacity * args.overload
        total = int(rate * args.seconds)
        # The busy batcher gets 9 items in 10, spread over its partitions; the quiet one 1 in 10.
        started = time.monotonic()
        for n in range(total):
            name = "quiet" if n % 10 == 0 else "busy"
            batchers[name].add(f"k{n}", n)
            ahead = started + (n + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        offered_for = time.monotonic() - started
        served = sum(len(v) for v in waits.values())
        drain_until = time.monotonic() + 120  # then every item's wait is known
        while sum(len(v) for v in waits.values()) < total and time.monotonic() < drain_until:
            time.sleep(0.05)
        worker.stop()
        thread.join(60)
        store.close()

    load = os.getloadavg()
    print(f"redbatch {redbatch.__version__} at {redbatch.__file__}")
    print(
        f"offered {total} one-item batches in {offered_for:.1f} s ({rate:.0f}/s, {args.overload}x the "
        f"{capacity:.0f}/s a worker serves); {served} served by the end of the load, the rest after; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(f"{'batcher':8} {'partition':>9} {'served':>7} {'wait p50':>9} {'wait p90':>9} {'wait max':>9}")
    for (name, part), values in sorted(waits.items()):
        values.sort()
        p90 = values[int(0.9 * (len(values) - 1))]
        print(
            f"{name:8} {part:>9} {len(values):>7} {statistics.median(values):>8.2f}s {p90:>8.2f}s "
            f"{values[-1]:>8.2f}s"
        )


if __name__ == "__main__":
    main()
