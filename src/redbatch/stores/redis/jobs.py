"""The part of the Redis store that keeps job queues' records (``stores.base.JobStore``).

A job queue (``redbatch.jobrecords``) is a batcher whose keys are job ids; beside their batch
state, the scripts keep a record per job and per group, moved by lib.lua's ``job_moves`` in
the same script as the engine transition that moves the job (claim.lua and fail.lua do it
for ``claim_due`` and ``fail`` on a job queue; submit.lua, finish.lua, cancel.lua,
retry_jobs.lua, progress.lua and cleanup.lua for the job operations here). The key layout
is drawn in lib.lua.

A job queue always has ONE partition, whatever the store's ``partitions``: a group's
record and the batch state of all its members sit under one hash tag, so that the step
that finishes a group's last member (a claim, a fail, a finish or a cancel) also updates
the group and submits its callback in one script, in one Redis Cluster slot. Spreading a
queue's jobs over partitions would need a group's members to be in one partition anyway;
spread the load over several queues instead.

Queries are reads of sorted sets: ``list_jobs`` pages an index whose members are
``created_ms:id`` (created_ms zero-padded, every score 0, so that lexical order is the order
of (created_at, id)) with ``ZREVRANGEBYLEX``: a page costs O(log n + page), and its cursor is
the last member read, so a page resumes exactly after it, ties within a millisecond
included. Scoring by created_at instead would leave ties within a millisecond (a whole
group submitted at once) to be paged by rank, which shifts as jobs change status. Counts
are ZCARDs.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from redbatch.errors import ConfigError, NotFound, RedbatchError
from redbatch.jobrecords import (
    GroupRecord,
    JobOutcome,
    JobPage,
    JobRecord,
    JobStatus,
    Lane,
    NewGroup,
    NewJob,
    OutcomeKind,
    is_jobs,
)
from redbatch.stores.redis.core import Partition, RedisCore
from redbatch.stores.redis.errors import unavailable, unavailable_async
from redbatch.types import Lease, QueueSpec

_CLEANUP_CHUNK = 500  # job records deleted per script call: Redis serves other clients between
_ID_AT = 16  # an index member is 15 digits of created_ms, ':', then the id


class Jobs(RedisCore):
    """The ``JobStore`` operations of ``RedisStore``."""

    def _partitions(self, name: str) -> list[Partition]:
        """A job queue's one partition (see the module docstring); a batcher's as configured."""
        if not is_jobs(name):
            return super()._partitions(name)
        parts = self._parts.get(name)
        if parts is None:
            parts = self._parts[name] = [Partition(self.prefix, name, 0)]
        return parts

    def _job_partition(self, spec: QueueSpec) -> Partition:
        if not is_jobs(spec.name):
            raise ConfigError(f"{spec.name!r} is a batcher, not a job queue: it keeps no job records")
        return self._partitions(spec.name)[0]

    # ------------------------------------------------------------------ steps

    @unavailable
    def submit_jobs(
        self, spec: QueueSpec, jobs: Sequence[NewJob], group: NewGroup | None, now_ms: int
    ) -> list[bool]:
        part = self._job_partition(spec)
        _check_membership(jobs, group)
        args: list[Any] = [part.base, now_ms, self._channel(spec.name)]
        if group is None:
            args += ("", "", "", 0)
            routing = part.base + "jx:all"
        else:
            args += (group.id, group.callback, group.callback_function, group.callback_max_attempts)
            routing = f"{part.base}jg:{group.id}"
        for job in jobs:
            args += (job.id, job.function, job.payload, job.score_ms, int(job.lane))
            args += (job.max_attempts, job.steps)
        created = self._eval("submit", [part.due, part.age, part.stats, routing], args)
        return [bool(made) for made in created]

    @unavailable
    def finish_jobs(self, spec: QueueSpec, outcomes: Sequence[JobOutcome], now_ms: int) -> list[bool]:
        if not outcomes:
            return []
        return [bool(ok) for ok in self._eval("finish", *self._finish_call(spec, outcomes, now_ms))]

    @unavailable_async
    async def finish_jobs_async(
        self, spec: QueueSpec, outcomes: Sequence[JobOutcome], now_ms: int
    ) -> list[bool]:
        """``finish_jobs`` on this event loop's asyncio client (``RedisStore.calls_on_loop``)."""
        if not outcomes:
            return []
        client = await self._loop_client()
        held = await self._eval_async(client, "finish", *self._finish_call(spec, outcomes, now_ms))
        return [bool(ok) for ok in held]

    def _finish_call(
        self, spec: QueueSpec, outcomes: Sequence[JobOutcome], now_ms: int
    ) -> tuple[list[str], list[Any]]:
        part = self._job_partition(spec)
        args: list[Any] = [part.base, now_ms, *self._rule_args(spec), self._channel(spec.name)]
        for outcome in outcomes:
            lease = outcome.lease
            args += (lease.key, lease.batch_id, lease.fencing_token, outcome.kind.value, outcome.result)
            if outcome.kind is OutcomeKind.ADVANCE:
                args += (outcome.next_payload, outcome.next_score_ms, outcome.next_function)
            else:
                args += ("", "", "")
        return [part.due, part.stats, part.age], args

    @unavailable
    def job_progress(self, spec: QueueSpec, lease: Lease, fraction: float | None, message: str) -> bool:
        part = self._job_partition(spec)
        if fraction is not None and not (math.isfinite(fraction) and 0.0 <= fraction <= 1.0):
            raise ConfigError(f"progress must be a fraction from 0 to 1, not {fraction!r}")
        shown = "" if fraction is None else repr(float(fraction))
        args = [part.base, lease.key, lease.batch_id, lease.fencing_token, shown, message]
        return bool(self._eval("progress", [f"{part.base}j:{lease.key}"], args))

    @unavailable
    def cancel_job(self, spec: QueueSpec, job_id: str, now_ms: int) -> JobStatus:
        part = self._job_partition(spec)
        args = [part.base, now_ms, self._channel(spec.name), job_id]
        status = self._eval("cancel", [part.due, part.age, part.stats, f"{part.base}j:{job_id}"], args)
        if not status:
            raise NotFound(f"job queue {spec.name!r} has no job {job_id!r}")
        return JobStatus(status.decode())

    @unavailable
    def retry_jobs(
        self, spec: QueueSpec, job_ids: Sequence[str], lane: Lane | None, score_ms: int, now_ms: int
    ) -> list[str]:
        if isinstance(job_ids, str):
            raise ConfigError("retry_jobs takes a list of job ids, not one string")
        part = self._job_partition(spec)
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return []
        head = [part.base, now_ms, self._channel(spec.name), "" if lane is None else int(lane), score_ms]
        retried = self._eval("retry_jobs", [part.due, part.age, part.stats, part.dead], [*head, *ids])
        return [job_id.decode() for job_id in retried]

    @unavailable
    def cleanup_jobs(self, spec: QueueSpec, finished_before_ms: int, limit: int) -> int:
        part = self._job_partition(spec)
        keys = [part.base + "jf", part.base + "jgf", part.dead]
        deleted = 0
        while deleted < limit:
            args = [part.base, finished_before_ms, limit - deleted, int(deleted == 0), _CLEANUP_CHUNK]
            count, more = self._eval("cleanup", keys, args)
            deleted += int(count)
            if not more or not count:  # done, or a group larger than what is left of the limit
                break
        return deleted

    # ------------------------------------------------------------------ queries

    @unavailable
    def get_jobs(self, spec: QueueSpec, job_ids: Sequence[str]) -> list[JobRecord | None]:
        if isinstance(job_ids, str):
            raise ConfigError("get_jobs takes a list of job ids, not one string")
        part = self._job_partition(spec)
        if not job_ids:
            return []
        pipe = self._pipeline()
        for job_id in job_ids:
            pipe.hgetall(f"{part.base}j:{job_id}")
        replies = self._execute(pipe)
        return [_job_record(i, raw) if raw else None for i, raw in zip(job_ids, replies, strict=True)]

    @unavailable
    def list_jobs(
        self, spec: QueueSpec, status: JobStatus | None, group: str | None, limit: int, cursor: str | None
    ) -> JobPage:
        part = self._job_partition(spec)
        if limit < 1:
            raise ConfigError(f"limit must be at least 1, not {limit!r}")
        query = [JobStatus(status).value if status is not None else "", group or ""]
        after = "+" if cursor is None else "(" + _read_cursor(cursor, query)
        if group:
            index = f"{part.base}jgx:{query[0]}:{group}" if status is not None else f"{part.base}jgm:{group}"
        else:
            index = f"{part.base}jx:{query[0] or 'all'}"
        rows = self._eval("jobs_page", [index], [part.base, after, limit + 1])
        more = len(rows) > limit
        rows = rows[:limit]
        jobs = []
        for member, flat in rows:
            if flat:  # a record deleted by hand leaves its index entries: they are skipped
                raw = {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}
                jobs.append(_job_record(member[_ID_AT:].decode(), raw))
        next_cursor = _write_cursor(query, rows[-1][0].decode()) if more and rows else None
        return JobPage(jobs, next_cursor)

    @unavailable
    def job_counts(self, spec: QueueSpec) -> dict[JobStatus, int]:
        part = self._job_partition(spec)
        pipe = self._pipeline()
        for status in JobStatus:
            pipe.zcard(f"{part.base}jx:{status.value}")
        return dict(zip(JobStatus, (int(n) for n in self._execute(pipe)), strict=True))

    @unavailable
    def get_group(self, spec: QueueSpec, group_id: str) -> GroupRecord | None:
        part = self._job_partition(spec)
        raw = self.client.hgetall(f"{part.base}jg:{group_id}")
        return _group_record(group_id, raw) if raw else None


