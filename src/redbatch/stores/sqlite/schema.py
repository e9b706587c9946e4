"""What the SQLite store keeps on disk: its tables, their version, and the statements shared
by the modules that read and write them (the tables are described in the package docstring).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from typing import Any

from redbatch.engine import Counter
from redbatch.errors import StoreUnavailable

SCHEMA_VERSION = 4
"""1: the batching tables. 2: adds ``rules``. 3: ``queues.buffered`` is renamed
``buffered_items``, the engine's name. 4: adds the job records (``jobs``, ``job_groups``,
``job_counts``). An older file is migrated when it is opened, step by
step (``MIGRATIONS``), and keeps its data. A redbatch older than a file refuses to open it,
and one already running on it fails its writes once it is migrated: upgrade every process
that shares a file together."""
CHUNK = 500  # bound on ``?`` parameters per statement: old SQLite builds allow 999
COUNTERS: tuple[str, ...] = ("open_keys", "in_flight", "retrying", *(counter.value for counter in Counter))
"""The columns of ``queues`` that transactions move by a delta (see ``connection.Tx``): the
engine's state counts and event counters, by the engine's names."""

# Since version 2.
_RULES = """CREATE TABLE IF NOT EXISTS rules (
        name TEXT PRIMARY KEY,
        max_items INTEGER NOT NULL,
        max_wait_ms INTEGER NOT NULL,
        idle_ms INTEGER NOT NULL,
        dedupe INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        lease_ms INTEGER NOT NULL,
        version TEXT NOT NULL,
        updated_at INTEGER NOT NULL)"""

# Since version 4: the records of job queues (``redbatch.jobrecords``), beside their batching
# state. Each index serves one query of ``jobs.py`` in order, so that none reads every job:
# ``list_jobs`` newest first (``jobs_created``), by status (``jobs_status``), by group
# (``jobs_group``, ``jobs_group_status``), and ``cleanup_jobs`` oldest first
# (``jobs_finished`` for jobs outside groups, ``job_groups_finished`` for whole groups).
# ``job_counts`` keeps the count of each status, moved by every transition.
_JOBS = (
    """CREATE TABLE IF NOT EXISTS jobs (
        queue TEXT NOT NULL,
        id TEXT NOT NULL,
        function TEXT NOT NULL,
        status TEXT NOT NULL,
        lane INTEGER NOT NULL,
        attempt INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        step INTEGER NOT NULL DEFAULT 0,
        steps INTEGER NOT NULL DEFAULT 1,
        progress REAL,
        message TEXT NOT NULL DEFAULT '',
        result BLOB,
        error TEXT NOT NULL DEFAULT '',
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        group_id TEXT NOT NULL DEFAULT '',
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        payload BLOB NOT NULL,
        dead_letter TEXT,
        PRIMARY KEY (queue, id))""",
    "CREATE INDEX IF NOT EXISTS jobs_created ON jobs (queue, created_at, id)",
    "CREATE INDEX IF NOT EXISTS jobs_status ON jobs (queue, status, created_at, id)",
    "CREATE INDEX IF NOT EXISTS jobs_group ON jobs (queue, group_id, created_at, id) WHERE group_id <> ''",
    "CREATE INDEX IF NOT EXISTS jobs_group_status ON jobs (queue, group_id, status, created_at, id)"
    " WHERE group_id <> ''",
    "CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (queue, finished_at, id)"
    " WHERE finished_at IS NOT NULL AND group_id = ''",
    """CREATE TABLE IF NOT EXISTS job_groups (
        queue TEXT NOT NULL,
        id TEXT NOT NULL,
        total INTEGER NOT NULL,
        pending INTEGER NOT NULL DEFAULT 0,
        running INTEGER NOT NULL DEFAULT 0,
        succeeded INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        cancelled INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        finished_at INTEGER,
        round INTEGER NOT NULL DEFAULT 1,
        callback BLOB NOT NULL,
        callback_function TEXT NOT NULL,
        callback_max_attempts INTEGER NOT NULL,
        callback_job TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (queue, id))""",
    "CREATE INDEX IF NOT EXISTS job_groups_finished ON job_groups (queue, finished_at, id)"
    " WHERE finished_at IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS job_counts (
        queue TEXT NOT NULL,
        status TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (queue, status)) WITHOUT ROWID""",
)

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS queues (
        name TEXT PRIMARY KEY,
        open_keys INTEGER NOT NULL DEFAULT 0,
        buffered_items INTEGER NOT NULL DEFAULT 0,
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
    _RULES,
    *_JOBS,
)
"""The statements that create a new file, at ``SCHEMA_VERSION``."""

