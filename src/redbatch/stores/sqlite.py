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
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import unquote, urlsplit

from redbatch.errors import ConfigError, StoreUnavailable
from redbatch.stores.base import LEASE_EXPIRED_ERROR, Waiter, due_at, new_batch_id
from redbatch.types import ClaimedBatch, DeadRecord, Entry, Lease, QueueCounters, QueueSpec

log = logging.getLogger("redbatch.store.sqlite")

SCHEMA_VERSION = 1
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
_END_BATCH = (
    "UPDATE keys SET batch_id = NULL, running = 0, attempt = 0, fencing_token = 0,"
    " created_at = NULL, batch_size = 0, error = '' WHERE id = ?"
)


def sqlite_path(url: str) -> str:
    """The file named by ``sqlite:///relative.db`` (from the cwd) or ``sqlite:////abs/x.db``.

    Creates the file's folder when it is missing.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite":
        raise ConfigError(f"not a sqlite:// URL: {url!r}")
    if parts.netloc:
        raise ConfigError(
            f"a sqlite URL names a local file and takes no host: {url!r}; "
            "write sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"a sqlite URL takes no query or fragment: {url!r}")
    path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not path or path.endswith("/"):
        raise ConfigError(f"a sqlite URL needs a file name, as in sqlite:///redbatch.db: {url!r}")
    if path == ":memory:" or path.startswith("file:"):
        raise ConfigError("an in-memory SQLite database is not durable; use memory:// for a throwaway store")
    folder = os.path.dirname(path)
    if folder:
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create the folder of SQLite database {path}: {exc}") from exc
    return path


class _Connection(sqlite3.Connection):
    """A connection the store holds weakly, so that it closes when its thread ends.

    ``in_use`` is held by every operation on it, and taken by ``close`` from another thread,
    which therefore never closes a connection under a running statement.
    """

    in_use: threading.Lock


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
        version = self._data_version()
        if version is None or version == self._version:
            return False
        self._version = version
        return True

    def _data_version(self) -> int | None:
        with self._conn.in_use:
            if self._closed:
                return None
            try:
                return int(self._conn.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error as exc:
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "cannot watch %s for other processes (%s); relying on deadlines",
                        self._store.path,
                        exc,
                    )
                return None

    def close(self) -> None:
        with self._conn.in_use:
            self._closed = True
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
        """This thread's connection: sqlite3 connections must not be shared between threads."""
        local = self._local
        if getattr(local, "generation", None) != self._generation:
            local.conn = self._connect()
            local.generation = self._generation
        conn: _Connection = local.conn
        return conn

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
        conn = self._conn()
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise self._unavailable(exc) from exc
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

    def _unavailable(self, exc: sqlite3.Error) -> StoreUnavailable:
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            why = f"locked by another writer for longer than busy_timeout ({self.busy_timeout:g}s)"
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
        return StoreUnavailable(f"SQLite store {self.path}: {why}: {exc}")

    @contextmanager
    def _write(self, name: str | None = None) -> Iterator[_Tx]:
        """One write transaction, saving ``name``'s counters, then waking workers if asked.

        BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue for it
        (up to busy_timeout) instead of failing when a read turns into a write.
        """
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
        """Take the write lock, waiting for it up to busy_timeout.

        SQLite's busy handler sleeps ever longer between attempts (up to 100 ms), so a writer
        of one process could starve for seconds behind another's tight loop. Restarting it
        every ``_LOCK_ROUND_MS`` keeps its attempts frequent (sleeps of 1 to 20 ms).
        """
        deadline = time.monotonic() + self.busy_timeout
        conn.execute(f"PRAGMA busy_timeout = {_LOCK_ROUND_MS}")
        try:
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                        raise
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

    # ------------------------------------------------------------------ producing

    def append(self, spec: QueueSpec, entries: Sequence[Entry], now_ms: int) -> None:
        by_key: dict[str, list[Entry]] = {}
        for entry in entries:
            by_key.setdefault(entry.key, []).append(entry)
        with self._write(spec.name) as tx:
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
            if batch_ids is None:
                ids = [
                    r[0]
                    for r in tx.cur.execute(
                        "SELECT batch_id FROM dead_letters WHERE queue = ? ORDER BY rowid", (spec.name,)
                    )
                ]
            else:
                ids = list(dict.fromkeys(batch_ids))
            replayed = sum(self._replay_one(tx, spec.name, batch_id, now_ms) for batch_id in ids)
            tx.wake = replayed > 0
            return replayed

    @staticmethod
    def _replay_one(tx: _Tx, name: str, batch_id: str, now_ms: int) -> int:
        """Put one dead letter's items in front of its key's pending items; make the key due."""
        dead = tx.cur.execute(
            "SELECT key FROM dead_letters WHERE queue = ? AND batch_id = ?", (name, batch_id)
        ).fetchone()
        if dead is None:
            return 0
        items = SQLiteStore._items(tx.cur, batch_id)
        tx.cur.execute("DELETE FROM batch_items WHERE batch_id = ?", (batch_id,))
        tx.cur.execute("DELETE FROM dead_letters WHERE batch_id = ?", (batch_id,))
        tx.add(dead=-1)
        if not items:
            return 0
        key = tx.cur.execute(
            "SELECT id FROM keys WHERE queue = ? AND key = ?", (name, dead["key"])
        ).fetchone()
        if key is None:
            tx.cur.execute(
                "INSERT INTO keys (queue, key, due_at, last_at) VALUES (?, ?, ?, ?)",
                (name, dead["key"], now_ms, now_ms),
            )
            key_id = tx.cur.lastrowid
            tx.add(open_keys=1)
        else:
            key_id = key["id"]
        lowest = tx.cur.execute("SELECT MIN(id) FROM pending").fetchone()[0] or 0
        tx.cur.executemany(
            "INSERT INTO pending (id, key_id, arrived_at, digest, payload) VALUES (?, ?, ?, ?, ?)",
            [(lowest - len(items) + i, key_id, *item) for i, item in enumerate(items)],
        )
        tx.cur.execute(
            "UPDATE keys SET pending = pending + ?, first_at = ?,"
            " due_at = CASE WHEN batch_id IS NULL THEN ? ELSE due_at END WHERE id = ?",
            (len(items), items[0]["arrived_at"], now_ms, key_id),
        )
        tx.add(buffered=len(items))
        return len(items)

    def purge_dead(self, spec: QueueSpec, batch_ids: Sequence[str] | None, before_ms: int | None) -> int:
        with self._write(spec.name) as tx:
            if batch_ids is not None:
                ids = list(dict.fromkeys(batch_ids))
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
