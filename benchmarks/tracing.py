"""``python -m benchmarks.tracing``: the cost of producer spans, a lone ``add`` with and without.

For each store (memory, and a SQLite file), one thread adds items one at a time (a lone add:
no other thread shares its store call) through: the plain ``Batcher`` ("plain"); a
``tracing.TracedProducer`` with no SDK configured, OpenTelemetry's no-op ("traced, no SDK":
what tracing costs when it is off); and, when ``opentelemetry-sdk`` is installed, one with an
SDK provider exporting to memory ("traced, SDK": what it costs when on; the exporter keeps
every span, so its runs spread). Runs alternate, each run starting with the next subject;
the table shows each one's median microseconds per add, and its fastest and slowest run, so
that the noise can be read beside the differences.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redbatch
from redbatch import tracing

try:  # optional: the "traced, SDK" row
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
except ImportError:
    TracerProvider = None  # type: ignore[assignment, misc]

Add = Callable[[str, Any], None]


def per_add_us(add: Add, count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        add(f"key-{n % 100}", {"n": n})
    return (time.perf_counter() - started) / count * 1e6


def sdk_provider() -> Any:
    if TracerProvider is None:
        return None
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    return provider


def measure(url: str, count: int, runs: int) -> dict[str, list[float]]:
    store = redbatch.connect(url)
    try:
        batcher = redbatch.Batcher(store, "tracing-cost", max_items=1_000_000, max_wait=3600)
        subjects: dict[str, Add] = {
            "plain": batcher.add,
            "traced, no SDK": tracing.TracedProducer(batcher).add,
        }
        provider = sdk_provider()
        if provider is not None:
            subjects["traced, SDK"] = tracing.TracedProducer(batcher, provider).add
        for add in subjects.values():  # warm up
            per_add_us(add, max(1, count // 10))
        times: dict[str, list[float]] = {name: [] for name in subjects}
        order = list(subjects.items())
        for run in range(runs):  # each run starts with another subject: no one always goes first
            for name, add in order[run % len(order) :] + order[: run % len(order)]:
                times[name].append(per_add_us(add, count))
        return times
    finally:
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adds", type=int, default=3000, help="adds per run on SQLite (x10 on memory)")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as workdir:
        urls = {"memory": "memory://", "SQLite": f"sqlite:///{Path(workdir) / 'tracing.db'}"}
        print("| store | add through | median us/add | fastest | slowest |")
        print("|---|---|---:|---:|---:|")
        for store, url in urls.items():
            count = args.adds * (10 if store == "memory" else 1)
            for name, runs in measure(url, count, args.runs).items():
                median = statistics.median(runs)
                print(f"| {store} | {name} | {median:.2f} | {min(runs):.2f} | {max(runs):.2f} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
