"""The SQLite store's protocol operations, each one transaction on the calling thread.

``SQLiteStore`` opens the transaction (``_write`` or ``_read``, from ``connection.Database``)
and runs the operation's SQL in it: producing, claiming, the lease holders' heartbeat, ack
and fail, and the operators' clear, flush, peek and counters. Dead letters' steps are in
``dead_letters``; the job operations (``JobStore``) in ``jobs``, whose record steps
``claim_due`` and ``fail`` also take on a job queue (``is_jobs(spec.name)``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from redbatch.engine import due_at, wakes
from redbatch.errors import ConfigError
from redbatch.jobrecords import is_jobs
from redbatch.stores.base import LEASE_EXPIRED_ERROR, RulesChanged, Waiter, new_batch_id, replaced_rules
from redbatch.stores.sqlite import dead_letters as letters
from redbatch.stores.sqlite import jobs
from redbatch.stores.sqlite.connection import SYNCHRONOUS, Tx, sqlite_path
from redbatch.stores.sqlite.schema import (
    CHUNK,
    COUNTERS,
    END_BATCH,
    SELECT_DUE,
    SELECT_DUE_DEADLINES,
    SELECT_NEXT_DUE,
    SELECT_OLDEST,
    SELECT_OLDEST_KEYS,
    batch_items,
    blob,
)
from redbatch.stores.sqlite.waiter import SQLiteWaiter
from redbatch.types import ClaimedBatch, DeadRecord, Entry, Lease, QueueCounters, QueueSpec

_RECORD_RULES = (
    "INSERT OR REPLACE INTO rules (name, max_items, max_wait_ms, idle_ms, dedupe, max_attempts, lease_ms,"
    " version, updated_at) VALUES (:name, :max_items, :max_wait_ms, :idle_ms, :dedupe, :max_attempts,"
    " :lease_ms, :version, :now)"
)
# The batching rule (redbatch.engine.due_at) restated as SQL, for every key without a current batch
# that is not due yet (a key already due stays due): one statement, however many keys.
_RESCHEDULE_IDLE_KEYS = (
    "UPDATE keys SET due_at = CASE WHEN pending >= :max_items THEN :now"
    " WHEN :idle_ms > 0 THEN MIN(first_at + :max_wait_ms, last_at + :idle_ms)"
    " ELSE first_at + :max_wait_ms END"
    " WHERE queue = :name AND batch_id IS NULL AND pending > 0 AND due_at > :now"
)


class SQLiteStore(jobs.JobOperations):
    """Batching state in one SQLite file, shared safely by the processes of one host.

    ``path`` is a file path or a ``sqlite://`` URL; ``busy_timeout`` is how many seconds a
    writer waits for another to finish before ``StoreUnavailable``. With the default
    ``synchronous="FULL"`` every write waits for an fsync, which bounds single-item adds to
    a few thousand a second; ``"NORMAL"`` is several times faster and survives a crash of
    any process, but may lose the last commits to a power cut. ``url`` is the URL to show
    (the one ``path`` came from, when it was a URL).
    """

    durable = True

    def __init__(
        self, path: str, *, busy_timeout: float = 5.0, synchronous: str = "FULL", url: str | None = None
    ) -> None:
        if path.startswith("sqlite:"):
            url, path = url or path, sqlite_path(path)
        if synchronous.upper() not in SYNCHRONOUS:
            raise ConfigError(f"synchronous must be one of {SYNCHRONOUS}, not {synchronous!r}")
        if not busy_timeout > 0:
            raise ConfigError(f"busy_timeout must be > 0 seconds, not {busy_timeout}")
        super().__init__(
            path, busy_timeout=busy_timeout, synchronous=synchronous, url=url or f"sqlite:///{path}"
        )

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url!r})"

    # ------------------------------------------------------------------ shared steps

    @staticmethod
    def _head(cur: sqlite3.Cursor, name: str) -> int | None:
        head: int | None = cur.execute(SELECT_NEXT_DUE, (name,)).fetchone()[0]
        return head

    def _reschedule(self, tx: Tx, spec: QueueSpec, key_id: int, now_ms: int) -> None:
        """After a key's current batch ended: schedule its pending items or forget the key."""
        row = tx.cur.execute("SELECT pending, first_at, last_at FROM keys WHERE id = ?", (key_id,)).fetchone()
        if row["pending"] <= 0:
            tx.cur.execute("DELETE FROM keys WHERE id = ?", (key_id,))
            tx.add(open_keys=-1)
            return
        deadline = due_at(spec, row["first_at"], row["last_at"], row["pending"], now_ms)
        head = self._head(tx.cur, spec.name)
        tx.cur.execute("UPDATE keys SET due_at = ? WHERE id = ?", (deadline, key_id))
        if wakes(deadline, head, now_ms):
            tx.wake = True

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
            # A job's deadline is its own score (its lane, its delay), never the batching rule.
            if (row is None or row["version"] != spec.version) and not is_jobs(spec.name):
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
            group = by_key.get(entry.key)
            if group is None:
                by_key[entry.key] = [entry]
            else:
                group.append(entry)
        with self._write(spec.name, shared=True) as tx:
            row = tx.cur.execute("SELECT version FROM rules WHERE name = ?", (spec.name,)).fetchone()
            if row is None:
                self._record_rules(tx.cur, spec, now_ms)
            elif row[0] != spec.version:
                raise RulesChanged(spec.name)  # rolls the transaction back: nothing stored
            head = self._head(tx.cur, spec.name)
            # transition: append
            # Set-based: the keys' rows in one read, their updates and the items in one
            # executemany each, rather than three statements per key.
            found = self._key_rows(tx.cur, spec.name, list(by_key))
            updates: list[tuple[int, int, int, int | None, int, int | None, int]] = []
            rows: list[tuple[int, int, str, bytes]] = []
            for key, group in by_key.items():
                key_row = found.get(key)
                if spec.dedupe:
                    group = self._unseen(tx.cur, None if key_row is None else key_row[0], group)  # noqa: PLW2901
                    if not group:
                        continue
                if key_row is None:
                    deadline: int | None = due_at(spec, now_ms, now_ms, len(group), now_ms)
                    tx.cur.execute(
                        "INSERT INTO keys (queue, key, due_at, pending, first_at, last_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (spec.name, key, deadline, len(group), now_ms, now_ms),
                    )
                    key_id = tx.cur.lastrowid
                    assert key_id is not None
                    tx.add(open_keys=1)
                else:
                    key_id, pending, first, batch_id = key_row
                    pending += len(group)
                    first = now_ms if first is None else first
                    deadline = None if batch_id is not None else due_at(spec, first, now_ms, pending, now_ms)
                    updates.append((pending, first, now_ms, deadline, now_ms, deadline, key_id))
                rows += [(key_id, now_ms, e.digest, e.payload) for e in group]
                if deadline is not None and wakes(deadline, head, now_ms):
                    tx.wake = True
            if updates:
                # A key already due (flushed, or overdue) stays due: more items never delay it.
                tx.cur.executemany(
                    "UPDATE keys SET pending = ?, first_at = ?, last_at = ?,"
                    " due_at = CASE WHEN ? IS NULL OR due_at <= ? THEN due_at ELSE ? END WHERE id = ?",
                    updates,
                )
            tx.cur.executemany(
                "INSERT INTO pending (key_id, arrived_at, digest, payload) VALUES (?, ?, ?, ?)", rows
            )
            tx.add(buffered_items=len(rows))

    @staticmethod
    def _key_rows(cur: sqlite3.Cursor, name: str, keys: list[str]) -> dict[str, tuple[Any, ...]]:
        """(id, pending, first_at, batch_id) of each of ``keys`` that has a row."""
        found: dict[str, tuple[Any, ...]] = {}
        for i in range(0, len(keys), CHUNK):
            chunk = keys[i : i + CHUNK]
            marks = ", ".join("?" * len(chunk))
            for row in cur.execute(
                f"SELECT key, id, pending, first_at, batch_id FROM keys WHERE queue = ? AND key IN ({marks})",
                (name, *chunk),
            ):
                found[row[0]] = tuple(row)[1:]
        return found

    @staticmethod
    def _unseen(cur: sqlite3.Cursor, key_id: int | None, group: list[Entry]) -> list[Entry]:
        """The entries whose digest no pending item of the key (nor an earlier entry) has."""
        seen: set[str] = set()
        if key_id is not None:
            digests = sorted({e.digest for e in group})
            for i in range(0, len(digests), CHUNK):
                chunk = digests[i : i + CHUNK]
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

    def _lease(self, tx: Tx, spec: QueueSpec, row: Any, now_ms: int) -> ClaimedBatch | None:
        key_id, batch_id, job_queue = row["id"], row["batch_id"], is_jobs(spec.name)
        lapsed = batch_id is not None and row["running"]
        allowed = jobs.max_attempts(tx, spec, row["key"]) if lapsed and job_queue else spec.max_attempts
        if lapsed and row["attempt"] >= allowed:
            # transition: bury_lapsed (a job by its own max_attempts)
            tx.add(in_flight=-1)
            letters.bury(tx, key_id, LEASE_EXPIRED_ERROR, now_ms)
            if job_queue:  # job: bury_lapsed
                jobs.failed(tx, spec, row["key"], LEASE_EXPIRED_ERROR, batch_id, now_ms)
            self._reschedule(tx, spec, key_id, now_ms)
            return None
        if batch_id is None:  # transition: claim
            batch_id = self._take_pending(tx, spec, key_id, now_ms)
            if batch_id is None:
                tx.cur.execute("DELETE FROM keys WHERE id = ?", (key_id,))
                tx.add(open_keys=-1)
                return None
            tx.add(in_flight=1)
        elif not row["running"]:  # transition: claim_retry
            tx.add(retrying=-1, in_flight=1)
        # transition: reclaim (its lease lapsed, attempts left); every claim ends here: a new lease
        token = tx.next_token(spec.name)
        tx.cur.execute(
            "UPDATE keys SET attempt = attempt + 1, running = 1, fencing_token = ?, due_at = ? WHERE id = ?",
            (token, now_ms + spec.lease_ms, key_id),
        )
        meta = tx.cur.execute("SELECT attempt, created_at FROM keys WHERE id = ?", (key_id,)).fetchone()
        if job_queue:  # job: claim, claim_retry, reclaim
            jobs.claimed(tx, spec, row["key"], meta["attempt"], now_ms)
        items = batch_items(tx.cur, batch_id)
        return ClaimedBatch(
            Lease(row["key"], batch_id, token),
            meta["attempt"],
            meta["created_at"],
            tuple(blob(i["payload"]) for i in items),
            tuple(i["arrived_at"] for i in items),
        )

    @staticmethod
    def _take_pending(tx: Tx, spec: QueueSpec, key_id: int, now_ms: int) -> str | None:
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
        tx.add(buffered_items=-taken)
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
    def _held(tx: Tx, name: str, lease: Lease) -> Any:
        """The key row whose running batch this lease still holds, or None."""
        return tx.cur.execute(
            "SELECT id, batch_size FROM keys WHERE queue = ? AND key = ? AND batch_id = ?"
            " AND fencing_token = ? AND running = 1",
            (name, lease.key, lease.batch_id, lease.fencing_token),
        ).fetchone()

    def heartbeat(self, spec: QueueSpec, leases: Sequence[Lease], lease_until_ms: int) -> list[bool]:
        with self._write(spec.name) as tx:
            # transition: heartbeat
            # job: heartbeat (a job's record does not change: its lease is the key's)
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

    def _finish(self, tx: Tx, spec: QueueSpec, lease: Lease, now_ms: int) -> bool:
        row = self._held(tx, spec.name, lease)
        if row is None:
            return False
        # transition: ack
        tx.cur.execute("DELETE FROM batch_items WHERE batch_id = ?", (lease.batch_id,))
        tx.add(in_flight=-1, flushed_batches=1, flushed_items=row["batch_size"])
        tx.last_flush = now_ms
        tx.cur.execute(END_BATCH, (row["id"],))
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
            if retry_at_ms is None:  # transition: fail_dead
                letters.bury(tx, row["id"], error, now_ms)
                self._reschedule(tx, spec, row["id"], now_ms)
            else:  # transition: fail_retry
                tx.cur.execute(
                    "UPDATE keys SET running = 0, error = ?, due_at = ? WHERE id = ?",
                    (error, retry_at_ms, row["id"]),
                )
                tx.add(retrying=1)
            if is_jobs(spec.name):  # job: fail_dead, fail_retry
                dead_letter = lease.batch_id if retry_at_ms is None else None
                jobs.failed(tx, spec, lease.key, error, dead_letter, now_ms)
            return True

    @staticmethod
    def _shrink(tx: Tx, key_id: int, batch_id: str, keep: Sequence[int]) -> None:
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
            return self._clear_key(tx, spec, key)

    def _clear_key(self, tx: Tx, spec: QueueSpec, key: str) -> int:
        row = tx.cur.execute(
            "SELECT id, batch_id, running, batch_size FROM keys WHERE queue = ? AND key = ?", (spec.name, key)
        ).fetchone()
        if row is None:
            return 0
        # transition: clear
        dropped = tx.cur.execute("DELETE FROM pending WHERE key_id = ?", (row["id"],)).rowcount
        tx.cur.execute("UPDATE keys SET pending = 0, first_at = NULL WHERE id = ?", (row["id"],))
        tx.add(buffered_items=-dropped)
        if row["batch_id"] is not None and not row["running"]:
            tx.cur.execute("DELETE FROM batch_items WHERE batch_id = ?", (row["batch_id"],))
            dropped += row["batch_size"]
            tx.add(retrying=-1)
            tx.cur.execute(END_BATCH, (row["id"],))
        if row["batch_id"] is None or not row["running"]:
            tx.cur.execute("DELETE FROM keys WHERE id = ?", (row["id"],))
            tx.add(open_keys=-1)
        return dropped

    def flush(self, spec: QueueSpec, key: str | None, now_ms: int) -> int:
        where = "queue = ? AND batch_id IS NULL AND pending > 0" + ("" if key is None else " AND key = ?")
        params = (spec.name,) if key is None else (spec.name, key)
        with self._write(spec.name) as tx:
            # transition: flush
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
        return [(r["arrived_at"], blob(r["payload"])) for r in rows]

    def counters(self, spec: QueueSpec) -> QueueCounters:
        with self._read() as cur:
            row = cur.execute(
                f"SELECT {', '.join(COUNTERS)}, last_flush_at FROM queues WHERE name = ?", (spec.name,)
            ).fetchone()
            oldest = cur.execute(SELECT_OLDEST, (spec.name,)).fetchone()[0]
        values: dict[str, Any] = (
            dict.fromkeys(COUNTERS, 0) if row is None else dict(zip(row.keys(), row, strict=True))
        )
        return QueueCounters(
            open_keys=values["open_keys"],
            buffered_items=values["buffered_items"],
            oldest_arrival=oldest,
            in_flight=values["in_flight"],
            retrying=values["retrying"],
            dead=values["dead"],
            flushed_batches=values["flushed_batches"],
            flushed_items=values["flushed_items"],
            last_flush_at=values.get("last_flush_at"),
        )

    def oldest_keys(self, spec: QueueSpec, limit: int) -> list[tuple[str, int, int]]:
        with self._read() as cur:  # an index range read of keys_age
            rows = cur.execute(SELECT_OLDEST_KEYS, (spec.name, limit)).fetchall()
        return [(row["key"], row["first_at"], row["pending"]) for row in rows]

    def dead_letters(self, spec: QueueSpec, limit: int, offset: int) -> list[DeadRecord]:
        with self._read() as cur:
            return letters.records(cur, spec, limit, offset)

    def replay(self, spec: QueueSpec, batch_ids: Sequence[str] | None, now_ms: int) -> int:
        with self._write(spec.name) as tx:
            return letters.replay(tx, spec, batch_ids, now_ms)

    def purge_dead(self, spec: QueueSpec, batch_ids: Sequence[str] | None, before_ms: int | None) -> int:
        with self._write(spec.name) as tx:
            return letters.purge(tx, spec, batch_ids, before_ms)

    # ------------------------------------------------------------------ lifecycle
    # close() is Database.close: every connection this process has open on the file.

    def waiter(self, names: Sequence[str]) -> Waiter:
        """Every batcher shares the file, so the waiter wakes on any commit, whatever ``names``."""
        return SQLiteWaiter(self)
