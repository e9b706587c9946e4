"""The command line: the demo (summary, resume, Ctrl-C), stats, inspect, dead letters, worker.

In-process runs use typer's CliRunner; the worker and the demo's Ctrl-C run as real
subprocesses with real signals, synchronised on what they write, with deadlines.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

import redbatch
from redbatch import cli
from redbatch.demo import ChatLoad, demo_batcher, percentile
from redbatch.stores.base import Store
from redbatch.types import Entry
from tests.servers import free_port
from tests.test_connect import BAD_URLS_WITH_PASSWORDS

DEADLINE = 15.0
runner = CliRunner()


@pytest.fixture
def cli_env(
    store_kind: str, store_factory: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, dict[str, str], Store]]:
    """A store URL for the CLI, the environment that isolates it, and a store to check it with.

    memory:// lives in one process, so the CLI's connect() is pointed at this test's store.
    """
    url, options = store_factory
    env = {"REDBATCH_PREFIX": options["prefix"]} if "prefix" in options else {}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = redbatch.connect(url, prefix=options["prefix"]) if env else redbatch.connect(url)
    if store_kind == "memory":
        monkeypatch.setattr(cli, "connect", lambda url=None: store)
    try:
        yield url, env, store
    finally:
        store.close()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """CliRunner is not a terminal, so rich would wrap at 80 columns; assertions want whole rows."""
    monkeypatch.setattr(cli.console, "width", 200)
    monkeypatch.setattr(cli.err_console, "width", 200)


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli.app, list(args))
    return result.exit_code, result.output


def row(output: str, label: str) -> str:
    """The value in a rich table row ``│ label │ value │``."""
    match = re.search(rf"{re.escape(label)}\s*│\s*(.+?)\s*│", output)
    assert match, f"no row {label!r} in:\n{output}"
    return match.group(1)


def number(output: str, label: str) -> int:
    return int(row(output, label).replace(",", ""))


def wait_until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


# ---------------------------------------------------------------- the demo's parts


def signal_when(
    proc: subprocess.Popen[bytes], condition: Callable[[], bool], what: str, sig: signal.Signals
) -> str:
    """Send ``sig`` once ``condition`` holds; return the process's output once it exits."""
    try:
        wait_until(condition, what)
        proc.send_signal(sig)
        output, _ = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return output.decode()


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 0.50) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([7.0], 0.99) == 7.0


def test_chat_load_makes_exact_counts_with_bursts() -> None:
    load = ChatLoad(300, random.Random(7))
    groups = load.next_groups(2000)
    assert sum(len(g) for g in groups) == 2000
    assert any(len(g) >= 3 for g in groups), "some users type in bursts"
    for group in groups:
        assert len({key for key, _ in group}) == 1, "a burst stays in one conversation"
        for key, message in group:
            assert message["conversation"] == key
            assert set(message) == {"conversation", "user", "text", "seq"}


# ---------------------------------------------------------------- demo


@pytest.mark.parametrize("store_kind", ["memory", "sqlite", "redis"])
def test_demo_delivers_everything_and_summarises(cli_env: tuple[str, dict[str, str], Store]) -> None:
    url, _, _ = cli_env
    code, output = invoke("demo", "--url", url, "--seconds", "1.5", "--rate", "100", "--conversations", "40")
    assert code == 0, output
    added = number(output, "items added")
    assert added > 0
    assert number(output, "items delivered") == added
    assert number(output, "batches") > 0
    assert number(output, "items still pending") == 0
    assert re.search(r"wait p50 / p99\s*│\s*[\d,]+ ms / [\d,]+ ms", output)


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
def test_demo_resumes_what_a_previous_run_left(cli_env: tuple[str, dict[str, str], Store]) -> None:
    url, _, store = cli_env
    left = demo_batcher(store)  # as if a run was killed before these were handed over
    left.add_many((f"conv-{n % 5:04d}", {"conversation": f"conv-{n % 5:04d}", "seq": n}) for n in range(25))

    code, output = invoke("demo", "--url", url, "--seconds", "1", "--rate", "50", "--conversations", "20")

    assert code == 0, output
    assert "resuming 25 items left by the previous run" in output
    assert number(output, "items resumed from the previous run") == 25
    assert number(output, "items delivered") == number(output, "items added") + 25
    stats = left.stats()
    assert (stats.buffered_items, stats.in_flight, stats.retrying) == (0, 0, 0)


