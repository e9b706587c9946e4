"""The ``redbatch jobs`` and ``redbatch groups`` commands: list, show, cancel, count and clean
up a job queue's jobs; follow a group's progress live.

They share the command line's store option, error lines and exit codes (``redbatch.cli``,
which registers them); each read command takes ``--json`` for scripts. A queue is opened
with ``Jobs.open``: a name the store never saw a job or worker of is ``NotFound`` (exit 3).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Annotated

import orjson
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from redbatch.cli import (
    JsonOption,
    UrlOption,
    _ago,
    _clip,
    _when,
    console,
    fail,
    opened,
    print_json,
    reports_errors,
)
from redbatch.jobs import Jobs
from redbatch.jobtypes import GroupProgress, Job

jobs_app = typer.Typer(
    help="List, show, cancel, count and clean up a job queue's jobs.", no_args_is_help=True
)
groups_app = typer.Typer(help="Show a group of jobs' progress, live with --watch.", no_args_is_help=True)

QueueArg = Annotated[str, typer.Argument(help="The job queue's name.", show_default=False)]
STATUSES = ("pending", "running", "succeeded", "failed", "cancelled")
STATUS_STYLE = {"succeeded": "green", "failed": "red", "running": "cyan", "cancelled": "yellow"}


def _status(status: str) -> str:
    style = STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


def _progress_text(job: Job) -> str:
    if job.progress is None:
        return "-"
    text = f"{job.progress * 100:.0f}%"
    return f"{text} {escape(_clip(job.message, 40))}" if job.message else text


@jobs_app.command("list")
@reports_errors
def jobs_list(
    queue: Annotated[str | None, typer.Argument(help="The job queue's name.", show_default=False)] = None,
    status: Annotated[
        str | None, typer.Option(help=f"Only jobs of this status: {', '.join(STATUSES)}.", show_default=False)
    ] = None,
    group: Annotated[str | None, typer.Option(help="Only this group's members.", show_default=False)] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Show at most this many, newest first.")] = 20,
    cursor: Annotated[
        str | None, typer.Option(help="Continue a previous listing (its printed cursor).", show_default=False)
    ] = None,
    as_json: JsonOption = False,
    url: UrlOption = None,
) -> None:
    """List a queue's jobs, newest first, by status and group, a page at a time."""
    if queue is None:
        fail("name a job queue: redbatch jobs list QUEUE (the store keeps no registry of queue names yet)")
    if status is not None and status not in STATUSES:
        fail(f"--status is one of {', '.join(STATUSES)}, not {status!r}")
    with opened(url) as store:
        page = Jobs.open(store, queue).list(status, group, limit, cursor)
    if as_json:
        print_json({"jobs": [asdict(job) for job in page.jobs], "cursor": page.cursor})
        return
    if not page.jobs:
        console.print(f"no jobs in {queue!r}" + (f" with status {status}" if status else ""))
        return
    table = Table(title=f"{queue}: {len(page.jobs)} jobs, newest first", title_justify="left")
    for column in ("id", "function", "status", "lane", "attempt", "progress", "created", "last error"):
        table.add_column(column, overflow="fold", no_wrap=column in ("status", "created"))
    for job in page.jobs:
        last_error = (job.error.strip().splitlines() or [""])[-1]
        table.add_row(
            escape(job.id),
            escape(job.function),
            _status(job.status),
            job.lane,
            f"{job.attempt}/{job.max_attempts}",
            _progress_text(job),
            f"{_ago(time.time() - job.created_at)} ago",
            escape(_clip(last_error, 60)),
        )
    console.print(table)
    if page.cursor is not None:
        console.print(f"more: --cursor {page.cursor}", soft_wrap=True)


