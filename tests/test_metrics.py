"""Metrics and logs: counters that match what a real worker ran, a scrape that survives a
dead store, the ``--metrics-port`` of a real worker process, JSON log lines with their
fields, and a Grafana dashboard whose every query names a metric that exists.

No key ever appears in the exposition: the keys used are hostile (quotes, braces, newlines,
markup), so a label built from one would show.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from typer.testing import CliRunner

import redbatch
from redbatch import cli, metrics
from redbatch.logs import JsonFormatter, batch_fields, log_format_from_env
from redbatch.stores.base import Store
from redbatch.types import ClaimedBatch, Lease
from tests.servers import RedisServer, free_port

DEADLINE = 20.0
HOSTILE_KEY = 'hostile-key"}\n<script>alert(1)</script>{batcher="evil"} 1'
DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "redbatch.json"


def wait_until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


class Ran:
    """A real worker that ran 30 items in 3 full batches of ``ok`` and one batch of ``fails``
    (two failed attempts, then dead letters), with metrics on ``registry``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ok = redbatch.Batcher(store, "ok", max_items=10, max_wait=60)
        self.fails = redbatch.Batcher(store, "fails", max_items=2, max_wait=0, max_attempts=2, backoff=0)
        self.ok.handler(lambda batch: None)

        @self.fails.handler
        def fail(batch: redbatch.Batch) -> None:
            raise RuntimeError("this handler always fails")

        self.instruments = metrics.instrument([self.ok, self.fails])
        self.registry = self.instruments.registry

    def run(self) -> None:
        for n, key in enumerate(["a", "b", HOSTILE_KEY] * 10):
            self.ok.add(key, {"n": n, "secret": "item-payload-marker"})
        self.fails.add_many([(HOSTILE_KEY, 1), (HOSTILE_KEY, 2)])
        worker = redbatch.Worker(
            self.store,
            [self.ok, self.fails],
            concurrency=4,
            handle_signals=False,
            hooks=self.instruments.hooks,
        )
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        try:
            wait_until(
                lambda: worker.counters.succeeded == 3 and worker.counters.dead_lettered == 1,
                "3 batches done and one dead-lettered",
            )
        finally:
            worker.stop()
            thread.join(DEADLINE)
        assert not thread.is_alive()


@pytest.fixture
def ran(store: Store) -> Ran:
    run = Ran(store)
    run.run()
    return run


@pytest.mark.parametrize("store_kind", ["memory", "sqlite", "redis"])
def test_counters_match_what_the_worker_ran(ran: Ran) -> None:
    r = ran.registry
    assert value(r, "redbatch_batches_flushed_total", batcher="ok") == 3
    assert value(r, "redbatch_batch_size_items_sum", batcher="ok") == 30
    assert value(r, "redbatch_batch_size_items_count", batcher="ok") == 3
    assert value(r, "redbatch_batch_wait_seconds_count", batcher="ok") == 3
    assert value(r, "redbatch_handler_duration_seconds_count", batcher="ok") == 3
    assert value(r, "redbatch_handler_calls_total", batcher="ok", outcome="succeeded") == 3
    assert value(r, "redbatch_batches_claimed_total", batcher="ok") == 3
    assert value(r, "redbatch_repeat_attempts_total", batcher="ok") == 0
    assert value(r, "redbatch_items_added_total", batcher="ok") == 30

    assert value(r, "redbatch_handler_calls_total", batcher="fails", outcome="failed") == 2
    assert value(r, "redbatch_batch_retries_total", batcher="fails") == 1
    assert value(r, "redbatch_batches_dead_lettered_total", batcher="fails") == 1
    assert value(r, "redbatch_repeat_attempts_total", batcher="fails") == 1
    assert value(r, "redbatch_batches_flushed_total", batcher="fails") == 0
    assert value(r, "redbatch_stale_writes_refused_total", batcher="fails") == 0

    # Read from the store at scrape time.
    assert value(r, "redbatch_queue_up", batcher="ok") == 1
    assert value(r, "redbatch_queue_flushed_batches_total", batcher="ok") == 3
    assert value(r, "redbatch_queue_flushed_items_total", batcher="ok") == 30
    assert value(r, "redbatch_queue_buffered_items", batcher="ok") == 0
    assert value(r, "redbatch_queue_open_keys", batcher="ok") == 0
    assert value(r, "redbatch_queue_oldest_item_age_seconds", batcher="ok") == 0
    assert value(r, "redbatch_queue_dead_letters", batcher="fails") == 1
    assert value(r, "redbatch_queue_last_flush_timestamp_seconds", batcher="ok") > 1.6e9

    text, content_type = metrics.render(r)
    assert content_type.startswith("text/plain")
    for secret in (b"<script>", b"evil", b"item-payload-marker", b"hostile-key"):
        assert secret not in text
    labels = set(re.findall(rb'(\w+)="', text))
    assert labels <= {b"batcher", b"outcome", b"le"}


