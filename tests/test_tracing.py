"""OpenTelemetry tracing: a real worker's spans, read back with the SDK's in-memory exporter.

Spans of handler calls on memory and SQLite (their count, names and attributes), a failing
handler's ERROR status and exception, a retry's two attempts, a job's span, the key only when
asked, no item payload anywhere, a broken tracer that never fails a batch, the producer's
spans, the module without the extra, and the README's tracing snippet run as written.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip(
    "opentelemetry.sdk",
    reason="opentelemetry-sdk is not installed: pip install -e '.[test]' (or '.[otel]' and the SDK)",
)

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

import redbatch
from redbatch import metrics, tracing
from redbatch.hooks import CombinedHooks, WorkerHooks
from redbatch.stores.base import Store
from redbatch.types import ClaimedBatch, Lease

DEADLINE = 20.0
ROOT = Path(__file__).resolve().parents[1]
PAYLOAD_MARKER = "item-payload-marker"
HOSTILE_KEY = 'hostile-key"}\n<script>alert(1)</script>'


def wait_until(condition: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.02)


class Traced:
    """A tracer provider whose spans land in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        found = self.exporter.get_finished_spans()
        return [s for s in found if name is None or s.name == name]


@pytest.fixture
def traced() -> Iterator[Traced]:
    made = Traced()
    yield made
    made.provider.shutdown()


def run_worker(
    store: Store,
    batchers: Sequence[redbatch.Batcher | redbatch.Jobs],
    hooks: WorkerHooks,
    done: Callable[[redbatch.Worker], bool],
) -> redbatch.Worker:
    worker = redbatch.Worker(store, batchers, concurrency=4, handle_signals=False, hooks=hooks)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: done(worker), "the worker to finish its batches")
    finally:
        worker.stop()
        thread.join(DEADLINE)
    assert not thread.is_alive()
    return worker


def attribute_values(spans: Sequence[ReadableSpan]) -> list[str]:
    """Every attribute value of the spans and of their events, as text."""
    values = []
    for span in spans:
        values += [str(v) for v in (span.attributes or {}).values()]
        for event in span.events:
            values += [str(v) for v in (event.attributes or {}).values()]
    return values


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_one_span_per_handler_call_with_its_attributes(store: Store, traced: Traced) -> None:
    ok = redbatch.Batcher(store, "ok", max_items=10, max_wait=60)
    ok.handler(lambda batch: None)
    for n, key in enumerate(["a", "b", HOSTILE_KEY] * 10):
        ok.add(key, {"n": n, "secret": PAYLOAD_MARKER})
    run_worker(store, [ok], tracing.TracingHooks(traced.provider), lambda w: w.counters.succeeded == 3)

    spans = traced.spans()
    assert [s.name for s in spans] == ["handle ok"] * 3
    assert len({s.attributes["redbatch.batch_id"] for s in spans if s.attributes}) == 3
    for span in spans:
        assert span.kind is SpanKind.CONSUMER
        assert span.status.status_code is StatusCode.UNSET
        assert dict(span.attributes or {}) == {
            "messaging.system": "redbatch",
            "messaging.operation.type": "process",
            "messaging.operation.name": "handle",
            "messaging.destination.name": "ok",
            "messaging.batch.message_count": 10,
            "redbatch.batch_id": span.attributes["redbatch.batch_id"] if span.attributes else None,
            "redbatch.attempt": 1,
            "redbatch.handler.outcome": "succeeded",
            "redbatch.outcome": "acked",
        }
        assert span.start_time is not None and span.end_time is not None
        assert span.start_time <= span.end_time
    values = attribute_values(spans)
    assert not [v for v in values if PAYLOAD_MARKER in v or "hostile-key" in v or v in ("a", "b")]


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_a_failing_handler_is_an_error_span_per_attempt(store: Store, traced: Traced) -> None:
    fails = redbatch.Batcher(store, "fails", max_items=2, max_wait=0, max_attempts=2, backoff=0)

    @fails.handler
    def fail(batch: redbatch.Batch) -> None:
        raise RuntimeError("the database is down")

    fails.add_many([("k", {"secret": PAYLOAD_MARKER}), ("k", 2)])
    run_worker(store, [fails], tracing.TracingHooks(traced.provider), lambda w: w.counters.dead_lettered == 1)

    spans = sorted(
        traced.spans("handle fails"), key=lambda s: s.attributes["redbatch.attempt"] if s.attributes else 0
    )
    assert [s.attributes["redbatch.attempt"] for s in spans if s.attributes] == [1, 2]
    assert [s.attributes["redbatch.outcome"] for s in spans if s.attributes] == ["retried", "dead"]
    assert len({s.attributes["redbatch.batch_id"] for s in spans if s.attributes}) == 1  # stable id
    for span in spans:
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "RuntimeError"
        assert span.attributes and span.attributes["redbatch.handler.outcome"] == "failed"
        (exception,) = [e for e in span.events if e.name == "exception"]
        assert exception.attributes and exception.attributes["exception.type"] == "RuntimeError"
        assert exception.attributes["exception.message"] == "the database is down"
    assert not [v for v in attribute_values(spans) if PAYLOAD_MARKER in v]


