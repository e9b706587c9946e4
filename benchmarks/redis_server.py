"""A private redis-server for one benchmark run: 127.0.0.1 only, a free port, no persistence.

Used as a context manager, so the server is killed on the way out, also on error.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from benchmarks.procs import die_with_parent

STATS_DB = 15
"""The database the harness keeps its own records in (handled counts, sequence numbers)."""
ADMIN_TIMEOUT = 600.0
"""Socket timeout of the harness' own clients: flushing or scanning a million keys takes a
while, and redis-py's default (5 s) would fail it."""


def admin_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=ADMIN_TIMEOUT)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError("redis-server is not on PATH; the benchmarks need it")
    return path


class RedisServer:
    """One redis-server process, started by ``start`` and killed by ``stop``."""

    def __init__(self, workdir: Path, *, persistence: bool = False) -> None:
        self.workdir = workdir
        self.persistence = persistence
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=ADMIN_TIMEOUT)

    def start(self, attempts: int = 3) -> RedisServer:
        last_error = ""
        for _ in range(attempts):
            self.port = free_port()
            args = [
                redis_server_binary(),
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--protected-mode", "yes",
                "--daemonize", "no",
                "--dir", str(self.workdir),
                "--databases", "16",
                "--loglevel", "warning",
                "--logfile", str(self.workdir / f"redis-{self.port}.log"),
            ]  # fmt: skip
            if self.persistence:
                args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
            else:
                args += ["--appendonly", "no", "--save", ""]
            self.process = subprocess.Popen(
                args,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads run in the harness when it forks
            )
            if self._wait_ready(timeout=10.0):
                return self
            last_error = self._stop_process()
        raise RuntimeError(f"redis-server did not start: {last_error}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1) as client:
                    if client.ping():
                        return True
            except redis.ConnectionError:
                time.sleep(0.05)
        return False

    def _stop_process(self) -> str:
        process, self.process = self.process, None
        if process is None:
            return ""
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        if process.stderr:
            process.stderr.close()
        return stderr.strip()

    def stop(self) -> None:
        self._stop_process()

    def flush(self) -> None:
        """Empty every database (scripts stay cached) and wait until memory is given back."""
        with self.client() as client:
            client.flushall(asynchronous=False)

    def used_memory(self) -> int:
        with self.client() as client:
            return int(client.info("memory")["used_memory"])

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
