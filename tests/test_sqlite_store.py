"""What only the SQLite store has: its URL, its file, its locks, and processes sharing it.

The protocol's semantics are the conformance suite's job; here a state machine also checks
that every operation answers exactly as the in-memory reference store does.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

import redbatch
from redbatch.engine import JOB_TRANSITIONS
from redbatch.errors import ConfigError, RedbatchError, StoreUnavailable
from redbatch.jobrecords import (
    JOBS_PREFIX,
    JobOutcome,
    JobStatus,
    Lane,
    NewGroup,
    NewJob,
    OutcomeKind,
    callback_job_id,
)
from redbatch.stores.memory import MemoryStore
from redbatch.stores.sqlite import (
    SCHEMA_VERSION,
    SELECT_DUE,
    SELECT_NEXT_DUE,
    SELECT_OLDEST,
    SQLiteStore,
    jobs,
    sqlite_path,
)
from redbatch.types import ClaimedBatch, DeadRecord, Entry, Lease, QueueCounters, QueueSpec
from tests.conformance.test_worker import DEADLINE, running, wait_until

SPEC = QueueSpec("b", max_items=3, max_wait_ms=1000, idle_ms=0, dedupe=False, max_attempts=2, lease_ms=500)
SPAWN = multiprocessing.get_context("spawn")

# The schema of version 1, as redbatch 0.1.0 created it (before the ``rules`` table).
SCHEMA_V1 = (
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
# The schema of version 2: version 1 and ``rules`` (``queues.buffered`` not yet ``buffered_items``).
SCHEMA_V2 = (
    *SCHEMA_V1,
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


def entries(key: str, *values: int) -> list[Entry]:
    return [Entry(key, str(v).encode(), "") for v in values]


# ---------------------------------------------------------------- URLs and opening


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///relative.db", "relative.db"),
        ("sqlite:///./here/redbatch.db", "./here/redbatch.db"),
        ("sqlite:///my%20file.db", "my file.db"),
        ("SQLITE:///upper.db", "upper.db"),
    ],
)
def test_a_url_names_a_file_relative_to_the_cwd(
    url: str, path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_path(url) == path


def test_four_slashes_name_an_absolute_path_whose_folder_is_created(tmp_path: Path) -> None:
    target = tmp_path / "new" / "folder" / "x.db"
    assert sqlite_path(f"sqlite:///{target}") == str(target)
    assert target.parent.is_dir()


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("sqlite://", "file name"),
        ("sqlite:///", "file name"),
        ("sqlite:///folder/", "file name"),
        ("sqlite://host/x.db", "no host"),
        ("sqlite:///:memory:", "memory://"),
        ("sqlite:///x.db?mode=memory", "no query"),
        ("redis://localhost/0", "not a sqlite"),
    ],
)
def test_bad_urls_are_config_errors(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        sqlite_path(url)


def test_connect_keeps_the_url_and_is_durable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = redbatch.connect("sqlite:///data/r.db")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.url == "sqlite:///data/r.db"
        assert store.durable is True
        assert (tmp_path / "data" / "r.db").is_file()
    finally:
        store.close()


def test_a_url_may_be_given_to_the_constructor(tmp_path: Path) -> None:
    store = SQLiteStore(f"sqlite:///{tmp_path}/u.db")
    assert store.url == f"sqlite:///{tmp_path}/u.db"
    assert store.path == f"{tmp_path}/u.db"
    store.close()


def test_a_folder_is_not_a_database(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="cannot be opened"):
        SQLiteStore(str(tmp_path))


def test_a_file_that_is_not_sqlite_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_bytes(b"these are not the pages you are looking for" * 100)
    with pytest.raises(StoreUnavailable, match="not a SQLite database"):
        SQLiteStore(str(path))


def test_a_folder_that_cannot_be_created_is_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreUnavailable, match="cannot create the folder"):
        sqlite_path(f"sqlite:///{tmp_path}/file/sub/x.db")


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SQLiteStore(str(tmp_path / "x.db"), synchronous="OFF")
    with pytest.raises(ConfigError):
        SQLiteStore(str(tmp_path / "x.db"), busy_timeout=0)


def test_the_file_is_wal_fully_synchronous_and_versioned(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"))
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()


def test_a_file_from_a_newer_redbatch_is_refused(tmp_path: Path) -> None:
    SQLiteStore(str(tmp_path / "x.db")).close()
    with sqlite3.connect(tmp_path / "x.db") as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreUnavailable, match="newer"):
        SQLiteStore(str(tmp_path / "x.db"))


def test_a_version_1_file_gains_the_rules_table_and_keeps_its_data(tmp_path: Path) -> None:
    """Version 1 (before rules were stored): no ``rules``; its items and counters stay."""
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        for statement in SCHEMA_V1:
            conn.execute(statement)
        conn.execute("INSERT INTO queues (name, open_keys, buffered) VALUES ('b', 1, 1)")
        conn.execute(
            "INSERT INTO keys (id, queue, key, due_at, pending, first_at, last_at)"
            " VALUES (1, 'b', 'k', 5000, 1, 0, 0)"
        )
        conn.execute("INSERT INTO pending (key_id, arrived_at, digest, payload) VALUES (1, 0, '', X'31')")
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    store = SQLiteStore(str(path))
    assert store._conn().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert store.stored_rules("b") is None
    store.append(SPEC, entries("k", 2), 10)
    assert store.stored_rules("b") == SPEC
    assert store.peek(SPEC, "k", 10) == [(0, b"1"), (10, b"2")]
    assert (store.counters(SPEC).open_keys, store.counters(SPEC).buffered_items) == (1, 2)
    store.close()


def _version_2_file(path: Path) -> None:
    """A version-2 file holding a pending key, a dead letter and every counter set."""
    with sqlite3.connect(path) as conn:
        for statement in SCHEMA_V2:
            conn.execute(statement)
        conn.execute(
            "INSERT INTO queues (name, open_keys, buffered, in_flight, retrying, dead, flushed_batches,"
            " flushed_items, last_flush_at, token_seq) VALUES ('b', 1, 2, 0, 0, 1, 3, 7, 900, 5)"
        )
        conn.execute(
            "INSERT INTO keys (id, queue, key, due_at, pending, first_at, last_at)"
            " VALUES (1, 'b', 'k', 1000, 2, 0, 0)"
        )
        conn.executemany(
            "INSERT INTO pending (key_id, arrived_at, digest, payload) VALUES (1, 0, '', ?)",
            [(b"1",), (b"2",)],
        )
        conn.execute(
            "INSERT INTO dead_letters (batch_id, queue, key, attempts, error, created_at, died_at)"
            " VALUES ('gone', 'b', 'k', 2, 'it broke', 100, 800)"
        )
        conn.execute(
            "INSERT INTO batch_items (batch_id, arrived_at, digest, payload) VALUES ('gone', 50, '', X'30')"
        )
        conn.execute("PRAGMA user_version = 2")
    conn.close()


def test_a_version_2_file_renames_its_buffered_column_and_keeps_its_counters(tmp_path: Path) -> None:
    """Version 3 renamed ``queues.buffered`` to ``buffered_items``, the engine's name."""
    path = tmp_path / "v2.db"
    _version_2_file(path)
    store = SQLiteStore(str(path))
    conn = store._conn()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    columns = [row[1] for row in conn.execute("PRAGMA table_info(queues)")]
    assert "buffered_items" in columns and "buffered" not in columns
    assert store.counters(SPEC) == QueueCounters(
        open_keys=1, buffered_items=2, oldest_arrival=0, in_flight=0, retrying=0,
        dead=1, flushed_batches=3, flushed_items=7, last_flush_at=900,
    )  # fmt: skip
    (dead,) = store.dead_letters(SPEC, 10, 0)
    assert (dead.batch_id, dead.payloads, dead.died_at) == ("gone", (b"0",), 800)
    store.append(SPEC, entries("k", 3), 10)  # full: a batch of the three, under the next token
    assert store.counters(SPEC).buffered_items == 3
    (claimed,) = store.claim_due(SPEC, 10, 1)
    assert (claimed.payloads, claimed.lease.fencing_token) == ((b"1", b"2", b"3"), 6)
    assert store.counters(SPEC).buffered_items == 0
    store.close()


