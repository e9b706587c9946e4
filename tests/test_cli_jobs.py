"""The ``redbatch jobs`` and ``redbatch groups`` commands, through typer's CliRunner on every
store with job operations: tables, ``--json``, exit codes, and a group watched to its end
while a real worker (on a thread) runs it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

import redbatch
from redbatch.stores.base import Store
from tests import test_cli
from tests.test_cli import invoke

cli_env = test_cli.cli_env  # the CLI's store fixtures, shared
wide_console = test_cli.wide_console

pytestmark = pytest.mark.parametrize("store_kind", ["memory", "sqlite", "redis"], indirect=True)
Env = tuple[str, dict[str, str], Store]


def queue(store: Store) -> redbatch.Jobs:
    jobs = redbatch.Jobs(store, "work", max_attempts=1, lease=5)

    @jobs.function
    def echo(params: Any, ctx: redbatch.JobContext) -> Any:
        ctx.progress(0.5, "half way")
        return params

    @jobs.function
    def fail(params: Any, ctx: redbatch.JobContext) -> None:
        raise RuntimeError("document 7 is unreadable")

    return jobs


@pytest.fixture
def running(cli_env: Env) -> Iterator[redbatch.Jobs]:
    """The queue ``work`` with a worker running it on a thread."""
    jobs = queue(cli_env[2])
    worker = redbatch.Worker(cli_env[2], [jobs], concurrency=2, handle_signals=False)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield jobs
    finally:
        worker.stop()
        thread.join(30)


def args(cli_env: Env, *words: str) -> list[str]:
    return [*words, "--url", cli_env[0]]


def test_list_show_counts_cancel_and_cleanup(cli_env: Env, running: redbatch.Jobs) -> None:
    done = running.submit("echo", {"case": "loan-42"}, id="case-1")
    failed = running.submit("fail", None, id="case-2")
    running.wait(done, 15), running.wait(failed, 15)
    later = running.submit("echo", 1, id="later", delay=3600)

    code, out = invoke(*args(cli_env, "jobs", "list", "work"))
    assert code == 0, out
    assert "case-1" in out and "succeeded" in out and "document 7 is unreadable" in out
    code, out = invoke(*args(cli_env, "jobs", "list", "work", "--status", "succeeded", "--json"))
    page = orjson.loads(out)
    assert [job["id"] for job in page["jobs"]] == ["case-1"] and page["cursor"] is None
    assert page["jobs"][0]["result"] == {"case": "loan-42"}
    code, out = invoke(*args(cli_env, "jobs", "list", "work", "--limit", "1", "--json"))
    first = orjson.loads(out)
    assert first["jobs"][0]["id"] == "later" and first["cursor"]
    code, out = invoke(
        *args(cli_env, "jobs", "list", "work", "--limit", "1", "--cursor", first["cursor"], "--json")
    )
    assert code == 0 and orjson.loads(out)["jobs"][0]["id"] != "later"

    code, out = invoke(*args(cli_env, "jobs", "show", "work", "case-1"))
    assert code == 0 and "succeeded" in out and '{"case":"loan-42"}' in out
    code, out = invoke(*args(cli_env, "jobs", "show", "work", "case-2", "--json"))
    assert orjson.loads(out)["status"] == "failed"
    code, out = invoke(*args(cli_env, "jobs", "counts", "work", "--json"))
    assert orjson.loads(out) == {"pending": 1, "running": 0, "succeeded": 1, "failed": 1, "cancelled": 0}
    code, out = invoke(*args(cli_env, "jobs", "counts", "work"))
    assert code == 0 and "succeeded" in out

    code, out = invoke(*args(cli_env, "jobs", "cancel", "work", later))
    assert code == 0 and "cancelled" in out
    code, out = invoke(*args(cli_env, "jobs", "cleanup", "work", "--older-than", "3600"))
    assert code == 0 and "deleted 0 " in out
    code, out = invoke(*args(cli_env, "jobs", "cleanup", "work", "--older-than", "0"))
    assert code == 0 and "deleted 3 " in out
    assert running.counts() == {"pending": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}


def test_exit_codes(cli_env: Env) -> None:
    queue(cli_env[2]).submit("echo", None, id="there", delay=3600)
    assert invoke(*args(cli_env, "jobs", "list"))[0] == 2  # no queue named
    assert invoke(*args(cli_env, "jobs", "list", "work", "--status", "lost"))[0] == 2
    assert invoke(*args(cli_env, "jobs", "cleanup", "work"))[0] == 2  # --older-than is required
    code, out = invoke(*args(cli_env, "jobs", "counts", "nobody"))
    assert code == 3 and "NotFound" in out
    assert invoke(*args(cli_env, "jobs", "show", "work", "missing"))[0] == 3
    assert invoke(*args(cli_env, "jobs", "cancel", "work", "missing"))[0] == 3
    assert invoke(*args(cli_env, "groups", "show", "work", "missing"))[0] == 3
    code, out = invoke(*args(cli_env, "jobs", "list", "work", "--cursor", "garbage"))
    assert code == 1 and "ConfigError" in out


def test_groups_show_watches_a_group_to_its_end(cli_env: Env, running: redbatch.Jobs) -> None:
    members = [("echo", n) for n in range(6)] + [("fail", None)]
    group = running.group(members, id="docs")
    code, out = invoke(*args(cli_env, "groups", "show", "work", group, "--watch", "--interval", "0.05"))
    assert code == 0, out
    assert "7/7" in out and "100.0%" in out and "6 succeeded, 1 failed" in out
    code, out = invoke(*args(cli_env, "groups", "show", "work", group, "--json"))
    progress = orjson.loads(out)
    assert (progress["total"], progress["succeeded"], progress["failed"]) == (7, 6, 1)
    code, out = invoke(*args(cli_env, "groups", "show", "work", group, "--watch", "--json"))
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert len(lines) == 1 and lines[0]["finished_at"] is not None  # finished: one line, no wait
    code, out = invoke(*args(cli_env, "groups", "show", "work", group))
    assert code == 0 and "percent" in out and "100.0%" in out
