"""The ``redbatch`` command line: run workers, look at batchers and dead letters, try the demo.

Every command takes ``--url`` (default: ``REDBATCH_URL``, else ``sqlite:///./redbatch.db``).
An error prints one red line, no traceback, and exits with a code that says what went wrong:

- 0: done.
- 1: any other redbatch error (``ConfigError`` for a bad URL or setting, a Redis error, ...).
- 2: a usage error: typer's (a missing argument, an unknown option), or a module that
  defines no batcher with a handler nor job queue with a function.
- 3: ``NotFound``: something named does not exist (a dead letter's id, ...).
- 4: ``StoreUnavailable``: the store cannot be reached, or refuses writes.
"""

from __future__ import annotations

import enum
import functools
import importlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Annotated, NoReturn, ParamSpec, TypeVar

import orjson
import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from redbatch.batcher import Batcher
from redbatch.demo import DemoOptions, demo_service, run_demo
from redbatch.errors import NotFound, RedbatchError, StoreUnavailable
from redbatch.jobs import Jobs
from redbatch.logs import LOG_FORMAT_ENV, LogFormat, json_handler, log_format_from_env
from redbatch.metrics import instrument, serve_metrics
from redbatch.stores import Store, connect
from redbatch.types import BatcherStats, CorruptItem
from redbatch.worker import Worker

P = ParamSpec("P")
R = TypeVar("R")

app = typer.Typer(
    name="redbatch",
    help="Durable keyed micro-batching: run workers, inspect batchers and dead letters, try the demo.",
    no_args_is_help=True,
    add_completion=False,
)
dead_letters_app = typer.Typer(help="List, replay or purge a batcher's dead letters.", no_args_is_help=True)
app.add_typer(dead_letters_app, name="dead-letters")

console = Console()
err_console = Console(stderr=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url", help="Store URL (default: REDBATCH_URL, else sqlite:///./redbatch.db).", show_default=False
    ),
]
BatcherArg = Annotated[str, typer.Argument(help="The batcher's name.", show_default=False)]
MAX_CELL = 120  # characters of an item or error shown in a table cell


_log_handler = RichHandler(console=err_console, show_path=False)


_json_log_handler = json_handler()


@app.callback()
def _setup() -> None:
    try:
        log_format = log_format_from_env()
    except RedbatchError as exc:
        fail(str(exc))
    configure_logging(logging.WARNING, log_format)


def configure_logging(level: int, log_format: LogFormat = "text") -> None:
    """Show redbatch's log records on stderr: through rich (above a live display, if any),
    or as one JSON object per line (``redbatch.logs.JsonFormatter``)."""
    logger = logging.getLogger("redbatch")
    logger.setLevel(level)
    wanted, other = (
        (_json_log_handler, _log_handler) if log_format == "json" else (_log_handler, _json_log_handler)
    )
    if other in logger.handlers:
        logger.removeHandler(other)
    if wanted not in logger.handlers:
        logger.addHandler(wanted)


JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _json_default(value: object) -> object:
    if isinstance(value, bytes):  # a CorruptItem's raw bytes, shown as text
        return value.decode(errors="replace")
    return str(value)


def print_json(value: object) -> None:
    """One JSON document on plain stdout (rich would wrap or colour it)."""
    typer.echo(orjson.dumps(value, default=_json_default).decode())


def fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


EXIT_CODES: tuple[tuple[type[RedbatchError], int], ...] = ((NotFound, 3), (StoreUnavailable, 4))
"""Exit codes of the errors a script may want to tell apart; any other RedbatchError exits 1."""


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a RedbatchError into one red line and its exit code, with no traceback."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except RedbatchError as exc:
            code = next((code for error, code in EXIT_CODES if isinstance(exc, error)), 1)
            fail(f"{type(exc).__name__}: {exc}", code=code)

    return wrapper


@contextmanager
def opened(url: str | None) -> Iterator[Store]:
    store = connect(url)
    try:
        yield store
    finally:
        store.close()


def _clip(text: str, width: int = MAX_CELL) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _item_text(value: object) -> str:
    """An item as one line of JSON; an item that does not decode as its raw bytes."""
    if isinstance(value, CorruptItem):
        return f"<corrupt: {value.raw!r}>"
    return orjson.dumps(value).decode()


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    moment = datetime.fromtimestamp(seconds).astimezone()
    return f"{moment:%Y-%m-%d %H:%M:%S} ({_ago(time.time() - seconds)} ago)"


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------- demo


