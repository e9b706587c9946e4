"""Baseline "celery-batches": the Celery task class a Python user would otherwise pick.

Producers call ``collect.delay(key, item)``; a Celery worker (``--pool=solo``, one process)
buffers the messages it receives from the Redis broker and calls the task with a list of
requests every ``flush_every`` messages or ``flush_interval`` seconds. As the package
documents, the prefetch limit is lifted (``worker_prefetch_multiplier = 0``) so that the
worker can hold more than ``flush_every`` messages.

Configured from the environment, so a worker started with
``celery -A benchmarks.baselines.celery_batches_app worker`` sees the same settings:
``BENCH_BROKER_URL``, ``BENCH_STATS_URL``, ``BENCH_FLUSH_EVERY``, ``BENCH_FLUSH_INTERVAL``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown
from celery_batches import Batches, SimpleRequest

from benchmarks.ledger import Ledger

QUEUE = "bench"
FLUSH_EVERY = int(os.environ.get("BENCH_FLUSH_EVERY", "100"))
FLUSH_INTERVAL = float(os.environ.get("BENCH_FLUSH_INTERVAL", "1.0"))

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_prefetch_multiplier=0,
    worker_enable_remote_control=False,
    worker_send_task_events=False,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

_ledger: Ledger | None = None


def ledger() -> Ledger:
    global _ledger  # noqa: PLW0603 - one connection per worker process
    if _ledger is None:
        _ledger = Ledger(os.environ["BENCH_STATS_URL"])
    return _ledger


@app.task(base=Batches, name="bench.collect", flush_every=FLUSH_EVERY, flush_interval=FLUSH_INTERVAL)
def collect(requests: Sequence[SimpleRequest]) -> None:
    """The no-op handler: record how many items arrived (and their sequence numbers)."""
    ledger().record(len(requests))


@worker_ready.connect
def _on_ready(**_: Any) -> None:
    ledger().ready()


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    ledger().close()


def configure(broker_url: str) -> None:
    """Point this process' producer side at the benchmark's broker (before first use)."""
    if app.conf.broker_url != broker_url:
        app.conf.broker_url = broker_url


class CeleryProducer:
    """``collect.delay(key, item)`` per item, as a user writes it."""

    pre_encoded = False

    def __init__(self, broker_url: str) -> None:
        configure(broker_url)

    def add(self, key: str, item: Any) -> None:
        collect.delay(key, item)

    def close(self) -> None:
        """Keep the app's connection pool, as an application would, for the next producer."""


def worker_args(index: int) -> list[str]:
    """Arguments of ``python -m celery`` that run one single-process worker."""
    return [
        "-A", __name__, "worker", "--pool=solo", "--concurrency=1", "-Q", QUEUE,
        "-n", f"bench{index}@127.0.0.1", "--without-gossip", "--without-mingle",
        "--without-heartbeat", "--loglevel=WARNING",
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit("run with: python -m celery -A benchmarks.baselines.celery_batches_app worker")
