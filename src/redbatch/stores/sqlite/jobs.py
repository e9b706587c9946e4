"""The SQLite store's job records: the ``JobStore`` operations, and the record steps that
``claim_due`` and ``fail`` take on a job queue in their own transaction.

A job queue's engine state is the batching tables' (a key per job id, one item, its
payload); beside it, ``jobs`` holds a record per job, ``job_groups`` a row per group with a
count per status, and ``job_counts`` the queue's count per status. Every record change is
made in the transaction (``Tx``) of the engine step that moves the job, as
``redbatch.engine.JOB_TRANSITIONS`` says; each step cites its row by name
(``# job: claim``), as test_sqlite_store.py checks.
``move`` is the one place a job changes status: it moves the queue's and the group's
counts with it and finishes the group when its last open member finishes.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
from collections.abc import Sequence
from typing import Any

import orjson

from redbatch.engine import wakes
from redbatch.errors import ConfigError, NotFound
from redbatch.jobrecords import (
    FINISHED,
    GroupRecord,
    JobOutcome,
    JobPage,
    JobRecord,
    JobStatus,
    Lane,
    NewGroup,
    NewJob,
    OutcomeKind,
    callback_job_id,
)
from redbatch.stores.sqlite.connection import Database, Tx
from redbatch.stores.sqlite.schema import CHUNK, blob
from redbatch.types import Lease, QueueSpec

_OPEN = (JobStatus.PENDING.value, JobStatus.RUNNING.value)
_NOT_STARTED = {"attempt": 0, "started_at": None, "progress": None, "message": "", "error": ""}
"""The fields of a step's record before its first claim (a chain's next step)."""
_INSERT_JOB = (
    "INSERT OR IGNORE INTO jobs (queue, id, function, status, lane, max_attempts, steps, created_at,"
    " group_id, payload) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?)"
)
_INSERT_GROUP = (
    "INSERT INTO job_groups (queue, id, total, pending, created_at, callback, callback_function,"
    " callback_max_attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# Fenced: only while the lease (queue, key, batch id, token) still holds the running batch.
_PROGRESS = (
    "UPDATE jobs SET progress = COALESCE(?, progress), message = ? WHERE queue = ? AND id = ?"
    " AND EXISTS (SELECT 1 FROM keys WHERE queue = ? AND key = ? AND batch_id = ? AND fencing_token = ?"
    " AND running = 1)"
)
# Jobs outside groups that finished before a time, oldest first (served by ``jobs_finished``).
_FINISHED_SINGLES = (
    "SELECT id, finished_at FROM jobs WHERE queue = ? AND group_id = '' AND finished_at IS NOT NULL"
    " AND finished_at < ? ORDER BY finished_at, id LIMIT ?"
)
_FINISHED_GROUPS = (
    "SELECT id, finished_at, round FROM job_groups WHERE queue = ? AND finished_at IS NOT NULL"
    " AND finished_at < ? ORDER BY finished_at, id LIMIT ?"
)


# ---------------------------------------------------------------- record steps, inside a Tx


def job_row(cur: sqlite3.Cursor, name: str, job_id: str) -> Any:
    return cur.execute("SELECT * FROM jobs WHERE queue = ? AND id = ?", (name, job_id)).fetchone()


def head(cur: sqlite3.Cursor, name: str) -> int | None:
    """The head of the deadline index before a step (``engine.wakes`` compares with it)."""
    value: int | None = cur.execute("SELECT MIN(due_at) FROM keys WHERE queue = ?", (name,)).fetchone()[0]
    return value


def enqueue(tx: Tx, spec: QueueSpec, key: str, payload: bytes, score_ms: int, now_ms: int) -> None:
    """Append a job's one entry under its key, due at ``score_ms`` (a lane's head start may put
    it in the past): the engine's ``append``, with the job's own score instead of ``due_at``."""
    before = head(tx.cur, spec.name)
    row = tx.cur.execute("SELECT id FROM keys WHERE queue = ? AND key = ?", (spec.name, key)).fetchone()
    # transition: append
    if row is None:
        tx.cur.execute(
            "INSERT INTO keys (queue, key, due_at, pending, first_at, last_at) VALUES (?, ?, ?, 1, ?, ?)",
            (spec.name, key, score_ms, now_ms, now_ms),
        )
        key_id = tx.cur.lastrowid
        tx.add(open_keys=1)
    else:  # only when something else was appended under a job's id: keep the earlier deadline
        key_id = row["id"]
        tx.cur.execute(
            "UPDATE keys SET pending = pending + 1, first_at = COALESCE(first_at, ?), last_at = ?,"
            " due_at = CASE WHEN batch_id IS NULL AND due_at > ? THEN ? ELSE due_at END WHERE id = ?",
            (now_ms, now_ms, score_ms, score_ms, key_id),
        )
    tx.cur.execute(
        "INSERT INTO pending (key_id, arrived_at, digest, payload) VALUES (?, ?, '', ?)",
        (key_id, now_ms, payload),
    )
    tx.add(buffered_items=1)
    if wakes(score_ms, before, now_ms):
        tx.wake = True


def create(tx: Tx, spec: QueueSpec, job: NewJob, group_id: str, now_ms: int) -> bool:
    """Create a job's record and its entry; False (nothing changed) when its id exists."""
    # job: submit
    created = tx.cur.execute(
        _INSERT_JOB,
        (spec.name, job.id, job.function, int(job.lane), job.max_attempts, job.steps, now_ms, group_id,
         job.payload),
    ).rowcount  # fmt: skip
    if created != 1:
        return False
    tx.moved_job(None, JobStatus.PENDING)
    enqueue(tx, spec, job.id, job.payload, job.score_ms, now_ms)
    return True


