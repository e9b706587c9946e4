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
from redbatch.handlers import Attempt, Failure, HandlerRun, SyncCall, corrupt, handler_failure, run_call
from redbatch.jobrecords import JobOutcome, JobStatus, Lane, OutcomeKind, lane_score
from redbatch.jobs import Jobs
from redbatch.jobtypes import GroupDone, GroupProgress, JobContext, Payload
from redbatch.stores.base import JobStore, LoopCalls
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

    def sync_call(self, claimed: ClaimedBatch) -> SyncCall | None:
        try:
            payload = Payload.decode(claimed.payloads[0])
        except ValueError:
            return None  # ``attempt`` says why
        registered = self.jobs.functions.get(payload.fn)
        if registered is None or registered[1]:
            return None  # unknown here (``attempt`` fails it), or async
        ctx = self._context(claimed, payload)
        timeout = self._timeout(payload)
        return SyncCall(
            functools.partial(self._args, payload, ctx), registered[0], timeout,
            "" if timeout is None else self._label(claimed, payload),
            functools.partial(self._judge, claimed, payload, ctx, timeout),
        )  # fmt: skip

    async def attempt(self, claimed: ClaimedBatch, pool: DaemonThreadPool) -> Attempt:
        try:
            payload = Payload.decode(claimed.payloads[0])
        except ValueError as exc:
            return corrupt(exc)
        registered = self.jobs.functions.get(payload.fn)
        if registered is None:  # another worker may know it: an ordinary failed attempt
            known = ", ".join(sorted(self.jobs.functions)) or "none"
            error = (
                f"unknown job function {payload.fn!r}: this worker's job queue {self.jobs.name!r} has {known}"
            )
            return Attempt(None, Failure(error), None)
        fn, is_async = registered
        if not is_async:  # ``sync_call`` runs those, on a handler thread
            raise AssertionError(f"a sync job function on the loop: {payload.fn!r}")
        ctx = self._context(claimed, payload)
        if payload.callback_of is None:
            args = self._args(payload, ctx)
        else:  # a callback reads its group: a store call, on a thread
            args = await pool.call(self._args, payload, ctx)
        timeout = self._timeout(payload)
        run, value = await run_call(fn, args, timeout)
        return self._judge(claimed, payload, ctx, timeout, run, value)

    def _context(self, claimed: ClaimedBatch, payload: Payload) -> JobContext:
        return JobContext(self._store, self.spec, claimed.lease, claimed.attempt, payload.step, payload.group)

    def _timeout(self, payload: Payload) -> float | None:
        return payload.timeout if payload.timeout is not None else self.jobs.timeout

    def _label(self, claimed: ClaimedBatch, payload: Payload) -> str:
        return f"job {claimed.lease.key} ({payload.fn}) of {self.jobs.name}"

    def _args(self, payload: Payload, ctx: JobContext) -> tuple[Any, JobContext]:
        """The function's arguments; a group's callback gets the group's outcome (a store
        read: on a handler thread)."""
        if payload.callback_of is not None:
            return self._group_done(payload.callback_of), ctx
        return payload.params, ctx

    def _judge(
        self, claimed: ClaimedBatch, payload: Payload, ctx: JobContext, timeout: float | None,
        run: HandlerRun, value: Any,
    ) -> Attempt:  # fmt: skip
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

    async def finish_async(self, calls: LoopCalls, dones: Sequence[Any], now_ms: int) -> list[bool]:
        return await calls.finish_jobs_async(self.spec, dones, now_ms)

    def housekeeping(self, now_ms: int) -> None:
        before = now_ms - self.jobs.retention_ms
        while self._store.cleanup_jobs(self.spec, before, 1000) > 0:
            pass