@app.command()
@reports_errors
def demo(
    url: UrlOption = None,
    seconds: Annotated[float, typer.Option(min=0.1, help="How long to produce messages.")] = 20.0,
    conversations: Annotated[int, typer.Option(min=1, help="How many chat conversations (keys).")] = 300,
    rate: Annotated[float, typer.Option(min=0.1, help="Messages per second, on average.")] = 200.0,
) -> None:
    """A first run: batch a synthetic chat load live, then summarise. Run it again to resume."""
    with opened(url) as store:
        options = DemoOptions(seconds=seconds, conversations=conversations, rate=rate)
        run_demo(store, options, console)


# ---------------------------------------------------------------- worker


class LogFormatChoice(enum.StrEnum):
    text = "text"
    json = "json"


def _say(message: str, log_format: LogFormatChoice) -> None:
    """A worker's own line on stderr; a JSON log record when the logs are JSON, so that
    every line a log shipper reads parses."""
    if log_format is LogFormatChoice.json:
        logging.getLogger("redbatch.cli").info(message)
    else:
        err_console.print(message, soft_wrap=True, markup=False, highlight=False)


def import_target(target: str) -> ModuleType:
    """Import a dotted module path (from the current directory too) or a ``.py`` file."""
    if target.endswith(".py") or os.sep in target or "/" in target:
        return _import_file(Path(target))
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and (target == exc.name or target.startswith(exc.name + ".")):
            fail(f"cannot import {target!r}: no module named {exc.name!r} (run from the directory above it?)")
        raise


def _import_file(path: Path) -> ModuleType:
    if not path.is_file():
        fail(f"no such file: {path}")
    path = path.resolve()
    sys.path.insert(0, str(path.parent))  # so the file can import its neighbours
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        fail(f"cannot import {path}: not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def module_batchers(module: ModuleType) -> list[Batcher | Jobs]:
    """The Batchers with a handler and the job queues (``Jobs``) with a function that
    ``module`` defines at module level (each once)."""
    found: dict[int, Batcher | Jobs] = {}
    for value in vars(module).values():
        if isinstance(value, Batcher | Jobs):
            found.setdefault(id(value), value)
    batchers: list[Batcher | Jobs] = []
    for batcher in found.values():
        if isinstance(batcher, Batcher) and batcher.handler_fn is None:
            err_console.print(f"[yellow]skipping batcher {batcher.name!r}: it has no handler[/]")
        elif isinstance(batcher, Jobs) and not batcher.functions:
            err_console.print(f"[yellow]skipping job queue {batcher.name!r}: it has no function[/]")
        else:
            batchers.append(batcher)
    return batchers


def load_batchers(target: str) -> list[Batcher | Jobs]:
    try:
        module = import_target(target)
    except (RedbatchError, typer.Exit):
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module failed: show where, then exit 2
        err_console.print_exception(max_frames=10)
        fail(f"cannot import {target!r}: {type(exc).__name__}: {exc}")
    batchers = module_batchers(module)
    if not batchers:
        fail(f"{target!r} defines no redbatch.Batcher with a handler nor redbatch.Jobs with a function")
    stores = {id(b.store): b.store for b in batchers}
    if len(stores) > 1:
        urls = ", ".join(f"{b.name} on {b.store.url}" for b in batchers)
        fail(f"the batchers of {target!r} use {len(stores)} different stores ({urls}); a worker runs one")
    return batchers


@app.command()
@reports_errors
def worker(
    module: Annotated[str, typer.Argument(help="Dotted module path, or a path to a .py file.")],
    url: Annotated[
        str | None,
        typer.Option("--url", help="Sets REDBATCH_URL before MODULE is imported, for its connect()."),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Batches handled at once.")] = 16,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: a free port)."
        ),
    ] = None,
    metrics_host: Annotated[
        str, typer.Option(help="The address the metrics port binds; anything but loopback is public.")
    ] = "127.0.0.1",
    log_format: Annotated[
        LogFormatChoice, typer.Option(envvar=LOG_FORMAT_ENV, help="text, or one JSON object per line.")
    ] = LogFormatChoice.text,
) -> None:
    """Run the handlers of every Batcher and the functions of every Jobs queue MODULE
    defines, until SIGTERM or Ctrl-C."""
    if url is not None:
        os.environ["REDBATCH_URL"] = url
    configure_logging(logging.INFO, "json" if log_format is LogFormatChoice.json else "text")
    batchers = load_batchers(module)
    store = batchers[0].store
    names = ", ".join(b.name for b in batchers)
    _say(f"running {names} on {store.url}, concurrency {concurrency}; Ctrl-C to stop", log_format)
    hooks = None
    server = None
    if metrics_port is not None:
        instruments = instrument(batchers)
        server = serve_metrics(instruments.registry, metrics_port, metrics_host)
        hooks = instruments.hooks
        _say(f"metrics at {server.url}", log_format)
    runner = Worker(store, batchers, concurrency=concurrency, hooks=hooks)
    try:
        runner.run()
    finally:
        if server is not None:
            server.close()
    counts = runner.counters
    abandoned = ""
    if counts.abandoned:
        leases = "its lease" if counts.abandoned == 1 else "their leases"
        abandoned = f", {counts.abandoned} abandoned to {leases}"
    _say(
        f"stopped. Batches: {counts.succeeded} succeeded, {counts.retried} retried, "
        f"{counts.dead_lettered} dead-lettered{abandoned}",
        log_format,
    )
    # Handlers stuck in sync code may still run in their (daemon) threads: returning ends
    # the process, so they cannot run beside another worker that reclaims their batches.


