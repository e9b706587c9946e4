"""The SQLite store's dead letters: burying a batch, reading, replaying and purging letters.

Each function is one step inside a transaction the store opened (``SQLiteStore`` opens it
and calls the step). A dead batch keeps its items in ``batch_items`` under its batch id; its
row in ``dead_letters`` says whose it was and why it died.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from redbatch.stores.base import first_of_each, unknown_dead_letters
from redbatch.stores.sqlite.connection import Tx
from redbatch.stores.sqlite.schema import CHUNK, END_BATCH, batch_items, blob
from redbatch.types import DeadRecord, QueueSpec


def bury(tx: Tx, key_id: int, error: str, now_ms: int) -> None:
    """Move a key's current batch to dead letters; its items stay where they are."""
    tx.cur.execute(
        "INSERT INTO dead_letters (batch_id, queue, key, attempts, error, created_at, died_at)"
        " SELECT batch_id, queue, key, attempt, ?, created_at, ? FROM keys WHERE id = ?",
        (error, now_ms, key_id),
    )
    tx.cur.execute(END_BATCH, (key_id,))
    tx.add(dead=1)


def records(cur: sqlite3.Cursor, spec: QueueSpec, limit: int, offset: int) -> list[DeadRecord]:
    """Dead letters, oldest first."""
    rows = cur.execute(
        "SELECT * FROM dead_letters WHERE queue = ? ORDER BY died_at, batch_id LIMIT ? OFFSET ?",
        (spec.name, limit, offset),
    ).fetchall()
    return [_record(cur, row) for row in rows]


def _record(cur: sqlite3.Cursor, row: Any) -> DeadRecord:
    items = batch_items(cur, row["batch_id"])
    return DeadRecord(
        batch_id=row["batch_id"],
        key=row["key"],
        payloads=tuple(blob(i["payload"]) for i in items),
        arrived_at=tuple(i["arrived_at"] for i in items),
        attempts=row["attempts"],
        error=row["error"],
        created_at=row["created_at"],
        died_at=row["died_at"],
    )


def replay(tx: Tx, spec: QueueSpec, batch_ids: Sequence[str] | None, now_ms: int) -> int:
    """Put dead letters (these ids, or all) back in front of their keys; return how many items."""
    # transition: replay
    by_key: dict[str, list[str]] = {}
    for row in _dead_rows(tx.cur, spec, batch_ids):
        by_key.setdefault(row["key"], []).append(row["batch_id"])
    replayed = sum(_replay_key(tx, spec, key, ids, now_ms) for key, ids in by_key.items())
    tx.wake = replayed > 0
    return replayed


def _dead_rows(cur: sqlite3.Cursor, spec: QueueSpec, batch_ids: Sequence[str] | None) -> list[Any]:
    """Dead letters (these ids, or all) in the order they died: ``rowid`` order.

    NotFound when one of ``batch_ids`` is unknown (the caller's transaction changed nothing).
    """
    if batch_ids is None:
        query = "SELECT rowid, batch_id, key FROM dead_letters WHERE queue = ? ORDER BY rowid"
        return cur.execute(query, (spec.name,)).fetchall()
    ids = list(dict.fromkeys(batch_ids))
    rows = []
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        rows += cur.execute(
            "SELECT rowid, batch_id, key FROM dead_letters"
            f" WHERE queue = ? AND batch_id IN ({', '.join('?' * len(chunk))})",
            (spec.name, *chunk),
        ).fetchall()
    if len(rows) < len(ids):
        found = {row["batch_id"] for row in rows}
        raise unknown_dead_letters(spec.name, [i for i in ids if i not in found])
    return sorted(rows, key=lambda row: int(row["rowid"]))


def _replay_key(tx: Tx, spec: QueueSpec, key: str, batch_ids: list[str], now_ms: int) -> int:
    """Put dead letters' items, in this order, in front of a key's pending items; make it due.

    With dedupe no two equal items wait under a key at once: an item equal to one in
    front of it (replayed too) or behind it (waiting already) collapses into the front one.
    Returns how many items the letters held.
    """
    items = [tuple(item) for batch_id in batch_ids for item in batch_items(tx.cur, batch_id)]
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
            _drop_pending_like(tx, row["id"], sorted({str(i[1]) for i in items if i[1]}))
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
    tx.add(buffered_items=len(items))
    return replayed


def _drop_pending_like(tx: Tx, key_id: int, digests: list[str]) -> None:
    """Delete a key's pending items with these digests (equal items replayed in front)."""
    dropped = 0
    for i in range(0, len(digests), CHUNK):
        chunk = digests[i : i + CHUNK]
        dropped += tx.cur.execute(
            f"DELETE FROM pending WHERE key_id = ? AND digest IN ({', '.join('?' * len(chunk))})",
            (key_id, *chunk),
        ).rowcount
    if dropped:
        tx.cur.execute("UPDATE keys SET pending = pending - ? WHERE id = ?", (dropped, key_id))
        tx.add(buffered_items=-dropped)


def purge(tx: Tx, spec: QueueSpec, batch_ids: Sequence[str] | None, before_ms: int | None) -> int:
    """Delete dead letters by id, or those that died before ``before_ms``, or all."""
    # transition: purge
    if batch_ids is not None:
        ids = [row["batch_id"] for row in _dead_rows(tx.cur, spec, batch_ids)]
        chunks = [ids[i : i + CHUNK] for i in range(0, len(ids), CHUNK)]
        purged = sum(_purge(tx, spec.name, f"batch_id IN ({', '.join('?' * len(c))})", c) for c in chunks)
    elif before_ms is not None:
        purged = _purge(tx, spec.name, "died_at < ?", [before_ms])
    else:
        purged = _purge(tx, spec.name, "1", [])
    tx.add(dead=-purged)
    return purged


def _purge(tx: Tx, name: str, condition: str, params: list[Any]) -> int:
    where = f"queue = ? AND {condition}"
    tx.cur.execute(
        f"DELETE FROM batch_items WHERE batch_id IN (SELECT batch_id FROM dead_letters WHERE {where})",
        (name, *params),
    )
    return tx.cur.execute(f"DELETE FROM dead_letters WHERE {where}", (name, *params)).rowcount