@pytest.mark.parametrize("store_kind", ["sqlite"])
def test_queue_depths_are_read_at_scrape_time(store: Store) -> None:
    batcher = redbatch.Batcher(store, "depth", max_items=100, max_wait=3600)
    collector = metrics.QueueCollector([batcher])
    registry = CollectorRegistry()
    registry.register(collector)
    batcher.add_many([("x", 1), ("x", 2), (HOSTILE_KEY, 3)])
    assert value(registry, "redbatch_queue_buffered_items", batcher="depth") == 3
    assert value(registry, "redbatch_queue_open_keys", batcher="depth") == 2
    assert value(registry, "redbatch_queue_oldest_item_age_seconds", batcher="depth") >= 0
    assert value(registry, "redbatch_items_added_total", batcher="depth") == 3
    batcher.clear("x")
    assert value(registry, "redbatch_queue_buffered_items", batcher="depth") == 1


def test_a_scrape_survives_a_store_that_cannot_be_reached_and_a_broken_source(tmp_path: Path) -> None:
    server = RedisServer(free_port(), tmp_path).start()
    try:
        store = redbatch.connect(server.url)
    finally:
        server.stop()  # the store now points at a port nothing listens on
    try:
        batcher = redbatch.Batcher(store, "gone")

        def broken() -> list[Metric]:
            raise RuntimeError("this source is broken")

        def jobs() -> list[Metric]:
            gauge = GaugeMetricFamily("redbatch_jobs", "Jobs by status.", labels=["outcome"])
            gauge.add_metric(["pending"], 4)
            return [gauge]

        instruments = metrics.instrument([batcher], sources=[broken])
        instruments.collector.add_source(jobs)
        registry = instruments.registry
        started = time.monotonic()
        text, _ = metrics.render(registry)
        assert time.monotonic() - started < 10
        assert value(registry, "redbatch_queue_up", batcher="gone") == 0
        assert value(registry, "redbatch_queue_read_errors_total", batcher="gone") >= 2  # two scrapes
        assert value(registry, "redbatch_jobs", outcome="pending") == 4
        assert b"redbatch_queue_buffered_items{" not in text
    finally:
        store.close()


def test_each_worker_may_have_its_own_registry() -> None:
    store = redbatch.connect("memory://")
    batcher = redbatch.Batcher(store, "twice")
    first, second = metrics.instrument([batcher]), metrics.instrument([batcher])
    assert first.registry is not second.registry
    # Before any batch, every series of the batcher is there at 0.
    assert first.registry.get_sample_value("redbatch_batches_flushed_total", {"batcher": "twice"}) == 0
    labels = {"batcher": "twice", "outcome": "timed_out"}
    assert first.registry.get_sample_value("redbatch_handler_calls_total", labels) == 0
    shared = CollectorRegistry()
    metrics.PrometheusHooks(shared)
    with pytest.raises(ValueError, match="Duplicated"):
        metrics.PrometheusHooks(shared)


def asgi_get(app: Callable[..., Any], method: str) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": "/", "headers": [], "query_string": b""}
    asyncio.run(app(scope, receive, send))
    start, body = sent
    return start["status"], dict(start["headers"]), body["body"]