# ---------------------------------------------------------------- serve


@app.command()
@reports_errors
def serve(
    module: Annotated[
        str | None,
        typer.Option(
            "--worker",
            help="Also run MODULE's batchers and job queues in-process, and serve them.",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; 0.0.0.0 opens it to the network.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on.")] = 8000,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", help="Store URL; sets REDBATCH_URL before MODULE is imported.", show_default=False
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Batches the worker handles at once.")] = 16,
    demo: Annotated[
        bool, typer.Option("--demo", help="Run the demo's chat load and its worker in-process, to watch.")
    ] = False,
) -> None:
    """Serve the HTTP API (OpenAPI at /docs) and the dashboard (/) until SIGTERM or Ctrl-C;
    with --worker, run a worker too; with --demo, the demo's chat load and its worker.

    Mutating endpoints require Authorization: Bearer REDBATCH_API_TOKEN when that is set.
    """
    from redbatch.service import create_app  # noqa: PLC0415 - FastAPI only for this command
    from redbatch.service.server import run, service_settings  # noqa: PLC0415

    settings = service_settings()
    if url is not None:
        os.environ["REDBATCH_URL"] = url
    configure_logging(logging.INFO)
    runner = load = None
    registry = None
    if demo:
        if module is not None:
            fail("--demo runs the demo's own worker: leave out --worker")
        store = connect(url)
        runner, load, resumed = demo_service(store, concurrency)
        if resumed:
            err_console.print(resumed)
    elif module is not None:
        batchers = load_batchers(module)
        store = batchers[0].store
        instruments = instrument(batchers)
        registry = instruments.registry
        runner = Worker(
            store, batchers, concurrency=concurrency, handle_signals=False, hooks=instruments.hooks
        )
    else:
        store = connect(url)
    auth = "bearer token required for writes" if settings.api_token else "no token: writes are open"
    err_console.print(f"serving {store.url} on http://{host}:{port} ({auth}); Ctrl-C to stop")
    err_console.print(f"dashboard: http://{host}:{port}/", soft_wrap=True, highlight=False)
    try:
        application = create_app(
            store,
            worker=runner,
            token=settings.api_token,
            max_body=settings.max_body_bytes,
            metrics=registry,
        )
        if load is not None:
            load.start()
        run(application, host, port)
    finally:
        if load is not None:  # what it added after the worker stopped waits for the next run
            load.stop()
        store.close()


# ---------------------------------------------------------------- stats and inspect


_STAT_ROWS: list[tuple[str, Callable[[BatcherStats], str]]] = [
    ("open keys", lambda s: f"{s.open_keys:,}"),
    ("buffered items", lambda s: f"{s.buffered_items:,}"),
    ("oldest item age", lambda s: _ago(s.oldest_item_age)),
    ("in flight", lambda s: f"{s.in_flight:,}"),
    ("retrying", lambda s: f"{s.retrying:,}"),
    ("dead letters", lambda s: f"{s.dead:,}"),
    ("flushed batches", lambda s: f"{s.flushed_batches:,}"),
    ("flushed items", lambda s: f"{s.flushed_items:,}"),
    ("since last flush", lambda s: _ago(s.seconds_since_last_flush)),
]


@app.command()
@reports_errors
def stats(
    batchers: Annotated[list[str] | None, typer.Argument(help="Batcher names.", show_default=False)] = None,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the counters of the named batchers."""
    if not batchers:
        fail("name at least one batcher: redbatch stats BATCHER... (there is no registry of names yet)")
    with opened(url) as store:
        rows = [Batcher.open(store, name).stats() for name in batchers]
        if as_json:
            print_json([asdict(row) for row in rows])
            return
        table = Table(title=f"batchers on {store.url}", title_justify="left")
        table.add_column("")
        for row in rows:
            table.add_column(row.name, justify="right")
        for label, render in _STAT_ROWS:
            table.add_row(label, *(render(row) for row in rows))
        console.print(table)


@app.command()
@reports_errors
def inspect(
    batcher: BatcherArg,
    key: Annotated[str, typer.Argument(help="The key whose pending items to show.", show_default=False)],
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many (the oldest).")] = 20,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show the oldest items waiting under KEY (not those in a running batch)."""
    with opened(url) as store:
        items = Batcher.open(store, batcher).peek(key, limit)
    if as_json:
        print_json([asdict(item) for item in items])
        return
    if not items:
        console.print(f"no items pending under {key!r} of {batcher!r}")
        return
    table = Table(title=f"{batcher} / {key}: the oldest {len(items)} pending items", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("arrived")
    table.add_column("item", overflow="fold")
    for n, item in enumerate(items, 1):
        table.add_row(str(n), _when(item.arrived_at), escape(_clip(_item_text(item.value))))
    console.print(table)


# ---------------------------------------------------------------- dead letters


IdsOption = Annotated[
    list[str] | None, typer.Option("--id", help="A dead letter's id (repeatable).", show_default=False)
]


@dead_letters_app.command("list")
@reports_errors
def dead_letters_list(
    batcher: BatcherArg,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many, oldest first.")] = 20,
    url: UrlOption = None,
    as_json: JsonOption = False,
) -> None:
    """List dead letters, oldest first, with the error of their last attempt."""
    with opened(url) as store:
        letters = Batcher.open(store, batcher).dead_letters(limit=limit)
    if as_json:
        print_json([asdict(letter) for letter in letters])
        return
    if not letters:
        console.print(f"no dead letters in {batcher!r}")
        return
    table = Table(title=f"{batcher}: {len(letters)} dead letters", title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("key", overflow="fold")
    table.add_column("items", justify="right")
    table.add_column("attempts", justify="right")
    table.add_column("died", no_wrap=True)
    table.add_column("last error", overflow="fold")
    for letter in letters:
        last_line = (letter.error.strip().splitlines() or [""])[-1]
        died = f"{_ago(time.time() - letter.died_at)} ago"
        table.add_row(
            letter.id,
            escape(letter.key),
            str(len(letter.items)),
            str(letter.attempts),
            died,
            escape(_clip(last_line)),
        )
    console.print(table)


@dead_letters_app.command("replay")
@reports_errors
def dead_letters_replay(batcher: BatcherArg, ids: IdsOption = None, url: UrlOption = None) -> None:
    """Put dead letters (these --id, or all) back in front of their keys, due now."""
    with opened(url) as store:
        count = Batcher.open(store, batcher).replay(ids or None)
    console.print(f"replayed {count} items of {batcher!r}")


@dead_letters_app.command("purge")
@reports_errors
def dead_letters_purge(
    batcher: BatcherArg,
    ids: IdsOption = None,
    older_than: Annotated[
        float | None, typer.Option(min=0, help="Purge those that died over this many seconds ago.")
    ] = None,
    purge_all: Annotated[bool, typer.Option("--all", help="Purge every dead letter of BATCHER.")] = False,
    url: UrlOption = None,
) -> None:
    """Delete dead letters: by --id, by --older-than, or --all of them."""
    chosen = sum((bool(ids), older_than is not None, purge_all))
    if chosen != 1:
        fail("say which dead letters to purge: --id ID..., --older-than SECONDS or --all (one of them)")
    with opened(url) as store:
        count = Batcher.open(store, batcher).purge_dead(ids or None, older_than)
    console.print(f"purged {count} dead letters of {batcher!r}")


# ---------------------------------------------------------------- jobs and groups

# Registered last: the commands' module reuses this one's options and helpers. Run as
# ``python -m redbatch.cli``, this file is ``__main__``: it hands over to the module proper
# (which has every command) rather than import the jobs commands into a second copy.
if __name__ == "__main__":
    from redbatch.cli import app as _app  # the module proper, see above

    _app()
else:
    from redbatch.cli_jobs import groups_app, jobs_app

    app.add_typer(jobs_app, name="jobs")
    app.add_typer(groups_app, name="groups")
