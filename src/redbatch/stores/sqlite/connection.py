"""The SQLite file as one process sees it: connections, transactions, and the file's safety.

``Database`` (the base of ``SQLiteStore``) gives each thread its own connection (appends share
one, see ``_use``) and runs every operation in one transaction: ``_write`` (``BEGIN
IMMEDIATE``, taken in short lock rounds so that no process starves another) or ``_read`` (a
snapshot that never waits). SQLite's errors leave through one translation, ``_unavailable``,
as ``StoreUnavailable``. Two checks keep a process on the file it should use: a forked child
drops its parent's connections (``_forget_parent``), and a file deleted or replaced under an
open store is reopened (``_replaced``, ``_reopen_replaced``).
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redbatch.errors import ConfigError, StoreUnavailable
from redbatch.stores.base import mask_url
from redbatch.stores.local import Wakeups
from redbatch.stores.sqlite.schema import BUMP, BUMP_JOB_COUNT, COUNTERS, SCHEMA_VERSION, migrate

log = logging.getLogger("redbatch.store.sqlite")

_LOCK_ROUND_MS = 50
SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")


def sqlite_path(url: str, options: tuple[str, ...] = ()) -> str:
    """The file named by ``sqlite:///relative.db`` (from the cwd) or ``sqlite:////abs/x.db``.

    Query options other than ``options`` (those the caller reads, as ``connect`` does
    ``synchronous``) are refused. Creates the file's folder when it is missing. Errors quote
    the URL through ``mask_url``.
    """
    masked = mask_url(url)
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced [ or ]: a host, which a sqlite URL does not take anyway
        raise ConfigError(f"a sqlite URL names a local file and takes no host: {masked}") from None
    if parts.scheme.lower() != "sqlite":
        raise ConfigError(f"not a sqlite:// URL: {masked}")
    if parts.netloc:
        raise ConfigError(
            f"a sqlite URL names a local file and takes no host or credentials: {masked}; "
            "write sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    names = [n for n, _ in parse_qsl(parts.query, keep_blank_values=True)] or [parts.query]
    unknown = [n for n in names if n and n not in options]
    if unknown:
        takes = f"takes {', '.join(options)}" if options else "takes no query options here"
        raise ConfigError(f"unknown option {unknown[0]!r} in {masked}: a sqlite URL {takes}")
    if parts.fragment:
        raise ConfigError(f"a sqlite URL takes no fragment: {masked}")
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not path or path.endswith("/"):
        raise ConfigError(f"a sqlite URL needs a file name, as in sqlite:///redbatch.db: {masked}")
    if path == ":memory:" or path.startswith("file:"):
        raise ConfigError("an in-memory SQLite database is not durable; use memory:// for a throwaway store")
    folder = os.path.dirname(path)
    if folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the folder of SQLite database {path}: {exc}") from exc
    return path


_FORK_LOCK = threading.Lock()
"""Taken by a forked child's first use of a store; remade in every child, as a thread of the
parent that no longer exists may have held it at the fork."""
_KEPT_FROM_PARENT: list[sqlite3.Connection] = []
"""Connections inherited mid-operation: never used, never closed (see _forget_parent)."""


def _new_fork_lock() -> None:
    global _FORK_LOCK  # noqa: PLW0603 - a fresh lock for a fresh process
    _FORK_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_fork_lock)


class Connection(sqlite3.Connection):
    """A connection the store holds weakly, so that it closes when its thread ends.

    ``in_use`` is held by every operation on it, and taken by ``close`` from another thread,
    which therefore never closes a connection under a running statement.
    """

    in_use: threading.Lock
    busy_ms: int
    """Its busy_timeout, in milliseconds, as last set (see ``Database._busy``)."""


def locked(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused because another connection holds a lock (BUSY or LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


FileId = tuple[int, int] | None


def file_id(path: str) -> FileId:
    """The identity (device, inode) of the file at ``path``, or None when there is none."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


