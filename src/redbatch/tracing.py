"""OpenTelemetry tracing: a span per handler call (and job run), and opt-in spans per add.

Needs the ``otel`` extra (``pip install 'redbatch[otel]'``, which brings ``opentelemetry-api``);
without it this module still imports, and building a ``TracingHooks`` or a
``TracedProducer`` raises a ``ConfigError`` that names the extra. Spans go to the tracer
provider you pass, by default the global one: configure an SDK and an exporter as for any
OpenTelemetry application (or run under ``opentelemetry-instrument``); with none configured
the spans are OpenTelemetry's no-ops.

Names and attributes follow OpenTelemetry's semantic conventions for messaging, the span
named ``"{operation} {batcher}"``:

- ``TracingHooks``, the worker's ``WorkerHooks``: one ``CONSUMER`` span per handler call,
  ``handle <batcher>`` (a job: ``run <queue>``), from the claim to the handler's return, with
  ``messaging.system=redbatch``, ``messaging.operation.type=process``,
  ``messaging.operation.name``, ``messaging.destination.name`` (the batcher or job queue),
  ``messaging.batch.message_count`` (items in the batch), ``redbatch.batch_id``,
  ``redbatch.attempt``; a job's span has ``messaging.message.id`` and ``redbatch.job_id``
  (a job id, not user payload). The key, which is user data, only when asked
  (``include_key``). Then ``redbatch.handler.outcome`` (``succeeded``, ``failed``,
  ``timed_out``), status ERROR and the exception recorded when the handler raised or timed
  out, ``redbatch.outcome`` (``acked``, ``retried``, ``dead``, ``refused``) once the outcome
  is written, and a ``redbatch.lease_lost`` event when a heartbeat found the lease taken.
- ``TracedProducer``: wraps a ``Batcher`` so each ``add``/``add_many`` call (and their
  asyncio forms) is a ``PRODUCER`` span ``add <batcher>`` (``messaging.operation.type=send``,
  ``messaging.batch.message_count``). Opt-in: a plain ``Batcher`` is not touched, so a
  process that does not trace pays nothing.

No item payload is ever an attribute. A recorded exception carries your handler's own
message and traceback, as the logs do.

Not done: linking a handler's span to the spans of the adds whose items it carries. That
needs each item's trace context stored with the item, a change to every store's entry
format (the Redis scripts, the SQLite schema, the memory store) and bytes on every item for
a link most batches of many producers could not show well anyway; it is left out on purpose.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from redbatch import __version__
from redbatch.errors import ConfigError
from redbatch.hooks import HandlerOutcome, SettleOutcome, WorkerHooks
from redbatch.jobs import Jobs

try:  # the otel extra; mypy sees it as Any where it is not installed (pyproject's override)
    from opentelemetry import trace
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, TracerProvider

    HAVE_OTEL = True
except ImportError:  # pragma: no cover - exercised by the test run without the extra
    HAVE_OTEL = False

if TYPE_CHECKING:
    from redbatch.batcher import Batcher
    from redbatch.types import ClaimedBatch

MISSING_EXTRA = "OpenTelemetry tracing needs the otel extra: pip install 'redbatch[otel]'"

SYSTEM = "redbatch"
COUNT = "messaging.batch.message_count"
UNSETTLED_AFTER = 300.0
"""Seconds after its handler returned that a span whose outcome was never written (the
store was down, the worker abandoned it) is ended anyway, with ``redbatch.outcome`` set to
``unrecorded``, so that it is exported rather than held for ever."""


def _require_otel() -> None:
    if not HAVE_OTEL:
        raise ConfigError(MISSING_EXTRA)


def _tracer(tracer_provider: TracerProvider | None) -> Tracer:
    return trace.get_tracer("redbatch", __version__, tracer_provider=tracer_provider)


@dataclass(slots=True)
class _Open:
    """One handler call's span while it runs, then until its outcome is written."""

    span: Span
    claimed: ClaimedBatch
    ended_ns: int = 0  # wall time the handler returned, the span's end
    expires: float = field(default=0.0)  # monotonic: end it then if never settled