def move(tx: Tx, spec: QueueSpec, job: Any, status: JobStatus, now_ms: int, **fields: Any) -> None:
    """Set a job's status and ``fields``; move the queue's and its group's counts with it.

    The group's counts move from the job's old status to its new one, so a member is
    counted once whatever it goes through; the move that leaves a group with no pending or
    running member finishes it (``finish_group``).
    """
    changes = {"status": status.value, **fields}
    tx.cur.execute(
        f"UPDATE jobs SET {', '.join(f'{column} = ?' for column in changes)} WHERE queue = ? AND id = ?",
        (*changes.values(), spec.name, job["id"]),
    )
    before = str(job["status"])
    if before == status.value:
        return
    tx.moved_job(before, status.value)
    group_id = job["group_id"]
    if not group_id:
        return
    # Column names from JobStatus only: the statuses are the group's count columns.
    tx.cur.execute(
        f"UPDATE job_groups SET {before} = {before} - 1, {status.value} = {status.value} + 1"
        " WHERE queue = ? AND id = ?",
        (spec.name, group_id),
    )
    if status in FINISHED:
        finish_group(tx, spec, group_id, now_ms)


def finish_group(tx: Tx, spec: QueueSpec, group_id: str, now_ms: int) -> None:
    """Once per round, when no member is pending or running: set ``finished_at`` and submit
    the group's callback job (not a member), due at once."""
    finished = tx.cur.execute(
        "UPDATE job_groups SET finished_at = ? WHERE queue = ? AND id = ? AND pending = 0 AND running = 0"
        " AND finished_at IS NULL",
        (now_ms, spec.name, group_id),
    ).rowcount
    if not finished:
        return
    group = tx.cur.execute(
        "SELECT round, callback, callback_function, callback_max_attempts FROM job_groups"
        " WHERE queue = ? AND id = ?",
        (spec.name, group_id),
    ).fetchone()
    callback = blob(group["callback"])
    if not callback:
        return
    job_id = callback_job_id(group_id, group["round"])
    job = NewJob(
        job_id, group["callback_function"], callback, now_ms, Lane.NORMAL, group["callback_max_attempts"]
    )
    create(tx, spec, job, "", now_ms)
    tx.cur.execute(
        "UPDATE job_groups SET callback_job = ? WHERE queue = ? AND id = ?", (job_id, spec.name, group_id)
    )