class Tx:
    """One write transaction: its cursor, the counter changes to save, whether to wake workers.

    ``job_counts`` holds the change to each job status's count (job queues only, see jobs.py).
    """

    __slots__ = ("cur", "deltas", "job_counts", "last_flush", "token", "tokens", "wake")

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self.cur = cur
        self.deltas = dict.fromkeys(COUNTERS, 0)
        self.job_counts: dict[str, int] = {}
        self.last_flush: int | None = None
        self.token: int | None = None
        self.tokens = 0
        self.wake = False

    def add(self, **changes: int) -> None:
        for name, value in changes.items():
            self.deltas[name] += value

    def next_token(self, name: str) -> int:
        if self.token is None:
            row = self.cur.execute("SELECT token_seq FROM queues WHERE name = ?", (name,)).fetchone()
            self.token = 0 if row is None else int(row[0])
        self.token += 1
        self.tokens += 1
        return self.token

    def moved_job(self, before: str | None, after: str | None) -> None:
        """Count a job out of status ``before`` and into ``after`` (None: created, deleted)."""
        if before == after:
            return
        if before is not None:
            self.job_counts[before] = self.job_counts.get(before, 0) - 1
        if after is not None:
            self.job_counts[after] = self.job_counts.get(after, 0) + 1

    def save(self, name: str) -> None:
        """Write the counters once per transaction, creating the batcher's row on first use."""
        for status, delta in self.job_counts.items():
            if delta and self.cur.execute(BUMP_JOB_COUNT, (delta, name, status)).rowcount == 0:
                self.cur.execute(
                    "INSERT INTO job_counts (queue, status, n) VALUES (?, ?, ?)", (name, status, delta)
                )
        if not any(self.deltas.values()) and self.last_flush is None and not self.tokens:
            return
        params = [*self.deltas.values(), self.last_flush, self.tokens, name]
        if self.cur.execute(BUMP, params).rowcount == 0:
            self.cur.execute("INSERT INTO queues (name) VALUES (?)", (name,))
            self.cur.execute(BUMP, params)


