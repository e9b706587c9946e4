"""Prometheus metrics: what a worker does, and how deep each batcher's queue is.

Two parts, registered on one ``prometheus_client`` registry (a new one per worker unless
you pass one, so several workers or tests in one process never collide):

- ``PrometheusHooks``, the worker's ``WorkerHooks``: counters and histograms of this
  process's claims, handler calls and outcomes, updated as they happen (a dictionary look-up
  and a counter increment per event, on the worker's loop).
- ``QueueCollector``: at scrape time, one ``store.counters`` read per batcher (on the
  scraping thread, never the worker's loop) for the depths every worker shares: open keys,
  buffered items, oldest item age, in flight, retrying, dead letters, flushed batches and
  items, last flush; and the items this process added. A store that cannot be read makes
  ``redbatch_queue_up`` 0 for that batcher; the scrape itself never fails.

``instrument(batchers)`` builds both on one registry. Expose it with ``serve_metrics`` (a
bare worker's port, 127.0.0.1 unless told otherwise), ``metrics_asgi_app`` (mount it at
``/metrics`` of an ASGI service) or ``render`` (the text, for any other framework).

Labels are ``batcher`` (the batcher's name) and ``outcome`` only: no label ever carries a
key or an item, so a metric's series are bounded by the batchers a worker runs.

Queue depths are the store's, the same whichever worker reports them: aggregate them with
``max by (batcher)``, not ``sum``. Counters from the hooks are per process: ``sum`` them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from redbatch.batcher import Batcher
from redbatch.errors import ConfigError
from redbatch.hooks import HandlerOutcome, SettleOutcome, WorkerHooks
from redbatch.jobs import Jobs

if TYPE_CHECKING:
    from redbatch.types import ClaimedBatch

log = logging.getLogger("redbatch.metrics")

Send = Callable[[dict[str, Any]], Awaitable[None]]
MetricSource = Callable[[], Iterable[Metric]]
"""Extra metrics read at scrape time (the jobs' counts by status, ...): a callable that
returns metric families. One that raises is logged and skipped; the rest of the scrape goes on."""

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
"""Handler durations, in seconds."""
WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
"""Waits from an item's arrival to its handler's start, in seconds (``max_wait`` is often minutes)."""
SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
"""Items per batch."""


class PrometheusHooks(WorkerHooks):
    """Worker hooks that count into Prometheus metrics: pass as ``Worker(..., hooks=...)``.

    Metrics (labels ``batcher``, and ``outcome`` where named):

    - ``redbatch_batches_claimed_total``: batches this worker leased (a batch it won back
      while still running it counts again);
    - ``redbatch_repeat_attempts_total``: of those, claims of a second or later attempt: a
      retry, or a reclaim of a batch whose worker lost its lease. Across every worker,
      ``repeat_attempts - batch_retries`` counts the reclaims;
    - ``redbatch_batch_size_items``: items per handler call (histogram);
    - ``redbatch_batch_wait_seconds``: from the arrival of a batch's oldest item to its
      handler's start, the wait ``max_wait`` bounds (histogram; retries included);
    - ``redbatch_handler_duration_seconds``: handler wall time (histogram);
    - ``redbatch_handler_calls_total{outcome}``: handler calls by how they ended,
      ``succeeded``, ``failed`` or ``timed_out``;
    - ``redbatch_batches_flushed_total``: batches acknowledged as done;
    - ``redbatch_batch_retries_total``: failed attempts recorded with a retry to come;
    - ``redbatch_batches_dead_lettered_total``: batches moved to dead letters;
    - ``redbatch_stale_writes_refused_total``: outcomes the store refused because another
      worker had taken the lease (fencing);
    - ``redbatch_leases_lost_total``: heartbeats that found the lease taken by another worker.

    Args:
        registry: Where to register them; default a new ``CollectorRegistry`` (see
            ``registry``). Registering twice on one registry raises ``ValueError``.

    Attributes:
        registry: The registry the metrics are on.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        batcher = ["batcher"]
        self.claimed = self._counter("redbatch_batches_claimed", "Batches this worker leased.")
        self.repeats = self._counter(
            "redbatch_repeat_attempts",
            "Claims of a batch's second or later attempt (a retry, or a reclaim after a lost lease).",
        )
        self.size = Histogram(
            "redbatch_batch_size_items",
            "Items per handler call.",
            batcher,
            registry=self.registry,
            buckets=SIZE_BUCKETS,
        )
        self.wait = Histogram(
            "redbatch_batch_wait_seconds",
            "From the arrival of a batch's oldest item to its handler's start.",
            batcher,
            registry=self.registry,
            buckets=WAIT_BUCKETS,
        )
        self.duration = Histogram(
            "redbatch_handler_duration_seconds",
            "Handler wall time.",
            batcher,
            registry=self.registry,
            buckets=DURATION_BUCKETS,
        )
        self.calls = self._counter(
            "redbatch_handler_calls",
            "Handler calls by how they ended: succeeded, failed or timed_out.",
            ["batcher", "outcome"],
        )
        self.flushed = self._counter("redbatch_batches_flushed", "Batches acknowledged as done.")
        self.retries = self._counter(
            "redbatch_batch_retries", "Failed attempts recorded with a retry to come."
        )
        self.dead = self._counter("redbatch_batches_dead_lettered", "Batches moved to dead letters.")
        self.refused = self._counter(
            "redbatch_stale_writes_refused", "Outcomes refused because another worker had taken the lease."
        )
        self.lost = self._counter(
            "redbatch_leases_lost", "Heartbeats that found the lease taken by another worker."
        )
        self._children: dict[str, _Children] = {}

    def _counter(self, name: str, help_text: str, labels: Sequence[str] = ("batcher",)) -> Counter:
        return Counter(name, help_text, labels, registry=self.registry)

    def track(self, batcher: Batcher | Jobs) -> None:
        """Export ``batcher``'s series now, at 0, rather than from its first batch on, so
        that rates and alerts see a worker that has done nothing yet."""
        self._of(batcher)

    def _of(self, batcher: Batcher | Jobs) -> _Children:
        """The labelled children of one batcher, made once: ``labels()`` costs a lock each call."""
        children = self._children.get(batcher.name)
        if children is None:
            name = batcher.name
            children = _Children(
                claimed=self.claimed.labels(name),
                repeats=self.repeats.labels(name),
                size=self.size.labels(name),
                wait=self.wait.labels(name),
                duration=self.duration.labels(name),
                calls={o: self.calls.labels(name, o) for o in ("succeeded", "failed", "timed_out")},
                settled={
                    "acked": self.flushed.labels(name),
                    "retried": self.retries.labels(name),
                    "dead": self.dead.labels(name),
                    "refused": self.refused.labels(name),
                },
                lost=self.lost.labels(name),
            )
            self._children[name] = children
        return children

    def batch_claimed(self, batcher: Batcher, claimed: ClaimedBatch) -> None:
        children = self._of(batcher)
        children.claimed.inc()
        if claimed.attempt > 1:
            children.repeats.inc()

    def handler_finished(
        self,
        batcher: Batcher,
        claimed: ClaimedBatch,
        duration: float,
        outcome: HandlerOutcome,
        error: BaseException | None,
    ) -> None:
        # Here rather than at the claim: once per handler call, and a batch won back while
        # its handler runs is not counted twice.
        children = self._of(batcher)
        children.size.observe(len(claimed.payloads))
        if claimed.arrived_at:
            started_ms = batcher.clock() - duration * 1000
            children.wait.observe(max(0.0, (started_ms - claimed.arrived_at[0]) / 1000))
        children.duration.observe(duration)
        children.calls[outcome].inc()

    def batch_settled(self, batcher: Batcher, claimed: ClaimedBatch, outcome: SettleOutcome) -> None:
        self._of(batcher).settled[outcome].inc()

    def lease_lost(self, batcher: Batcher, claimed: ClaimedBatch) -> None:
        self._of(batcher).lost.inc()


@dataclass(frozen=True, slots=True)
class _Children:
    claimed: Any
    repeats: Any
    size: Any
    wait: Any
    duration: Any
    calls: dict[str, Any]
    settled: dict[str, Any]
    lost: Any


class QueueCollector(Collector):
    """Reads each batcher's counters from the store when Prometheus scrapes.

    One ``store.counters`` call per batcher per scrape, made on the scraping thread. Metrics
    (label ``batcher``):

    - ``redbatch_queue_open_keys``, ``redbatch_queue_buffered_items``,
      ``redbatch_queue_in_flight_batches``, ``redbatch_queue_retrying_batches``,
      ``redbatch_queue_dead_letters``: gauges, as ``Batcher.stats`` reports them;
    - ``redbatch_queue_oldest_item_age_seconds``: how long the oldest waiting item has
      waited; 0 when none waits;
    - ``redbatch_queue_flushed_batches_total``, ``redbatch_queue_flushed_items_total``: the
      store's counts since the batcher was first used (every worker's, kept across restarts);
    - ``redbatch_queue_last_flush_timestamp_seconds``: when a batch was last acknowledged
      (Unix time); absent until one was;
    - ``redbatch_queue_up``: 1 when the store answered this scrape, 0 when it did not (the
      other queue metrics of that batcher are then absent);
    - ``redbatch_queue_read_errors_total``: scrapes whose store read failed;
    - ``redbatch_items_added_total``: items this process added through these ``Batcher``
      objects (producers: an HTTP service, an application exporting its own metrics).

    Args:
        batchers: The batchers to report.
        sources: More metric sources read at each scrape (see ``MetricSource``); add one
            later with ``add_source``.
    """

    def __init__(self, batchers: Sequence[Batcher], sources: Iterable[MetricSource] = ()) -> None:
        self.batchers = list(batchers)
        self.sources = list(sources)
        self._errors: dict[str, int] = {}
        self._lock = threading.Lock()  # two scrapes at once must not lose an error count

    def add_source(self, source: MetricSource) -> None:
        """Report ``source``'s metrics at every scrape from now on."""
        self.sources.append(source)

    def describe(self) -> Iterable[Metric]:
        return []  # dynamic: registering must not read the store

    def collect(self) -> Iterator[Metric]:
        gauges = {
            name: GaugeMetricFamily(f"redbatch_queue_{name}", help_text, labels=["batcher"])
            for name, help_text in _QUEUE_GAUGES.items()
        }
        flushed_batches = CounterMetricFamily(
            "redbatch_queue_flushed_batches", "Batches acknowledged, by every worker.", labels=["batcher"]
        )
        flushed_items = CounterMetricFamily(
            "redbatch_queue_flushed_items", "Items done, by every worker.", labels=["batcher"]
        )
        up = GaugeMetricFamily(
            "redbatch_queue_up", "1 when the store answered this scrape.", labels=["batcher"]
        )
        errors = CounterMetricFamily(
            "redbatch_queue_read_errors", "Scrapes whose store read failed.", labels=["batcher"]
        )
        added = CounterMetricFamily(
            "redbatch_items_added", "Items this process added to the store.", labels=["batcher"]
        )
        for batcher in self.batchers:
            name = [batcher.name]
            added.add_metric(name, batcher.items_added)
            try:
                stats = batcher.stats()
            except Exception as exc:  # noqa: BLE001 - a scrape reports the failure, never raises it
                log.warning("metrics: reading the counters of %s failed: %s", batcher.name, exc)
                with self._lock:
                    self._errors[batcher.name] = self._errors.get(batcher.name, 0) + 1
                up.add_metric(name, 0)
            else:
                up.add_metric(name, 1)
                gauges["open_keys"].add_metric(name, stats.open_keys)
                gauges["buffered_items"].add_metric(name, stats.buffered_items)
                gauges["oldest_item_age_seconds"].add_metric(name, stats.oldest_item_age or 0.0)
                gauges["in_flight_batches"].add_metric(name, stats.in_flight)
                gauges["retrying_batches"].add_metric(name, stats.retrying)
                gauges["dead_letters"].add_metric(name, stats.dead)
                if stats.last_flush_at is not None:
                    gauges["last_flush_timestamp_seconds"].add_metric(name, stats.last_flush_at)
                flushed_batches.add_metric(name, stats.flushed_batches)
                flushed_items.add_metric(name, stats.flushed_items)
            errors.add_metric(name, self._errors.get(batcher.name, 0))
        yield from gauges.values()
        yield from (flushed_batches, flushed_items, up, errors, added)
        for source in list(self.sources):
            try:
                yield from list(source())
            except Exception:  # one broken source must not empty the scrape
                log.exception("metrics: source %r failed", source)


_QUEUE_GAUGES = {
    "open_keys": "Keys with items waiting or a current batch.",
    "buffered_items": "Items waiting under their keys, not yet in a batch.",
    "oldest_item_age_seconds": "How long the oldest waiting item has waited (0 when none waits).",
    "in_flight_batches": "Batches leased to a worker now.",
    "retrying_batches": "Batches waiting for their retry time.",
    "dead_letters": "Dead letters held.",
    "last_flush_timestamp_seconds": "When a batch was last acknowledged, Unix time.",
}


@dataclass(frozen=True)
class Instruments:
    """What ``instrument`` made: the hooks, the collector and the registry they are on."""

    hooks: PrometheusHooks
    collector: QueueCollector
    registry: CollectorRegistry


def jobs_source(queues: Sequence[Jobs]) -> MetricSource:
    """A source of ``redbatch_jobs{queue,status}``: each job queue's jobs by status, one
    store read per queue per scrape (``Jobs.counts``, served by the stores' indexes)."""

    def collect() -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "redbatch_jobs", "Jobs by status, in the store.", labels=["queue", "status"]
        )
        for queue in queues:
            try:
                counts = queue.counts()
            except Exception as exc:  # noqa: BLE001 - a scrape reports the failure, never raises it
                log.warning("metrics: counting the jobs of %s failed: %s", queue.name, exc)
                continue
            for status, count in counts.items():
                family.add_metric([queue.name, status], count)
        return [family]

    return collect