@jobs_app.command("show")
@reports_errors
def jobs_show(
    queue: QueueArg,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id.", show_default=False)],
    as_json: JsonOption = False,
    url: UrlOption = None,
) -> None:
    """Show one job: status, progress, result or error, times."""
    with opened(url) as store:
        job = Jobs.open(store, queue).get(job_id)
    if as_json:
        print_json(asdict(job))
        return
    table = Table(title=f"{queue} / {escape(job.id)}", title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("", overflow="fold")
    step = f"{job.step + 1} of {job.steps}" if job.steps > 1 else None
    rows: list[tuple[str, str | None]] = [
        ("function", escape(job.function)),
        ("status", _status(job.status) + (" (cancel requested)" if job.cancel_requested else "")),
        ("step", step),
        ("lane", job.lane),
        ("attempt", f"{job.attempt} of {job.max_attempts}"),
        ("progress", _progress_text(job)),
        ("group", escape(job.group) or None),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("result", None if job.result is None else escape(_clip(orjson.dumps(job.result).decode(), 2000))),
        ("error", escape(_clip(job.error, 2000)) or None),
    ]
    for label, value in rows:
        if value is not None:
            table.add_row(label, value)
    console.print(table)


@jobs_app.command("cancel")
@reports_errors
def jobs_cancel(
    queue: QueueArg,
    job_id: Annotated[str, typer.Argument(metavar="ID", help="The job's id.", show_default=False)],
    url: UrlOption = None,
) -> None:
    """Cancel a pending job; ask a running one to stop; leave a finished one as it is."""
    with opened(url) as store:
        job = Jobs.open(store, queue).cancel(job_id)
    asked = " (asked to stop: it is running)" if job.status == "running" else ""
    console.print(f"job {escape(job.id)!r} of {queue!r} is {job.status}{asked}")


@jobs_app.command("cleanup")
@reports_errors
def jobs_cleanup(
    queue: QueueArg,
    older_than: Annotated[
        float, typer.Option("--older-than", min=0, help="Delete jobs finished over this many seconds ago.")
    ],
    url: UrlOption = None,
) -> None:
    """Delete jobs (and whole groups) that finished over --older-than seconds ago."""
    with opened(url) as store:
        deleted = Jobs.open(store, queue).cleanup(older_than)
    console.print(f"deleted {deleted} finished jobs of {queue!r}")


@jobs_app.command("counts")
@reports_errors
def jobs_counts(queue: QueueArg, as_json: JsonOption = False, url: UrlOption = None) -> None:
    """How many jobs of the queue hold each status."""
    with opened(url) as store:
        counts = Jobs.open(store, queue).counts()
    if as_json:
        print_json(counts)
        return
    table = Table(title=f"{queue}: jobs by status", title_justify="left")
    table.add_column("status")
    table.add_column("jobs", justify="right")
    for status in STATUSES:
        table.add_row(_status(status), f"{counts.get(status, 0):,}")
    console.print(table)


# ---------------------------------------------------------------- groups


def _group_table(queue: str, progress: GroupProgress) -> Table:
    table = Table(title=f"{queue} / group {escape(progress.id)}", title_justify="left", show_header=False)
    table.add_column("")
    table.add_column("", justify="right")
    for label in ("total", "pending", "running", "succeeded", "failed", "cancelled"):
        table.add_row(label, f"{getattr(progress, label):,}")
    table.add_row("percent", f"{progress.percent:.1f}%")
    table.add_row("round", str(progress.round))
    table.add_row("finished", _when(progress.finished_at))
    return table


def _summary(progress: GroupProgress) -> str:
    return (
        f"{progress.succeeded} succeeded, {progress.failed} failed, {progress.cancelled} cancelled, "
        f"{progress.running} running, {progress.pending} pending"
    )


@groups_app.command("show")
@reports_errors
def groups_show(
    queue: QueueArg,
    group_id: Annotated[str, typer.Argument(metavar="GROUP", help="The group's id.", show_default=False)],
    watch: Annotated[
        bool, typer.Option("--watch", help="A live progress bar until the group finishes.")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.05, help="Seconds between reads with --watch.")] = 0.5,
    as_json: JsonOption = False,
    url: UrlOption = None,
) -> None:
    """A group's counters; with --watch, a live progress bar until every member finished
    (with --json, one JSON line per change)."""
    with opened(url) as store:
        jobs = Jobs.open(store, queue)
        progress = jobs.progress(group_id)
        if watch and as_json:
            _watch_json(jobs, progress, interval)
        elif watch:
            progress = _watch_bar(jobs, progress, interval)
    if as_json and not watch:
        print_json(asdict(progress))
    elif not as_json:
        console.print(_group_table(queue, progress))


def _watch_json(jobs: Jobs, progress: GroupProgress, interval: float) -> None:
    print_json(asdict(progress))
    while progress.finished_at is None:
        time.sleep(interval)  # the poll interval the user chose
        latest = jobs.progress(progress.id)
        if latest != progress:
            print_json(asdict(latest))
        progress = latest


def _watch_bar(jobs: Jobs, progress: GroupProgress, interval: float) -> GroupProgress:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.percentage:>5.1f}%  {task.fields[summary]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(escape(progress.id), total=progress.total, summary=_summary(progress))
        while True:
            done = progress.succeeded + progress.failed + progress.cancelled
            bar.update(task, total=progress.total, completed=done, summary=_summary(progress))
            if progress.finished_at is not None:
                return progress
            time.sleep(interval)  # the poll interval the user chose
            progress = jobs.progress(progress.id)