class TracingHooks(WorkerHooks):
    """Worker hooks that make a span of each handler call: pass as ``Worker(..., hooks=...)``.

    The span starts when the batch is claimed and ends when the handler returns, raises or
    times out; it is exported once the outcome is written (``redbatch.outcome``), or
    ``UNSETTLED_AFTER`` seconds later if it never is. Its attributes are listed in the module's
    docstring. A batch this worker wins back while its handler still runs keeps its span (a
    ``redbatch.lease_regained`` event); a retry is a new span with the next ``redbatch.attempt``.

    The span is not made current for the handler's own code (the worker runs the handler in
    its own task or thread); a handler that wants its spans under it can ask ``span_of``:
    ``with trace.use_span(hooks.span_of(batch.id), end_on_exit=False): ...``.

    To have metrics too, combine both: ``CombinedHooks(instruments.hooks, TracingHooks())``.

    Args:
        tracer_provider: Where the spans go; default the global tracer provider (as set by
            ``trace.set_tracer_provider`` or ``opentelemetry-instrument``, looked up at each
            span, so it may be set after this is built).
        include_key: Put the batch's key in ``redbatch.key``. Keys are user data (a user id,
            a chat id), so this is off by default. Job spans never carry one (a job's key is
            its id, always there as ``redbatch.job_id``).

    Raises:
        ConfigError: The ``otel`` extra (``opentelemetry-api``) is not installed.
    """

    def __init__(self, tracer_provider: TracerProvider | None = None, *, include_key: bool = False) -> None:
        _require_otel()
        self.tracer = _tracer(tracer_provider)
        self.include_key = include_key
        self._running: dict[str, _Open] = {}  # by batch id: handler not yet returned
        self._settling: OrderedDict[str, _Open] = OrderedDict()  # returned, outcome not yet written

    def span_of(self, batch_id: str) -> Span:
        """The span of the handler call now running for ``batch_id`` here, or an invalid
        (no-op) span when there is none: safe to pass to ``trace.use_span``."""
        running = self._running.get(batch_id)
        return running.span if running is not None else trace.INVALID_SPAN

    def batch_claimed(self, batcher: Batcher, claimed: ClaimedBatch) -> None:
        self._end_expired()
        batch_id = claimed.lease.batch_id
        running = self._running.get(batch_id)
        if running is not None:  # won back while its handler runs here: the same call goes on
            running.claimed = claimed
            running.span.add_event("redbatch.lease_regained", {"redbatch.attempt": claimed.attempt})
            return
        span = self.tracer.start_span(
            _span_name(batcher), kind=SpanKind.CONSUMER, attributes=self._attributes(batcher, claimed)
        )
        self._running[batch_id] = _Open(span, claimed)

    def _attributes(self, batcher: Batcher | Jobs, claimed: ClaimedBatch) -> dict[str, Any]:
        lease = claimed.lease
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "process",
            "messaging.destination.name": batcher.name,
            "redbatch.batch_id": lease.batch_id,
            "redbatch.attempt": claimed.attempt,
        }
        if isinstance(batcher, Jobs):
            attributes["messaging.operation.name"] = "run"
            attributes["messaging.message.id"] = lease.key
            attributes["redbatch.job_id"] = lease.key
        else:
            attributes["messaging.operation.name"] = "handle"
            attributes[COUNT] = len(claimed.payloads)
            if self.include_key:
                attributes["redbatch.key"] = lease.key
        return attributes

    def handler_finished(
        self,
        batcher: Batcher,
        claimed: ClaimedBatch,
        duration: float,
        outcome: HandlerOutcome,
        error: BaseException | None,
    ) -> None:
        batch_id = claimed.lease.batch_id
        running = self._running.pop(batch_id, None)
        if running is None:  # its claim was not seen (its span failed to start)
            return
        span = running.span
        span.set_attribute("redbatch.handler.outcome", outcome)
        if error is not None:
            span.record_exception(error, escaped=True)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        elif outcome == "timed_out":
            span.set_status(Status(StatusCode.ERROR, "the handler timed out"))
        running.ended_ns = time.time_ns()
        running.expires = time.monotonic() + UNSETTLED_AFTER
        earlier = self._settling.pop(batch_id, None)
        if earlier is not None:  # an earlier call's outcome never came
            _end(earlier, "unrecorded")
        self._settling[batch_id] = running

    def batch_settled(self, batcher: Batcher, claimed: ClaimedBatch, outcome: SettleOutcome) -> None:
        batch_id = claimed.lease.batch_id
        settling = self._settling.pop(batch_id, None)
        if settling is not None:
            _end(settling, outcome)
            return
        running = self._running.get(batch_id)
        if running is not None and running.claimed is claimed:  # no handler call: corrupt data
            del self._running[batch_id]
            running.span.set_status(Status(StatusCode.ERROR, "the batch could not be read"))
            _end(running, outcome)

    def lease_lost(self, batcher: Batcher, claimed: ClaimedBatch) -> None:
        batch_id = claimed.lease.batch_id
        open_ = self._running.get(batch_id) or self._settling.get(batch_id)
        if open_ is not None:
            open_.span.set_attribute("redbatch.lease_lost", True)
            open_.span.add_event("redbatch.lease_lost")

    def _end_expired(self) -> None:
        """End the spans whose outcome never came (oldest first: one look when none did)."""
        now = time.monotonic()
        while self._settling:
            batch_id, oldest = next(iter(self._settling.items()))
            if oldest.expires > now:
                return
            del self._settling[batch_id]
            _end(oldest, "unrecorded")


