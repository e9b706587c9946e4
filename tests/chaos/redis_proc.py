"""A redis-server with an append-only file that can be SIGKILLed and restarted on its port."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from tests.servers import free_port

START_TIMEOUT = 20.0


class ChaosRedis:
    """redis-server on 127.0.0.1, persisting to ``directory`` with ``appendonly yes``.

    ``appendfsync`` is ``always`` (a write is on disk before its reply) or ``everysec``.
    ``on_spawn`` is told each new process id (the harness hands it to its reaper).
    """

    def __init__(
        self,
        directory: Path,
        appendfsync: str = "always",
        on_spawn: Callable[[int], None] | None = None,
    ) -> None:
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.directory = directory
        self.appendfsync = appendfsync
        self.port = free_port()
        self.on_spawn = on_spawn
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> ChaosRedis:
        """Start (or restart, on the same port and files) and return once it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)]
        args += ["--save", "", "--appendonly", "yes", "--appendfsync", self.appendfsync]
        args += ["--logfile", str(self.directory / "redis.log"), "--daemonize", "no"]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if self.on_spawn is not None:
            self.on_spawn(self.process.pid)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Wait (bounded) until PING answers: the append-only file is loaded by then."""
        assert self.process is not None
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=2.0)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, redis.TimeoutError):
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        self.kill()
                        raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                    time.sleep(0.01)  # a readiness probe: there is nothing to wait on but the port
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed that was not flushed already."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def restart(self) -> None:
        self.kill()
        self.restarts += 1
        self.start()
