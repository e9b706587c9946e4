"""The SQLite store: batching state in one local file, each protocol operation one transaction.

The embedded default: no server, durable (WAL with ``synchronous=FULL``: a commit is on disk
when it returns, even across a power cut) and safe for several processes on one host, whose
writes SQLite's file locks serialise. Every write is one ``BEGIN IMMEDIATE`` transaction on the
calling thread's own connection.

Tables (all times are integer milliseconds handed in by the caller):

- ``queues``: a row per batcher: counters, last flush, the fencing-token sequence.
- ``keys``: a row per open key (one with pending items or a current batch): its pending
  count and arrivals, its current batch, and ``due_at``, the deadline index, searched
  through ``keys_due (queue, due_at, key)``.
- ``pending``: items waiting, in ``id`` order per key.
- ``batch_items``: items of a current or a dead batch, by batch id.
- ``dead_letters``: dead batches; their items stay in ``batch_items``.
- ``rules``: a row per batcher: the rules every process applies, and their version.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redbatch.engine import due_at
from redbatch.errors import ConfigError, StoreUnavailable
from redbatch.stores.base import (
    LEASE_EXPIRED_ERROR,
    RulesChanged,
    Waiter,
    first_of_each,
    mask_url,
    new_batch_id,
    replaced_rules,
    unknown_dead_letters,
)
from redbatch.types import ClaimedBatch, DeadRecord, Entry, Lease, QueueCounters, QueueSpec

log = logging.getLogger("redbatch.store.sqlite")

SCHEMA_VERSION = 2
"""1: the batching tables. 2: adds ``rules``; a version-1 file gains it from the same
``CREATE TABLE IF NOT EXISTS`` statements that create a new file, and keeps its data."""
POLL_SECONDS = 0.01
"""How often a waiter looks for commits by other processes (SQLite cannot notify them)."""
_LOCK_ROUND_MS = 50
_CHUNK = 500  # bound on ``?`` parameters per statement: old SQLite builds allow 999
_SYNCHRONOUS = ("NORMAL", "FULL", "EXTRA")
_COUNTERS = ("open_keys", "buffered", "in_flight", "retrying", "dead", "flushed_batches", "flushed_items")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS queues (
        name TEXT PRIMARY KEY,
        open_keys INTEGER NOT NULL DEFAULT 0,
        buffered INTEGER NOT NULL DEFAULT 0,
        in_flight INTEGER NOT NULL DEFAULT 0,
        retrying INTEGER NOT NULL DEFAULT 0,
        dead INTEGER NOT NULL DEFAULT 0,
        flushed_batches INTEGER NOT NULL DEFAULT 0,
        flushed_items INTEGER NOT NULL DEFAULT 0,
        last_flush_at INTEGER,
        token_seq INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS keys (
        id INTEGER PRIMARY KEY,
        queue TEXT NOT NULL,
        key TEXT NOT NULL,
        due_at INTEGER NOT NULL,
        pending INTEGER NOT NULL DEFAULT 0,
        first_at INTEGER,
        last_at INTEGER NOT NULL,
        batch_id TEXT,
        running INTEGER NOT NULL DEFAULT 0,
        attempt INTEGER NOT NULL DEFAULT 0,
        fencing_token INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER,
        batch_size INTEGER NOT NULL DEFAULT 0,
        error TEXT NOT NULL DEFAULT '',
        UNIQUE (queue, key))""",
    # ``key`` breaks ties the way the memory store's heap does.
    "CREATE INDEX IF NOT EXISTS keys_due ON keys (queue, due_at, key)",
    "CREATE INDEX IF NOT EXISTS keys_age ON keys (queue, first_at) WHERE first_at IS NOT NULL",
    # ``id`` is arrival order within a key; replayed items take ids below the smallest.
    """CREATE TABLE IF NOT EXISTS pending (
        id INTEGER PRIMARY KEY,
        key_id INTEGER NOT NULL,
        arrived_at INTEGER NOT NULL,
        digest TEXT NOT NULL,
        payload BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS pending_key ON pending (key_id, id)",
    "CREATE INDEX IF NOT EXISTS pending_digest ON pending (key_id, digest) WHERE digest <> ''",
    """CREATE TABLE IF NOT EXISTS batch_items (
        id INTEGER PRIMARY KEY,
        batch_id TEXT NOT NULL,
        arrived_at INTEGER NOT NULL,
        digest TEXT NOT NULL,
        payload BLOB NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS batch_items_batch ON batch_items (batch_id, id)",
    """CREATE TABLE IF NOT EXISTS dead_letters (
        batch_id TEXT PRIMARY KEY,
        queue TEXT NOT NULL,
        key TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        error TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        died_at INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS dead_letters_died ON dead_letters (queue, died_at, batch_id)",
    # Since version 2.
    """CREATE TABLE IF NOT EXISTS rules (
        name TEXT PRIMARY KEY,
        max_items INTEGER NOT NULL,
        max_wait_ms INTEGER NOT NULL,
        idle_ms INTEGER NOT NULL,
        dedupe INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        lease_ms INTEGER NOT NULL,
        version TEXT NOT NULL,
        updated_at INTEGER NOT NULL)""",
)

SELECT_DUE = (
    "SELECT id, key, batch_id, running, attempt FROM keys"
    " WHERE queue = ? AND due_at <= ? ORDER BY due_at, key LIMIT 1"
)
SELECT_NEXT_DUE = "SELECT MIN(due_at) FROM keys WHERE queue = ?"
SELECT_DUE_DEADLINES = "SELECT due_at FROM keys WHERE queue = ? AND due_at <= ? ORDER BY due_at, key LIMIT ?"
SELECT_OLDEST = "SELECT MIN(first_at) FROM keys WHERE queue = ? AND first_at IS NOT NULL"
_BUMP = (
    "UPDATE queues SET "
    + ", ".join(f"{name} = {name} + ?" for name in _COUNTERS)
    + ", last_flush_at = COALESCE(?, last_flush_at), token_seq = token_seq + ? WHERE name = ?"
)
_RECORD_RULES = (
    "INSERT OR REPLACE INTO rules (name, max_items, max_wait_ms, idle_ms, dedupe, max_attempts, lease_ms,"
    " version, updated_at) VALUES (:name, :max_items, :max_wait_ms, :idle_ms, :dedupe, :max_attempts,"
    " :lease_ms, :version, :now)"
)
# The batching rule (stores.base.due_at) restated as SQL, for every key without a current batch
# that is not due yet (a key already due stays due): one statement, however many keys.
_RESCHEDULE_IDLE_KEYS = (
    "UPDATE keys SET due_at = CASE WHEN pending >= :max_items THEN :now"
    " WHEN :idle_ms > 0 THEN MIN(first_at + :max_wait_ms, last_at + :idle_ms)"
    " ELSE first_at + :max_wait_ms END"
    " WHERE queue = :name AND batch_id IS NULL AND pending > 0 AND due_at > :now"
)
_END_BATCH = (
    "UPDATE keys SET batch_id = NULL, running = 0, attempt = 0, fencing_token = 0,"
    " created_at = NULL, batch_size = 0, error = '' WHERE id = ?"
)


def sqlite_path(url: str) -> str:
    """The file named by ``sqlite:///relative.db`` (from the cwd) or ``sqlite:////abs/x.db``.

    Creates the file's folder when it is missing. Errors quote the URL through ``mask_url``.
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
    if parts.query:
        name = next((n for n, _ in parse_qsl(parts.query, keep_blank_values=True)), parts.query)
        raise ConfigError(f"unknown option {name!r} in {masked}: a sqlite URL takes no query options")
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


class _Connection(sqlite3.Connection):
    """A connection the store holds weakly, so that it closes when its thread ends.

    ``in_use`` is held by every operation on it, and taken by ``close`` from another thread,
    which therefore never closes a connection under a running statement.
    """

    in_use: threading.Lock


def _locked(exc: sqlite3.Error) -> bool:
    """Whether SQLite refused because another connection holds a lock (BUSY or LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


_FileId = tuple[int, int] | None


def _file_id(path: str) -> _FileId:
    """The identity (device, inode) of the file at ``path``, or None when there is none."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _blob(value: object) -> bytes:
    """A payload as stored; anything but bytes was written by hand and decodes as corrupt."""
    if isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else b""


class _Tx:
    """One write transaction: its cursor, the counter changes to save, whether to wake workers."""

    __slots__ = ("cur", "deltas", "last_flush", "token", "tokens", "wake")

    def __init__(self, cur: sqlite3.Cursor) -> None:
        self.cur = cur
        self.deltas = dict.fromkeys(_COUNTERS, 0)
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

    def save(self, name: str) -> None:
        """Write the counters once per transaction, creating the batcher's row on first use."""
        if not any(self.deltas.values()) and self.last_flush is None and not self.tokens:
            return
        params = [*self.deltas.values(), self.last_flush, self.tokens, name]
        if self.cur.execute(_BUMP, params).rowcount == 0:
            self.cur.execute("INSERT INTO queues (name) VALUES (?)", (name,))
            self.cur.execute(_BUMP, params)


class _SQLiteWaiter:
    """Woken at once by this process's commits, and within ``POLL_SECONDS`` by any other's.

    Other processes are seen through ``PRAGMA data_version`` on a connection of the waiter's
    own, which changes whenever another connection commits. That wakes the worker on any
    change to the file, not only on an earlier deadline: a spurious wake-up costs the worker
    two index reads, and at most one happens per poll. ``close`` may come from another thread.
    """

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self._closed = False
        self._warned = False
        self._lock = threading.Lock()  # between wait() and a close() from another thread
        self._generation = store._generation
        self._conn = store._connect()
        self._seen_wake = store._wake_seq
        self._version = self._data_version()

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        wake = self._store._wake
        while not self._closed:
            remaining = deadline - time.monotonic()
            with wake:
                woke = wake.wait_for(self._woken, max(0.0, min(POLL_SECONDS, remaining)))
                self._seen_wake = self._store._wake_seq
            if self._closed:
                break
            if woke or self._changed():
                return True
            if remaining <= 0:
                break
        return False

    def _woken(self) -> bool:
        return self._closed or self._store._wake_seq != self._seen_wake

    def _changed(self) -> bool:
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
        with self._store._wake:
            self._store._wake.notify_all()


class SQLiteStore:
    """Batching state in one SQLite file, shared safely by the processes of one host.

    ``path`` is a file path or a ``sqlite://`` URL; ``busy_timeout`` is how many seconds a
    writer waits for another to finish before ``StoreUnavailable``. With the default
    ``synchronous="FULL"`` every write waits for an fsync, which bounds single-item adds to
    a few thousand a second; ``"NORMAL"`` is several times faster and survives a crash of
    any process, but may lose the last commits to a power cut.
    """

    durable = True

    def __init__(
        self, path: str, *, busy_timeout: float = 5.0, synchronous: str = "FULL", url: str | None = None
    ) -> None:
        if path.startswith("sqlite:"):
            url, path = url or path, sqlite_path(path)
        if synchronous.upper() not in _SYNCHRONOUS:
            raise ConfigError(f"synchronous must be one of {_SYNCHRONOUS}, not {synchronous!r}")
        if not busy_timeout > 0:
            raise ConfigError(f"busy_timeout must be > 0 seconds, not {busy_timeout}")
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self.busy_timeout = busy_timeout
        self._synchronous = synchronous.upper()
        self._local = threading.local()
        self._guard = threading.Lock()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._generation = 0  # bumped by close(): threads then open fresh connections
        self._pid = os.getpid()  # a fork is noticed by a change, see _forget_parent
        self._file_ids: tuple[_FileId, _FileId, _FileId] = (None, None, None)  # see _create_schema
        self._reopen_lock = threading.RLock()
        self._wake = threading.Condition()
        self._wake_seq = 0
        self._create_schema()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"

    # ------------------------------------------------------------------ connections

    def _connect(self) -> _Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # only so that close() may close it from elsewhere
                factory=_Connection,
            )
            conn.row_factory = sqlite3.Row
            conn.in_use = threading.Lock()
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.DatabaseError as exc:
            raise self._unavailable(exc) from exc
        with self._guard:
            self._connections.add(conn)
        return conn

    def _conn(self) -> _Connection:
        """This thread's connection: sqlite3 connections must not be shared between threads,
        nor between a process and the children it forks."""
        if self._pid != os.getpid():
            with _FORK_LOCK:
                if self._pid != os.getpid():
                    self._forget_parent()
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            local.conn = self._connect()
            local.generation = self._generation
        conn: _Connection = local.conn
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
        self._wake = threading.Condition()
        self._reopen_lock = threading.RLock()
        self._local = threading.local()
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
    def _use(self) -> Iterator[_Connection]:
        """This thread's connection, held for one operation so that close() waits for it."""
        while True:
            conn = self._conn()
            with conn.in_use:
                if self._local.generation == self._generation:  # not closed meanwhile
                    yield conn
                    return

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
            self._file_ids = (_file_id(self.path), _file_id(self.path + "-wal"), _file_id(self.path + "-shm"))
        if str(mode).lower() != "wal":
            log.warning("%s: journal mode is %s, not WAL; readers will wait for writers", self.path, mode)
        if version == SCHEMA_VERSION:
            return
        with self._write() as tx:
            version = tx.cur.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"SQLite store {self.path} has schema version {version}, newer than this "
                    f"redbatch's {SCHEMA_VERSION}; upgrade redbatch"
                )
            for statement in SCHEMA:
                tx.cur.execute(statement)
            tx.cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _replaced(self) -> bool:
        """Whether the path names another file than the one this store opened, or none.

        A stat of the path against what was recorded when the file was opened: a few
        microseconds, paid at the start of every write transaction and every waiter poll.
        """
        opened = self._file_ids[0]
        try:
            return opened is None or _file_id(self.path) != opened  # None: reopening failed
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
                if ids is not None and _file_id(self.path + suffix) == ids
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
                    if _file_id(path) == ids:
                        os.unlink(path)
            self._create_schema()

    def _unavailable(
        self, exc: sqlite3.Error, doing: str | None = None, waited: float | None = None
    ) -> StoreUnavailable:
        """A StoreUnavailable saying what failed, ``doing`` what, after ``waited`` seconds."""
        text = str(exc).lower()
        if _locked(exc) or "locked" in text or "busy" in text:
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
    def _write(self, name: str | None = None) -> Iterator[_Tx]:
        """One write transaction, saving ``name``'s counters, then waking workers if asked.

        BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue for it
        (up to busy_timeout) instead of failing when a read turns into a write.
        """
        if self._replaced():
            self._reopen_replaced()
        with self._use() as conn, self._translated():
            self._begin_immediate(conn)
            tx = _Tx(conn.cursor())
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
            self._notify()

    def _begin_immediate(self, conn: _Connection) -> None:
        """Take the write lock, waiting for it up to busy_timeout."""
        self._retry_locked(conn, "taking the write lock", "BEGIN IMMEDIATE")

    def _retry_locked(self, conn: _Connection, doing: str, sql: str) -> Any:
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
        conn.execute(f"PRAGMA busy_timeout = {_LOCK_ROUND_MS}")
        try:
            while True:
                try:
                    return conn.execute(sql).fetchone()
                except sqlite3.OperationalError as exc:
                    waited = time.monotonic() - started
                    if not _locked(exc):
                        raise self._unavailable(exc, doing) from exc
                    if waited >= self.busy_timeout:
                        raise self._unavailable(exc, doing, waited) from exc
                    time.sleep(min(random.uniform(0.001, 0.005), self.busy_timeout - waited))
        finally:
            conn.execute(f"PRAGMA busy_timeout = {round(self.busy_timeout * 1000)}")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        """One read transaction: a consistent snapshot that never blocks or waits for writers."""
        with self._use() as conn, self._translated():
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

    def _notify(self) -> None:
        with self._wake:
            self._wake_seq += 1
            self._wake.notify_all()

    # ------------------------------------------------------------------ shared steps

    @staticmethod
    def _head(cur: sqlite3.Cursor, name: str) -> int | None:
        head: int | None = cur.execute(SELECT_NEXT_DUE, (name,)).fetchone()[0]
        return head

    def _reschedule(self, tx: _Tx, spec: QueueSpec, key_id: int, now_ms: int) -> None:
        """After a key's current batch ended: schedule its pending items or forget the key."""
        row = tx.cur.execute("SELECT pending, first_at, last_at FROM keys WHERE id = ?", (key_id,)).fetchone()
        if row["pending"] <= 0:
            tx.cur.execute("DELETE FROM keys WHERE id = ?", (key_id,))
            tx.add(open_keys=-1)
            return
        deadline = due_at(spec, row["first_at"], row["last_at"], row["pending"], now_ms)
        head = self._head(tx.cur, spec.name)
        tx.cur.execute("UPDATE keys SET due_at = ? WHERE id = ?", (deadline, key_id))
        if head is None or deadline < head or deadline <= now_ms:
            tx.wake = True

    @staticmethod
    def _bury(tx: _Tx, key_id: int, error: str, now_ms: int) -> None:
        """Move a key's current batch to dead letters; its items stay where they are."""
        tx.cur.execute(
            "INSERT INTO dead_letters (batch_id, queue, key, attempts, error, created_at, died_at)"
            " SELECT batch_id, queue, key, attempt, ?, created_at, ? FROM keys WHERE id = ?",
            (error, now_ms, key_id),
        )
        tx.cur.execute(_END_BATCH, (key_id,))
        tx.add(dead=1)

    @staticmethod
    def _items(cur: sqlite3.Cursor, batch_id: str) -> list[Any]:
        return cur.execute(
            "SELECT arrived_at, digest, payload FROM batch_items WHERE batch_id = ? ORDER BY id", (batch_id,)
        ).fetchall()

    # ------------------------------------------------------------------ rules

    @staticmethod
    def _record_rules(cur: sqlite3.Cursor, spec: QueueSpec, now_ms: int) -> None:
        params = {**spec.rules(), "name": spec.name, "version": spec.version, "now": now_ms}
        cur.execute(_RECORD_RULES, params)

    @staticmethod
    def _rules_row(cur: sqlite3.Cursor, name: str) -> Any:
        return cur.execute("SELECT * FROM rules WHERE name = ?", (name,)).fetchone()

    def publish_rules(self, spec: QueueSpec, now_ms: int) -> QueueSpec | None:
        with self._write() as tx:
            row = self._rules_row(tx.cur, spec.name)
            self._record_rules(tx.cur, spec, now_ms)  # the same rules too: repairs a hand-edited row
            if row is None or row["version"] != spec.version:
                params = {**spec.rules(), "name": spec.name, "now": now_ms}
                tx.wake = tx.cur.execute(_RESCHEDULE_IDLE_KEYS, params).rowcount > 0
        return replaced_rules(spec.name, None if row is None else dict(zip(row.keys(), row, strict=True)))

    def stored_rules(self, name: str) -> QueueSpec | None:
        with self._read() as cur:
            row = self._rules_row(cur, name)
        return None if row is None else QueueSpec.from_record(name, row)

    # ------------------------------------------------------------------ producing

    def append(self, spec: QueueSpec, entries: Sequence[Entry], now_ms: int) -> None:
        by_key: dict[str, list[Entry]] = {}
        for entry in entries:
            by_key.setdefault(entry.key, []).append(entry)
        with self._write(spec.name) as tx:
            row = tx.cur.execute("SELECT version FROM rules WHERE name = ?", (spec.name,)).fetchone()
            if row is None:
                self._record_rules(tx.cur, spec, now_ms)
            elif row[0] != spec.version:
                raise RulesChanged(spec.name)  # rolls the transaction back: nothing stored
            head = self._head(tx.cur, spec.name)
            for key, group in by_key.items():
                deadline = self._append_key(tx, spec, key, group, now_ms)
                if deadline is not None and (head is None or deadline < head or deadline <= now_ms):
                    tx.wake = True

    def _append_key(self, tx: _Tx, spec: QueueSpec, key: str, group: list[Entry], now_ms: int) -> int | None:
        """Add one key's items; return its new deadline, or None when it did not move."""
        row = tx.cur.execute(
            "SELECT id, pending, first_at, batch_id FROM keys WHERE queue = ? AND key = ?", (spec.name, key)
        ).fetchone()
        if spec.dedupe:
            group = self._unseen(tx.cur, None if row is None else row["id"], group)
        if not group:
            return None
        if row is None:
            deadline: int | None = due_at(spec, now_ms, now_ms, len(group), now_ms)
            tx.cur.execute(
                "INSERT INTO keys (queue, key, due_at, pending, first_at, last_at) VALUES (?, ?, ?, ?, ?, ?)",
                (spec.name, key, deadline, len(group), now_ms, now_ms),
            )
            key_id = tx.cur.lastrowid
            tx.add(open_keys=1)
        else:
            key_id, pending = row["id"], row["pending"] + len(group)
            first = now_ms if row["first_at"] is None else row["first_at"]
            deadline = None if row["batch_id"] is not None else due_at(spec, first, now_ms, pending, now_ms)
            # A key already due (flushed, or overdue) stays due: more items never delay it.
            tx.cur.execute(
                "UPDATE keys SET pending = ?, first_at = ?, last_at = ?,"
                " due_at = CASE WHEN ? IS NULL OR due_at <= ? THEN due_at ELSE ? END WHERE id = ?",
                (pending, first, now_ms, deadline, now_ms, deadline, key_id),
            )
        tx.cur.executemany(
            "INSERT INTO pending (key_id, arrived_at, digest, payload) VALUES (?, ?, ?, ?)",
            [(key_id, now_ms, e.digest, e.payload) for e in group],
        )
        tx.add(buffered=len(group))
        return deadline

    @staticmethod
    def _unseen(cur: sqlite3.Cursor, key_id: int | None, group: list[Entry]) -> list[Entry]:
        """The entries whose digest no pending item of the key (nor an earlier entry) has."""
        seen: set[str] = set()
        if key_id is not None:
            digests = sorted({e.digest for e in group})
            for i in range(0, len(digests), _CHUNK):
                chunk = digests[i : i + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows = cur.execute(
                    f"SELECT digest FROM pending WHERE key_id = ? AND digest <> '' AND digest IN ({marks})",
                    (key_id, *chunk),
                )
                seen.update(r[0] for r in rows)
        unseen = []
        for entry in group:
            if entry.digest not in seen:
                seen.add(entry.digest)
                unseen.append(entry)
        return unseen

    # ------------------------------------------------------------------ claiming

    def claim_due(self, spec: QueueSpec, now_ms: int, limit: int) -> list[ClaimedBatch]:
        # A read first: when nothing is due, no write lock is taken from the producers.
        head = self.next_due_ms(spec)
        if limit <= 0 or head is None or head > now_ms:
            return []
        claimed: list[ClaimedBatch] = []
        with self._write(spec.name) as tx:
            # One head at a time: a key buried here may be due again at once, ahead of the rest.
            while len(claimed) < limit:
                row = tx.cur.execute(SELECT_DUE, (spec.name, now_ms)).fetchone()
                if row is None:
                    break
                batch = self._lease(tx, spec, row, now_ms)
                if batch is not None:
                    claimed.append(batch)
        return claimed

    def _lease(self, tx: _Tx, spec: QueueSpec, row: Any, now_ms: int) -> ClaimedBatch | None:
        key_id, batch_id = row["id"], row["batch_id"]
        if batch_id is not None and row["running"] and row["attempt"] >= spec.max_attempts:
            tx.add(in_flight=-1)
            self._bury(tx, key_id, LEASE_EXPIRED_ERROR, now_ms)
            self._reschedule(tx, spec, key_id, now_ms)
            return None
        if batch_id is None:
            batch_id = self._take_pending(tx, spec, key_id, now_ms)
            if batch_id is None:
                tx.cur.execute("DELETE FROM keys WHERE id = ?", (key_id,))
                tx.add(open_keys=-1)
                return None
            tx.add(in_flight=1)
        elif not row["running"]:
            tx.add(retrying=-1, in_flight=1)
        token = tx.next_token(spec.name)
        tx.cur.execute(
            "UPDATE keys SET attempt = attempt + 1, running = 1, fencing_token = ?, due_at = ? WHERE id = ?",
            (token, now_ms + spec.lease_ms, key_id),
        )
        meta = tx.cur.execute("SELECT attempt, created_at FROM keys WHERE id = ?", (key_id,)).fetchone()
        items = self._items(tx.cur, batch_id)
        return ClaimedBatch(
            Lease(row["key"], batch_id, token),
            meta["attempt"],
            meta["created_at"],
            tuple(_blob(i["payload"]) for i in items),
            tuple(i["arrived_at"] for i in items),
        )

    @staticmethod
    def _take_pending(tx: _Tx, spec: QueueSpec, key_id: int, now_ms: int) -> str | None:
        """Move a key's oldest ``max_items`` pending items into a new batch; return its id."""
        batch_id = new_batch_id()
        taken = tx.cur.execute(
            "INSERT INTO batch_items (batch_id, arrived_at, digest, payload)"
            " SELECT ?, arrived_at, digest, payload FROM pending WHERE key_id = ? ORDER BY id LIMIT ?",
            (batch_id, key_id, spec.max_items),
        ).rowcount
        if taken <= 0:
            return None
        tx.cur.execute(
            "DELETE FROM pending WHERE id IN (SELECT id FROM pending WHERE key_id = ? ORDER BY id LIMIT ?)",
            (key_id, spec.max_items),
        )
        tx.cur.execute(
            "UPDATE keys SET pending = pending - ?,"
            " first_at = (SELECT arrived_at FROM pending WHERE key_id = ? ORDER BY id LIMIT 1),"
            " batch_id = ?, running = 0, attempt = 0, created_at = ?, batch_size = ?, error = ''"
            " WHERE id = ?",
            (taken, key_id, batch_id, now_ms, taken, key_id),
        )
        tx.add(buffered=-taken)
        return batch_id

    def next_due_ms(self, spec: QueueSpec) -> int | None:
        with self._read() as cur:
            return self._head(cur, spec.name)

    def due_deadlines(self, spec: QueueSpec, now_ms: int, limit: int) -> list[int]:
        if limit <= 0:  # LIMIT -1 would mean no limit
            return []
        with self._read() as cur:  # keys_due (queue, due_at, key) serves it in order
            rows = cur.execute(SELECT_DUE_DEADLINES, (spec.name, now_ms, limit)).fetchall()
            return [int(row[0]) for row in rows]

    # ------------------------------------------------------------------ lease holders

    @staticmethod
    def _held(tx: _Tx, name: str, lease: Lease) -> Any:
        """The key row whose running batch this lease still holds, or None."""
        return tx.cur.execute(
            "SELECT id, batch_size FROM keys WHERE queue = ? AND key = ? AND batch_id = ?"
            " AND fencing_token = ? AND running = 1",
            (name, lease.key, lease.batch_id, lease.fencing_token),
        ).fetchone()

    def heartbeat(self, spec: QueueSpec, leases: Sequence[Lease], lease_until_ms: int) -> list[bool]:
        with self._write(spec.name) as tx:
            return [
                tx.cur.execute(
                    "UPDATE keys SET due_at = ? WHERE queue = ? AND key = ? AND batch_id = ?"
                    " AND fencing_token = ? AND running = 1",
                    (lease_until_ms, spec.name, lease.key, lease.batch_id, lease.fencing_token),
                ).rowcount
                == 1
                for lease in leases
            ]

    def ack(self, spec: QueueSpec, leases: Sequence[Lease], now_ms: int) -> list[bool]:
        """Finish every batch still held in one transaction: one fsync for the whole group."""
        with self._write(spec.name) as tx:
            return [self._finish(tx, spec, lease, now_ms) for lease in leases]

    def _finish(self, tx: _Tx, spec: QueueSpec, lease: Lease, now_ms: int) -> bool:
        row = self._held(tx, spec.name, lease)
        if row is None:
            return False
        tx.cur.execute("DELETE FROM batch_items WHERE batch_id = ?", (lease.batch_id,))
        tx.add(in_flight=-1, flushed_batches=1, flushed_items=row["batch_size"])
        tx.last_flush = now_ms
        tx.cur.execute(_END_BATCH, (row["id"],))
        self._reschedule(tx, spec, row["id"], now_ms)
        return True

    def fail(
        self,
        spec: QueueSpec,
        lease: Lease,
        now_ms: int,
        error: str,
        retry_at_ms: int | None,
        keep: Sequence[int] | None = None,
    ) -> bool:
        """``keep``: 0-based indexes of the items that failed; the batch shrinks to them."""
        with self._write(spec.name) as tx:
            row = self._held(tx, spec.name, lease)
            if row is None:
                return False
            tx.add(in_flight=-1)
            if keep is not None:
                self._shrink(tx, row["id"], lease.batch_id, keep)
            if retry_at_ms is None:
                self._bury(tx, row["id"], error, now_ms)
                self._reschedule(tx, spec, row["id"], now_ms)
            else:
                tx.cur.execute(
                    "UPDATE keys SET running = 0, error = ?, due_at = ? WHERE id = ?",
                    (error, retry_at_ms, row["id"]),
                )
                tx.add(retrying=1)
            return True

    @staticmethod
    def _shrink(tx: _Tx, key_id: int, batch_id: str, keep: Sequence[int]) -> None:
        """Keep only the failed items in the batch; the others are done, so count as flushed."""
        ids = [
            r[0]
            for r in tx.cur.execute("SELECT id FROM batch_items WHERE batch_id = ? ORDER BY id", (batch_id,))
        ]
        kept = {ids[i] for i in keep if 0 <= i < len(ids)}
        tx.cur.executemany("DELETE FROM batch_items WHERE id = ?", [(i,) for i in ids if i not in kept])
        tx.cur.execute("UPDATE keys SET batch_size = ? WHERE id = ?", (len(kept), key_id))
        tx.add(flushed_items=len(ids) - len(kept))

    # ------------------------------------------------------------------ operators

    def clear(self, spec: QueueSpec, key: str) -> int:
        with self._write(spec.name) as tx:
            row = tx.cur.execute(
                "SELECT id, batch_id, running, batch_size FROM keys WHERE queue = ? AND key = ?",
                (spec.name, key),
            ).fetchone()
            if row is None:
                return 0
            dropped = tx.cur.execute("DELETE FROM pending WHERE key_id = ?", (row["id"],)).rowcount
            tx.cur.execute("UPDATE keys SET pending = 0, first_at = NULL WHERE id = ?", (row["id"],))
            tx.add(buffered=-dropped)
            if row["batch_id"] is not None and not row["running"]:
                tx.cur.execute("DELETE FROM batch_items WHERE batch_id = ?", (row["batch_id"],))
                dropped += row["batch_size"]
                tx.add(retrying=-1)
                tx.cur.execute(_END_BATCH, (row["id"],))
            if row["batch_id"] is None or not row["running"]:
                tx.cur.execute("DELETE FROM keys WHERE id = ?", (row["id"],))
                tx.add(open_keys=-1)
            return dropped

    def flush(self, spec: QueueSpec, key: str | None, now_ms: int) -> int:
        where = "queue = ? AND batch_id IS NULL AND pending > 0" + ("" if key is None else " AND key = ?")
        params = (spec.name,) if key is None else (spec.name, key)
        with self._write(spec.name) as tx:
            made_due = int(tx.cur.execute(f"SELECT COUNT(*) FROM keys WHERE {where}", params).fetchone()[0])
            tx.cur.execute(
                f"UPDATE keys SET due_at = ? WHERE {where} AND due_at > ?", (now_ms, *params, now_ms)
            )
            tx.wake = made_due > 0
            return made_due

    def peek(self, spec: QueueSpec, key: str, limit: int) -> list[tuple[int, bytes]]:
        with self._read() as cur:
            rows = cur.execute(
                "SELECT arrived_at, payload FROM pending"
                " WHERE key_id = (SELECT id FROM keys WHERE queue = ? AND key = ?) ORDER BY id LIMIT ?",
                (spec.name, key, limit),
            ).fetchall()
        return [(r["arrived_at"], _blob(r["payload"])) for r in rows]

    def counters(self, spec: QueueSpec) -> QueueCounters:
        with self._read() as cur:
            row = cur.execute(
                f"SELECT {', '.join(_COUNTERS)}, last_flush_at FROM queues WHERE name = ?", (spec.name,)
            ).fetchone()
            oldest = cur.execute(SELECT_OLDEST, (spec.name,)).fetchone()[0]
        values: dict[str, Any] = (
            dict.fromkeys(_COUNTERS, 0) if row is None else dict(zip(row.keys(), row, strict=True))
        )
        return QueueCounters(
            open_keys=values["open_keys"],
            buffered_items=values["buffered"],
            oldest_arrival=oldest,
            in_flight=values["in_flight"],
            retrying=values["retrying"],
            dead=values["dead"],
            flushed_batches=values["flushed_batches"],
            flushed_items=values["flushed_items"],
            last_flush_at=values.get("last_flush_at"),
        )

    def dead_letters(self, spec: QueueSpec, limit: int, offset: int) -> list[DeadRecord]:
        with self._read() as cur:
            rows = cur.execute(
                "SELECT * FROM dead_letters WHERE queue = ? ORDER BY died_at, batch_id LIMIT ? OFFSET ?",
                (spec.name, limit, offset),
            ).fetchall()
            return [self._dead_record(cur, row) for row in rows]

    def _dead_record(self, cur: sqlite3.Cursor, row: Any) -> DeadRecord:
        items = self._items(cur, row["batch_id"])
        return DeadRecord(
            batch_id=row["batch_id"],
            key=row["key"],
            payloads=tuple(_blob(i["payload"]) for i in items),
            arrived_at=tuple(i["arrived_at"] for i in items),
            attempts=row["attempts"],
            error=row["error"],
            created_at=row["created_at"],
            died_at=row["died_at"],
        )

    def replay(self, spec: QueueSpec, batch_ids: Sequence[str] | None, now_ms: int) -> int:
        with self._write(spec.name) as tx:
            by_key: dict[str, list[str]] = {}
            for row in self._dead_rows(tx.cur, spec, batch_ids):
                by_key.setdefault(row["key"], []).append(row["batch_id"])
            replayed = sum(self._replay_key(tx, spec, key, ids, now_ms) for key, ids in by_key.items())
            tx.wake = replayed > 0
            return replayed

    @staticmethod
    def _dead_rows(cur: sqlite3.Cursor, spec: QueueSpec, batch_ids: Sequence[str] | None) -> list[Any]:
        """Dead letters (these ids, or all) in the order they died: ``rowid`` order.

        NotFound when one of ``batch_ids`` is unknown (the caller's transaction changed nothing).
        """
        if batch_ids is None:
            query = "SELECT rowid, batch_id, key FROM dead_letters WHERE queue = ? ORDER BY rowid"
            return cur.execute(query, (spec.name,)).fetchall()
        ids = list(dict.fromkeys(batch_ids))
        rows = []
        for i in range(0, len(ids), _CHUNK):
            chunk = ids[i : i + _CHUNK]
            rows += cur.execute(
                "SELECT rowid, batch_id, key FROM dead_letters"
                f" WHERE queue = ? AND batch_id IN ({', '.join('?' * len(chunk))})",
                (spec.name, *chunk),
            ).fetchall()
        if len(rows) < len(ids):
            found = {row["batch_id"] for row in rows}
            raise unknown_dead_letters(spec.name, [i for i in ids if i not in found])
        return sorted(rows, key=lambda row: int(row["rowid"]))

    @staticmethod
    def _replay_key(tx: _Tx, spec: QueueSpec, key: str, batch_ids: list[str], now_ms: int) -> int:
        """Put dead letters' items, in this order, in front of a key's pending items; make it due.

        With dedupe no two equal items wait under a key at once: an item equal to one in
        front of it (replayed too) or behind it (waiting already) collapses into the front one.
        Returns how many items the letters held.
        """
        items = [tuple(item) for batch_id in batch_ids for item in SQLiteStore._items(tx.cur, batch_id)]
        tx.cur.executemany("DELETE FROM batch_items WHERE batch_id = ?", [(i,) for i in batch_ids])
        tx.cur.executemany("DELETE FROM dead_letters WHERE batch_id = ?", [(i,) for i in batch_ids])
        tx.add(dead=-len(batch_ids))
        replayed = len(items)
        if not items:
            return 0
        row = tx.cur.execute("SELECT id FROM keys WHERE queue = ? AND key = ?", (spec.name, key)).fetchone()
        if row is None:
            tx.cur.execute(
                "INSERT INTO keys (queue, key, due_at, last_at) VALUES (?, ?, ?, ?)",
                (spec.name, key, now_ms, now_ms),
            )
            key_id = tx.cur.lastrowid
            tx.add(open_keys=1)
        else:
            key_id = row["id"]
        if spec.dedupe:  # items are (arrived_at, digest, payload)
            items = first_of_each(items, lambda item: str(item[1]))
            if row is not None:
                SQLiteStore._drop_pending_like(tx, row["id"], sorted({str(i[1]) for i in items if i[1]}))
        lowest = tx.cur.execute("SELECT MIN(id) FROM pending").fetchone()[0] or 0
        tx.cur.executemany(
            "INSERT INTO pending (id, key_id, arrived_at, digest, payload) VALUES (?, ?, ?, ?, ?)",
            [(lowest - len(items) + i, key_id, *item) for i, item in enumerate(items)],
        )
        tx.cur.execute(
            "UPDATE keys SET pending = pending + ?, first_at = ?,"
            " due_at = CASE WHEN batch_id IS NULL THEN ? ELSE due_at END WHERE id = ?",
            (len(items), items[0][0], now_ms, key_id),
        )
        tx.add(buffered=len(items))
        return replayed

    @staticmethod
    def _drop_pending_like(tx: _Tx, key_id: int, digests: list[str]) -> None:
        """Delete a key's pending items with these digests (equal items replayed in front)."""
        dropped = 0
        for i in range(0, len(digests), _CHUNK):
            chunk = digests[i : i + _CHUNK]
            dropped += tx.cur.execute(
                f"DELETE FROM pending WHERE key_id = ? AND digest IN ({', '.join('?' * len(chunk))})",
                (key_id, *chunk),
            ).rowcount
        if dropped:
            tx.cur.execute("UPDATE keys SET pending = pending - ? WHERE id = ?", (dropped, key_id))
            tx.add(buffered=-dropped)

    def purge_dead(self, spec: QueueSpec, batch_ids: Sequence[str] | None, before_ms: int | None) -> int:
        with self._write(spec.name) as tx:
            if batch_ids is not None:
                ids = [row["batch_id"] for row in self._dead_rows(tx.cur, spec, batch_ids)]
                chunks = [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]
                purged = sum(
                    self._purge(tx, spec.name, f"batch_id IN ({', '.join('?' * len(c))})", c) for c in chunks
                )
            elif before_ms is not None:
                purged = self._purge(tx, spec.name, "died_at < ?", [before_ms])
            else:
                purged = self._purge(tx, spec.name, "1", [])
            tx.add(dead=-purged)
            return purged

    @staticmethod
    def _purge(tx: _Tx, name: str, condition: str, params: list[Any]) -> int:
        where = f"queue = ? AND {condition}"
        tx.cur.execute(
            f"DELETE FROM batch_items WHERE batch_id IN (SELECT batch_id FROM dead_letters WHERE {where})",
            (name, *params),
        )
        return tx.cur.execute(f"DELETE FROM dead_letters WHERE {where}", (name, *params)).rowcount

    # ------------------------------------------------------------------ lifecycle

    def waiter(self, names: Sequence[str]) -> Waiter:
        """Every batcher shares the file, so the waiter wakes on any commit, whatever ``names``."""
        return _SQLiteWaiter(self)

    def close(self) -> None:
        """Close every connection; a later call opens fresh ones (as redis-py reconnects)."""
        with self._guard:
            self._generation += 1
            connections = list(self._connections)
            self._connections.clear()
        for conn in connections:
            with conn.in_use, suppress(sqlite3.Error):
                conn.close()