def _span_name(batcher: Batcher | Jobs) -> str:
    return f"{'run' if isinstance(batcher, Jobs) else 'handle'} {batcher.name}"


def _end(open_: _Open, outcome: str) -> None:
    open_.span.set_attribute("redbatch.outcome", outcome)
    open_.span.end(end_time=open_.ended_ns or None)


class TracedProducer:
    """A ``Batcher``'s adds, each call a span: ``TracedProducer(feedback).add(key, item)``.

    Each ``add``, ``add_many``, ``add_async`` and ``add_many_async`` is one ``PRODUCER`` span
    ``add <batcher>``, current while the call runs (so a traced store client's spans nest
    under it), with ``messaging.system=redbatch``, ``messaging.operation.type=send``,
    ``messaging.operation.name=add``, ``messaging.destination.name`` and
    ``messaging.batch.message_count`` (how many items were added). An error (an invalid item,
    an unreachable store) is recorded on the span, status ERROR, and raised as before. No key
    nor item is an attribute.

    Opt-in by design: the ``Batcher`` itself is unchanged, so code that adds through it
    directly pays nothing for tracing; and where no SDK is configured (the span would not be
    recorded) the call is made without one, for well under a microsecond more per call.

    Args:
        batcher: The batcher to add to (``.batcher``).
        tracer_provider: Where the spans go; default the global tracer provider.

    Raises:
        ConfigError: The ``otel`` extra (``opentelemetry-api``) is not installed.
    """

    def __init__(self, batcher: Batcher, tracer_provider: TracerProvider | None = None) -> None:
        _require_otel()
        self.batcher = batcher
        self.tracer = _tracer(tracer_provider)
        self._name = f"add {batcher.name}"
        self._attributes = {
            "messaging.system": SYSTEM,
            "messaging.operation.type": "send",
            "messaging.operation.name": "add",
            "messaging.destination.name": batcher.name,
        }

    def _start(self) -> Span:
        return self.tracer.start_span(self._name, kind=SpanKind.PRODUCER, attributes=self._attributes)

    def add(self, key: str, item: Any) -> None:
        """``Batcher.add``, in a span; raises what it raises."""
        span = self._start()
        if not span.is_recording():  # no SDK: the call alone (a no-op span costs ~0.5 us)
            return self.batcher.add(key, item)
        with trace.use_span(span, end_on_exit=True):
            self.batcher.add(key, item)
            span.set_attribute(COUNT, 1)

    def add_many(self, items: Iterable[tuple[str, Any]]) -> int:
        """``Batcher.add_many``, in a span; returns and raises what it does."""
        span = self._start()
        if not span.is_recording():
            return self.batcher.add_many(items)
        with trace.use_span(span, end_on_exit=True):
            count = self.batcher.add_many(items)
            span.set_attribute(COUNT, count)
            return count

    async def add_async(self, key: str, item: Any) -> None:
        """``Batcher.add_async``, in a span; raises what it raises."""
        span = self._start()
        if not span.is_recording():
            return await self.batcher.add_async(key, item)
        with trace.use_span(span, end_on_exit=True):
            await self.batcher.add_async(key, item)
            span.set_attribute(COUNT, 1)

    async def add_many_async(self, items: Iterable[tuple[str, Any]]) -> int:
        """``Batcher.add_many_async``, in a span; returns and raises what it does."""
        span = self._start()
        if not span.is_recording():
            return await self.batcher.add_many_async(items)
        with trace.use_span(span, end_on_exit=True):
            count = await self.batcher.add_many_async(items)
            span.set_attribute(COUNT, count)
            return count
