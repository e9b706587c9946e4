"""``python -m benchmarks.jobs [--quick] [--only SUBJECT] [--runs N]``: redbatch's jobs
against the Python job queues it is compared with (SAQ, streaQ, arq, RQ), issue 8 item 7.

One private ``redis-server`` (127.0.0.1, a free port, no persistence) serves every subject of
the run and is flushed before each measurement. For each subject:

- **enqueue/s**: ``jobs`` no-op jobs submitted from this process with the subject's bulk or
  pipelined call where it has one, else one call per job (the table says which); connecting
  is not timed. Every processed/s run below starts with such a load, so each is a sample.
- **processed/s** through 1 and 2 worker processes: the loaded jobs are waiting, then the
  workers start (``benchmarks.peers.worker``, each a real subprocess) and wait at a gate until
  all are ready; the clock runs from the gate's opening to the last job's start, as the jobs
  record it.
- **submit-to-start latency** p50/p99: one worker process already running, ``latency_jobs``
  jobs submitted one call each at a steady ``latency_rate`` per second, far below every
  subject's throughput, so it measures latency rather than a backlog; each job carries the
  wall-clock time it was submitted and notes when it started.

Every job notes itself in the harness' ledger (memory, sent to Redis database 15 every
20 ms), the same for every subject. The table gives the median of ``runs`` and the ratio
of redbatch to the best peer per column. Results go to ``benchmarks/results/jobs.{md,json}``
(``jobs-quick.*`` for ``--quick``, ``jobs-partial.*`` with ``--only``), with the load
average before and after: figures taken on a busy machine are noise.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from benchmarks import env
from benchmarks.ledger import Ledger
from benchmarks.peers import MODULES, PEERS, Unavailable, load
from benchmarks.peers.worker import GATE
from benchmarks.procs import Children
from benchmarks.redis_server import STATS_DB, RedisServer
from benchmarks.results import busy_warning
from benchmarks.stats import median, percentile

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True, slots=True)
class JobSizes:
    """How much work each measurement does: a full run takes about 4 minutes on a quiet
    2-core machine (arq, bound by its 0.5 s poll, takes a third of it), ``--quick`` about 30
    seconds."""

    quick: bool
    runs: int
    """Repetitions of each processed/s measurement (each with its own load: an enqueue/s
    sample); the table shows the median."""
    jobs: int
    """Jobs loaded (and timed as enqueue/s) before each processed/s run."""
    latency_jobs: int
    """Jobs of the one latency run per subject (p99 rests on the slowest 1% of them)."""
    latency_rate: float
    """Jobs per second submitted in the latency run."""
    concurrency: int = 32
    """Jobs in flight per worker process, for the subjects that have the setting (the
    no-op benchmarks of streaQ and SAQ use 32)."""
    workers: tuple[int, ...] = (1, 2)
    step_timeout: float = 90.0
    """No wait for workers lasts longer than this; a subject that cannot finish in time
    gets "failed" in that cell and the run goes on."""


FULL = JobSizes(quick=False, runs=3, jobs=3_000, latency_jobs=500, latency_rate=100.0)
QUICK = JobSizes(quick=True, runs=1, jobs=1_000, latency_jobs=100, latency_rate=100.0, step_timeout=30.0)


class StepFailed(RuntimeError):
    """Workers did not start or did not finish the jobs in time."""


# ---------------------------------------------------------------------------- the table


@dataclass
class Cell:
    unit: str
    runs: list[float] = field(default_factory=list)
    failed: str = ""

    @property
    def value(self) -> float | None:
        return median(self.runs) if self.runs and not self.failed else None


METRICS: dict[str, tuple[str, str]] = {
    "enqueue": ("enqueue", "jobs/s"),
    "processed_1": ("processed, 1 worker process", "jobs/s"),
    "processed_2": ("processed, 2 worker processes", "jobs/s"),
    "latency_p50": ("submit→start p50", "ms"),
    "latency_p99": ("submit→start p99", "ms"),
}
LOWER_IS_BETTER = {"latency_p50", "latency_p99"}


@dataclass
class Row:
    """One subject's line of the table."""

    key: str
    name: str
    version: str = ""
    enqueue_api: str = ""
    settings: str = ""
    unavailable: str = ""
    errors: int = 0
    """ERROR records its workers logged: the row's figures are then marked invalid."""
    cells: dict[str, Cell] = field(default_factory=lambda: {k: Cell(u) for k, (_, u) in METRICS.items()})

    def as_dict(self) -> dict[str, Any]:
        return {
            "subject": self.name,
            "version": self.version,
            "enqueue_api": self.enqueue_api,
            "settings": self.settings,
            "unavailable": self.unavailable,
            "errors": self.errors,
            "metrics": {
                k: {"unit": c.unit, "runs": c.runs, "value": c.value, "failed": c.failed}
                for k, c in self.cells.items()
            },
        }


