"""The memory store's job and group records: the bookkeeping half of its ``JobStore``.

``MemoryStore`` (memory.py) moves the engine state of a job queue (entries, leases, the
deadline index, dead letters) and calls this table, under the same lock, to move the job's
record in the same step (``redbatch.engine.JOB_TRANSITIONS``). The table keeps the records,
the group counters, and the indexes ``list_jobs`` and ``cleanup_jobs`` read: sorted lists of
(created_at, id) per status and per group, and of (finished_at, id) for finished jobs that
are not group members and for finished groups. When a step finishes a group, the table
queues the group's callback job (``callbacks``); the store creates and enqueues it before
the step returns.
"""

from __future__ import annotations

import base64
import binascii
import bisect
from dataclasses import dataclass, field

import orjson

from redbatch.errors import ConfigError
from redbatch.jobrecords import (
    FINISHED,
    GroupRecord,
    JobPage,
    JobRecord,
    JobStatus,
    Lane,
    NewGroup,
    NewJob,
    callback_job_id,
)

_Ordered = list[tuple[int, str]]  # sorted ascending: (created_at or finished_at, id)


@dataclass(slots=True)
class _Job:
    id: str
    function: str
    status: JobStatus
    lane: Lane
    max_attempts: int
    steps: int
    group: str
    payload: bytes
    created_at: int
    attempt: int = 0
    step: int = 0
    progress: float | None = None
    message: str = ""
    result: bytes | None = None
    error: str = ""
    started_at: int | None = None
    finished_at: int | None = None
    cancel_requested: bool = False
    dead_batch: str = ""  # the id of its dead letter while failed ('' none)

    def record(self) -> JobRecord:
        return JobRecord(
            self.id,
            self.function,
            self.status,
            self.lane,
            self.attempt,
            self.max_attempts,
            self.step,
            self.steps,
            self.progress,
            self.message,
            self.result,
            self.error,
            self.created_at,
            self.started_at,
            self.finished_at,
            self.group,
            self.cancel_requested,
            self.payload,
        )


@dataclass(slots=True)
class _Group:
    id: str
    created_at: int
    callback: bytes
    callback_function: str
    callback_max_attempts: int
    total: int = 0
    counts: dict[JobStatus, int] = field(default_factory=lambda: dict.fromkeys(JobStatus, 0))
    finished_at: int | None = None
    round: int = 1
    callback_job: str = ""

    def record(self) -> GroupRecord:
        return GroupRecord(
            self.id,
            self.total,
            dict(self.counts),
            self.created_at,
            self.finished_at,
            self.round,
            self.callback_job,
            self.callback_function,
        )


def _insert(index: _Ordered, entry: tuple[int, str]) -> None:
    bisect.insort(index, entry)


def _remove(index: _Ordered, entry: tuple[int, str]) -> None:
    at = bisect.bisect_left(index, entry)
    if at < len(index) and index[at] == entry:
        del index[at]


