"""``redbatch serve --demo`` as a new user runs it: a real subprocess on the default SQLite
file in its working directory, stopped with Ctrl-C (SIGINT), then run again to resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import redbatch
from redbatch.demo import BATCHER_NAME
from tests.live_service import wait_healthy
from tests.servers import free_port

DEADLINE = 20.0


def wait_until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    until = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > until:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # a poll interval, bounded by the deadline


def start_demo(tmp_path: Path, port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDBATCH_URL", "REDBATCH_API_TOKEN")}
    args = [sys.executable, "-m", "redbatch.cli", "serve", "--demo", "--port", str(port)]
    return subprocess.Popen(
        args, cwd=tmp_path, env={**env, "COLUMNS": "200"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def stats(base: str) -> dict[str, float]:
    reply = httpx.get(f"{base}/batchers/{BATCHER_NAME}/stats", timeout=5)
    return dict(reply.json()) if reply.status_code == 200 else {}


def interrupt(proc: subprocess.Popen[bytes]) -> str:
    """Ctrl-C: SIGINT, then the output once it exits (killed past the deadline)."""
    try:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return output.decode()


def test_serve_demo_stops_on_ctrl_c_and_resumes(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    first = start_demo(tmp_path, port)
    try:
        wait_healthy(base, deadline=DEADLINE)
        wait_until(lambda: stats(base).get("flushed_batches", 0) > 0, "the demo to deliver a batch")
        page = httpx.get(f"{base}/", timeout=5).text
        assert BATCHER_NAME in page
    finally:
        output = interrupt(first)
    assert first.returncode == 0, output
    assert f"dashboard: {base}/" in output
    assert "Traceback" not in output

    store = redbatch.connect(f"sqlite:///{tmp_path / 'redbatch.db'}")
    try:
        left = redbatch.Batcher.open(store, BATCHER_NAME).stats()
    finally:
        store.close()
    assert left.buffered_items > 0, "the first run should leave items pending for the second"
    assert left.in_flight == 0  # its worker finished what it had started

    second = start_demo(tmp_path, port)
    started_at = time.time()
    try:
        wait_healthy(base, deadline=DEADLINE)

        def first_runs_items_delivered() -> bool:
            now = stats(base)
            age = now.get("oldest_item_age")
            oldest_arrival = None if age is None else time.time() - age
            return now.get("flushed_items", 0) > left.flushed_items and (
                oldest_arrival is None or oldest_arrival >= started_at - 0.1
            )

        wait_until(first_runs_items_delivered, "the second run to deliver the first run's items")
    finally:
        output = interrupt(second)
    assert second.returncode == 0, output
    assert f"resuming {left.buffered_items:,} items left by the previous run" in output


@pytest.mark.parametrize("extra", [["--worker", "tests.service_app"]])
def test_serve_demo_refuses_a_worker_module(tmp_path: Path, extra: list[str]) -> None:
    args = [sys.executable, "-m", "redbatch.cli", "serve", "--demo", *extra]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, timeout=DEADLINE, check=False)
    assert done.returncode == 2
    assert b"leave out --worker" in done.stderr
