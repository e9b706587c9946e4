"""The figures, in table order. Each module has ``FIGURE`` (its title) and
``run(ctx) -> list[Measurement]``."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from benchmarks.context import Context
from benchmarks.results import Measurement

NAMES: dict[str, str] = {
    "add": "benchmarks.figures.add",
    "add_many": "benchmarks.figures.add_many",
    "e2e": "benchmarks.figures.end_to_end",
    "lateness": "benchmarks.figures.lateness",
    "due": "benchmarks.figures.due_work",
    "memory": "benchmarks.figures.memory",
    "loss": "benchmarks.figures.loss",
    "add_threads": "benchmarks.figures.add_threads",
    "sqlite_sync": "benchmarks.figures.sqlite_sync",
    "add_async": "benchmarks.figures.add_async",
    "jobs": "benchmarks.figures.jobs_worker",
}


def runner(name: str) -> Callable[[Context], list[Measurement]]:
    module = import_module(NAMES[name])
    run: Callable[[Context], list[Measurement]] = module.run
    return run
