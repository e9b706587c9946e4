"""The harness' own record of what handlers received, kept in Redis database 15.

Every handler under test (redbatch workers, Celery tasks, baseline flushers) calls
``record`` once per batch. ``record`` only appends to memory (a few microseconds, the same
for every subject); a background thread sends what accumulated every ``FLUSH_EVERY``
seconds, and ``close`` sends the rest. The time of the last handled batch is taken in
``record``, so the flush delay does not count in any figure.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable

import redis

HANDLED = "bench:handled"
LAST = "bench:last"
READY = "bench:ready"
LATE = "bench:late"
SEQS = "bench:seqs"
ERRORS = "bench:errors"
FLUSH_EVERY = 0.02


class Ledger:
    """Counts handled items, when each process became ready and handled its last batch,
    and optionally each item's lateness or sequence number."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url, socket_timeout=120)
        self.who = str(os.getpid())
        self._lock = threading.Lock()
        self._count = 0
        self._last = 0.0
        self._seqs: list[int] = []
        self._late: list[str] = []
        self._errors = 0
        self._flusher: threading.Thread | None = None
        self._closed = threading.Event()

    def reset(self) -> None:
        self.client.delete(HANDLED, LAST, READY, LATE, SEQS, ERRORS)

    def ready(self) -> None:
        self.client.hset(READY, self.who, repr(time.time()))

    def record(
        self,
        count: int,
        *,
        seqs: Iterable[int] | None = None,
        lateness: Iterable[float] | None = None,
    ) -> None:
        """Note one handled batch (in memory; sent within ``FLUSH_EVERY`` seconds)."""
        now = time.time()
        with self._lock:
            self._count += count
            self._last = max(self._last, now)
            if seqs is not None:
                self._seqs.extend(seqs)
            if lateness is not None:
                self._late.extend(f"{x:.6f}" for x in lateness)
        self._start_flusher()

    def error(self) -> None:
        """Note that the process under test logged an error (its figures are suspect)."""
        with self._lock:
            self._errors += 1
        self._start_flusher()

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is None and not self._closed.is_set():
                self._flusher = threading.Thread(target=self._flush_loop, name="ledger", daemon=True)
                self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._closed.wait(FLUSH_EVERY):
            self.flush()

    def flush(self) -> None:
        with self._lock:
            count, last, seqs, late, errors = self._count, self._last, self._seqs, self._late, self._errors
            self._count, self._seqs, self._late, self._errors = 0, [], [], 0
        if not count and not seqs and not late and not errors:
            return
        pipe = self.client.pipeline(transaction=False)
        if errors:
            pipe.incrby(ERRORS, errors)
        if seqs:
            pipe.rpush(SEQS, *seqs)
        if late:
            pipe.rpush(LATE, *late)
        if count:
            pipe.incrby(HANDLED, count)
            pipe.hset(LAST, self.who, repr(last))
        pipe.execute()

    def close(self) -> None:
        """Send what is left and disconnect."""
        self._closed.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
        self.flush()
        self.client.close()

    # ------------------------------------------------------------------ reading

    def handled(self) -> int:
        return int(self.client.get(HANDLED) or 0)

    def errors(self) -> int:
        return int(self.client.get(ERRORS) or 0)

    def ready_count(self) -> int:
        return int(self.client.hlen(READY))

    def first_ready(self) -> float:
        return min(float(v) for v in self.client.hvals(READY))

    def last_handled(self) -> float:
        return max(float(v) for v in self.client.hvals(LAST))

    def lateness(self) -> list[float]:
        return [float(v) for v in self.client.lrange(LATE, 0, -1)]

    def seqs(self) -> list[int]:
        return [int(v) for v in self.client.lrange(SEQS, 0, -1)]

    def wait_ready(self, count: int, timeout: float) -> bool:
        return _poll(lambda: self.ready_count() >= count, timeout, 0.02)

    def wait_handled(self, count: int, timeout: float, *, quiet: float | None = None) -> bool:
        """Wait until ``count`` items were handled; with ``quiet``, also give up early once
        the count has not moved for ``quiet`` seconds (for subjects that lose items)."""
        deadline = time.monotonic() + timeout
        last_seen, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            seen = self.handled()
            if seen >= count:
                return True
            now = time.monotonic()
            if seen != last_seen:
                last_seen, last_change = seen, now
            elif quiet is not None and now - last_change >= quiet:
                return False
            time.sleep(0.01)
        return False


def _poll(check: Callable[[], bool], timeout: float, interval: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False