# ---------------------------------------------------------------------- replies


def _check_membership(jobs: Sequence[NewJob], group: NewGroup | None) -> None:
    """Each job's ``group`` must name the group submitted with it ('' without one): a job
    counted in no group's record, or in one it was not submitted with, would break counts."""
    expected = "" if group is None else group.id
    if group is not None and not group.id:
        raise ConfigError("a group's id must not be empty")
    for job in jobs:
        if job.group != expected:
            where = f"group {expected!r}" if expected else "no group"
            raise ConfigError(f"job {job.id!r} names group {job.group!r} but is submitted with {where}")


def _optional_int(value: bytes | None) -> int | None:
    return int(value) if value else None


def _job_record(job_id: str, raw: Mapping[bytes, bytes]) -> JobRecord:
    """A job's record hash as a ``JobRecord`` (see lib.lua's key map for its fields)."""
    try:
        progress = raw.get(b"progress")
        result = raw.get(b"result")
        return JobRecord(
            id=job_id,
            function=raw[b"function"].decode(),
            status=JobStatus(raw[b"status"].decode()),
            lane=Lane(int(raw[b"lane"])),
            attempt=int(raw[b"attempt"]),
            max_attempts=int(raw[b"max_attempts"]),
            step=int(raw[b"step"]),
            steps=int(raw[b"steps"]),
            progress=float(progress) if progress else None,
            message=raw.get(b"message", b"").decode(errors="replace"),
            result=result or None,
            error=raw.get(b"error", b"").decode(errors="replace"),
            created_at=int(raw[b"created"]),
            started_at=_optional_int(raw.get(b"started")),
            finished_at=_optional_int(raw.get(b"finished")),
            group=raw.get(b"group", b"").decode(),
            cancel_requested=raw.get(b"cancel") == b"1",
            payload=raw[b"payload"],
        )
    except (KeyError, ValueError) as exc:
        raise _unreadable("job", job_id, exc) from None