@pytest.mark.parametrize("store_kind", ["sqlite"])
def test_the_asgi_app_serves_the_registry(store: Store) -> None:
    batcher = redbatch.Batcher(store, "served")
    batcher.add(HOSTILE_KEY, 1)
    app = metrics.metrics_asgi_app(metrics.instrument([batcher]).registry)
    status, headers, body = asgi_get(app, "GET")
    assert status == 200 and headers[b"content-type"].startswith(b"text/plain")
    assert b'redbatch_queue_buffered_items{batcher="served"} 1.0' in body
    assert b"hostile-key" not in body
    assert asgi_get(app, "HEAD")[2] == b""
    assert asgi_get(app, "POST")[0] == 405


def test_a_port_that_is_taken_is_a_config_error() -> None:
    registry = CollectorRegistry()
    server = metrics.serve_metrics(registry, 0)
    try:
        assert server.host == "127.0.0.1"
        with urllib.request.urlopen(server.url, timeout=DEADLINE) as response:
            assert response.status == 200
        with pytest.raises(redbatch.ConfigError, match="cannot serve metrics"):
            metrics.serve_metrics(registry, server.port)
    finally:
        server.close()


# ---------------------------------------------------------------- a real worker process


WORKER_MODULE = """
import redbatch

store = redbatch.connect()
ok = redbatch.Batcher(store, "ok", max_items=10, max_wait=60)
fails = redbatch.Batcher(store, "fails", max_items=1, max_wait=0, max_attempts=1)


@ok.handler
def done(batch):
    pass


@fails.handler
def fail(batch):
    raise RuntimeError("no luck")
"""


