"""What the in-process stores (memory, SQLite) share: waking this process's sleeping workers.

A store bumps its ``Wakeups`` after a step that may make work due sooner than a sleeping
worker expects (``redbatch.engine.wakes``); its waiters block on them. The memory store
needs nothing more. The SQLite store's waiter also asks, every ``poll_seconds``, whether
another process has committed, as nothing can notify across processes.
"""

from __future__ import annotations

import threading
import time


class Wakeups:
    """A sequence number that every ``notify`` bumps, under a condition waiters block on.

    ``lock`` is the lock of the condition: the memory store passes its own, as it notifies
    while holding it. A waiter remembers the last number it saw, so it never misses a
    notify that came while it was not waiting.
    """

    def __init__(self, lock: threading.RLock | None = None) -> None:
        self.condition = threading.Condition(lock)
        self.seq = 0

    def notify(self) -> None:
        """Wake every waiter of this process."""
        with self.condition:
            self.seq += 1
            self.condition.notify_all()

    def after_fork(self) -> None:
        """In a forked child, remake a condition of its own: a thread of the parent that no
        longer exists may have held its lock at the fork."""
        self.condition = threading.Condition()


class LocalWaiter:
    """A ``Waiter`` woken by a store's ``Wakeups``; ``close`` may come from another thread.

    A subclass that must also watch for changes made elsewhere sets ``poll_seconds`` and
    overrides ``changed``, which the wait then asks at that interval.
    """

    poll_seconds: float | None = None

    def __init__(self, wakeups: Wakeups) -> None:
        self._wakeups = wakeups
        self._seen = wakeups.seq
        self._closed = False

    def wait(self, timeout: float) -> bool:
        """True when woken (by a notify, or ``changed``), False on timeout or once closed."""
        deadline = time.monotonic() + timeout
        while not self._closed:
            remaining = deadline - time.monotonic()
            step = remaining if self.poll_seconds is None else min(self.poll_seconds, remaining)
            condition = self._wakeups.condition  # read afresh: remade in a forked child
            with condition:
                woke = condition.wait_for(self._woken, max(0.0, step))
                self._seen = self._wakeups.seq
            if self._closed:
                break
            if woke or (self.poll_seconds is not None and self.changed()):
                return True
            if self.poll_seconds is None or remaining <= 0:
                break
        return False

    def _woken(self) -> bool:
        return self._closed or self._wakeups.seq != self._seen

    def changed(self) -> bool:
        """Whether something this process was not notified of may have made work due."""
        return False

    def close(self) -> None:
        condition = self._wakeups.condition
        with condition:
            self._closed = True
            condition.notify_all()