@pytest.mark.parametrize("store_kind", ["sqlite"])
def test_a_timed_out_handler_is_an_error_span(store: Store, traced: Traced) -> None:
    slow = redbatch.Batcher(store, "slow", max_items=1, max_wait=0, max_attempts=1, timeout=0.05)

    @slow.handler
    async def hang(batch: redbatch.Batch) -> None:
        await asyncio.Event().wait()  # never set: cancelled at the batcher's timeout

    slow.add("k", 1)
    run_worker(store, [slow], tracing.TracingHooks(traced.provider), lambda w: w.counters.dead_lettered == 1)
    (span,) = traced.spans("handle slow")
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes and span.attributes["redbatch.handler.outcome"] == "timed_out"
    assert span.attributes["redbatch.outcome"] == "dead"


@pytest.mark.parametrize("store_kind", ["memory", "sqlite"])
def test_a_job_span_names_its_queue_and_job_id(store: Store, traced: Traced) -> None:
    reports = redbatch.Jobs(store, "reports")

    @reports.function
    def build(params: Any, ctx: Any) -> str:
        return "done"

    reports.submit("build", {"secret": PAYLOAD_MARKER}, id="job-42")
    run_worker(
        store,
        [reports],
        tracing.TracingHooks(traced.provider, include_key=True),
        lambda w: w.counters.succeeded == 1,
    )
    (span,) = traced.spans()
    assert span.name == "run reports"
    attributes = dict(span.attributes or {})
    assert attributes["messaging.destination.name"] == "reports"
    assert attributes["messaging.operation.name"] == "run"
    assert attributes["messaging.message.id"] == attributes["redbatch.job_id"] == "job-42"
    assert attributes["redbatch.outcome"] == "acked"
    assert "redbatch.key" not in attributes and "messaging.batch.message_count" not in attributes
    assert not [v for v in attribute_values([span]) if PAYLOAD_MARKER in v]


@pytest.mark.parametrize("store_kind", ["memory"])
def test_the_key_is_an_attribute_only_when_asked(store: Store, traced: Traced) -> None:
    keyed = redbatch.Batcher(store, "keyed", max_items=1, max_wait=0)
    keyed.handler(lambda batch: None)
    keyed.add(HOSTILE_KEY, 1)
    run_worker(
        store,
        [keyed],
        tracing.TracingHooks(traced.provider, include_key=True),
        lambda w: w.counters.succeeded == 1,
    )
    (span,) = traced.spans()
    assert span.attributes and span.attributes["redbatch.key"] == HOSTILE_KEY