class JobTable:
    """One job queue's records and indexes. Not locked: the store's lock guards it."""

    def __init__(self) -> None:
        self.jobs: dict[str, _Job] = {}
        self.groups: dict[str, _Group] = {}
        self.counts: dict[JobStatus, int] = dict.fromkeys(JobStatus, 0)
        self.by_created: _Ordered = []
        self.by_status: dict[JobStatus, _Ordered] = {s: [] for s in JobStatus}
        self.by_group: dict[str, _Ordered] = {}
        self.finished_loose: _Ordered = []  # finished jobs that are no group's members
        self.finished_groups: _Ordered = []
        self.callbacks: list[NewJob] = []  # callback jobs of groups a step finished, to enqueue

    # ------------------------------------------------------------------ creating

    def create_group(self, group: NewGroup, now_ms: int) -> bool:
        if group.id in self.groups:
            return False
        self.groups[group.id] = _Group(
            group.id, now_ms, group.callback, group.callback_function, group.callback_max_attempts
        )
        self.by_group[group.id] = []
        return True

    def create(self, new: NewJob, now_ms: int) -> bool:
        """transition: submit. False when the id exists (left as it is)."""
        if new.id in self.jobs:
            return False
        job = _Job(
            new.id,
            new.function,
            JobStatus.PENDING,
            new.lane,
            new.max_attempts,
            new.steps,
            new.group,
            new.payload,
            now_ms,
        )
        self.jobs[new.id] = job
        entry = (now_ms, new.id)
        _insert(self.by_created, entry)
        _insert(self.by_status[JobStatus.PENDING], entry)
        self.counts[JobStatus.PENDING] += 1
        if new.group:
            group = self.groups[new.group]
            group.total += 1
            group.counts[JobStatus.PENDING] += 1
            _insert(self.by_group[new.group], entry)
        return True

    def finish_if_empty(self, group_id: str, now_ms: int) -> None:
        """An empty group is finished at once (its callback queued)."""
        group = self.groups[group_id]
        if group.total == 0:
            self._maybe_finish(group, now_ms)

    # ------------------------------------------------------------------ moving

    def move(self, job: _Job, status: JobStatus, now_ms: int) -> None:
        """Move ``job`` to ``status``: indexes, counts and its group's counters, and (when the
        move ends its group's round) the group's finish and callback."""
        old = job.status
        if old in FINISHED and not job.group:
            _remove(self.finished_loose, (job.finished_at or 0, job.id))
        if old != status:
            _remove(self.by_status[old], (job.created_at, job.id))
            _insert(self.by_status[status], (job.created_at, job.id))
            self.counts[old] -= 1
            self.counts[status] += 1
        job.status = status
        if status in FINISHED:
            job.finished_at = now_ms
            if not job.group:
                _insert(self.finished_loose, (now_ms, job.id))
        else:
            job.finished_at = None
        if not job.group:
            return
        group = self.groups[job.group]
        group.counts[old] -= 1
        group.counts[status] += 1
        if status in FINISHED:
            self._maybe_finish(group, now_ms)
        elif group.finished_at is not None:  # retry_jobs reopened a finished group
            _remove(self.finished_groups, (group.finished_at, group.id))
            group.finished_at = None
            group.round += 1

    def _maybe_finish(self, group: _Group, now_ms: int) -> None:
        if group.finished_at is not None:
            return
        if group.counts[JobStatus.PENDING] or group.counts[JobStatus.RUNNING]:
            return
        group.finished_at = now_ms
        _insert(self.finished_groups, (now_ms, group.id))
        if group.callback:
            job_id = callback_job_id(group.id, group.round)
            group.callback_job = job_id
            self.callbacks.append(
                NewJob(
                    job_id,
                    group.callback_function,
                    group.callback,
                    now_ms,
                    Lane.NORMAL,
                    group.callback_max_attempts,
                )
            )

    # ------------------------------------------------------------------ reading

    def page(self, status: JobStatus | None, group: str | None, limit: int, cursor: str | None) -> JobPage:
        """Newest first by (created_at, id), from the narrowest index that serves the query."""
        if group is not None:
            index = self.by_group.get(group, [])
        elif status is not None:
            index = self.by_status[status]
        else:
            index = self.by_created
        end = len(index)
        if cursor is not None:
            end = bisect.bisect_left(index, _read_cursor(cursor, status, group))
        found: list[JobRecord] = []
        at = end
        while at > 0 and len(found) < limit:
            at -= 1
            job = self.jobs[index[at][1]]
            if status is None or job.status == status:
                found.append(job.record())
        more = len(found) == limit and any(
            status is None or self.jobs[index[i][1]].status == status for i in range(at - 1, -1, -1)
        )
        last = found[-1] if found else None
        next_cursor = _write_cursor(status, group, last.created_at, last.id) if more and last else None
        return JobPage(found, next_cursor)

    # ------------------------------------------------------------------ cleaning up

    def expired(self, before_ms: int, limit: int) -> list[_Job]:
        """Finished loose jobs and whole finished groups (members and finished callback
        jobs) that finished before ``before_ms``, oldest first, up to ``limit`` records."""
        doomed: list[_Job] = []
        loose = iter(list(self.finished_loose))
        groups = iter(list(self.finished_groups))
        next_loose, next_group = next(loose, None), next(groups, None)
        while len(doomed) < limit:
            candidates = [c for c in (next_loose, next_group) if c is not None and c[0] < before_ms]
            if not candidates:
                break
            if next_loose in candidates and (next_group not in candidates or next_loose <= next_group):
                assert next_loose is not None
                doomed.append(self.jobs[next_loose[1]])
                next_loose = next(loose, None)
                continue
            assert next_group is not None
            group = self.groups[next_group[1]]
            members = [self.jobs[i] for _, i in self.by_group[group.id]]
            if doomed and len(doomed) + len(members) > limit:
                break  # a group goes whole: leave it to the next call
            doomed.extend(members)
            self.drop_group(group)
            next_group = next(groups, None)
        return doomed

    def drop_group(self, group: _Group) -> None:
        _remove(self.finished_groups, (group.finished_at or 0, group.id))
        del self.groups[group.id]
        del self.by_group[group.id]
        for round_ in range(1, group.round + 1):
            callback = self.jobs.get(callback_job_id(group.id, round_))
            if callback is not None and callback.status in FINISHED:
                self.delete(callback)

    def delete(self, job: _Job) -> None:
        entry = (job.created_at, job.id)
        _remove(self.by_created, entry)
        _remove(self.by_status[job.status], entry)
        if not job.group:
            _remove(self.finished_loose, (job.finished_at or 0, job.id))
        self.counts[job.status] -= 1
        del self.jobs[job.id]


def _write_cursor(status: JobStatus | None, group: str | None, created_at: int, job_id: str) -> str:
    raw = orjson.dumps([status.value if status else None, group, created_at, job_id])
    return base64.urlsafe_b64encode(raw).decode()


def _read_cursor(cursor: str, status: JobStatus | None, group: str | None) -> tuple[int, str]:
    try:
        kind, of_group, created_at, job_id = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise ConfigError(f"not a list_jobs cursor: {cursor[:40]!r}") from None
    if kind != (status.value if status else None) or of_group != group:
        raise ConfigError("this cursor belongs to a list_jobs query with another status or group")
    if not isinstance(created_at, int) or not isinstance(job_id, str):
        raise ConfigError(f"not a list_jobs cursor: {cursor[:40]!r}")
    return created_at, job_id