def max_attempts(tx: Tx, spec: QueueSpec, key: str) -> int:
    """The attempts a job's lapsed lease is judged by: the job's own, else the queue's."""
    row = tx.cur.execute(
        "SELECT max_attempts FROM jobs WHERE queue = ? AND id = ?", (spec.name, key)
    ).fetchone()
    return spec.max_attempts if row is None else int(row[0])


def claimed(tx: Tx, spec: QueueSpec, key: str, attempt: int, now_ms: int) -> None:
    """A job's batch was leased (a claim, a retry's or a lost worker's reclaim)."""
    job = job_row(tx.cur, spec.name, key)
    if job is not None:
        # job: claim, claim_retry, reclaim
        move(tx, spec, job, JobStatus.RUNNING, now_ms, attempt=attempt, started_at=now_ms)


def failed(tx: Tx, spec: QueueSpec, key: str, error: str, dead_letter: str | None, now_ms: int) -> None:
    """A job's attempt failed: pending again to retry, or failed with its batch a dead letter
    (``dead_letter``, its batch id: a lapsed lease buried by claim, or fail's last attempt)."""
    job = job_row(tx.cur, spec.name, key)
    if job is None:
        return
    if dead_letter is None:  # job: fail_retry
        move(tx, spec, job, JobStatus.PENDING, now_ms, error=error)
    else:  # job: fail_dead, bury_lapsed
        move(
            tx, spec, job, JobStatus.FAILED, now_ms, error=error, finished_at=now_ms, dead_letter=dead_letter
        )


def purge_letter(tx: Tx, spec: QueueSpec, batch_id: str | None) -> None:
    """Delete a failed job's dead letter, if it is still held (not replayed or purged since)."""
    if batch_id is None:
        return
    # transition: purge
    if tx.cur.execute(
        "DELETE FROM dead_letters WHERE queue = ? AND batch_id = ?", (spec.name, batch_id)
    ).rowcount:
        tx.cur.execute("DELETE FROM batch_items WHERE batch_id = ?", (batch_id,))
        tx.add(dead=-1)


# ---------------------------------------------------------------- reading records