class BrokenProcessor(SpanProcessor):
    """An exporter pipeline that fails on every span it is given."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        raise RuntimeError("the tracing pipeline is broken")


@pytest.mark.parametrize("store_kind", ["memory"])
def test_a_broken_tracer_never_fails_a_batch_nor_the_metrics(store: Store) -> None:
    provider = TracerProvider()
    provider.add_span_processor(BrokenProcessor())
    ok = redbatch.Batcher(store, "ok", max_items=1, max_wait=0)
    ok.handler(lambda batch: None)
    ok.add_many([("a", 1), ("b", 2), ("c", 3)])
    instruments = metrics.instrument([ok])
    hooks = CombinedHooks(tracing.TracingHooks(provider), instruments.hooks)
    worker = run_worker(store, [ok], hooks, lambda w: w.counters.succeeded == 3)
    assert worker.counters.dead_lettered == worker.counters.retried == 0
    flushed = instruments.registry.get_sample_value("redbatch_batches_flushed_total", {"batcher": "ok"})
    assert flushed == 3  # the metrics after the broken hook still heard every event


def claimed_batch(batch_id: str, attempt: int = 1, token: int = 1) -> ClaimedBatch:
    return ClaimedBatch(Lease("k", batch_id, token), attempt, 0, (b"1",), (0,))


def test_won_back_lost_and_unrecorded_batches_end_their_spans(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hooks' bookkeeping, driven as the worker drives it, for the rare paths."""
    batcher = redbatch.Batcher(redbatch.connect("memory://"), "rare")
    hooks = tracing.TracingHooks(traced.provider)
    first = claimed_batch("b1")
    hooks.batch_claimed(batcher, first)
    assert hooks.span_of("b1").is_recording()
    hooks.lease_lost(batcher, first)
    won_back = claimed_batch("b1", attempt=2, token=2)
    hooks.batch_claimed(batcher, won_back)  # the same handler call goes on: no second span
    hooks.handler_finished(batcher, first, 0.01, "succeeded", None)
    hooks.batch_settled(batcher, won_back, "acked")
    (span,) = traced.spans()
    assert span.attributes and span.attributes["redbatch.lease_lost"] is True
    assert [e.name for e in span.events] == ["redbatch.lease_lost", "redbatch.lease_regained"]
    assert span.attributes["redbatch.outcome"] == "acked"

    # Corrupt data: settled without a handler call.
    corrupt = claimed_batch("b2")
    hooks.batch_claimed(batcher, corrupt)
    hooks.batch_settled(batcher, corrupt, "dead")
    assert traced.spans()[-1].status.status_code is StatusCode.ERROR

    # An outcome that is never written (the store was down) is ended after UNSETTLED_AFTER.
    monkeypatch.setattr(tracing, "UNSETTLED_AFTER", 0.0)
    lapsed = claimed_batch("b3")
    hooks.batch_claimed(batcher, lapsed)
    hooks.handler_finished(batcher, lapsed, 0.01, "succeeded", None)
    assert len(traced.spans()) == 2
    hooks.batch_claimed(batcher, claimed_batch("b4"))  # any later event ends it
    unrecorded = traced.spans()[-1]
    assert unrecorded.attributes and unrecorded.attributes["redbatch.batch_id"] == "b3"
    assert unrecorded.attributes["redbatch.outcome"] == "unrecorded"
    assert hooks.span_of("nothing") is not None and not hooks.span_of("nothing").is_recording()


def test_the_producer_spans_each_add_call(traced: Traced) -> None:
    batcher = redbatch.Batcher(redbatch.connect("memory://"), "feedback")
    producer = tracing.TracedProducer(batcher, traced.provider)
    producer.add("agent-1", {"secret": PAYLOAD_MARKER})
    assert producer.add_many([("agent-1", 2), ("agent-2", 3)]) == 2
    with pytest.raises(redbatch.InvalidItem):
        producer.add("agent-1", float("nan"))
    assert batcher.stats().buffered_items == 3
    spans = traced.spans()
    assert [s.name for s in spans] == ["add feedback"] * 3
    assert all(s.kind is SpanKind.PRODUCER for s in spans)
    assert [(s.attributes or {}).get("messaging.batch.message_count") for s in spans] == [1, 2, None]
    assert spans[0].attributes and spans[0].attributes["messaging.operation.type"] == "send"
    assert spans[2].status.status_code is StatusCode.ERROR
    assert not [v for v in attribute_values(spans) if PAYLOAD_MARKER in v or "agent" in v]


def test_the_producer_without_an_sdk_adds_with_no_span() -> None:
    batcher = redbatch.Batcher(redbatch.connect("memory://"), "plain")
    producer = tracing.TracedProducer(batcher, NoOpTracerProvider())
    producer.add("k", 1)
    assert producer.add_many([("k", 2), ("j", 3)]) == 2
    with pytest.raises(redbatch.InvalidKey):
        producer.add("", 4)
    assert batcher.stats().buffered_items == 3


def test_the_async_producer_spans_each_add_call(traced: Traced) -> None:
    batcher = redbatch.Batcher(redbatch.connect("memory://"), "chat")
    producer = tracing.TracedProducer(batcher, traced.provider)

    async def produce() -> None:
        await producer.add_async("chat-1", "hi")
        await producer.add_many_async([("chat-1", "a"), ("chat-2", "b")])

    asyncio.run(produce())
    assert [(s.name, (s.attributes or {})["messaging.batch.message_count"]) for s in traced.spans()] == [
        ("add chat", 1),
        ("add chat", 2),
    ]


def test_without_the_extra_the_module_imports_and_says_which_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"  # as if opentelemetry-api were not installed
        "import redbatch, redbatch.tracing as t\n"
        "assert not t.HAVE_OTEL\n"
        "try:\n    t.TracingHooks()\nexcept redbatch.ConfigError as e:\n    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'redbatch[otel]'" in result.stdout


def test_the_readme_tracing_snippet_runs_as_written(tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"<!-- tracing.*?-->\n```python\n(.*?)```", text, re.S)
    assert match, "the README has no tracing block"
    script = tmp_path / "tracing_snippet.py"
    script.write_text(match.group(1))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("REDBATCH_URL", None)
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"name": "handle feedback"' in result.stdout
    assert '"name": "add feedback"' in result.stdout