MIGRATIONS: Mapping[int, tuple[str, ...]] = {
    1: (_RULES,),
    2: ("ALTER TABLE queues RENAME COLUMN buffered TO buffered_items",),
    3: _JOBS,
}
"""``MIGRATIONS[v]``: the statements that take a version-``v`` file to version ``v + 1``."""
_RENAME_COLUMN = (3, 25, 0)  # the first SQLite to know ALTER TABLE ... RENAME COLUMN

# The deadline index, read through ``keys_due``; tests check that each is an index search.
SELECT_DUE = (
    "SELECT id, key, batch_id, running, attempt FROM keys"
    " WHERE queue = ? AND due_at <= ? ORDER BY due_at, key LIMIT 1"
)
SELECT_NEXT_DUE = "SELECT MIN(due_at) FROM keys WHERE queue = ?"
SELECT_DUE_DEADLINES = "SELECT due_at FROM keys WHERE queue = ? AND due_at <= ? ORDER BY due_at, key LIMIT ?"
SELECT_OLDEST = "SELECT MIN(first_at) FROM keys WHERE queue = ? AND first_at IS NOT NULL"
SELECT_OLDEST_KEYS = (
    "SELECT key, first_at, pending FROM keys WHERE queue = ? AND first_at IS NOT NULL"
    " ORDER BY first_at, key LIMIT ?"
)

BUMP = (
    "UPDATE queues SET "
    + ", ".join(f"{name} = {name} + ?" for name in COUNTERS)
    + ", last_flush_at = COALESCE(?, last_flush_at), token_seq = token_seq + ? WHERE name = ?"
)
BUMP_JOB_COUNT = "UPDATE job_counts SET n = n + ? WHERE queue = ? AND status = ?"
END_BATCH = (
    "UPDATE keys SET batch_id = NULL, running = 0, attempt = 0, fencing_token = 0,"
    " created_at = NULL, batch_size = 0, error = '' WHERE id = ?"
)


def migrate(cur: sqlite3.Cursor, path: str) -> None:
    """Create the tables of a new file, or migrate an older one to ``SCHEMA_VERSION``, in the
    caller's write transaction: all of it, or (on any error) none of it.

    The version is read inside that transaction, so of several processes opening an old file
    at once, the first to take the write lock migrates it and the others find it done (a
    migration that ran twice would fail: the column it renames is gone).
    """
    version = cur.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"SQLite store {path} has schema version {version}, newer than this "
            f"redbatch's {SCHEMA_VERSION}; upgrade redbatch"
        )
    if version == SCHEMA_VERSION:
        return
    if version == 0:
        steps: Sequence[str] = SCHEMA
    else:
        if version <= 2 and sqlite3.sqlite_version_info < _RENAME_COLUMN:
            raise StoreUnavailable(
                f"SQLite store {path} has schema version {version}; upgrading it needs SQLite "
                f"3.25 or later, and this Python has SQLite {sqlite3.sqlite_version}"
            )
        steps = [statement for step in range(version, SCHEMA_VERSION) for statement in MIGRATIONS[step]]
    for statement in steps:
        cur.execute(statement)
    cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def blob(value: object) -> bytes:
    """A payload as stored; anything but bytes was written by hand and decodes as corrupt."""
    if isinstance(value, bytes):
        return value
    return value.encode() if isinstance(value, str) else b""


def batch_items(cur: sqlite3.Cursor, batch_id: str) -> list[Any]:
    """The items of a current or a dead batch, in arrival order: (arrived_at, digest, payload)."""
    return cur.execute(
        "SELECT arrived_at, digest, payload FROM batch_items WHERE batch_id = ? ORDER BY id", (batch_id,)
    ).fetchall()