def _version_3_file(path: Path) -> None:
    """A version-3 file (before job records): version 2's data, its column renamed."""
    _version_2_file(path)
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE queues RENAME COLUMN buffered TO buffered_items")
        conn.execute("PRAGMA user_version = 3")
    conn.close()


def test_a_version_3_file_gains_the_job_tables_keeps_its_data_and_runs_jobs(tmp_path: Path) -> None:
    """Version 4 added the job records; a batcher's state in an older file is left as it was."""
    path = tmp_path / "v3.db"
    _version_3_file(path)
    store = SQLiteStore(str(path))
    conn = store._conn()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"jobs", "job_groups", "job_counts"} <= tables
    assert store.counters(SPEC) == QueueCounters(
        open_keys=1, buffered_items=2, oldest_arrival=0, in_flight=0, retrying=0,
        dead=1, flushed_batches=3, flushed_items=7, last_flush_at=900,
    )  # fmt: skip
    assert store.peek(SPEC, "k", 10) == [(0, b"1"), (0, b"2")]
    (dead,) = store.dead_letters(SPEC, 10, 0)
    assert (dead.batch_id, dead.payloads, dead.died_at) == ("gone", (b"0",), 800)
    group = NewGroup("g", b'"all done"', "report")
    assert store.submit_jobs(JOBS, [_job("a", 1_000, "g"), _job("b", 1_000, "g")], group, 1_000) == [True] * 2
    claimed = store.claim_due(JOBS, 2_000, 10)
    assert store.finish_jobs(JOBS, [_succeeded(c) for c in claimed], 2_000) == [True, True]
    record = store.get_group(JOBS, "g")
    assert record is not None and (record.total, record.finished_at) == (2, 2_000)
    assert [c.lease.key for c in store.claim_due(JOBS, 2_000, 10)] == [callback_job_id("g", 1)]
    assert store.job_counts(JOBS) == {
        **dict.fromkeys(JobStatus, 0),
        JobStatus.SUCCEEDED: 2,
        JobStatus.RUNNING: 1,
    }
    assert store.counters(SPEC).buffered_items == 2  # the batcher's items are still there
    store.close()