class Output:
    """A process's output lines, read on a thread so the test can wait on them with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        assert proc.stdout is not None
        stream = proc.stdout
        self._thread = threading.Thread(
            target=lambda: self.lines.extend(map(bytes.decode, stream)), daemon=True
        )
        self._thread.start()

    def find(self, pattern: str) -> re.Match[str] | None:
        return next((m for line in list(self.lines) if (m := re.search(pattern, line))), None)

    def join(self) -> None:
        self._thread.join(DEADLINE)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=DEADLINE) as response:
        text: str = response.read().decode()
        return text


def sample(text: str, name: str, labels: str) -> float | None:
    match = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.M)
    return None if match is None else float(match.group(1))


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Output, str]]:
    (tmp_path / "metricsapp.py").write_text(WORKER_MODULE)
    url = f"sqlite:///{tmp_path / 'redbatch.db'}"
    args = [sys.executable, "-m", "redbatch.cli", "worker", "metricsapp", "--url", url]
    args += ["--concurrency", "4", "--metrics-port", "0", "--log-format", "json"]
    proc = subprocess.Popen(
        args,
        cwd=tmp_path,
        env={**os.environ, "REDBATCH_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    output = Output(proc)
    try:
        yield proc, output, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(DEADLINE)
        output.join()


def test_a_worker_process_serves_its_metrics_and_logs_json(
    worker_process: tuple[subprocess.Popen[bytes], Output, str],
) -> None:
    proc, output, url = worker_process
    wait_until(
        lambda: output.find(r"metrics at (http://127\.0\.0\.1:\d+/metrics)") is not None, "the metrics URL"
    )
    found = output.find(r"metrics at (http://127\.0\.0\.1:\d+/metrics)")
    assert found is not None
    metrics_url = found.group(1)
    wait_until(lambda: output.find(r"worker started") is not None, "the worker to start")

    store = redbatch.connect(url)
    try:
        ok = redbatch.Batcher(store, "ok", max_items=10, max_wait=60)
        ok.add_many(
            (key, {"n": n, "secret": "item-payload-marker"})
            for n, key in enumerate(["a", "b", HOSTILE_KEY] * 10)
        )
        redbatch.Batcher(store, "fails", max_items=1, max_wait=0, max_attempts=1).add(HOSTILE_KEY, "poison")
        wait_until(
            lambda: (
                sample(scrape(metrics_url), "redbatch_batches_flushed_total", 'batcher="ok"') == 3
                and sample(scrape(metrics_url), "redbatch_batches_dead_lettered_total", 'batcher="fails"')
                == 1
            ),
            "the scraped counters to show 3 flushed batches and 1 dead letter",
        )
    finally:
        store.close()
    text = scrape(metrics_url)
    assert sample(text, "redbatch_batch_size_items_sum", 'batcher="ok"') == 30
    assert sample(text, "redbatch_queue_flushed_items_total", 'batcher="ok"') == 30
    assert sample(text, "redbatch_queue_dead_letters", 'batcher="fails"') == 1
    for secret in ("<script>", "evil", "hostile-key", "item-payload-marker", "poison"):
        assert secret not in text

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(DEADLINE) == 0
    output.join()
    records = [json.loads(line) for line in output.lines]  # every line is one JSON object
    failed = [r for r in records if "failed (attempt" in r["message"]]
    assert len(failed) == 1
    assert failed[0]["level"] == "WARNING"
    assert failed[0]["batcher"] == "fails"
    assert failed[0]["key"] == HOSTILE_KEY
    assert failed[0]["attempt"] == 1
    assert isinstance(failed[0]["batch_id"], str) and failed[0]["batch_id"]
    assert not any("poison" in r["message"] or "item-payload-marker" in r["message"] for r in records)
    assert any(r["message"].startswith("stopped. Batches: 3 succeeded") for r in records)


# ---------------------------------------------------------------- logs


def claimed(key: str) -> ClaimedBatch:
    return ClaimedBatch(Lease(key, "b-1", 7), attempt=2, created_at=0, payloads=(b"1",), arrived_at=(0,))


def test_json_lines_carry_the_batch_fields_and_stay_one_line() -> None:
    store = redbatch.connect("memory://")
    batcher = redbatch.Batcher(store, "logs")
    record = logging.LogRecord("redbatch.worker", logging.WARNING, __file__, 1, "batch %s", ("b-1",), None)
    for name, field in batch_fields(batcher.name, claimed(HOSTILE_KEY)).items():
        setattr(record, name, field)
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = orjson.loads(line)
    assert entry["message"] == "batch b-1"
    assert entry["level"] == "WARNING" and entry["logger"] == "redbatch.worker"
    assert entry["batcher"] == "logs" and entry["key"] == HOSTILE_KEY
    assert entry["batch_id"] == "b-1" and entry["attempt"] == 2
    assert "ValueError: boom" in entry["exception"]
    assert entry["time"].endswith("+00:00")


def test_the_log_format_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDBATCH_LOG_FORMAT", "JSON")
    assert log_format_from_env() == "json"
    monkeypatch.setenv("REDBATCH_LOG_FORMAT", "xml")
    with pytest.raises(redbatch.ConfigError, match="REDBATCH_LOG_FORMAT"):
        log_format_from_env()
    result = CliRunner().invoke(cli.app, ["stats", "x"])
    assert result.exit_code == 2
    assert "REDBATCH_LOG_FORMAT" in result.output


# ---------------------------------------------------------------- the Grafana dashboard


def expressions(node: Any) -> Iterator[str]:
    """Every PromQL expression of a dashboard: panel targets and templating queries."""
    if isinstance(node, dict):
        for name, child in node.items():
            if name == "expr" and isinstance(child, str):
                yield child
            elif name == "query" and isinstance(child, dict) and isinstance(child.get("query"), str):
                yield child["query"]
            elif name == "definition" and isinstance(child, str):
                yield child
            else:
                yield from expressions(child)
    elif isinstance(node, list):
        for child in node:
            yield from expressions(child)


def sample_names(registry: CollectorRegistry) -> set[str]:
    return {s.name for family in registry.collect() for s in family.samples}


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_the_grafana_dashboard_names_only_metrics_that_exist(ran: Ran) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["panels"]
    exprs = list(expressions(dashboard))
    assert len(exprs) >= 10
    names = sample_names(ran.registry)
    used: set[str] = set()
    for expr in exprs:
        found = set(re.findall(r"\bredbatch_[a-zA-Z0-9_:]*", expr))
        assert found, f"no redbatch metric in {expr!r}"
        assert found <= names, f"{sorted(found - names)} in {expr!r} are not metrics a worker exports"
        used |= found
        grouped = re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
        for labels in grouped:
            assert {x.strip() for x in labels.split(",") if x.strip()} <= {
                "batcher",
                "outcome",
                "le",
                "instance",
            }
    assert "redbatch_batches_flushed_total" in used and "redbatch_queue_buffered_items" in used