def _format(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "—"
    if unit == "ms":
        return f"{value:.2f}" if value < 10 else f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    return f"{value:,.0f}"


def ratios(rows: list[Row]) -> dict[str, tuple[float, str] | None]:
    """Per column: redbatch ÷ the best peer's value (highest jobs/s, lowest latency) and
    that peer's name; None when either side has no value."""
    by_key = {r.key: r for r in rows}
    out: dict[str, tuple[float, str] | None] = {}
    for metric in METRICS:
        ours = by_key["redbatch"].cells[metric].value if "redbatch" in by_key else None
        peers = [
            (r.cells[metric].value, r.name)
            for r in rows
            if r.key != "redbatch" and r.cells[metric].value is not None and not r.errors
        ]
        if ours is None or not peers:
            out[metric] = None
            continue
        pick = min if metric in LOWER_IS_BETTER else max
        best, name = pick(peers, key=lambda pair: pair[0] or 0.0)
        out[metric] = (ours / best, name) if best else None
    return out


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell_text(row: Row, metric: str) -> str:
    if row.unavailable:
        return "not available"
    cell = row.cells[metric]
    if cell.failed:
        return f"failed: {cell.failed}"
    text = _format(cell.value, cell.unit)
    return f"{text} (INVALID)" if row.errors and cell.value is not None else text


def results_table(rows: list[Row]) -> str:
    header = ["subject"] + [f"{title} ({unit})" for title, unit in METRICS.values()]
    body = [[f"{r.name} {r.version}".strip()] + [_cell_text(r, m) for m in METRICS] for r in rows]
    ratio_row = ["**redbatch ÷ best peer**"]
    for pair in ratios(rows).values():
        ratio_row.append("—" if pair is None else f"{pair[0]:.2f}x (vs {pair[1]})")
    return _markdown_table(header, [*body, ratio_row])


def setup_table(rows: list[Row]) -> str:
    body = [[r.name, r.unavailable or r.enqueue_api, "" if r.unavailable else r.settings] for r in rows]
    return _markdown_table(["subject", "enqueue call", "worker settings"], body)


def notes(sizes: JobSizes) -> str:
    return " ".join(
        [
            f"{sizes.jobs:,} no-op jobs loaded from one producer process before each processed/s",
            "run (each load is an enqueue/s sample); then the workers start, wait until all are",
            "ready, and processed/s is counted from the moment they are let go to the last job's",
            f"start; median of {sizes.runs} run(s). Latency: one run of {sizes.latency_jobs:,} jobs",
            f"submitted one call each at {sizes.latency_rate:g}/s to 1 running worker process.",
            "Every worker logs at WARNING. Ratios: redbatch's value ÷ the best peer's (jobs/s:",
            "higher is better; latency: lower is better). Goal (issue 8): >= 2x the best peer's",
            "processed jobs/s per worker process.",
        ]
    )


def environment_line(environment: dict[str, Any]) -> str:
    peers = " · ".join(f"{k} {v}" for k, v in environment["peers"].items())
    return (
        f"{environment['date']} · {environment['cpu']}, {environment['cores']} cores, "
        f"{environment['memory_gib']} GiB · Python {environment['python']} · redis-server "
        f"{environment['redis_server']} · redis-py {environment['redis_py']} · hiredis "
        f"{environment['hiredis']} · {peers} · redbatch {environment['redbatch']} · load average "
        f"{environment['load_average_at_start']} → {environment.get('load_average_at_end', '?')}"
    )


def markdown(environment: dict[str, Any], rows: list[Row], sizes: JobSizes, mode: str) -> str:
    warning = busy_warning(environment)
    parts = [
        f"<!-- generated by `python -m benchmarks.jobs` ({mode}); do not edit by hand -->",
        f"Measured {environment_line(environment)}." + (f"\n\n**{warning}**" if warning else ""),
        results_table(rows),
        notes(sizes),
        setup_table(rows),
    ]
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- measuring


class Harness:
    """One run: the server and the sizes; each measurement starts and stops its own workers."""

    def __init__(self, server: RedisServer, sizes: JobSizes, verbose: bool = True) -> None:
        self.server = server
        self.sizes = sizes
        self.verbose = verbose
        self.started = time.monotonic()

    @property
    def url(self) -> str:
        return self.server.url(0)

    @property
    def stats_url(self) -> str:
        return self.server.url(STATS_DB)

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"[{time.monotonic() - self.started:6.1f}s] {message}", file=sys.stderr, flush=True)

    def start_workers(self, children: Children, key: str, count: int) -> float:
        """Start ``count`` worker processes, wait until each is ready and waiting at the
        gate, open it for all of them; the wall-clock time it opened."""
        args = ["--peer", key, "--url", self.url, "--stats", self.stats_url]
        args += ["--concurrency", str(self.sizes.concurrency)]
        workers = [children.module("benchmarks.peers.worker", args) for _ in range(count)]
        ledger = Ledger(self.stats_url)
        try:
            if not ledger.wait_ready(count, timeout=60):
                raise StepFailed(f"workers not ready in 60 s (exit codes {[w.poll() for w in workers]})")
            opened = time.time()
            ledger.client.rpush(GATE, *range(count))
            return opened
        finally:
            ledger.close()

    def wait_handled(self, count: int) -> Ledger:
        """The ledger once ``count`` jobs ran (the caller closes it)."""
        ledger = Ledger(self.stats_url)
        if not ledger.wait_handled(count, timeout=self.sizes.step_timeout):
            done = ledger.handled()
            ledger.close()
            raise StepFailed(f"{done:,} of {count:,} jobs in {self.sizes.step_timeout:.0f} s")
        return ledger

    def processed(self, key: str, peer: ModuleType, workers: int) -> tuple[float, float, int]:
        """Load ``jobs`` jobs, then drain them with ``workers`` processes:
        (enqueue jobs/s, processed jobs/s, errors logged)."""
        n = self.sizes.jobs
        self.server.flush()
        enqueue_rate = n / peer.enqueue(self.url, n)
        with Children() as children:
            opened = self.start_workers(children, key, workers)
            ledger = self.wait_handled(n)
            try:
                rate = n / (ledger.last_handled() - opened)
            finally:
                ledger.close()
        return enqueue_rate, rate, self._errors()

    def latency(self, key: str, peer: ModuleType) -> tuple[list[float], int]:
        """Submit-to-start times (ms) of ``latency_jobs`` jobs at a steady rate, 1 worker."""
        n = self.sizes.latency_jobs
        self.server.flush()
        with Children() as children:
            self.start_workers(children, key, 1)
            peer.submit_paced(self.url, n, self.sizes.latency_rate)
            ledger = self.wait_handled(n)
            try:
                waits = [1000 * x for x in ledger.lateness()]
            finally:
                ledger.close()
        if len(waits) != n:
            raise StepFailed(f"{len(waits):,} start times noted for {n:,} jobs")
        return waits, self._errors()

    def _errors(self) -> int:
        ledger = Ledger(self.stats_url)
        try:
            return ledger.errors()
        finally:
            ledger.close()

    def measure(self, key: str) -> Row:
        row = Row(key, key)
        try:
            peer = load(key)
        except Unavailable as exc:
            module = sys.modules.get(MODULES[key])
            row.name = getattr(module, "NAME", key)
            row.unavailable = str(exc)
            self.log(f"{row.name}: {exc}")
            return row
        row.name, row.version = peer.NAME, _version(peer.DISTRIBUTION)
        row.enqueue_api = peer.ENQUEUE_API
        row.settings = peer.SETTINGS.format(c=self.sizes.concurrency)
        for workers in self.sizes.workers:
            cell = row.cells[f"processed_{workers}"]
            for _ in range(self.sizes.runs):
                self.log(f"{row.name}: processed/s, {workers} worker process(es)")
                try:
                    enqueue_rate, rate, errors = self.processed(key, peer, workers)
                except StepFailed as exc:
                    cell.failed = str(exc)
                    self.log(f"{row.name}: {exc}")
                    break
                row.cells["enqueue"].runs.append(enqueue_rate)
                cell.runs.append(rate)
                row.errors += errors
        p50, p99 = row.cells["latency_p50"], row.cells["latency_p99"]
        self.log(f"{row.name}: submit-to-start latency")
        try:
            waits, errors = self.latency(key, peer)
        except StepFailed as exc:
            p50.failed = p99.failed = str(exc)
            self.log(f"{row.name}: {exc}")
        else:
            p50.runs.append(percentile(waits, 50))
            p99.runs.append(percentile(waits, 99))
            row.errors += errors
        return row


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ""


