"""The app factory: a FastAPI application over one store, its batchers, and optionally an
in-process worker run from the app's lifespan.

The routes live beside it, one module per surface: ``batchers`` and ``jobs``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

import redbatch
from redbatch.batcher import Batcher
from redbatch.errors import RedbatchError
from redbatch.jobs import Jobs
from redbatch.metrics import instrument, render
from redbatch.service import batchers as batcher_routes
from redbatch.service import dashboard
from redbatch.service import jobs as job_routes
from redbatch.service.errors import ERROR_RESPONSES, NotReady, install_error_handlers
from redbatch.service.limits import BodyLimit
from redbatch.service.models import ErrorBody, Health
from redbatch.stores.base import Store
from redbatch.worker import Worker

log = logging.getLogger("redbatch.service")

DEFAULT_MAX_BODY = 1 << 20


class WorkerThread:
    """A ``Worker`` run on a thread of its own beside the server.

    The server owns the signals: its shutdown calls ``stop()`` (in-flight batches finish)
    and a forced one ``stop(abandon=True)``.
    """

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.failed: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="redbatch-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as exc:  # it ends the worker, not the server: /readyz says so
            self.failed = exc
            log.exception("the in-process worker stopped on an error")

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, abandon: bool = False) -> None:
        self.worker.stop(abandon=abandon)

    def join(self) -> None:
        self._thread.join()

    @property
    def state(self) -> str:
        if self.failed is not None or (not self._thread.is_alive() and self._thread.ident is not None):
            return "stopped"
        return "running" if self.worker.started.is_set() else "starting"


def create_app(
    store: Store,
    batchers: Iterable[Batcher] = (),
    *,
    worker: Worker | None = None,
    jobs: Iterable[Jobs] = (),
    token: SecretStr | str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    metrics: CollectorRegistry | None = None,
) -> FastAPI:
    """The HTTP service over ``store``.

    Args:
        store: The store every route reads and writes.
        batchers: Batchers the service serves by name, with their own settings; any other
            name is opened from the rules the store recorded for it (``Batcher.open``), and
            is a 404 when the store has none.
        worker: A worker to run in-process: started on a thread when the app starts, stopped
            (in-flight batches finish) when it shuts down. Its batchers and job queues
            are served too.
        jobs: Job queues the service serves by name (``/jobs/{queue}``); any other name is
            opened from the rules the store recorded for it, and is a 404 when it has none.
            A queue with functions registered refuses jobs of other functions (422); one
            without accepts any name, for a worker elsewhere to run.
        token: The bearer token mutating routes require; None requires none.
        max_body: The largest request body, in bytes; a larger one is refused with 413.
        metrics: The Prometheus registry ``/metrics`` serves: pass ``metrics.instrument``'s
            when the worker was given its hooks. Default: a registry of the served batchers'
            and job queues' store-side metrics (depths, jobs by status), read at scrape time.

    Returns:
        The application, for uvicorn (``redbatch serve`` runs it) or any ASGI server.
    """
    served = worker.batchers if worker is not None else []
    known = list(batchers) + [b for b in served if isinstance(b, Batcher)]
    queues = list(jobs) + [q for q in served if isinstance(q, Jobs)]
    runner = WorkerThread(worker) if worker is not None else None

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if runner is not None:
            runner.start()
        try:
            yield
        finally:
            if runner is not None:
                runner.stop()
                await asyncio.to_thread(runner.join)

    app = FastAPI(
        title="redbatch",
        version=redbatch.__version__,
        summary="Durable keyed micro-batching and tracked jobs over HTTP: add items, watch batchers, "
        "handle dead letters, submit and poll jobs and groups.",
        lifespan=lifespan,
    )
    app.state.store = store
    app.state.batchers = batcher_routes.BatcherRegistry(store, known)
    app.state.jobs = job_routes.JobRegistry(store, queues)
    app.state.token = SecretStr(token) if isinstance(token, str) else token
    app.state.worker = runner
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body)
    app.include_router(batcher_routes.router)
    app.include_router(batcher_routes.writes)
    app.include_router(dashboard.router)
    app.include_router(job_routes.router)
    app.include_router(job_routes.writes)
    registry = metrics if metrics is not None else instrument([*known, *queues]).registry

    @app.get("/metrics", include_in_schema=False)
    def prometheus() -> Response:
        body, content_type = render(registry)  # a plain def: FastAPI runs it on a thread
        return Response(body, media_type=content_type)

    _health_routes(app)
    return app


def _health_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["health"], summary="The process is up")
    def healthz() -> Health:
        """Answers without touching the store: for liveness probes."""
        return Health(status="ok")

    @app.get(
        "/readyz",
        tags=["health"],
        summary="The store is reachable (and the worker runs)",
        responses={503: ERROR_RESPONSES[503]},
    )
    def readyz(request: Request) -> Health:
        """One read from the store, within its bounded timeouts; 503 when it fails, or when
        the in-process worker has stopped."""
        store: Store = request.app.state.store
        runner: WorkerThread | None = request.app.state.worker
        try:
            store.stored_rules("readyz")  # the cheapest read every store has
        except RedbatchError as exc:
            raise NotReady(f"the store is not reachable: {type(exc).__name__}: {exc}") from None
        worker = None if runner is None else runner.state
        if worker == "stopped":
            raise NotReady("the in-process worker has stopped")
        return Health(status="ok", store=store.url, worker=worker)


__all__ = ["DEFAULT_MAX_BODY", "ErrorBody", "WorkerThread", "create_app"]
