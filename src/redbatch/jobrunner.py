"""Running jobs on a worker: a ``Jobs`` queue as the worker serves it (``handlers.Served``).

The worker claims, heartbeats, retries and dead-letters a job exactly as it does a batch;
this module only runs one attempt (decode the payload, call the function with its params
and a ``JobContext``, judge the result) and writes a success through ``finish_jobs``: the
job succeeded, was cancelled, or (a chain) advances to its next step in the same store step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import orjson

from redbatch.checks import encode_item
from redbatch.daemon_pool import DaemonThreadPool
from redbatch.errors import InvalidItem, JobCancelled
from redbatch.handlers import Attempt, Failure, handler_failure, run_call
from redbatch.jobrecords import JobOutcome, JobStatus, Lane, OutcomeKind, lane_score
from redbatch.jobs import Jobs
from redbatch.jobtypes import GroupDone, GroupProgress, JobContext, Payload
from redbatch.stores.base import JobStore
from redbatch.types import ClaimedBatch, QueueSpec

FAILED_PAGE = 500


class JobQueue:
    """``jobs`` as a worker serves it."""

    def __init__(self, jobs: Jobs) -> None:
        self.source = self.jobs = jobs
        self.store = jobs.store
        self.name = jobs.spec.name

    @property
    def spec(self) -> QueueSpec:
        return self.jobs.spec

    @property
    def configured(self) -> QueueSpec:
        return self.jobs.configured

    @functools.cached_property
    def _store(self) -> JobStore:
        # Checked once: isinstance against a runtime-checkable Protocol walks its members,
        # a cost that showed per job when jobs are many and quick.
        assert isinstance(self.store, JobStore)
        return self.store

    def adopt_rules(self, rules: QueueSpec) -> None:
        self.jobs.adopt_rules(rules)

    async def attempt(self, claimed: ClaimedBatch, pool: DaemonThreadPool) -> Attempt:
        try:
            payload = Payload.decode(claimed.payloads[0])
        except ValueError as exc:  # retrying cannot repair it: straight to dead letters
            return Attempt(None, Failure(f"corrupt data: {exc}", retryable=False), None)
        registered = self.jobs.functions.get(payload.fn)
        if registered is None:  # another worker may know it: an ordinary failed attempt
            known = ", ".join(sorted(self.jobs.functions)) or "none"
            error = (
                f"unknown job function {payload.fn!r}: this worker's job queue {self.jobs.name!r} has {known}"
            )
            return Attempt(None, Failure(error), None)
        fn, is_async = registered
        ctx = JobContext(self._store, self.spec, claimed.lease, claimed.attempt, payload.step, payload.group)
        params = payload.params
        if payload.callback_of is not None:
            params = await pool.call(self._group_done, payload.callback_of)
        timeout = payload.timeout if payload.timeout is not None else self.jobs.timeout
        label = f"job {claimed.lease.key} ({payload.fn}) of {self.jobs.name}"
        run, value = await run_call(fn, (params, ctx), is_async, timeout, pool, label)
        if run.outcome == "timed_out":
            return Attempt(
                None, Failure(f"job function {payload.fn!r} timed out after {timeout} seconds"), run
            )
        if isinstance(run.error, JobCancelled):
            return Attempt(JobOutcome(claimed.lease, OutcomeKind.CANCELLED), None, run)
        if run.error is not None:
            return Attempt(None, handler_failure(run.error), run)
        try:
            result = encode_item(value)
        except InvalidItem as exc:
            return Attempt(None, Failure(f"job function {payload.fn!r} returned a value that {exc}"), run)
        return Attempt(self._outcome(claimed, payload, result, cancelled=ctx.cancel_seen), None, run)

    def _outcome(
        self, claimed: ClaimedBatch, payload: Payload, result: bytes, *, cancelled: bool
    ) -> JobOutcome:
        if cancelled:  # it saw the request and returned: stopped, not succeeded
            return JobOutcome(claimed.lease, OutcomeKind.CANCELLED, result)
        if not payload.rest:
            return JobOutcome(claimed.lease, OutcomeKind.SUCCEEDED, result)
        following = Payload(
            payload.rest[0],
            orjson.loads(result),
            payload.rest[1:],
            payload.lane,
            payload.timeout,
            payload.max_attempts,
            None,
            payload.step + 1,
            payload.group,
        )
        encoded = following.encode()
        score = lane_score(Lane(payload.lane), self.jobs.clock(), self.jobs.lane_step_ms)
        return JobOutcome(claimed.lease, OutcomeKind.ADVANCE, result, encoded, score, following.fn)

    def _group_done(self, group_id: str) -> GroupDone:
        """What a group's callback is called with: its counters and its failed members."""
        record = self._store.get_group(self.spec, group_id)
        if record is None:
            raise LookupError(f"the group {group_id!r} of this callback is gone (cleaned up)")
        failed: dict[str, str] = {}
        cursor = None
        while True:
            page = self._store.list_jobs(self.spec, JobStatus.FAILED, group_id, FAILED_PAGE, cursor)
            failed.update((job.id, job.error) for job in page.jobs)
            if (cursor := page.cursor) is None:
                return GroupDone(GroupProgress.from_record(record), failed)

    def retry_at(self, claimed: ClaimedBatch, now_ms: int) -> int | None:
        try:
            max_attempts = Payload.decode(claimed.payloads[0]).max_attempts
        except ValueError:
            max_attempts = self.spec.max_attempts
        return self.jobs.retry_at(claimed.attempt, max_attempts, now_ms)

    def finish(self, dones: Sequence[Any], now_ms: int) -> list[bool]:
        return self._store.finish_jobs(self.spec, dones, now_ms)

    def housekeeping(self, now_ms: int) -> None:
        before = now_ms - self.jobs.retention_ms
        while self._store.cleanup_jobs(self.spec, before, 1000) > 0:
            pass
