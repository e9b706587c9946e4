"""Child processes: worker scripts (``subprocess``) and producer/flusher functions
(``multiprocessing`` with the spawn method). Each one is tracked and stopped by its own pid:
SIGTERM first, SIGKILL after a grace period, also when the harness fails."""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.context import SpawnProcess
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPAWN = multiprocessing.get_context("spawn")
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: ask Linux to SIGTERM the child if the harness dies, even by SIGKILL,
    so no redis-server or worker outlives a crashed run. A no-op where prctl is missing."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: this one, with the repository root importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


class Children:
    """The processes started for one step; ``close`` stops every one still running."""

    def __init__(self, grace: float = 15.0) -> None:
        self.grace = grace
        self._popens: list[subprocess.Popen[bytes]] = []
        self._processes: list[SpawnProcess] = []

    def module(
        self, module: str, args: Sequence[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Run ``python -m module args`` (its output goes to this process' stderr)."""
        popen = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - no threads run in the harness when it forks
        )
        self._popens.append(popen)
        return popen

    def function(self, target: Callable[..., Any], *args: Any) -> SpawnProcess:
        """Run ``target(*args)`` in a fresh interpreter (spawn), started at once."""
        process = SPAWN.Process(target=target, args=args, daemon=True)
        process.start()
        self._processes.append(process)
        return process

    def join_functions(self, timeout: float) -> bool:
        """Wait for every spawned function to return; False if one had to be stopped."""
        deadline = time.monotonic() + timeout
        clean = True
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                clean = False
                self._stop_process(process)
            elif process.exitcode != 0:
                clean = False
        return clean

    def stop_modules(self) -> None:
        """SIGTERM every worker script, then wait for each (SIGKILL after the grace period)."""
        for popen in self._popens:
            if popen.poll() is None:
                popen.terminate()
        for popen in self._popens:
            try:
                popen.wait(timeout=self.grace)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=self.grace)
        self._popens.clear()

    def _stop_process(self, process: SpawnProcess) -> None:
        if process.is_alive():
            process.terminate()
            process.join(self.grace)
        if process.is_alive():
            process.kill()
            process.join(self.grace)

    def close(self) -> None:
        self.stop_modules()
        for process in self._processes:
            self._stop_process(process)
            process.close()
        self._processes.clear()

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
