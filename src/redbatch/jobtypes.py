"""The public values of job tracking (``Job``, ``GroupProgress``, ``GroupDone``, ``JobPage``,
``JobContext``) and the payload: the JSON a job's entry holds, the call a worker makes.

A payload is a JSON object, never pickle::

    {"fn": "chunk",            the function to call
     "params": {...},          its params (a chain's next step gets the last step's result)
     "rest": ["entities"],     a chain's functions still to run after this one
     "lane": 1,                the job's lane (a chain's next step is scored in it)
     "timeout": 30.0,          seconds (null: the queue's)
     "max_attempts": 3,
     "step": 1, "group": "g",  the chain step it runs (0-based) and its group ('' none)
     "callback_of": "g"}       only in a group's callback job: the group it reports on
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from redbatch.jobrecords import GroupRecord, JobRecord, JobStatus
from redbatch.stores.base import JobStore
from redbatch.types import Lease, QueueSpec

CANCEL_CHECK_INTERVAL = 1.0
"""Seconds between the reads of a job's record by ``JobContext.cancelled``."""


def _is_str(value: object) -> bool:
    return type(value) is str


@dataclass(frozen=True, slots=True)
class Payload:
    """A decoded payload (see the module docstring)."""

    fn: str
    params: Any
    rest: tuple[str, ...] = ()
    lane: int = 1
    timeout: float | None = None
    max_attempts: int = 3
    callback_of: str | None = None
    step: int = 0
    group: str = ""

    def encode(self) -> bytes:
        body: dict[str, Any] = {"fn": self.fn, "params": self.params, "rest": list(self.rest)}
        body |= {"lane": self.lane, "timeout": self.timeout, "max_attempts": self.max_attempts}
        body |= {"step": self.step, "group": self.group}
        if self.callback_of is not None:
            body["callback_of"] = self.callback_of
        return orjson.dumps(body)

    @classmethod
    def decode(cls, raw: bytes) -> Payload:
        """ValueError when ``raw`` is not a payload (data corrupted or written by hand)."""
        body = orjson.loads(raw)
        if not isinstance(body, dict) or not isinstance(body.get("fn"), str):
            raise ValueError("a job payload is a JSON object with a function name 'fn'")
        # Checked without generators: a worker decodes one payload per job it runs.
        rest, timeout, attempts = body.get("rest", []), body.get("timeout"), body.get("max_attempts", 3)
        if type(rest) is not list or (rest and not all(map(_is_str, rest))):
            raise ValueError("a job payload's 'rest' is a list of function names")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)):
            raise ValueError("a job payload's 'timeout' is a number of seconds or null")
        if type(attempts) is not int or attempts < 1:
            raise ValueError("a job payload's 'max_attempts' is an integer >= 1")
        callback_of, lane, step, group = (
            body.get("callback_of"),
            body.get("lane"),
            body.get("step"),
            body.get("group"),
        )
        if type(lane or 1) is not int or type(step or 0) is not int:
            raise ValueError("a job payload's 'lane' and 'step' are integers")
        return cls(
            body["fn"],
            body.get("params"),
            tuple(rest),
            lane or 1,
            timeout,
            attempts,
            callback_of if isinstance(callback_of, str) else None,
            step or 0,
            group if isinstance(group, str) else "",
        )