def instrument(
    batchers: Sequence[Batcher | Jobs],
    registry: CollectorRegistry | None = None,
    sources: Iterable[MetricSource] = (),
) -> Instruments:
    """The hooks and the queue collector of ``batchers`` (and job queues), on one registry.

    Args:
        batchers: The batchers and ``Jobs`` queues the worker runs (or the service serves).
            A job queue's attempts count under its name like a batcher's, and its jobs by
            status are ``redbatch_jobs``.
        registry: Where to register; default a new one.
        sources: More metric sources for the collector.

    Returns:
        ``Instruments``: pass ``.hooks`` to the ``Worker``, serve ``.registry``.
    """
    hooks = PrometheusHooks(registry)
    for batcher in batchers:
        hooks.track(batcher)
    queues = [b for b in batchers if isinstance(b, Jobs)]
    all_sources = [*sources, jobs_source(queues)] if queues else list(sources)
    collector = QueueCollector([b for b in batchers if isinstance(b, Batcher)], all_sources)
    hooks.registry.register(collector)
    return Instruments(hooks, collector, hooks.registry)


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The registry in Prometheus' text format, and its content type, for any HTTP framework."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def metrics_asgi_app(registry: CollectorRegistry) -> Callable[..., Awaitable[None]]:
    """An ASGI app that serves ``registry``: ``app.mount("/metrics", metrics_asgi_app(r))``.

    The scrape (the store reads included) runs on a thread (``asyncio.to_thread``), never
    blocking the event loop. GET and HEAD answer 200 with the text format; any other method 405.
    """

    async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Send) -> None:
        if scope["type"] != "http":
            return
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 405, "headers": [(b"allow", b"GET, HEAD")]})
            await send({"type": "http.response.body", "body": b""})
            return
        body, content_type = await asyncio.to_thread(render, registry)
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    return app


class MetricsServer:
    """A ``/metrics`` HTTP endpoint on its own daemon thread (``serve_metrics`` starts it).

    Attributes:
        host: The address it listens on.
        port: The port it listens on (the one chosen when asked for port 0).
    """

    def __init__(self, registry: CollectorRegistry, port: int, host: str) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port = int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop listening and wait for the serving thread (bounded: 5 s)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` at ``http://host:port/metrics`` until ``close()`` or process exit.

    Args:
        registry: What to serve.
        port: The TCP port; 0 picks a free one (read it from ``.port``).
        host: The address to bind; default loopback only. Bind another (``0.0.0.0``) only on
            a network you trust: the endpoint has no authentication.

    Raises:
        ConfigError: The address cannot be bound (the port is taken, the host is not local).
    """
    try:
        server = MetricsServer(registry, port, host)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    log.info("metrics on %s", server.url)
    return server