class Database:
    """One SQLite file, opened by this process: see the module docstring.

    ``path`` names the file (``sqlite_path`` turns a URL into it); ``busy_timeout`` is how
    many seconds a writer waits for the write lock; ``synchronous`` one of ``SYNCHRONOUS``,
    checked by the caller. Creates or migrates the schema on opening.
    """

    def __init__(self, path: str, *, busy_timeout: float, synchronous: str, url: str) -> None:
        self.path = path
        self.url = url
        self.busy_timeout = busy_timeout
        self._busy_ms = round(busy_timeout * 1000)  # as sqlite3.connect(timeout=) sets it
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._guard = threading.Lock()
        self._connections: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._generation = 0  # bumped by close(): threads then open fresh connections
        self._pid = os.getpid()  # a fork is noticed by a change, see _forget_parent
        self._file_ids: tuple[FileId, FileId, FileId] = (None, None, None)  # see _create_schema
        self._reopen_lock = threading.RLock()
        self._wakeups = Wakeups()  # this process's sleeping workers, see waiter.py
        self._shared: Connection | None = None  # appends' connection, see _use
        self._shared_generation = -1
        self._shared_lock = threading.Lock()
        self._wal = False  # until _create_schema has switched the file to WAL
        self._create_schema()

    def _connect(self) -> Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # only so that close() may close it from elsewhere
                factory=Connection,
            )
            conn.row_factory = sqlite3.Row
            conn.in_use = threading.Lock()
            conn.busy_ms = self._busy_ms
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.DatabaseError as exc:
            raise self._unavailable(exc) from exc
        with self._guard:
            self._connections.add(conn)
        return conn

    def _conn(self) -> Connection:
        """This thread's connection: sqlite3 connections must not be used by two threads at
        once, nor cross from a process to the children it forks."""
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            local.conn = self._connect()
            local.generation = self._generation
        conn: Connection = local.conn
        return conn

    def _forget_parent(self) -> None:
        """In a forked child, drop every connection inherited from the parent; open afresh.

        A connection must never cross a fork: SQLite keeps, per process, a record of the
        locks its connections hold on each file, and fork() copies that record without the
        locks themselves (POSIX locks belong to the process that took them). A child writing
        through an inherited connection, or through a new one while the record survives,
        believes it holds locks it does not: the parent's last connection may then find the
        file unused, checkpoint and delete the WAL, and the child's later commits go to a
        deleted file. Closing every inherited connection in the child frees that record (the
        close itself only gives up locks the child never had), so the child's own
        connections take real locks. Connections of the parent's other threads are closed
        by CPython itself, which discards those threads' state in the child.

        An inherited connection that was in the middle of an operation at the fork is kept,
        unused and open, rather than closed: closing would roll back the parent's transaction
        in the WAL index that both processes share. Locks are replaced too: a thread that no
        longer exists may have held them at the fork.
        """
        inherited = list(self._connections)
        self._pid = os.getpid()
        self._guard = threading.Lock()
        self._wakeups.after_fork()
        self._reopen_lock = threading.RLock()
        self._local = threading.local()
        self._shared, self._shared_lock = None, threading.Lock()
        self._connections = weakref.WeakSet()
        self._generation += 1
        for conn in inherited:
            if conn.in_use.locked() or conn.in_transaction:
                _KEPT_FROM_PARENT.append(conn)
                log.warning("%s: a connection was in use when this process was forked; left open", self.path)
            else:
                with suppress(sqlite3.Error):
                    conn.close()

    @contextmanager
    def _use(self, shared: bool = False) -> Iterator[Connection]:
        """This thread's connection, held for one operation so that close() waits for it.

        With ``shared`` (appends), the store's shared connection instead, unless another
        thread is using it. Why: a batcher's appends are made by whichever of its producers'
        threads leads the next coalesced call (coalesce.py), and a connection that did not
        make the file's last write finds its page cache stale and reads the pages again (16
        threads adding through one batcher: some 20 ``pread`` per call, against none when
        one connection makes them all).
        """
        if self._pid != os.getpid():
            with _FORK_LOCK:
                if self._pid != os.getpid():
                    self._forget_parent()
        lock = self._shared_lock if shared else None
        if lock is not None and not lock.acquire(blocking=False):
            lock = None  # another thread's: this thread's own
        try:
            while True:
                conn = self._conn() if lock is None else self._shared_conn()
                with conn.in_use:
                    opened = self._local.generation if lock is None else self._shared_generation
                    if opened == self._generation:  # not closed meanwhile
                        yield conn
                        return
        finally:
            if lock is not None:
                lock.release()

    def _shared_conn(self) -> Connection:
        """The shared connection (see ``_use``), opened anew after ``close``."""
        if self._shared is None or self._shared_generation != self._generation:
            self._shared = self._connect()
            self._shared_generation = self._generation
        return self._shared

    def _create_schema(self) -> None:
        """Switch the file to WAL and create the tables, however many processes open it at once.

        Both steps are retried while the file is locked (``_retry_locked``): on a fresh file,
        every opener but the first meets a lock that SQLite's busy handler does not wait for.
        """
        with self._use() as conn, self._translated():
            mode = self._retry_locked(conn, "switching to WAL", "PRAGMA journal_mode = WAL")[0]
            version = self._retry_locked(conn, "reading the schema version", "PRAGMA user_version")[0]
            # The files this store has open, as _replaced and _reopen_replaced compare them. A
            # read in WAL mode has opened the -wal and -shm files, which keep their identity
            # while any connection has them open (only the last one to close deletes them).
            self._file_ids = (file_id(self.path), file_id(self.path + "-wal"), file_id(self.path + "-shm"))
        self._wal = str(mode).lower() == "wal"
        if not self._wal:
            log.warning("%s: journal mode is %s, not WAL; readers will wait for writers", self.path, mode)
        if version == SCHEMA_VERSION:
            return
        with self._write() as tx:
            migrate(tx.cur, self.path)

    def _replaced(self) -> bool:
        """Whether the path names another file than the one this store opened, or none.

        A stat of the path against what was recorded when the file was opened: a few
        microseconds, paid at the start of every write transaction and every waiter poll.
        """
        opened = self._file_ids[0]
        try:
            return opened is None or file_id(self.path) != opened  # None: reopening failed
        except OSError:
            return False  # cannot tell (a folder this process may not search): the operation will say

    def _reopen_replaced(self) -> None:
        """Move to the file the path names now: the one this store opened was deleted or replaced.

        Reopening, rather than failing every call until a restart: the path is the store,
        and a restarted process would open whatever it names now, so this only does sooner
        what a restart would do, while failing would leave producers and workers split over
        two files meanwhile (the issue that asked for this: another process's items in the
        new file never served). What this process wrote to the old file since it was replaced
        is lost either way, which the ERROR says.

        The old file's -wal and -shm stay at the path when only the database file was
        deleted or replaced, and SQLite would take them for the new file's: replay the old
        WAL's pages over it, or read the new WAL through the old shared-memory index. Those
        still the ones this store opened (it holds them, so no other process has recreated
        them) are removed once its connections are closed. Closing is safe for the new file:
        SQLite neither checkpoints nor deletes the -wal of a database file that has moved.
        """
        with self._reopen_lock:
            if not self._replaced():
                return  # another thread got here first
            opened = self._file_ids
            old = [
                (self.path + suffix, ids)
                for suffix, ids in zip(("-wal", "-shm"), opened[1:], strict=True)
                if ids is not None and file_id(self.path + suffix) == ids
            ]
            if opened[0] is not None:  # else an earlier reopening failed, and said why
                log.error(
                    "SQLite store %s: the database file was deleted or replaced while in use; what "
                    "this process wrote to it since is lost. Reopening the file the path names now. "
                    "(Stop every process before deleting or replacing it, and remove its -wal and "
                    "-shm files with it.)",
                    self.path,
                )
            self.close()
            self._file_ids = (None, None, None)  # until _create_schema has opened the new file
            for path, ids in old:
                with suppress(OSError):
                    if file_id(path) == ids:
                        os.unlink(path)
            self._create_schema()

    def _unavailable(
        self, exc: sqlite3.Error, doing: str | None = None, waited: float | None = None
    ) -> StoreUnavailable:
        """A StoreUnavailable saying what failed, ``doing`` what, after ``waited`` seconds."""
        text = str(exc).lower()
        if locked(exc) or "locked" in text or "busy" in text:
            why = "locked by another connection"
            if waited is not None:
                why = f"still {why} after waiting {waited:.2f} s (busy_timeout {self.busy_timeout:g} s)"
        elif "unable to open" in text:
            why = "cannot be opened (does the path name a file this process may write?)"
        elif "not a database" in text or "malformed" in text or "corrupt" in text:
            why = "is not a SQLite database, or is corrupt"
        elif "readonly" in text:
            why = "is read-only for this process"
        elif "disk" in text or "full" in text:
            why = "cannot be written (disk full or I/O error)"
        else:
            why = "failed"
        where = f" while {doing}" if doing else ""
        return StoreUnavailable(f"SQLite store {self.path}{where}: {why}: {exc}")

    @contextmanager
    def _write(self, name: str | None = None, *, shared: bool = False) -> Iterator[Tx]:
        """One write transaction, saving ``name``'s counters, then waking workers if asked;
        on the shared connection with ``shared`` (see ``_use``).

        BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue for it
        (up to busy_timeout) instead of failing when a read turns into a write.
        """
        if self._replaced():
            self._reopen_replaced()
        with self._use(shared) as conn, self._translated():
            self._begin_immediate(conn)
            tx = Tx(conn.cursor())
            try:
                yield tx
                if name is not None:
                    tx.save(name)
                conn.execute("COMMIT")
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        if tx.wake:
            self._wakeups.notify()

    def _begin_immediate(self, conn: Connection) -> None:
        """Take the write lock, waiting for it up to busy_timeout."""
        self._retry_locked(conn, "taking the write lock", "BEGIN IMMEDIATE")

    def _retry_locked(self, conn: Connection, doing: str, sql: str) -> Any:
        """Run ``sql`` and return its first row, retrying while the file is locked, up to busy_timeout.

        SQLite's busy handler does not cover every lock. A connection that must turn a read
        into a write, as the switch to WAL does, gets SQLITE_BUSY at once (waiting could
        deadlock): on a fresh file opened by several processes at the same moment, all but
        one used to fail within milliseconds. The handler also sleeps ever longer between
        attempts (up to 100 ms), so a writer of one process could starve for seconds behind
        another's tight loop. So each attempt lets the handler wait ``_LOCK_ROUND_MS`` at
        most, and a refused attempt is followed by a short random pause: no spinning when
        SQLite refused at once, and no lockstep between processes started together.
        """
        started = time.monotonic()
        self._busy(conn, _LOCK_ROUND_MS)
        try:
            while True:
                try:
                    return conn.execute(sql).fetchone()
                except sqlite3.OperationalError as exc:
                    waited = time.monotonic() - started
                    if not locked(exc):
                        raise self._unavailable(exc, doing) from exc
                    if waited >= self.busy_timeout:
                        raise self._unavailable(exc, doing, waited) from exc
                    time.sleep(min(random.uniform(0.001, 0.005), self.busy_timeout - waited))
        finally:
            if not self._wal:
                self._busy(conn, self._busy_ms)

    def _busy(self, conn: Connection, ms: int) -> None:
        """Set ``conn``'s busy_timeout to ``ms``, unless it is set so already.

        Writes take the lock in short rounds (``_retry_locked``); in WAL mode nothing else
        in a write transaction waits for a lock (a commit never does), so the rounds' timeout
        stays set until a read needs the whole one back: a connection that only writes (the
        shared one of appends) sets it once, rather than twice per transaction.
        """
        if conn.busy_ms != ms:
            conn.execute(f"PRAGMA busy_timeout = {ms}")
            conn.busy_ms = ms

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        """One read transaction: a consistent snapshot that never blocks or waits for writers."""
        with self._use() as conn, self._translated():
            self._busy(conn, self._busy_ms)
            conn.execute("BEGIN")
            try:
                yield conn.cursor()
            finally:
                with suppress(sqlite3.Error):
                    conn.execute("COMMIT")

    @contextmanager
    def _translated(self) -> Iterator[None]:
        """SQLite's errors as StoreUnavailable; misuse (ProgrammingError) stays a bug."""
        try:
            yield
        except sqlite3.ProgrammingError:
            raise
        except sqlite3.DatabaseError as exc:
            raise self._unavailable(exc) from exc

    def close(self) -> None:
        """Close every connection; a later call opens fresh ones (as redis-py reconnects)."""
        with self._guard:
            self._generation += 1
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            with conn.in_use, suppress(sqlite3.Error):
                conn.close()
