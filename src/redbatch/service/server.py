"""Run the service on uvicorn, as ``redbatch serve`` does, with the in-process worker's
shutdown tied to the server's signals.

The first SIGINT or SIGTERM stops the server: it finishes the requests in flight, then its
lifespan stops the worker, whose in-flight batches finish. A second SIGINT forces the exit:
uvicorn then skips the lifespan's shutdown, so the worker is told to abandon its batches to
their leases (another worker reclaims them) rather than hold the process open.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from redbatch.errors import ConfigError
from redbatch.service.app import WorkerThread
from redbatch.settings import ServiceSettings


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, runner: WorkerThread | None) -> None:
        super().__init__(config)
        self.runner = runner

    @contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn raises the signals it caught again once it has shut down, so the process
        # ends "killed by SIGTERM"; a clean shutdown exits 0 here, as ``redbatch worker`` does.
        with super().capture_signals():
            try:
                yield
            finally:
                captured = getattr(self, "_captured_signals", None)
                if isinstance(captured, list):
                    captured.clear()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self.force_exit and self.runner is not None:
            self.runner.stop(abandon=True)


def service_settings() -> ServiceSettings:
    """``REDBATCH_API_TOKEN`` and ``REDBATCH_MAX_BODY_BYTES``; ConfigError when invalid (the
    token's value is never quoted)."""
    try:
        return ServiceSettings()
    except ValidationError as exc:
        problems = "; ".join(
            f"REDBATCH_{'.'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        raise ConfigError(f"invalid service settings: {problems}") from None


def run(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Serve ``app`` until SIGINT or SIGTERM; return once it and its worker have stopped."""
    runner: WorkerThread | None = app.state.worker
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on")
    server = _Server(config, runner)
    try:
        server.run()
    finally:
        if runner is not None:  # a forced exit skipped the lifespan's shutdown
            runner.stop(abandon=server.force_exit)
            runner.join()
