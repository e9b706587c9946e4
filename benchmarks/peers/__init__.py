"""The job queues ``python -m benchmarks.jobs`` compares, one small module each.

Every module has the same face, which the harness (``benchmarks.jobs``) and the worker
process (``benchmarks.peers.worker``) call:

- ``NAME`` (the table's subject), ``DISTRIBUTION`` (its PyPI name, for the version line),
  ``ENQUEUE_API`` (how ``enqueue`` submits: the peer's bulk or pipelined call where it has
  one, else one call per job) and ``SETTINGS`` (the worker configuration, for the notes;
  ``{c}`` stands for the run's jobs-in-flight per worker process);
- ``check()`` raises ``Unavailable`` when the peer cannot run here (not installed, or an API
  this checkout does not have yet);
- ``enqueue(url, count) -> float``: submit ``count`` no-op jobs from this process; the seconds
  the submitting took (connecting is not counted);
- ``submit_paced(url, count, rate)``: submit ``count`` jobs one call each at ``rate`` per
  second, each carrying the wall-clock time it was submitted;
- ``run_worker(url, concurrency, ready)``: run one worker in this process until SIGTERM,
  calling ``ready()`` once it is about to take jobs.

Every job is the same no-op: it notes in the harness' ledger (``common.note_started``) that
it ran and, when it carries a submit time, how long after it it started.
"""

from __future__ import annotations

from importlib import import_module
from types import ModuleType

MODULES: dict[str, str] = {
    "redbatch": "benchmarks.peers.redbatch_peer",
    "saq": "benchmarks.peers.saq_peer",
    "streaq": "benchmarks.peers.streaq_peer",
    "arq": "benchmarks.peers.arq_peer",
    "rq": "benchmarks.peers.rq_peer",
}
"""Subjects in table order: redbatch first, then the peers."""

PEERS = tuple(name for name in MODULES if name != "redbatch")

INSTALL = {
    "arq": "pip install --no-deps 'arq>=0.28' (its redis-py<6 cap would downgrade redbatch's)",
}
"""How to install a peer the bench extra does not bring; the others: pip install -e '.[bench]'."""


class Unavailable(RuntimeError):
    """This subject cannot run here; the message says why (printed in its row)."""


def load(name: str) -> ModuleType:
    """The subject's module; ``Unavailable`` when its package is missing or lacks the API."""
    try:
        module = import_module(MODULES[name])
    except ImportError as exc:
        how = INSTALL.get(name, "pip install -e '.[bench]'")
        raise Unavailable(f"not available: {exc}; {how}") from exc
    try:
        module.check()
    except (ImportError, AttributeError) as exc:
        raise Unavailable(f"not available: {exc}") from exc
    return module