def describe() -> dict[str, Any]:
    environment = env.describe()
    for name in ("celery", "celery_batches"):
        environment.pop(name, None)
    distributions = ("saq", "streaq", "coredis", "arq", "rq")
    environment["peers"] = {name: _version(name) or "not installed" for name in distributions}
    return environment


# ---------------------------------------------------------------------------- command line


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jobs", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (smoke pass, ~30 s)")
    parser.add_argument(
        "--only", action="append", choices=list(MODULES), metavar="SUBJECT",
        help=f"measure only this subject (repeatable): {', '.join(MODULES)}",
    )  # fmt: skip
    parser.add_argument("--runs", type=int, help="repetitions per processed/s measurement (median shown)")
    parser.add_argument("--jobs", type=int, help="jobs per processed/s run")
    parser.add_argument("--latency-jobs", type=int, help="jobs per latency run")
    parser.add_argument("--latency-rate", type=float, help="jobs/s submitted in the latency runs")
    parser.add_argument("--concurrency", type=int, help="jobs in flight per worker process")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where jobs.{json,md} go")
    parser.add_argument("--no-write", action="store_true", help="print only, write no result files")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace) -> JobSizes:
    sizes = QUICK if args.quick else FULL
    overrides = {
        "runs": args.runs,
        "jobs": args.jobs,
        "latency_jobs": args.latency_jobs,
        "latency_rate": args.latency_rate,
        "concurrency": args.concurrency,
    }
    for name, value in overrides.items():
        if value is not None and value <= 0:
            raise SystemExit(f"--{name.replace('_', '-')} must be positive, not {value}")
    return replace(sizes, **{k: v for k, v in overrides.items() if v is not None})


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    sizes = sizes_from(args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _run(args, sizes)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace, sizes: JobSizes) -> int:
    mode = ("quick" if sizes.quick else "full") + f", {sizes.runs} run(s) per throughput, median shown"
    keys = [k for k in MODULES if not args.only or k in args.only]
    environment = describe()
    rows: list[Row] = []
    crashed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="redbatch-jobs-") as tmp, RedisServer(Path(tmp)) as server:
        harness = Harness(server, sizes, verbose=not args.quiet)
        for key in keys:
            try:
                rows.append(harness.measure(key))
            except Exception:
                crashed.append(key)
                harness.log(f"{key} failed:\n{traceback.format_exc()}")
                rows.append(Row(key, key, unavailable="failed (see stderr)"))
    environment["load_average_at_end"] = env.load_average()
    text = markdown(environment, rows, sizes, mode)
    print(text)
    if not args.no_write:
        stem = "jobs-quick" if sizes.quick else "jobs-partial" if args.only else "jobs"
        args.out.mkdir(parents=True, exist_ok=True)
        data = {
            "mode": mode,
            "environment": environment,
            "warning": busy_warning(environment),
            "sizes": {k: getattr(sizes, k) for k in JobSizes.__slots__},
            "subjects": [r.as_dict() for r in rows],
            "ratios": {
                k: None if v is None else {"ratio": v[0], "best_peer": v[1]} for k, v in ratios(rows).items()
            },
        }
        (args.out / f"{stem}.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        (args.out / f"{stem}.md").write_text(text)
        print(f"wrote {args.out / stem}.json and .md", file=sys.stderr)
    missing = [r.name for r in rows if r.key in PEERS and r.unavailable]
    if missing:
        print(f"peers not measured: {', '.join(missing)}", file=sys.stderr)
    return 1 if crashed or any(c.failed for r in rows for c in r.cells.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
