"""One subject's worker as a process of its own:
``python -m benchmarks.peers.worker --peer NAME --url URL --stats URL --concurrency N``.

When the worker is about to take jobs it says so in the ledger, then waits at a gate (a
``BLPOP`` on ``GATE`` in the ledger's database) until the harness opens it for every worker
at once: a worker still starting up cannot then steal the CPU from one already working on
the clock, and the clock starts when the gate opens, not when the first worker happened to
be ready.

Logging is at WARNING for every subject (per-job INFO lines would measure the terminal), and
ERROR records are counted in the ledger so that a figure taken while a worker failed is
marked invalid rather than read as a result. SIGTERM stops the worker the subject's own way.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from benchmarks.ledger import Ledger
from benchmarks.peers import MODULES, common, load

GATE = "bench:jobs:gate"
GATE_TIMEOUT = 100
"""Seconds a ready worker waits for the gate before it gives up and exits."""


class _ErrorCounter(logging.Handler):
    def __init__(self, ledger: Ledger) -> None:
        super().__init__(level=logging.ERROR)
        self.ledger = ledger

    def emit(self, record: logging.LogRecord) -> None:
        self.ledger.error()


def ready_then_wait(ledger: Ledger) -> Callable[[], None]:
    """The ``ready`` callback a subject's ``run_worker`` calls once, just before taking jobs."""

    def ready() -> None:
        ledger.ready()
        if ledger.client.blpop([GATE], timeout=GATE_TIMEOUT) is None:
            raise SystemExit(f"the harness did not open {GATE} within {GATE_TIMEOUT} s")

    return ready


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers.worker")
    parser.add_argument("--peer", required=True, choices=list(MODULES))
    parser.add_argument("--url", required=True, help="the Redis URL the jobs are queued in")
    parser.add_argument("--stats", required=True, help="ledger Redis URL")
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ledger = Ledger(args.stats)
    logging.getLogger().addHandler(_ErrorCounter(ledger))
    common.LEDGER = ledger
    peer = load(args.peer)
    try:
        peer.run_worker(args.url, args.concurrency, ready_then_wait(ledger))
    finally:
        ledger.close()


if __name__ == "__main__":
    main()