def record(row: Any) -> JobRecord:
    result = row["result"]
    return JobRecord(
        id=row["id"],
        function=row["function"],
        status=JobStatus(row["status"]),
        lane=Lane(row["lane"]),
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        step=row["step"],
        steps=row["steps"],
        progress=row["progress"],
        message=row["message"],
        result=None if result is None else blob(result),
        error=row["error"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        group=row["group_id"],
        cancel_requested=bool(row["cancel_requested"]),
        payload=blob(row["payload"]),
    )


def group_record(row: Any) -> GroupRecord:
    return GroupRecord(
        id=row["id"],
        total=row["total"],
        counts={status: int(row[status.value]) for status in JobStatus},
        created_at=row["created_at"],
        finished_at=row["finished_at"],
        round=row["round"],
        callback_job=row["callback_job"],
        callback_function=row["callback_function"],
    )


def _cursor(status: JobStatus | None, group: str | None, last: Any) -> str:
    """An opaque cursor: the query it continues, and the (created_at, id) it stopped at."""
    state = [status.value if status else None, group, last["created_at"], last["id"]]
    return base64.urlsafe_b64encode(orjson.dumps(state)).decode()


def _after(cursor: str, status: JobStatus | None, group: str | None) -> tuple[int, str]:
    """The (created_at, id) a cursor continues after; ConfigError when it is not one of this query's."""
    try:
        state = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        wanted, in_group, created_at, job_id = state
        valid = isinstance(created_at, int) and isinstance(job_id, str)
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        valid = False
    if not valid or wanted != (status.value if status else None) or in_group != group:
        raise ConfigError("not a cursor of this list_jobs query (its status and group must be the same)")
    return created_at, job_id


def list_query(*, by_status: bool, by_group: bool, after: bool) -> str:
    """The SQL of a ``list_jobs`` page; its parameters: queue, [group], [status], [the
    cursor's created_at and id], limit. Tests check that each is an index search in order: the
    row value ``(created_at, id) < (?, ?)`` starts the search at the cursor (an ``OR`` of the
    two columns would read every newer job first)."""
    where = ["queue = ?"]
    if by_group:
        where.append("group_id = ? AND group_id <> ''")
    if by_status:
        where.append("status = ?")
    if after:
        where.append("(created_at, id) < (?, ?)")
    return f"SELECT * FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id DESC LIMIT ?"


def list_page(cur: sqlite3.Cursor, spec: QueueSpec, status: JobStatus | None, group: str | None,
              limit: int, cursor: str | None) -> JobPage:  # fmt: skip
    """Newest first, by an index in order: ``jobs_created``, ``jobs_status``, ``jobs_group``
    or ``jobs_group_status`` (``group_id <> ''`` lets SQLite use the partial ones)."""
    if limit < 1:
        raise ConfigError(f"list_jobs needs a limit of at least 1, not {limit}")
    params: list[Any] = [spec.name]
    if group is not None:
        params.append(group)
    if status is not None:
        params.append(status.value)
    if cursor is not None:
        created_at, job_id = _after(cursor, status, group)
        params += [created_at, job_id]
    query = list_query(by_status=status is not None, by_group=group is not None, after=cursor is not None)
    rows = cur.execute(query, (*params, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return JobPage([record(r) for r in rows], _cursor(status, group, rows[-1]) if more else None)


# ---------------------------------------------------------------- the JobStore operations


class JobOperations(Database):
    """The ``JobStore`` protocol, mixed into ``SQLiteStore``: each operation one transaction.

    The engine steps it shares with batches (``_finish``, the ``ack`` of one lease, and
    ``_clear_key``) are ``SQLiteStore``'s.
    """

    def _finish(self, tx: Tx, spec: QueueSpec, lease: Lease, now_ms: int) -> bool:
        raise NotImplementedError  # SQLiteStore's ack step

    def _clear_key(self, tx: Tx, spec: QueueSpec, key: str) -> int:
        raise NotImplementedError  # SQLiteStore's clear step

    def submit_jobs(
        self, spec: QueueSpec, jobs: Sequence[NewJob], group: NewGroup | None, now_ms: int
    ) -> list[bool]:
        group_id = "" if group is None else group.id
        for job in jobs:
            if job.group and job.group != group_id:
                raise ConfigError(
                    f"job {job.id!r} names group {job.group!r} but is submitted with {group_id!r}"
                )
        with self._write(spec.name) as tx:
            if group is not None:
                exists = tx.cur.execute(
                    "SELECT 1 FROM job_groups WHERE queue = ? AND id = ?", (spec.name, group.id)
                ).fetchone()
                if exists:
                    return [False] * len(jobs)
            created = [create(tx, spec, job, group_id, now_ms) for job in jobs]
            if group is not None:
                members = sum(created)
                tx.cur.execute(
                    _INSERT_GROUP,
                    (spec.name, group.id, members, members, now_ms, group.callback, group.callback_function,
                     group.callback_max_attempts),
                )  # fmt: skip
                finish_group(tx, spec, group.id, now_ms)  # an empty group finishes at once
            return created

    def finish_jobs(self, spec: QueueSpec, outcomes: Sequence[JobOutcome], now_ms: int) -> list[bool]:
        """One transaction for every outcome: the worker's group commit, as ``ack``."""
        with self._write(spec.name) as tx:
            return [self._finish_job(tx, spec, outcome, now_ms) for outcome in outcomes]

    def _finish_job(self, tx: Tx, spec: QueueSpec, outcome: JobOutcome, now_ms: int) -> bool:
        if not self._finish(tx, spec, outcome.lease, now_ms):  # transition: ack
            return False
        job = job_row(tx.cur, spec.name, outcome.lease.key)
        if job is None:
            return True
        if outcome.kind is OutcomeKind.SUCCEEDED:  # job: finish_succeeded
            result = outcome.result or None
            move(tx, spec, job, JobStatus.SUCCEEDED, now_ms, result=result, progress=1.0, finished_at=now_ms)
        elif outcome.kind is OutcomeKind.CANCELLED:  # job: finish_cancelled
            result = outcome.result or job["result"]
            move(tx, spec, job, JobStatus.CANCELLED, now_ms, result=result, finished_at=now_ms)
        else:  # job: finish_advance (the next step's entry, appended in the same step)
            enqueue(tx, spec, job["id"], outcome.next_payload, outcome.next_score_ms, now_ms)
            # The record now describes the next step: its function, entry, attempts, progress.
            next_step = {
                "step": job["step"] + 1,
                "function": outcome.next_function or job["function"],
                "payload": outcome.next_payload,
                "result": outcome.result or None,
                **_NOT_STARTED,
            }
            move(tx, spec, job, JobStatus.PENDING, now_ms, **next_step)
        return True

    def job_progress(self, spec: QueueSpec, lease: Lease, fraction: float | None, message: str) -> bool:
        """Fenced by the lease; a ``fraction`` of None keeps the last one (a message alone)."""
        held = (spec.name, lease.key, lease.batch_id, lease.fencing_token)
        with self._write(spec.name) as tx:
            # job: progress
            updated = tx.cur.execute(_PROGRESS, (fraction, message, spec.name, lease.key, *held)).rowcount
            return updated == 1

    def cancel_job(self, spec: QueueSpec, job_id: str, now_ms: int) -> JobStatus:
        with self._write(spec.name) as tx:
            job = job_row(tx.cur, spec.name, job_id)
            if job is None:
                raise NotFound(f"job queue {spec.name!r} has no job {job_id!r}")
            status = JobStatus(job["status"])
            if status is JobStatus.PENDING:  # job: cancel_pending
                self._clear_key(tx, spec, job_id)  # transition: clear
                move(tx, spec, job, JobStatus.CANCELLED, now_ms, finished_at=now_ms)
                return JobStatus.CANCELLED
            if status is JobStatus.RUNNING:  # job: cancel_running
                tx.cur.execute(
                    "UPDATE jobs SET cancel_requested = 1 WHERE queue = ? AND id = ?", (spec.name, job_id)
                )
            return status

    def retry_jobs(self, spec: QueueSpec, job_ids: Sequence[str], lane: Lane | None, score_ms: int,
                   now_ms: int) -> list[str]:  # fmt: skip
        retried = []
        with self._write(spec.name) as tx:
            for job_id in dict.fromkeys(job_ids):
                job = job_row(tx.cur, spec.name, job_id)
                if job is None or job["status"] != JobStatus.FAILED.value:
                    continue
                # job: retry_jobs
                purge_letter(tx, spec, job["dead_letter"])
                enqueue(tx, spec, job_id, blob(job["payload"]), score_ms, now_ms)
                if job["group_id"]:  # a finished group opens again, for a new round
                    tx.cur.execute(
                        "UPDATE job_groups SET round = round + 1, finished_at = NULL"
                        " WHERE queue = ? AND id = ? AND finished_at IS NOT NULL",
                        (spec.name, job["group_id"]),
                    )
                again = {"finished_at": None, "dead_letter": None, "cancel_requested": 0, "attempt": 0}
                lane_now = int(job["lane"] if lane is None else lane)
                move(tx, spec, job, JobStatus.PENDING, now_ms, started_at=None, lane=lane_now, **again)
                retried.append(job_id)
        return retried

    def get_jobs(self, spec: QueueSpec, job_ids: Sequence[str]) -> list[JobRecord | None]:
        found: dict[str, JobRecord] = {}
        ids = list(dict.fromkeys(job_ids))
        with self._read() as cur:
            for i in range(0, len(ids), CHUNK):
                chunk = ids[i : i + CHUNK]
                rows = cur.execute(
                    f"SELECT * FROM jobs WHERE queue = ? AND id IN ({', '.join('?' * len(chunk))})",
                    (spec.name, *chunk),
                )
                found.update((row["id"], record(row)) for row in rows)
        return [found.get(job_id) for job_id in job_ids]

    def list_jobs(self, spec: QueueSpec, status: JobStatus | None, group: str | None, limit: int,
                  cursor: str | None) -> JobPage:  # fmt: skip
        with self._read() as cur:
            return list_page(cur, spec, status, group, limit, cursor)

    def job_counts(self, spec: QueueSpec) -> dict[JobStatus, int]:
        with self._read() as cur:
            rows = cur.execute("SELECT status, n FROM job_counts WHERE queue = ?", (spec.name,)).fetchall()
        counts = dict.fromkeys(JobStatus, 0)
        counts.update((JobStatus(row["status"]), int(row["n"])) for row in rows)
        return counts

    def get_group(self, spec: QueueSpec, group_id: str) -> GroupRecord | None:
        with self._read() as cur:
            row = cur.execute(
                "SELECT * FROM job_groups WHERE queue = ? AND id = ?", (spec.name, group_id)
            ).fetchone()
        return None if row is None else group_record(row)

    def cleanup_jobs(self, spec: QueueSpec, finished_before_ms: int, limit: int) -> int:
        """Oldest first, jobs outside groups one by one and finished groups whole: a group is
        taken while fewer than ``limit`` records were deleted, so a call may end up to one
        group's size past ``limit`` (a group larger than ``limit`` would never go otherwise)."""
        if limit < 1:
            return 0
        deleted = 0
        with self._write(spec.name) as tx:
            params = (spec.name, finished_before_ms, limit)
            singles = [(r["finished_at"], r["id"], None) for r in tx.cur.execute(_FINISHED_SINGLES, params)]
            groups = [
                (r["finished_at"], r["id"], r["round"]) for r in tx.cur.execute(_FINISHED_GROUPS, params)
            ]
            for _, item_id, round_ in sorted(singles + groups, key=lambda found: found[:2]):
                if deleted >= limit:
                    break
                # the cleanup of JOB_TRANSITIONS' comment: finished records go
                if round_ is None:
                    deleted += self._delete_jobs(tx, spec, [item_id])
                else:
                    deleted += self._delete_group(tx, spec, item_id, round_)
        return deleted

    @staticmethod
    def _delete_jobs(tx: Tx, spec: QueueSpec, job_ids: Sequence[str]) -> int:
        """Delete finished jobs (the ones still here) with a failed one's dead letter."""
        deleted = 0
        for job_id in job_ids:
            job = job_row(tx.cur, spec.name, job_id)
            if job is None or job["status"] in _OPEN:
                continue
            purge_letter(tx, spec, job["dead_letter"])
            tx.cur.execute("DELETE FROM jobs WHERE queue = ? AND id = ?", (spec.name, job_id))
            tx.moved_job(job["status"], None)
            deleted += 1
        return deleted

    def _delete_group(self, tx: Tx, spec: QueueSpec, group_id: str, round_: int) -> int:
        """A finished group goes whole: its record, every member and its callback jobs."""
        members = [
            row[0]
            for row in tx.cur.execute(
                "SELECT id FROM jobs WHERE queue = ? AND group_id = ? AND group_id <> ''",
                (spec.name, group_id),
            )
        ]
        callbacks = [callback_job_id(group_id, r) for r in range(1, round_ + 1)]
        tx.cur.execute("DELETE FROM job_groups WHERE queue = ? AND id = ?", (spec.name, group_id))
        return self._delete_jobs(tx, spec, members + callbacks)