def _seconds(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


@dataclass(frozen=True, slots=True)
class Job:
    """A job as ``Jobs.get`` reads it. Times are Unix seconds.

    Attributes:
        id: The job's id.
        function: The function of its current step (for a chain, the step running or next).
        status: ``"pending"``, ``"running"``, ``"succeeded"``, ``"failed"`` or ``"cancelled"``.
        lane: ``"high"``, ``"normal"`` or ``"low"``.
        attempt: The current step's attempt: 0 before its first run.
        max_attempts: Attempts each step gets (errors, timeouts and lost workers count).
        step: The 0-based index of the current step of a chain (0 for a single job).
        steps: How many steps the job has (1 for a single job).
        progress: The fraction the function last reported (0 to 1), 1.0 once succeeded,
            None before any report.
        message: The message reported with it ('' none).
        result: The last finished step's result, decoded from JSON (None before one).
        error: The last failed attempt's error ('' none).
        created_at: When it was submitted.
        started_at: When its current attempt started (None before one).
        finished_at: When it finished (None while pending or running).
        group: The group it is a member of ('' none).
        cancel_requested: ``Jobs.cancel`` asked it to stop while it ran.
    """

    id: str
    function: str
    status: str
    lane: str
    attempt: int
    max_attempts: int
    step: int
    steps: int
    progress: float | None
    message: str
    result: Any
    error: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    group: str
    cancel_requested: bool

    @property
    def finished(self) -> bool:
        """True once succeeded, failed or cancelled."""
        return self.status in ("succeeded", "failed", "cancelled")

    @classmethod
    def from_record(cls, record: JobRecord) -> Job:
        result = orjson.loads(record.result) if record.result else None
        return cls(
            record.id,
            record.function,
            record.status.value,
            record.lane.name.lower(),
            record.attempt,
            record.max_attempts,
            record.step,
            record.steps,
            record.progress,
            record.message,
            result,
            record.error,
            record.created_at / 1000,
            _seconds(record.started_at),
            _seconds(record.finished_at),
            record.group,
            record.cancel_requested,
        )


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of ``Jobs.list``, newest first.

    Attributes:
        jobs: The jobs of this page.
        cursor: Pass it back as ``Jobs.list(cursor=...)`` for the next page; None: no more.
    """

    jobs: list[Job]
    cursor: str | None


@dataclass(frozen=True, slots=True)
class GroupProgress:
    """A group's exact counters: each member counted once, in its current status.

    Attributes:
        id: The group's id.
        total: Its members.
        pending: Members waiting to run (or between a chain's steps, or to be retried).
        running: Members running now.
        succeeded: Members that succeeded.
        failed: Members that used up their attempts.
        cancelled: Members cancelled.
        percent: Finished members (succeeded, failed, cancelled) as a percentage of
            ``total``; 100.0 for an empty group.
        finished_at: When its last member finished (Unix seconds); None while any is open.
        round: 1, plus one for each ``retry_failed`` that reopened the finished group.
        callback_job: The id of the callback job of the last finished round ('' none).
    """

    id: str
    total: int
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    percent: float
    finished_at: float | None
    round: int
    callback_job: str

    @classmethod
    def from_record(cls, record: GroupRecord) -> GroupProgress:
        c = record.counts
        done = c[JobStatus.SUCCEEDED] + c[JobStatus.FAILED] + c[JobStatus.CANCELLED]
        percent = 100.0 if record.total == 0 else 100.0 * done / record.total
        return cls(
            record.id,
            record.total,
            c[JobStatus.PENDING],
            c[JobStatus.RUNNING],
            c[JobStatus.SUCCEEDED],
            c[JobStatus.FAILED],
            c[JobStatus.CANCELLED],
            percent,
            _seconds(record.finished_at),
            record.round,
            record.callback_job,
        )


@dataclass(frozen=True, slots=True)
class GroupDone:
    """What a group's callback function is called with (as its ``params``), built when the
    callback job runs.

    Attributes:
        progress: The group's counters as the callback starts.
        failed: The failed members: job id -> its last error.
    """

    progress: GroupProgress
    failed: dict[str, str] = field(default_factory=dict)


class JobContext:
    """What a job function is told about its run, and how it reports back (its second
    argument).

    Attributes:
        job_id: The job's id.
        attempt: This attempt of the current step, from 1.
        step: The 0-based step of a chain (0 for a single job).
        group: The group it is a member of ('' none).
    """

    def __init__(
        self, store: JobStore, spec: QueueSpec, lease: Lease, attempt: int, step: int, group: str
    ) -> None:
        self.job_id = lease.key
        self.attempt = attempt
        self.step = step
        self.group = group
        self._store, self._spec, self._lease = store, spec, lease
        self._lock = threading.Lock()
        self._checked = -CANCEL_CHECK_INTERVAL
        self._cancelled = False

    def progress(self, fraction: float | None, message: str = "") -> bool:
        """Record how far the job is (a fraction from 0 to 1, clamped) and a message.

        A short store write, fenced: it returns False (and records nothing) when this
        worker no longer holds the job, or when the store could not be reached; it never
        raises for that, so a long function need not guard its reports.
        """
        if fraction is not None:
            fraction = min(1.0, max(0.0, float(fraction)))
        try:
            return self._store.job_progress(self._spec, self._lease, fraction, str(message)[:1000])
        except Exception:  # noqa: BLE001 - a lost report is no reason to fail the job
            return False

    @property
    def cancel_seen(self) -> bool:
        """Whether ``cancelled`` has answered True during this attempt."""
        return self._cancelled

    @property
    def cancelled(self) -> bool:
        """Whether ``Jobs.cancel`` asked this job to stop. Reads the job's record at most
        about once a second (cached in between). Stop by returning or raising
        ``JobCancelled``: the job then ends ``cancelled``."""
        with self._lock:
            if not self._cancelled and time.monotonic() - self._checked >= CANCEL_CHECK_INTERVAL:
                self._checked = time.monotonic()
                try:
                    (record,) = self._store.get_jobs(self._spec, [self.job_id])
                except Exception:  # noqa: BLE001 - unknown for now: ask again later
                    return False
                self._cancelled = record is not None and record.cancel_requested
            return self._cancelled