def _open_at_once(path: Path, openers: int) -> list[SQLiteStore]:
    """Open the file from ``openers`` threads released together; every one must succeed."""
    barrier = threading.Barrier(openers)
    opened: list[SQLiteStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        barrier.wait(DEADLINE)
        try:
            opened.append(SQLiteStore(str(path)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(openers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not errors, errors
    return opened


def test_threads_opening_a_version_2_file_at_once_migrate_it_once(tmp_path: Path) -> None:
    """Every opener reads version 2, but only the first to take the write lock migrates: the
    others read the version again under the lock and find the column renamed already."""
    for n in range(5):
        path = tmp_path / f"v2-{n}.db"
        _version_2_file(path)
        stores = _open_at_once(path, 6)
        assert [s.counters(SPEC).buffered_items for s in stores] == [2] * 6
        for store in stores:
            store.close()


def test_a_hand_edited_rules_row_is_a_clear_error_until_a_worker_publishes(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"))
    store.append(SPEC, entries("k", 1), 0)
    with sqlite3.connect(tmp_path / "x.db") as conn:
        conn.execute("UPDATE rules SET max_items = 'many'")
    conn.close()
    with pytest.raises(ConfigError, match="unreadable"):
        redbatch.Batcher.open(store, "b")
    assert store.publish_rules(SPEC, 0) is None
    assert store.stored_rules("b") == SPEC
    store.close()


def test_opening_waits_for_a_lock_sqlite_does_not_wait_for_and_says_so(tmp_path: Path) -> None:
    """The switch to WAL must turn a read into a write, so SQLite answers SQLITE_BUSY at once,
    without calling its busy handler: redbatch waits itself, up to busy_timeout, and says
    which step waited and for how long."""
    holder = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a fresh file, still in rollback mode, write-locked
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            SQLiteStore(str(tmp_path / "x.db"), busy_timeout=0.3)
        waited = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert 0.3 <= waited < 5
    assert "switching to WAL" in str(caught.value)
    assert "after waiting 0.3" in str(caught.value)
    SQLiteStore(str(tmp_path / "x.db"), busy_timeout=0.3).close()  # and opens once it is free


FIRST_OPENER = """
import os
import sys

import redbatch

folder, rounds = sys.argv[1], int(sys.argv[2])
for n in range(rounds):
    print("ready", flush=True)
    with open(os.path.join(folder, f"go{n}"), "rb"):  # the barrier: returns once the test opens it
        pass
    try:
        store = redbatch.connect(f"sqlite:///{folder}/fresh{n}.db")
        redbatch.Batcher(store, "first").add("k", os.getpid())
        store.close()
    except Exception as exc:
        print(f"round {n}: {type(exc).__name__}: {exc}", flush=True)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="the start barrier is a FIFO opened read-write")
def test_many_processes_opening_one_fresh_file_at_the_same_moment_all_succeed(tmp_path: Path) -> None:
    """8 processes open a fresh file and add to it at once, in 20 rounds (a new file each).

    Each round's barrier is a FIFO: a process blocks opening it for reading until the test
    opens it, which releases them all at the same moment. Before the fix about one open in
    ten failed with "locked ... longer than busy_timeout" after waiting a few milliseconds.
    """
    processes, rounds = 8, 20
    for n in range(rounds):
        os.mkfifo(tmp_path / f"go{n}")
    args = [sys.executable, "-c", FIRST_OPENER, str(tmp_path), str(rounds)]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    gates: list[int] = []
    failures: list[str] = []
    try:
        for n in range(rounds):
            for proc in procs:
                assert proc.stdout is not None
                while (line := proc.stdout.readline()).startswith("round"):
                    failures.append(line.strip())
                assert line == "ready\n", f"an opener died: {line!r}"
            gates.append(os.open(tmp_path / f"go{n}", os.O_RDWR))  # never blocks; releases them all
        for proc in procs:
            output, _ = proc.communicate(timeout=DEADLINE)
            failures += output.splitlines()
            assert proc.returncode == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        for gate in gates:
            os.close(gate)
    assert not failures, f"{len(failures)} of {processes * rounds} opens failed: {failures[:3]}"
    for n in range(rounds):
        store = SQLiteStore(str(tmp_path / f"fresh{n}.db"))
        assert len(store.peek(QueueSpec("first", 100, 60_000, 0, False, 5, 30_000), "k", 100)) == processes
        store.close()


@pytest.mark.parametrize("query", [SELECT_DUE, SELECT_NEXT_DUE, SELECT_OLDEST])
def test_finding_due_work_is_an_index_search_not_a_scan(tmp_path: Path, query: str) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"))
    params = (SPEC.name, 0)[: query.count("?")]
    plan = " | ".join(row[3] for row in store._conn().execute(f"EXPLAIN QUERY PLAN {query}", params))
    assert "SEARCH keys USING" in plan and "INDEX" in plan, plan
    assert "SCAN" not in plan and "TEMP B-TREE" not in plan, plan
    store.close()


# ---------------------------------------------------------------- transactions and locks


def test_an_append_that_fails_half_way_stores_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"))
    store.append(SPEC, entries("a", 1), 0)
    unbindable = Entry("z", object(), "")  # type: ignore[arg-type]
    with pytest.raises(sqlite3.Error):
        store.append(SPEC, [*entries("a", 2), *entries("b", 3), unbindable], 0)
    assert store.peek(SPEC, "a", 10) == [(0, b"1")]
    assert store.peek(SPEC, "b", 10) == []
    counters = store.counters(SPEC)
    assert (counters.open_keys, counters.buffered_items) == (1, 1)
    store.close()


def test_a_writer_locked_out_too_long_gets_store_unavailable(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"), busy_timeout=0.2)
    other = sqlite3.connect(tmp_path / "x.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"taking the write lock: still locked .* waiting 0\.2"):
            store.append(SPEC, entries("a", 1), 0)
        assert time.monotonic() - started < 5
        assert store.counters(SPEC).buffered_items == 0  # readers are never blocked
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.append(SPEC, entries("a", 1), 0)
    store.close()


def test_threads_each_use_their_own_connection(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"), synchronous="NORMAL")
    errors: list[BaseException] = []

    def produce(n: int) -> None:
        try:
            for i in range(100):
                store.append(SPEC, entries(f"k{i % 7}", n * 1000 + i), i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not errors
    assert store.counters(SPEC).buffered_items == 800
    assert sum(len(store.peek(SPEC, f"k{k}", 1000)) for k in range(7)) == 800
    store.close()


def test_appends_of_threads_taking_turns_share_one_connection(tmp_path: Path) -> None:
    """A coalesced call is made by whichever producer thread leads it: appends go through one
    connection, whose page cache stays current, rather than through each thread's own."""
    store = SQLiteStore(str(tmp_path / "x.db"), synchronous="NORMAL")
    opened = len(store._connections)
    for n in range(8):
        thread = threading.Thread(target=store.append, args=(SPEC, entries(f"k{n}", n), n))
        thread.start()
        thread.join(DEADLINE)
    assert len(store._connections) == opened + 1
    store.close()
    store.append(SPEC, entries("k0", 9), 9)  # reopened after close, as every connection is
    assert sum(len(store.peek(SPEC, f"k{k}", 10)) for k in range(8)) == 9
    store.close()


def test_a_write_connection_keeps_short_lock_rounds_and_a_read_gets_the_whole_timeout(
    tmp_path: Path,
) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"), busy_timeout=2.0)
    store.append(SPEC, entries("a", 1), 0)
    shared = store._shared
    assert shared is not None
    assert shared.execute("PRAGMA busy_timeout").fetchone()[0] == 50
    store.counters(SPEC)  # a read on this thread's own connection
    own = store._local.conn
    assert own.execute("PRAGMA busy_timeout").fetchone()[0] == 2000
    store.close()


def test_close_from_another_thread_waits_for_running_operations(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"), synchronous="NORMAL")
    errors: list[BaseException] = []
    done = threading.Event()

    def produce(n: int) -> None:
        try:
            for i in range(200):
                store.append(SPEC, entries(f"k{n}", i), i)
                store.counters(SPEC)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=produce, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()

    def close_repeatedly() -> None:
        while not done.is_set():
            store.close()

    closer = threading.Thread(target=close_repeatedly)
    closer.start()
    for thread in threads:
        thread.join(DEADLINE)
    done.set()
    closer.join(DEADLINE)
    assert not errors
    assert store.counters(SPEC).buffered_items == 800
    store.close()


def test_a_closed_store_reopens_on_next_use(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"))
    store.append(SPEC, entries("a", 1), 0)
    store.close()
    store.append(SPEC, entries("a", 2), 0)
    assert [p for _, p in store.peek(SPEC, "a", 10)] == [b"1", b"2"]
    store.close()


def test_a_payload_edited_by_hand_reaches_dead_letters_not_a_crash(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"))
    batcher = redbatch.Batcher(store, "b", max_items=2, max_wait=0.01)
    batcher.add("k", {"fine": True})
    batcher.add("k", {"fine": False})
    with sqlite3.connect(tmp_path / "x.db") as conn:
        conn.execute("UPDATE pending SET payload = 'not json {' WHERE id = (SELECT MAX(id) FROM pending)")
    batcher.handler(lambda batch: None)
    with running(redbatch.Worker(store, [batcher], concurrency=2, handle_signals=False)):
        wait_until(lambda: batcher.stats().dead == 1)
    (dead,) = store.dead_letters(batcher.spec, 10, 0)
    assert dead.error.startswith("corrupt data")
    store.close()


def test_replayed_items_are_still_deduplicated(tmp_path: Path) -> None:
    """Dedupe collapses equal items while they wait, a replayed item included."""
    store = SQLiteStore(str(tmp_path / "x.db"))
    spec = QueueSpec("d", 3, 1000, 0, True, 1, 500)
    store.append(spec, [Entry("k", b"1", "one")], 0)
    (claimed,) = store.claim_due(spec, 1000, 1)
    store.append(spec, [Entry("k", b"1", "one")], 1000)  # forgotten once claimed: kept
    assert store.fail(spec, claimed.lease, 1000, "boom", None)
    assert store.replay(spec, None, 1000) == 1  # collapses into the waiting one, in front
    store.append(spec, [Entry("k", b"1", "one")], 1000)  # one waiting already: collapsed
    assert store.peek(spec, "k", 10) == [(0, b"1")]
    store.close()


def test_a_partial_failure_shrinks_the_batch_to_the_failed_items(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"))
    store.append(SPEC, entries("k", 1, 2, 3), 0)
    (first,) = store.claim_due(SPEC, 0, 1)
    assert store.fail(SPEC, first.lease, 10, "2 and 3 broke", 20, (1, 2))
    counters = store.counters(SPEC)
    assert (counters.flushed_items, counters.flushed_batches, counters.retrying) == (1, 0, 1)
    (again,) = store.claim_due(SPEC, 20, 1)
    assert (again.lease.batch_id, again.attempt, again.payloads) == (first.lease.batch_id, 2, (b"2", b"3"))
    assert store.fail(SPEC, again.lease, 30, "3 broke", None, (1,))
    (dead,) = store.dead_letters(SPEC, 10, 0)
    assert (dead.payloads, dead.attempts, dead.error) == ((b"3",), 2, "3 broke")
    assert store.counters(SPEC).flushed_items == 2
    store.close()


# ---------------------------------------------------------------- the waiter


def test_the_waiter_wakes_at_once_for_this_process(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"))
    waiter = store.waiter([SPEC.name])
    assert waiter.wait(0.05) is False
    woke: list[bool] = []
    thread = threading.Thread(target=lambda: woke.append(waiter.wait(DEADLINE)))
    thread.start()
    time.sleep(0.05)  # let it block; correctness does not depend on it
    started = time.monotonic()
    store.append(SPEC, entries("a", 1, 2, 3), 0)  # full: due now
    thread.join(DEADLINE)
    assert woke == [True] and time.monotonic() - started < 1
    waiter.close()
    store.close()


def _append_one(path: str) -> None:
    SQLiteStore(path).append(SPEC, entries("from-child", 1), 0)


def test_the_waiter_sees_other_processes_commits(tmp_path: Path) -> None:
    path = str(tmp_path / "x.db")
    store = SQLiteStore(path)
    waiter = store.waiter([SPEC.name])
    child = SPAWN.Process(target=_append_one, args=(path,))
    child.start()
    deadline = time.monotonic() + DEADLINE
    while not waiter.wait(1.0):
        assert time.monotonic() < deadline
    child.join(DEADLINE)
    assert child.exitcode == 0
    assert store.peek(SPEC, "from-child", 1) == [(0, b"1")]
    waiter.close()
    store.close()


def test_closing_a_waiter_from_another_thread_ends_its_wait(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"))
    waiter = store.waiter([SPEC.name])
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(waiter.wait(DEADLINE)))
    thread.start()
    time.sleep(0.05)
    started = time.monotonic()
    waiter.close()
    thread.join(DEADLINE)
    assert result == [False] and time.monotonic() - started < 1
    assert waiter.wait(1.0) is False
    store.close()


# ---------------------------------------------------------------- the file deleted or replaced


@pytest.mark.parametrize("removed", [("",), ("", "-wal", "-shm")], ids=["the-db", "db-wal-and-shm"])
def test_a_file_deleted_under_an_open_store_is_noticed_and_reopened_loudly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, removed: tuple[str, ...]
) -> None:
    path = str(tmp_path / "x.db")
    store = SQLiteStore(path)
    store.append(SPEC, entries("lost", 1), 0)
    for suffix in removed:
        os.unlink(path + suffix)
    with caplog.at_level(logging.ERROR, logger="redbatch.store.sqlite"):
        store.append(SPEC, entries("after", 2), 0)
    assert "deleted or replaced" in caplog.text
    other = SQLiteStore(path)
    assert other.peek(SPEC, "after", 10) == [(0, b"2")]  # written to the file the path names
    assert store.peek(SPEC, "lost", 10) == []  # gone with the deleted file
    other.close()
    store.close()


def test_a_file_replaced_under_an_open_store_is_reopened(tmp_path: Path) -> None:
    """As a backup restored with mv would be."""
    path = str(tmp_path / "x.db")
    store = SQLiteStore(path)
    store.append(SPEC, entries("before", 1), 0)
    backup = SQLiteStore(str(tmp_path / "backup.db"))
    backup.append(SPEC, entries("restored", 7), 0)
    backup.close()
    os.replace(tmp_path / "backup.db", path)
    store.append(SPEC, entries("after", 2), 0)
    assert store.peek(SPEC, "restored", 10) == [(0, b"7")]
    assert SQLiteStore(path).peek(SPEC, "after", 10) == [(0, b"2")]
    store.close()


HOLDER = """
import sys
from redbatch.stores.sqlite import SQLiteStore
from redbatch.types import Entry, QueueSpec
spec = QueueSpec("b", max_items=3, max_wait_ms=1000, idle_ms=0, dedupe=False, max_attempts=2, lease_ms=500)
store = SQLiteStore(sys.argv[1])
store.append(spec, [Entry("holder", b"1", "")], 0)
print("opened", flush=True)
sys.stdin.readline()  # the file is deleted meanwhile
store.append(spec, [Entry("holder", b"2", "")], 0)
"""


@pytest.mark.parametrize("first", ["this-process", "the-other"])
def test_processes_holding_a_deleted_file_all_move_to_the_new_one(tmp_path: Path, first: str) -> None:
    """Only the database file is deleted, so its -wal and -shm stay at the path while two
    processes hold them: whichever notices first must not let the new file inherit them."""
    path = str(tmp_path / "x.db")
    store = SQLiteStore(path)
    store.append(SPEC, entries("here", 1), 0)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert select.select([holder.stdout], [], [], DEADLINE)[0]
        assert holder.stdout.readline() == "opened\n"
        os.unlink(path)
        if first == "this-process":
            store.append(SPEC, entries("here", 2), 0)
        holder.communicate("go\n", timeout=DEADLINE)
        assert holder.returncode == 0
        if first == "the-other":
            store.append(SPEC, entries("here", 2), 0)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()
    check = SQLiteStore(path)
    assert check.peek(SPEC, "here", 10) == [(0, b"2")]
    assert check.peek(SPEC, "holder", 10) == [(0, b"2")]
    assert check._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()
    store.close()


def test_a_waiting_worker_notices_a_deleted_file_and_sees_another_process_items(tmp_path: Path) -> None:
    """Another process creates the file anew and adds to it: the waiter must move to it."""
    path = str(tmp_path / "x.db")
    store = SQLiteStore(path)
    waiter = store.waiter([SPEC.name])
    store.append(SPEC, entries("lost", 1), 0)
    for suffix in ("", "-wal", "-shm"):
        os.unlink(path + suffix)
    child = SPAWN.Process(target=_append_one, args=(path,))
    child.start()
    deadline = time.monotonic() + DEADLINE
    while not store.peek(SPEC, "from-child", 1):
        assert time.monotonic() < deadline, "the store never saw the new file's item"
        waiter.wait(1.0)
    child.join(DEADLINE)
    assert child.exitcode == 0
    waiter.close()
    store.close()


# ---------------------------------------------------------------- processes sharing one file


def _produce(path: str, producer: int, count: int) -> None:
    store = SQLiteStore(path)
    batcher = redbatch.Batcher(store, "shared", max_items=20, max_wait=0.05)
    for i in range(0, count // 2):
        batcher.add(f"key-{i % 13}", [producer, i])
    rest = list(range(count // 2, count))
    for start in range(0, len(rest), 50):
        batcher.add_many([(f"key-{i % 13}", [producer, i]) for i in rest[start : start + 50]])
    store.close()


def test_producer_processes_then_one_worker_deliver_every_item_once(tmp_path: Path) -> None:
    path = str(tmp_path / "shared.db")
    producers = [SPAWN.Process(target=_produce, args=(path, p, 500)) for p in range(4)]
    for proc in producers:
        proc.start()
    for proc in producers:
        proc.join(DEADLINE * 2)
        assert proc.exitcode == 0
    store = SQLiteStore(path)
    batcher = redbatch.Batcher(store, "shared", max_items=20, max_wait=0.05)
    assert batcher.stats().buffered_items == 2000
    seen: Counter[tuple[int, int]] = Counter()
    lock = threading.Lock()

    @batcher.handler
    def record(batch: redbatch.Batch) -> None:
        with lock:
            seen.update(tuple(item) for item in batch.items)

    with running(redbatch.Worker(store, [batcher], concurrency=8, handle_signals=False)):
        wait_until(lambda: sum(seen.values()) >= 2000)
        wait_until(lambda: batcher.stats().in_flight == 0)
    assert seen == Counter({(p, i): 1 for p in range(4) for i in range(500)})
    stats = batcher.stats()
    assert (stats.open_keys, stats.buffered_items, stats.flushed_items) == (0, 0, 2000)
    store.close()


def _leave_state(path: str) -> None:
    """Leave behind a flushed batch, a dead letter and pending items, then exit."""
    store = SQLiteStore(path)
    store.append(SPEC, entries("done", 1, 2, 3), 1_000)
    (done,) = store.claim_due(SPEC, 1_000, 10)
    assert store.ack(SPEC, [done.lease], 1_500) == [True]
    store.append(SPEC, entries("doomed", 4), 2_000)
    (doomed,) = store.claim_due(SPEC, 3_000, 10)
    assert store.fail(SPEC, doomed.lease, 3_100, "it broke", None)
    store.append(SPEC, entries("waiting", 5, 6), 4_000)
    os._exit(0)  # no close(), no cleanup: as abrupt as an exit gets without a signal


def test_state_survives_every_process_exiting(tmp_path: Path) -> None:
    path = str(tmp_path / "x.db")
    child = SPAWN.Process(target=_leave_state, args=(path,))
    child.start()
    child.join(DEADLINE)
    assert child.exitcode == 0
    store = SQLiteStore(path)
    counters = store.counters(SPEC)
    assert counters.flushed_batches == 1 and counters.flushed_items == 3
    assert counters.last_flush_at == 1_500
    assert (counters.open_keys, counters.buffered_items, counters.oldest_arrival) == (1, 2, 4_000)
    assert (counters.in_flight, counters.retrying, counters.dead) == (0, 0, 1)
    assert store.peek(SPEC, "waiting", 10) == [(4_000, b"5"), (4_000, b"6")]
    (dead,) = store.dead_letters(SPEC, 10, 0)
    assert (dead.key, dead.payloads, dead.error, dead.died_at) == ("doomed", (b"4",), "it broke", 3_100)
    assert store.next_due_ms(SPEC) == 5_000
    store.close()


def _exit_code(pid: int, done_r: int, deadline: float) -> int:
    """A forked child's exit code, once ``done_r`` reads end-of-file (the child holds the other
    end until it exits); after ``deadline`` seconds without that, it is killed first."""
    if not select.select([done_r], [], [], deadline)[0]:
        os.kill(pid, signal.SIGKILL)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX")
def test_a_forked_child_uses_its_own_connections_not_its_parents(tmp_path: Path) -> None:
    """A child must not share the connections it inherits: their locks are the parent's.

    SQLite's per-process lock records are copied by fork() too, so a child writing through
    them holds no real lock on the file. Here the parent closes its store while the child
    still has the file open; SQLite lets the parent's last connection checkpoint and delete
    the WAL only when no other process holds the file, so the child's later item survives
    only if the child opened its own connection (which takes real locks).
    """
    path = str(tmp_path / "x.db")
    store = SQLiteStore(path)
    store.append(SPEC, entries("parent", 1), 0)  # the parent's connection is open, locks held
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe and the exit code, never return to pytest
        code = 1
        try:
            os.close(to_child_w)
            os.close(from_child_r)
            store.append(SPEC, entries("child", 1), 0)
            os.write(from_child_w, b"1")
            os.read(to_child_r, 1)  # until the parent has closed its store
            store.append(SPEC, entries("child", 2), 0)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(to_child_r)
    os.close(from_child_w)
    try:
        assert select.select([from_child_r], [], [], DEADLINE)[0], "the child never added its first item"
        assert os.read(from_child_r, 1) == b"1"
        store.close()
        os.write(to_child_w, b"1")
        assert _exit_code(pid, from_child_r, DEADLINE) == 0
    finally:
        os.close(to_child_w)
        os.close(from_child_r)
    other = SQLiteStore(path)
    assert [p for _, p in other.peek(SPEC, "child", 10)] == [b"1", b"2"]
    assert [p for _, p in other.peek(SPEC, "parent", 10)] == [b"1"]
    other.close()


PRODUCER = """
import sys
from redbatch.stores.sqlite import SQLiteStore
from redbatch.types import Entry, QueueSpec
spec = QueueSpec("b", max_items=3, max_wait_ms=1000, idle_ms=0, dedupe=False, max_attempts=2, lease_ms=500)
store = SQLiteStore(sys.argv[1])
i = 0
while True:
    store.append(spec, [Entry(f"k{i % 5}", str(i).encode(), "") for _ in range(1 + i % 3)], i)
    print(i, flush=True)
    i += 1
"""


def test_a_producer_killed_mid_write_loses_nothing_it_was_told_was_stored(tmp_path: Path) -> None:
    path = str(tmp_path / "x.db")
    proc = subprocess.Popen([sys.executable, "-c", PRODUCER, path], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    acknowledged = -1
    while acknowledged < 300:
        acknowledged = int(proc.stdout.readline())
    proc.kill()
    proc.wait(DEADLINE)
    proc.stdout.close()
    store = SQLiteStore(path)
    assert store._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = Counter(int(p) for k in range(5) for _, p in store.peek(SPEC, f"k{k}", 10_000))
    for i in range(acknowledged + 1):
        assert stored[i] == 1 + i % 3, i
    assert store.counters(SPEC).buffered_items == sum(stored.values())
    store.close()


# ---------------------------------------------------------------- same answers as the reference

KEYS = st.sampled_from(["a", "b", "c"])


def outcome(method: Any, *args: Any) -> Any:
    """What a call returned, or the type of the redbatch error it raised."""
    try:
        return method(*args)
    except RedbatchError as exc:
        return type(exc)


class SameAsMemory(RuleBasedStateMachine):
    """Drive a SQLite store and the memory store alike; every answer must match.

    Batch ids are random, so each SQLite id is paired with the memory store's id of the
    batch claimed at the same step.
    """

    folder: Path = Path()
    dedupe = False

    def __init__(self) -> None:
        super().__init__()
        self.spec = QueueSpec("m", 3, 1000, 300, self.dedupe, 2, 500)
        self.sqlite = SQLiteStore(
            str(self.folder / f"m{id(self)}-{time.monotonic_ns()}.db"), synchronous="NORMAL"
        )
        self.memory = MemoryStore()
        self.now = 1_000_000
        self.ids: dict[str, str] = {}  # sqlite batch id -> memory batch id
        self.leases: list[tuple[Lease, Lease]] = []  # every lease handed out, stale ones too

    def both(self, method: str, *args: Any) -> tuple[Any, Any]:
        return getattr(self.sqlite, method)(*args), getattr(self.memory, method)(*args)

    def same_batches(self, ours: list[ClaimedBatch], theirs: list[ClaimedBatch]) -> None:
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            assert self.ids.setdefault(a.lease.batch_id, b.lease.batch_id) == b.lease.batch_id
            assert (a.lease.key, a.lease.fencing_token) == (b.lease.key, b.lease.fencing_token)
            assert (a.attempt, a.created_at, a.payloads, a.arrived_at) == (
                b.attempt,
                b.created_at,
                b.payloads,
                b.arrived_at,
            )
            self.leases.append((a.lease, b.lease))

    def same_dead(self, ours: list[DeadRecord], theirs: list[DeadRecord]) -> None:
        # Records that died at the same moment are ordered by their (random) id: compare sets.
        mapped = [replace(r, batch_id=self.ids[r.batch_id]) for r in ours]
        assert sorted(mapped, key=repr) == sorted(theirs, key=repr)

    @rule(key=KEYS, values=st.lists(st.integers(0, 7), min_size=1, max_size=4))
    def append(self, key: str, values: list[int]) -> None:
        batch = [Entry(key, str(v).encode(), f"d{v}" if self.dedupe else "") for v in values]
        self.both("append", self.spec, batch, self.now)

    @rule(seconds=st.sampled_from([0.1, 0.3, 0.6, 1.0, 2.0]))
    def advance(self, seconds: float) -> None:
        self.now += round(seconds * 1000)

    @rule(limit=st.integers(1, 4))
    def claim(self, limit: int) -> None:
        self.same_batches(*self.both("claim_due", self.spec, self.now, limit))

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        """A group of leases, stale ones and repeats included."""
        group = data.draw(st.lists(st.sampled_from(self.leases), max_size=4)) if self.leases else []
        ours, theirs = [a for a, _ in group], [b for _, b in group]
        assert self.sqlite.ack(self.spec, ours, self.now) == self.memory.ack(self.spec, theirs, self.now)

    @rule(data=st.data(), outcome=st.sampled_from(["retry", "bury", "shrink", "heartbeat"]))
    def settle(self, data: st.DataObject, outcome: str) -> None:
        if not self.leases:
            return
        ours, theirs = data.draw(st.sampled_from(self.leases))
        if outcome == "heartbeat":
            until = self.now + 500
            assert self.sqlite.heartbeat(self.spec, [ours], until) == self.memory.heartbeat(
                self.spec, [theirs], until
            )
            return
        retry_at = None if outcome == "bury" else self.now + 200
        keep = (0,) if outcome == "shrink" else None  # every batch has an item 0
        assert self.sqlite.fail(self.spec, ours, self.now, "err", retry_at, keep) == self.memory.fail(
            self.spec, theirs, self.now, "err", retry_at, keep
        )

    @rule(key=KEYS)
    def clear(self, key: str) -> None:
        ours, theirs = self.both("clear", self.spec, key)
        assert ours == theirs

    @rule(key=st.none() | KEYS)
    def flush(self, key: str | None) -> None:
        ours, theirs = self.both("flush", self.spec, key, self.now)
        assert ours == theirs

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        # Ids are random: pick dead letters by what they hold, so that examples replay.
        dead = sorted(
            self.memory.dead_letters(self.spec, 100, 0), key=lambda r: (r.died_at, r.key, r.payloads)
        )
        theirs = data.draw(
            st.none() | st.lists(st.sampled_from([r.batch_id for r in dead] or ["x"]), unique=True)
        )
        back = {m: s for s, m in self.ids.items()}
        ours = None if theirs is None else [back.get(i, i) for i in theirs]
        assert outcome(self.sqlite.replay, self.spec, ours, self.now) == outcome(
            self.memory.replay, self.spec, theirs, self.now
        )

    @rule(before=st.none() | st.integers(0, 3000))
    def purge(self, before: int | None) -> None:
        cutoff = None if before is None else self.now - before
        ours, theirs = self.both("purge_dead", self.spec, None, cutoff)
        assert ours == theirs

    @invariant()
    def same_state(self) -> None:
        ours, theirs = self.both("counters", self.spec)
        assert ours == theirs
        assert self.sqlite.next_due_ms(self.spec) == self.memory.next_due_ms(self.spec)
        for key in ("a", "b", "c"):
            assert self.sqlite.peek(self.spec, key, 100) == self.memory.peek(self.spec, key, 100)
        self.same_dead(*self.both("dead_letters", self.spec, 100, 0))

    def teardown(self) -> None:
        self.sqlite.close()


@pytest.mark.parametrize("dedupe", [False, True])
def test_every_answer_matches_the_memory_store(tmp_path: Path, dedupe: bool) -> None:
    machine = type("Machine", (SameAsMemory,), {"folder": tmp_path, "dedupe": dedupe})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
        ),
    )


# ---------------------------------------------------------------- job records

JOBS = QueueSpec(JOBS_PREFIX + "q", 1, 0, 0, False, 3, 60_000)


def _job(job_id: str, now_ms: int, group: str = "") -> NewJob:
    return NewJob(job_id, "f", orjson.dumps({"id": job_id}), now_ms, Lane.NORMAL, 3, 1, group)


def _succeeded(claimed: ClaimedBatch, result: object = None) -> JobOutcome:
    return JobOutcome(claimed.lease, OutcomeKind.SUCCEEDED, orjson.dumps(result))


def _run_jobs(path: str, now_ms: int) -> None:
    """A worker process: claim and finish jobs (its pid the result) until none is open."""
    store = SQLiteStore(path)
    waiter = store.waiter([JOBS.name])
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        claimed = store.claim_due(JOBS, now_ms, 4)
        if claimed:
            store.finish_jobs(JOBS, [_succeeded(c, os.getpid()) for c in claimed], now_ms)
            continue
        counts = store.job_counts(JOBS)
        if counts[JobStatus.PENDING] == counts[JobStatus.RUNNING] == 0:
            waiter.close()
            store.close()
            return
        waiter.wait(1.0)  # until another process commits (it holds the last jobs)
    raise SystemExit("jobs were left open past the deadline")


def test_processes_on_one_file_see_each_others_jobs_and_count_a_group_exactly(tmp_path: Path) -> None:
    """Jobs submitted here are run by three worker processes, each on its own connection;
    their results, the group's counts and its one callback are seen here and by a new store."""
    path = str(tmp_path / "jobs.db")
    store = SQLiteStore(path)
    members = [_job(f"doc-{i}", 1_000, "g") for i in range(60)]
    assert all(store.submit_jobs(JOBS, members, NewGroup("g", b'"report"', "report"), 1_000))
    workers = [SPAWN.Process(target=_run_jobs, args=(path, 2_000)) for _ in range(3)]
    for proc in workers:
        proc.start()
    for proc in workers:
        proc.join(DEADLINE * 2)
        assert proc.exitcode == 0
    pids = {proc.pid for proc in workers}
    other = SQLiteStore(path)  # a connection that saw none of it happen
    for reader in (store, other):
        group = reader.get_group(JOBS, "g")
        assert group is not None
        assert (group.total, group.counts[JobStatus.SUCCEEDED], group.finished_at) == (60, 60, 2_000)
        assert (group.round, group.callback_job) == (1, callback_job_id("g", 1))
        records = reader.get_jobs(JOBS, [j.id for j in members] + [callback_job_id("g", 1)])
        assert all(r is not None and r.status is JobStatus.SUCCEEDED for r in records)
        assert {orjson.loads(r.result) for r in records if r is not None and r.result} <= pids
        page = reader.list_jobs(JOBS, None, None, 100, None)
        assert len(page.jobs) == 61 and page.cursor is None  # the callback was created once
        assert reader.job_counts(JOBS)[JobStatus.SUCCEEDED] == 61
        counters = reader.counters(JOBS)
        assert (counters.flushed_batches, counters.open_keys, counters.in_flight) == (61, 0, 0)
    store.close()
    other.close()


@pytest.mark.parametrize(
    "query",
    [
        *(
            jobs.list_query(by_status=s, by_group=g, after=a)
            for s, g, a in itertools.product((False, True), repeat=3)
        ),
        jobs._FINISHED_SINGLES,
        jobs._FINISHED_GROUPS,
    ],
)
def test_listing_and_cleaning_jobs_is_an_index_search_in_order(tmp_path: Path, query: str) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"))
    params = [JOBS.name, *[1] * (query.count("?") - 1)]
    plan = " | ".join(row[3] for row in store._conn().execute(f"EXPLAIN QUERY PLAN {query}", params))
    assert "SEARCH jobs USING" in plan or "SEARCH job_groups USING" in plan, plan
    assert "INDEX" in plan and "SCAN" not in plan and "TEMP B-TREE" not in plan, plan
    store.close()


def test_every_job_transition_is_cited_where_the_store_implements_it() -> None:
    """As test_engine.py checks the engine's: ``# job: NAME[, NAME]`` marks each row's code."""
    folder = Path(jobs.__file__).parent
    cited = {
        name
        for source in folder.glob("*.py")
        for names in re.findall(r"# job: (\w+(?:, \w+)*)", source.read_text())
        for name in names.split(", ")
    }
    assert cited == set(JOB_TRANSITIONS)


def test_a_cursor_of_another_query_or_none_at_all_is_a_config_error(tmp_path: Path) -> None:
    store = SQLiteStore(str(tmp_path / "x.db"))
    store.submit_jobs(JOBS, [_job(f"j{i}", 1_000 + i) for i in range(3)], None, 1_000)
    page = store.list_jobs(JOBS, None, None, 2, None)
    assert [j.id for j in page.jobs] == ["j2", "j1"] and page.cursor is not None
    assert [j.id for j in store.list_jobs(JOBS, None, None, 2, page.cursor).jobs] == ["j0"]
    with pytest.raises(ConfigError, match="cursor"):
        store.list_jobs(JOBS, JobStatus.PENDING, None, 2, page.cursor)
    with pytest.raises(ConfigError, match="cursor"):
        store.list_jobs(JOBS, None, "g", 2, page.cursor)
    for garbage in ("", "not base64!", "bnVsbA==", page.cursor[:-4]):
        with pytest.raises(ConfigError, match="cursor"):
            store.list_jobs(JOBS, None, None, 2, garbage)
    with pytest.raises(ConfigError, match="limit"):
        store.list_jobs(JOBS, None, None, 0, None)
    store.close()


def test_publishing_a_job_queues_rules_keeps_each_jobs_own_deadline(tmp_path: Path) -> None:
    """A delayed job is due at its own score; new rules must not reschedule it by max_wait."""
    store = SQLiteStore(str(tmp_path / "x.db"))
    later = replace(_job("later", 1_000), score_ms=50_000)
    store.submit_jobs(JOBS, [later], None, 1_000)
    store.publish_rules(JOBS, 1_000)
    store.publish_rules(QueueSpec(JOBS.name, 1, 0, 0, False, 5, 60_000), 2_000)
    assert store.next_due_ms(JOBS) == 50_000
    assert store.claim_due(JOBS, 49_999, 10) == []
    store.close()


def test_cleanup_takes_a_group_larger_than_its_limit_whole(tmp_path: Path) -> None:
    """A group goes whole, so one larger than ``limit`` would otherwise never go: it is
    taken while fewer than ``limit`` records were deleted, with its callback jobs."""
    store = SQLiteStore(str(tmp_path / "x.db"))
    members = [_job(f"m{i}", 1_000, "g") for i in range(5)]
    store.submit_jobs(JOBS, members, NewGroup("g", b'"cb"', "cb"), 1_000)
    store.finish_jobs(JOBS, [_succeeded(c) for c in store.claim_due(JOBS, 1_000, 10)], 1_000)
    store.finish_jobs(JOBS, [_succeeded(c) for c in store.claim_due(JOBS, 1_000, 10)], 1_000)  # the callback
    assert store.cleanup_jobs(JOBS, 2_000, 2) == 6
    assert store.get_group(JOBS, "g") is None
    assert store.list_jobs(JOBS, None, None, 10, None).jobs == []
    assert store.job_counts(JOBS) == dict.fromkeys(JobStatus, 0)
    store.close()
