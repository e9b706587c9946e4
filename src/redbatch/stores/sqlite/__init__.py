"""The SQLite store: batching state in one local file, each protocol operation one transaction.

The embedded default: no server, durable (WAL with ``synchronous=FULL``: a commit is on disk
when it returns, even across a power cut; ``?synchronous=normal`` opts into commits that survive
any process crash but may roll back on a power cut) and safe for several processes on one host, whose
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
- ``jobs``, ``job_groups``, ``job_counts``: the records of job queues (``redbatch.jobrecords``):
  a row per job and per group, and each status's count per queue. A job's batching state is
  a key of its queue named by its id; its record moves in the same transaction.

Modules, in the order a newcomer would read them:

- ``store``: ``SQLiteStore``, the protocol's operations, each one transaction; the state
  machine's transitions (``redbatch.engine.TRANSITIONS``) are cited where they happen.
- ``dead_letters``: burying a batch, and reading, replaying and purging dead letters.
- ``jobs``: the job operations (``stores.base.JobStore``, mixed into ``SQLiteStore``) and
  the record steps that ``claim_due`` and ``fail`` take on a job queue.
- ``schema``: the tables above, the schema version and its migrations, shared statements.
- ``connection``: ``sqlite_path`` (URL to file), per-thread connections, transactions with
  their lock rounds, SQLite errors as ``StoreUnavailable``, the fork and replaced-file checks.
- ``waiter``: how a sleeping worker hears of this process's commits and polls for others'.
"""

from redbatch.stores.sqlite.connection import sqlite_path
from redbatch.stores.sqlite.schema import (
    SCHEMA,
    SCHEMA_VERSION,
    SELECT_DUE,
    SELECT_DUE_DEADLINES,
    SELECT_NEXT_DUE,
    SELECT_OLDEST,
)
from redbatch.stores.sqlite.store import SQLiteStore
from redbatch.stores.sqlite.waiter import POLL_SECONDS

__all__ = [
    "POLL_SECONDS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SELECT_DUE",
    "SELECT_DUE_DEADLINES",
    "SELECT_NEXT_DUE",
    "SELECT_OLDEST",
    "SQLiteStore",
    "sqlite_path",
]
