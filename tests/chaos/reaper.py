"""Kill the harness's children if the harness itself dies without cleaning up.

The harness starts this module as a process and sends it, on its stdin, one line per child
it spawns: ``pid start_time``. When the harness exits, however it exits (even SIGKILL), the
pipe reaches end of file and the reaper SIGKILLs every listed child that is still the same
process (same start time, so a recycled pid is left alone). A harness that cleaned up
after itself leaves nothing to kill.

Usage (internal): ``python -m tests.chaos.reaper``
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after its ')' are plain.
    return stat.rsplit(")", 1)[1].split()[19]


class Reaper:
    """The harness's side: start the reaper and tell it about each child."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.reaper"],
            cwd=Path(__file__).resolve().parents[2],
            stdin=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C aimed at the harness must not stop the reaper
        )

    def watch(self, pid: int) -> None:
        started = start_time(pid)
        if started is None or self._process.stdin is None:
            return
        with contextlib.suppress(OSError):
            self._process.stdin.write(f"{pid} {started}\n".encode())
            self._process.stdin.flush()

    def close(self) -> None:
        """Normal end: the children are gone already; let the reaper check and exit."""
        if self._process.stdin is not None:
            with contextlib.suppress(OSError):
                self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)


def main() -> None:
    children: dict[int, str] = {}
    for line in sys.stdin:
        pid, started = line.split()
        children[int(pid)] = started
    for pid, started in children.items():
        if start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)  # a stopped process dies of SIGKILL too, but be plain
                os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