@pytest.mark.parametrize("store_kind", ["sqlite", "redis"])
def test_demo_ends_cleanly_on_ctrl_c(cli_env: tuple[str, dict[str, str], Store], tmp_path: Path) -> None:
    url, env, store = cli_env
    args = [sys.executable, "-m", "redbatch.cli", "demo", "--url", url, "--seconds", "60", "--rate", "100"]
    proc = subprocess.Popen(
        args, cwd=tmp_path, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    watcher = demo_batcher(store)
    text = signal_when(
        proc, lambda: watcher.stats().flushed_items > 0, "the demo to deliver something", signal.SIGINT
    )
    assert proc.returncode == 0, text
    assert "stopped by Ctrl-C" in text
    assert "Traceback" not in text
    assert number(text, "items still pending") == 0
    assert watcher.stats().buffered_items == 0


# ---------------------------------------------------------------- stats, inspect, dead letters


def make_dead_letter(store: Store) -> str:
    """Dead-letter one batch of key 'k-dead' (claimed and failed with no retry left)."""
    batcher = redbatch.Batcher(store, "orders", max_items=100, max_wait=60)
    batcher.add_many([("k-dead", {"n": 1}), ("k-dead", {"n": 2})])
    batcher.flush("k-dead")
    now = batcher.clock()
    [claimed] = store.claim_due(batcher.spec, now, 10)
    assert store.fail(batcher.spec, claimed.lease, now, "Traceback...\nValueError: poison item", None)
    return claimed.lease.batch_id


def test_stats_inspect_and_dead_letters(cli_env: tuple[str, dict[str, str], Store]) -> None:
    url, _, store = cli_env
    dead_id = make_dead_letter(store)
    orders = redbatch.Batcher(store, "orders", max_items=100, max_wait=60)
    orders.add_many([("k-1", {"sku": "A-1", "qty": 2}), ("k-1", {"sku": "B-7", "qty": 1}), ("k-2", [1])])

    redbatch.Batcher(store, "empty").add("k", 1)
    assert redbatch.Batcher(store, "empty").clear("k") == 1
    code, output = invoke("stats", "orders", "empty", "--url", url)
    assert code == 0, output
    assert re.search(r"buffered items\s*│\s*3\s*│\s*0\s*│", output), output
    assert re.search(r"dead letters\s*│\s*1\s*│\s*0\s*│", output), output

    code, output = invoke("inspect", "orders", "k-1", "--url", url, "--limit", "1")
    assert code == 0, output
    assert '{"sku":"A-1","qty":2}' in output
    assert "B-7" not in output
    code, output = invoke("inspect", "orders", "nobody", "--url", url)
    assert code == 0 and "no items pending under 'nobody'" in output

    code, output = invoke("dead-letters", "list", "orders", "--url", url)
    assert code == 0, output
    assert dead_id in output and "ValueError: poison item" in output and "k-dead" in output

    code, output = invoke("dead-letters", "replay", "orders", "--id", dead_id, "--url", url)
    assert code == 0 and "replayed 2 items" in output, output
    assert [p.value for p in orders.peek("k-dead")] == [{"n": 1}, {"n": 2}]

    make_dead_letter(store)
    code, output = invoke("dead-letters", "purge", "orders", "--url", url)
    assert code == 2 and "--all" in output, "purging everything must be asked for"
    code, output = invoke("dead-letters", "purge", "orders", "--all", "--url", url)
    assert code == 0 and "purged 1 dead letters" in output, output
    assert orders.stats().dead == 0


def test_read_commands_print_json(cli_env: tuple[str, dict[str, str], Store]) -> None:
    url, _, store = cli_env
    dead_id = make_dead_letter(store)
    orders = redbatch.Batcher(store, "orders", max_items=100, max_wait=60)
    orders.add_many([("k-1", {"sku": "A-1"}), ("k-1", [2])])

    code, output = invoke("stats", "orders", "--json", "--url", url)
    assert code == 0, output
    (stats,) = json.loads(output)
    assert (stats["name"], stats["buffered_items"], stats["dead"]) == ("orders", 2, 1)

    code, output = invoke("inspect", "orders", "k-1", "--json", "--url", url)
    assert code == 0, output
    assert [item["value"] for item in json.loads(output)] == [{"sku": "A-1"}, [2]]

    code, output = invoke("dead-letters", "list", "orders", "--json", "--url", url)
    assert code == 0, output
    (letter,) = json.loads(output)
    assert letter["id"] == dead_id and letter["items"] == [{"n": 1}, {"n": 2}]
    assert letter["error"].endswith("ValueError: poison item")


def test_a_batcher_the_store_never_saw_is_not_found(cli_env: tuple[str, dict[str, str], Store]) -> None:
    url, _, store = cli_env
    redbatch.Batcher(store, "known").add("k", 1)
    for command in (
        ["stats", "known", "never-existed"],
        ["inspect", "never-existed", "k"],
        ["dead-letters", "list", "never-existed"],
        ["dead-letters", "replay", "never-existed"],
        ["dead-letters", "purge", "never-existed", "--all"],
    ):
        code, output = invoke(*command, "--url", url)
        assert code != 0, (command, output)
        assert "NotFound" in output and "never-existed" in output, (command, output)
        assert "Traceback" not in output


def test_replay_from_the_command_line_applies_the_stored_dedupe_rule(
    cli_env: tuple[str, dict[str, str], Store],
) -> None:
    url, _, store = cli_env
    profiles = redbatch.Batcher(store, "profiles", max_items=100, max_wait=60, dedupe=True)
    profiles.add("p", {"id": 1})
    profiles.flush("p")
    now = profiles.clock()
    [claimed] = store.claim_due(profiles.spec, now, 10)
    assert store.fail(profiles.spec, claimed.lease, now, "ValueError: boom", None)

    code, output = invoke("dead-letters", "replay", "profiles", "--url", url)
    assert code == 0 and "replayed 1 items" in output, output
    profiles.add("p", {"id": 1})  # equal to the replayed item: collapsed into it
    assert [p.value for p in profiles.peek("p")] == [{"id": 1}]


def test_corrupt_items_are_shown_for_what_they_are(cli_env: tuple[str, dict[str, str], Store]) -> None:
    url, _, store = cli_env
    orders = redbatch.Batcher(store, "orders", max_items=100, max_wait=60)
    orders.add("k-bad", {"n": 1})
    store.append(orders.spec, [Entry("k-bad", b"{not json", "")], orders.clock())
    code, output = invoke("inspect", "orders", "k-bad", "--url", url)
    assert code == 0, output
    assert "<corrupt: b'{not json'>" in output and '{"n":1}' in output

    orders.flush("k-bad")
    now = orders.clock()
    [claimed] = store.claim_due(orders.spec, now, 10)
    assert store.fail(orders.spec, claimed.lease, now, "corrupt data: an item is not JSON", None)
    code, output = invoke("dead-letters", "list", "orders", "--url", url)
    assert code == 0, output
    assert claimed.lease.batch_id in output and "corrupt data" in output and "Traceback" not in output


def test_exit_codes_say_what_went_wrong(cli_env: tuple[str, dict[str, str], Store]) -> None:
    url, _, store = cli_env
    dead_id = make_dead_letter(store)
    for command in ("replay", "purge"):
        code, output = invoke(
            "dead-letters", command, "orders", "--id", dead_id, "--id", "typo", "--url", url
        )
        assert code == 3, output
        assert "NotFound" in output and "'typo'" in output and "Traceback" not in output
    assert [d.id for d in redbatch.Batcher(store, "orders").dead_letters()] == [dead_id]
    code, output = invoke("dead-letters", "replay", "--url", url)
    assert code == 2, output  # typer's usage error: BATCHER is missing


def test_stats_needs_a_batcher_name() -> None:
    code, output = invoke("stats", "--url", "memory://")
    assert code == 2
    assert "name at least one batcher" in output


def test_bad_urls_fail_with_one_line_and_no_secret() -> None:
    code, output = invoke("stats", "orders", "--url", "nosuch://somewhere")
    assert code == 1
    assert "error:" in output and "ConfigError" in output and "Traceback" not in output

    url = f"redis://app:s3cret-pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    code, output = invoke("inspect", "orders", "k", "--url", url)
    assert code == 4
    assert "StoreUnavailable" in output and "Traceback" not in output
    assert "s3cret-pw" not in output


@pytest.mark.parametrize(("url", "password"), BAD_URLS_WITH_PASSWORDS)
def test_every_bad_url_is_one_line_exit_1_and_no_password(url: str, password: str) -> None:
    result = runner.invoke(cli.app, ["stats", "orders", "--url", url])
    assert isinstance(result.exception, SystemExit), result.exception  # not a bare ValueError
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("error: ConfigError:")
    assert password not in result.output


# ---------------------------------------------------------------- worker

WORKER_MODULE = """
import json
import json
import os

import redbatch

store = redbatch.connect()
chat = redbatch.Batcher(store, "cli-chat", max_items=4, max_wait=0.2)
no_handler = redbatch.Batcher(store, "unhandled")


@chat.handler
def reply(batch):
    with open(os.environ["DELIVERED"], "a") as out:
        out.writelines(json.dumps(item) + "\\n" for item in batch.items)


chat.add_many((f"conv-{n % 3}", {"n": n}) for n in range(10))
"""


@pytest.mark.parametrize(
    ("store_kind", "target"),
    [("memory", "path"), ("memory", "dotted"), ("sqlite", "path"), ("redis", "dotted")],
)
def test_worker_runs_a_modules_batchers_until_sigterm(
    cli_env: tuple[str, dict[str, str], Store], target: str, tmp_path: Path
) -> None:
    url, env, store = cli_env
    (tmp_path / "chatapp.py").write_text(WORKER_MODULE)
    delivered = tmp_path / "delivered.jsonl"
    module = str(tmp_path / "chatapp.py") if target == "path" else "chatapp"
    args = [sys.executable, "-m", "redbatch.cli", "worker", module, "--url", url, "--concurrency", "4"]
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        env={**os.environ, **env, "DELIVERED": str(delivered), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    text = signal_when(
        proc,
        lambda: delivered.exists() and len(delivered.read_bytes().splitlines()) >= 10,
        "the worker to deliver 10 items",
        signal.SIGTERM,
    )
    assert proc.returncode == 0, text
    assert sorted(orjson.loads(line)["n"] for line in delivered.read_bytes().splitlines()) == list(range(10))
    assert "skipping batcher 'unhandled'" in text
    assert "stopped. Batches:" in text
    if store.durable:
        assert redbatch.Batcher(store, "cli-chat").stats().buffered_items == 0


@pytest.fixture
def isolated_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker command adds to sys.path and sys.modules; undo that after the test."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))


@pytest.mark.usefixtures("isolated_imports")
@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("x = 1\n", "defines no redbatch.Batcher with a handler"),
        ("raise RuntimeError('broken at import')\n", "RuntimeError: broken at import"),
        (
            textwrap.dedent("""
                import redbatch
                a = redbatch.Batcher(redbatch.connect("memory://"), "a")
                b = redbatch.Batcher(redbatch.connect("memory://"), "b")
                a.handler(print)
                b.handler(print)
            """),
            "2 different stores",
        ),
    ],
    ids=["no-batchers", "import-fails", "two-stores"],
)
def test_worker_refuses_modules_it_cannot_run(source: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / f"mod_{abs(hash(source))}.py"
    path.write_text(source)
    code, output = invoke("worker", str(path))
    assert code == 2, output
    assert message in " ".join(output.split())


@pytest.mark.usefixtures("isolated_imports")
def test_worker_reports_a_missing_module(tmp_path: Path) -> None:
    code, output = invoke("worker", "no_such_module_here")
    assert code == 2
    assert "no module named 'no_such_module_here'" in output
    code, output = invoke("worker", str(tmp_path / "missing.py"))
    assert code == 2
    assert "no such file" in output


STUCK_MODULE = """
import json
import os
import threading

import redbatch

store = redbatch.connect()
stuck = redbatch.Batcher(store, "cli-stuck", max_items=1, max_wait=0, lease=2)


@stuck.handler
def hang(batch):
    with open(os.environ["EVENTS"], "a") as out:
        out.write("started\\n")
    threading.Event().wait()  # a sync handler stuck for good


stuck.add("k", "stuck")
"""


def test_a_second_sigterm_ends_a_worker_whose_sync_handler_is_stuck(
    cli_env: tuple[str, dict[str, str], Store], tmp_path: Path
) -> None:
    url, env, store = cli_env
    (tmp_path / "stuckapp.py").write_text(STUCK_MODULE)
    events, output = tmp_path / "events.txt", tmp_path / "output.txt"
    args = [sys.executable, "-m", "redbatch", "worker", "stuckapp", "--url", url]
    with output.open("wb") as out:
        proc = subprocess.Popen(
            args,
            cwd=tmp_path,
            env={**os.environ, **env, "EVENTS": str(events), "COLUMNS": "200"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: events.exists() and events.read_text() == "started\n", "the handler to start")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: "finishing 1 in-flight" in output.read_text(), "the first SIGTERM to be handled")
        assert proc.poll() is None, "one SIGTERM waits for the batch in flight"
        if store.durable:
            assert redbatch.Batcher(store, "cli-stuck").stats().in_flight == 1
        proc.send_signal(signal.SIGTERM)
        proc.wait(DEADLINE)  # before the fix: alive for good, joining the handler's thread
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = output.read_text()
    assert "abandoning 1 in-flight" in text, text
    assert "1 abandoned to its lease" in text, text
    assert "Traceback" not in text, text
