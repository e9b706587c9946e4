"""A redbatch worker process for the benchmarks: ``python -m benchmarks.worker_proc ...``.

It runs ``redbatch.Worker`` in its main thread (so SIGTERM stops it gracefully) with a
handler that records each batch in the harness' ledger: the item count, and optionally each
item's lateness (handed over minus arrival plus ``max_wait``) or sequence number. With
``--jobs`` it serves a job queue (``redbatch.Jobs``) named ``--name`` instead, whose one
function, ``noop``, records one item per job. Errors the
worker logs are counted in the ledger too, and the figures flag them.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

import redbatch
from benchmarks.ledger import Ledger


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker_proc")
    parser.add_argument("--store", required=True, help="store URL")
    parser.add_argument("--stats", required=True, help="ledger Redis URL")
    parser.add_argument("--name", default="bench")
    parser.add_argument("--max-items", type=int, default=100)
    parser.add_argument("--max-wait", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--record", choices=("count", "lateness", "seqs"), default="count")
    parser.add_argument("--jobs", action="store_true", help="serve a job queue with a no-op function")
    return parser.parse_args(argv)


class _ErrorCounter(logging.Handler):
    """Counts the worker's ERROR records into the ledger, so a figure measured while
    redbatch was failing says so instead of looking like a result."""

    def __init__(self, ledger: Ledger) -> None:
        super().__init__(level=logging.ERROR)
        self.ledger = ledger

    def emit(self, record: logging.LogRecord) -> None:
        self.ledger.error()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING)
    ledger = Ledger(args.stats)
    logging.getLogger().addHandler(_ErrorCounter(ledger))
    store = redbatch.connect(args.store)
    if args.jobs:
        jobs = redbatch.Jobs(store, args.name)

        @jobs.function
        def noop(params: object, ctx: redbatch.JobContext) -> None:
            ledger.record(1)

        _serve(store, jobs, args.concurrency, ledger)
        return
    batcher = redbatch.Batcher(store, args.name, max_items=args.max_items, max_wait=args.max_wait)
    max_wait = args.max_wait

    @batcher.handler
    def handle(batch: redbatch.Batch) -> None:
        handed_over = time.time()
        if args.record == "lateness":
            late = [handed_over - (arrived + max_wait) for arrived in batch.arrived_at]
            ledger.record(len(batch.items), lateness=late)
        elif args.record == "seqs":
            ledger.record(len(batch.items), seqs=[item["seq"] for item in batch.items])
        else:
            ledger.record(len(batch.items))

    _serve(store, batcher, args.concurrency, ledger)


def _serve(
    store: redbatch.Store, served: redbatch.Batcher | redbatch.Jobs, concurrency: int, ledger: Ledger
) -> None:
    worker = redbatch.Worker(store, [served], concurrency=concurrency)
    ledger.ready()
    try:
        worker.run()
    finally:
        store.close()
        ledger.close()


if __name__ == "__main__":
    main()
