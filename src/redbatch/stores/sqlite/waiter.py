"""How a worker waiting on the SQLite store learns that work may have become due."""

from __future__ import annotations

import logging
import sqlite3
import threading

from redbatch.errors import StoreUnavailable
from redbatch.stores.local import LocalWaiter
from redbatch.stores.sqlite.connection import Database

log = logging.getLogger("redbatch.store.sqlite")

POLL_SECONDS = 0.01
"""How often a waiter looks for commits by other processes (SQLite cannot notify them)."""


class SQLiteWaiter(LocalWaiter):
    """Woken at once by this process's commits, and within ``POLL_SECONDS`` by any other's.

    Other processes are seen through ``PRAGMA data_version`` on a connection of the waiter's
    own, which changes whenever another connection commits. That wakes the worker on any
    change to the file, not only on an earlier deadline: a spurious wake-up costs the worker
    two index reads, and at most one happens per poll. ``close`` may come from another thread.
    """

    poll_seconds = POLL_SECONDS

    def __init__(self, store: Database) -> None:
        super().__init__(store._wakeups)
        self._store = store
        self._warned = False
        self._lock = threading.Lock()  # between wait() and a close() from another thread
        self._generation = store._generation
        self._conn = store._connect()
        self._version = self._data_version()

    def changed(self) -> bool:
        """Whether another connection committed since the last poll, or the file was replaced."""
        if self._store._replaced():
            try:
                self._store._reopen_replaced()
            except StoreUnavailable as exc:
                self._warn(exc)
                return False
        version = self._data_version()
        if version is None or version == self._version:
            return False
        self._version = version
        return True

    def _data_version(self) -> int | None:
        with self._lock:
            if self._closed:
                return None
            with self._conn.in_use:
                if self._generation == self._store._generation:  # else the store closed it
                    try:
                        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])
                    except sqlite3.Error as exc:
                        self._warn(exc)
                        return None
            # The store was closed or moved to a replaced file: watch it on a new connection,
            # whose data_version counts from its own start (so the next poll reports a change).
            self._generation = self._store._generation
            try:
                self._conn = self._store._connect()
            except StoreUnavailable as exc:
                self._warn(exc)
            self._version = None
            return None

    def _warn(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            path = self._store.path
            log.warning("cannot watch %s for other processes (%s); relying on deadlines", path, exc)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            with self._conn.in_use:
                self._conn.close()
        super().close()