def _group_record(group_id: str, raw: Mapping[bytes, bytes]) -> GroupRecord:
    try:
        return GroupRecord(
            id=group_id,
            total=int(raw[b"total"]),
            counts={status: int(raw.get(status.value.encode(), 0)) for status in JobStatus},
            created_at=int(raw[b"created"]),
            finished_at=_optional_int(raw.get(b"finished")),
            round=int(raw[b"round"]),
            callback_job=raw.get(b"callback_job", b"").decode(),
            callback_function=raw.get(b"callback_function", b"").decode(),
        )
    except (KeyError, ValueError) as exc:
        raise _unreadable("group", group_id, exc) from None


def _unreadable(kind: str, name: str, exc: Exception) -> RedbatchError:
    return RedbatchError(f"the record of {kind} {name!r} is unreadable ({exc!r}): edited by hand?")


def _write_cursor(query: list[str], member: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([*query, member])).decode()


def _read_cursor(cursor: str, query: list[str]) -> str:
    """The index member a cursor resumes after; ConfigError for a cursor of another query."""
    try:
        status, group, member = orjson.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not (isinstance(member, str) and len(member) > _ID_AT and member[_ID_AT - 1] == ":"):
            raise ValueError(member)
    except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError, UnicodeError):
        raise ConfigError(f"not a cursor of list_jobs: {cursor[:40]!r}") from None
    if [status, group] != query:
        raise ConfigError("this cursor belongs to another query (another status or group)")
    return member
