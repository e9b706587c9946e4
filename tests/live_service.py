"""A real uvicorn server on a loopback port, in a thread, for the HTTP service's tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI

START_DEADLINE = 15.0


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a port the OS picks, bound before the server starts, so
    no other process can take it in between) and yield its base URL; stop it on exit,
    running the app's lifespan shutdown (the in-process worker stops there)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_healthy(base, thread)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def wait_healthy(base: str, thread: threading.Thread | None = None, deadline: float = START_DEADLINE) -> None:
    """Poll /healthz until it answers 200, or fail after ``deadline`` seconds."""
    until = time.monotonic() + deadline
    while True:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if thread is not None and not thread.is_alive():
            raise RuntimeError("the server thread ended before /healthz answered")
        if time.monotonic() > until:
            raise RuntimeError(f"{base}/healthz did not answer within {deadline} s")
        time.sleep(0.02)  # a poll interval, bounded by the deadline above
