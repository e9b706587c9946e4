"""Story 5, decision processes over HTTP, through real servers: start a process (a job of
``examples/decisions.py``'s ``decide``, which reports progress), poll it, stop the server and
its in-process worker mid-run, start a new server process on the same store, poll again: the
status is there and the process finishes with its JSON result; then list by status and age,
count, clean up. On the durable stores with ``redbatch serve`` subprocesses; on memory://
(development) in one process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from examples import decisions

import redbatch
from redbatch.service import create_app
from tests.live_service import live_server, wait_healthy
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "decision-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DEADLINE = 30.0
CASE = {"case": "loan-42", "options": ["approve", "refer", "reject"]}
EXPECTED = {"case": "loan-42", "decision": "approve", "scores": {"approve": 0.7, "refer": 0.5, "reject": 0.6}}


def poll(client: httpx.Client, path: str, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """GET ``path`` until ``done`` accepts its body, as a web client polls a process."""
    deadline = time.monotonic() + DEADLINE
    while True:
        response = client.get(path)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if done(body):
            return body
        assert time.monotonic() < deadline, f"{path} is still {body}"
        time.sleep(0.05)  # the client's poll interval, bounded by the deadline


@contextmanager
def serve(url: str, env: dict[str, str], logs: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``redbatch serve --worker examples/decision_service.py`` on a free port."""
    port = free_port()
    module = str(ROOT / "examples" / "decision_service.py")
    args = [sys.executable, "-m", "redbatch", "serve", "--worker", module, "--url", url, "--port", str(port)]
    with logs.open("ab") as stderr:
        process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        try:
            wait_healthy(f"http://127.0.0.1:{port}")
        except RuntimeError:
            raise AssertionError(f"the server did not start: {logs.read_text()[-3000:]}") from None
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(DEADLINE)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
@pytest.mark.parametrize("store_kind", ["sqlite", "redis"], indirect=True)  # add a store: one word
def test_a_process_survives_a_server_restart(
    store_kind: str, store_factory: tuple[str, dict[str, str]], tmp_path: Path, stop: signal.Signals
) -> None:
    url, options = store_factory
    store = redbatch.connect(url, **options)
    store.close()
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "REDBATCH_API_TOKEN": TOKEN}
    env |= {"DECISION_STAGE_SECONDS": "0.4", "DECISION_LEASE": "1"}
    env |= {"REDBATCH_PREFIX": options["prefix"]} if "prefix" in options else {}
    logs = tmp_path / "servers.log"

    with serve(url, env, logs) as (base, first), httpx.Client(base_url=base, timeout=DEADLINE) as client:
        response = client.post("/jobs/decisions", json={"function": "decide", "params": CASE}, headers=AUTH)
        assert response.status_code == 202, response.text
        location = response.headers["location"]
        running = poll(
            client, location, lambda job: job["status"] == "running" and (job["progress"] or 0) > 0
        )
        assert running["message"] in decisions.STAGES
        first.send_signal(stop)  # SIGTERM: in-flight work finishes first; SIGKILL: a crash
        first.wait(DEADLINE)
        assert first.returncode == (0 if stop == signal.SIGTERM else -signal.SIGKILL), logs.read_text()

    with serve(url, env, logs) as (base, second), httpx.Client(base_url=base, timeout=DEADLINE) as client:
        seen = client.get(location)
        assert seen.status_code == 200 and seen.json()["id"] == location.rsplit("/", 1)[1]
        job = poll(client, location, lambda job: job["finished_at"] is not None)
        assert job["status"] == "succeeded" and job["progress"] == 1.0
        # Finished by the first server's worker on its way out, or run again by the second's
        # once the killed one's lease lapsed (a crash counts as an attempt).
        attempt = 1 if stop == signal.SIGTERM else 2
        assert job["result"] == {**EXPECTED, "attempt": attempt} and job["attempt"] == attempt
        list_count_and_clean_up(client, job)
        second.send_signal(signal.SIGTERM)
        assert second.wait(DEADLINE) == 0, logs.read_text()


def list_count_and_clean_up(client: httpx.Client, first: dict[str, Any]) -> None:
    """More processes, listed by status and age, counted, and the finished ones cleaned up."""
    later = [
        client.post("/jobs/decisions", json={"function": "decide", "params": {"case": f"c{n}"}}, headers=AUTH)
        for n in range(2)
    ]
    for response in later:
        poll(client, response.headers["location"], lambda job: job["finished_at"] is not None)
    parked = client.post(
        "/jobs/decisions",
        json={"function": "decide", "params": {"case": "tomorrow"}, "delay": 86400},
        headers=AUTH,
    ).json()["id"]
    done = client.get("/jobs/decisions", params={"status": "succeeded"}).json()["jobs"]
    assert [job["id"] for job in done] == [r.json()["id"] for r in reversed(later)] + [
        first["id"]
    ]  # newest first
    assert [
        job["id"] for job in client.get("/jobs/decisions", params={"status": "pending"}).json()["jobs"]
    ] == [parked]
    counts = client.get("/jobs/decisions/counts").json()
    assert counts == {"pending": 1, "running": 0, "succeeded": 3, "failed": 0, "cancelled": 0}
    assert client.post("/jobs/decisions/cleanup", json={"older_than": 3600}, headers=AUTH).json() == {
        "deleted": 0
    }
    assert client.post("/jobs/decisions/cleanup", json={"older_than": 0}, headers=AUTH).json() == {
        "deleted": 3
    }
    assert client.get(f"/jobs/decisions/id/{first['id']}").status_code == 404
    assert client.get("/jobs/decisions/counts").json()["pending"] == 1


def test_in_development_on_memory_in_one_process() -> None:
    store = redbatch.connect("memory://")
    jobs = decisions.decisions(store, stage_seconds=0.05)
    worker = redbatch.Worker(store, [jobs], concurrency=2, handle_signals=False)
    try:
        with (
            live_server(create_app(store, worker=worker, token=TOKEN)) as base,
            httpx.Client(base_url=base, timeout=DEADLINE) as client,
        ):
            response = client.post(
                "/jobs/decisions", json={"function": "decide", "params": CASE}, headers=AUTH
            )
            assert response.status_code == 202
            job = poll(client, response.headers["location"], lambda job: job["finished_at"] is not None)
            assert job["status"] == "succeeded" and job["result"] == {**EXPECTED, "attempt": 1}
            list_count_and_clean_up(client, job)
    finally:
        store.close()
