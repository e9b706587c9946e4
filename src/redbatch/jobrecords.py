"""Job and group records as stores keep them, and the values the job operations take.

A job queue is a batcher of the engine (``redbatch.engine``) whose keys are job ids: each
job is one key holding one item (its *payload*, the call to make), so a job is a one-item
batch and gets the engine's lease, heartbeat, fencing, retry and dead-letter path unchanged.
Its engine name is ``JOBS_PREFIX + name`` (batcher names cannot hold ``:``, so the two never
collide). Beside the batching state, a store keeps a *record* per job and per group, changed
in the same atomic step as the engine transition that moves the job (``JOB_TRANSITIONS``).

The store never reads a payload or a result: they are opaque JSON bytes written by the
front door (``redbatch.jobs``). Times are integer epoch milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum

from redbatch.types import Lease

JOBS_PREFIX = "jobs:"
"""The engine name of job queue ``q`` is ``jobs:q``; ``QueueSpec.name`` starts with it."""


def is_jobs(name: str) -> bool:
    """Whether an engine name is a job queue's (its store operations keep job records)."""
    return name.startswith(JOBS_PREFIX)


class JobStatus(StrEnum):
    PENDING = "pending"  # waiting to run (first time, after a failed attempt, or between steps)
    RUNNING = "running"  # leased to a worker
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # used up its attempts: its batch is a dead letter
    CANCELLED = "cancelled"


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Lane(IntEnum):
    """Priority lanes, as head starts in the one deadline index (``lane_score``): high jobs
    sort first, and a low job overtakes the high ones submitted ``2 * lane_step`` or more
    after it, so none starves."""

    HIGH = 0
    NORMAL = 1
    LOW = 2


def lane_score(lane: Lane, now_ms: int, lane_step_ms: int, not_before_ms: int | None = None) -> int:
    """The deadline-index score of a job entering ``lane`` at ``now_ms``.

    Due now, minus a head start of ``lane_step`` per lane above ``LOW``. A delayed job
    (``not_before_ms`` later than now) is scored at its due time with no head start, so
    that it can never run early.
    """
    if not_before_ms is not None and not_before_ms > now_ms:
        return not_before_ms
    return now_ms - (int(Lane.LOW) - int(lane)) * lane_step_ms


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job to create: its record, and its first entry under key ``id``."""

    id: str
    function: str  # for display and queries: the first step's function name
    payload: bytes  # the entry's item: the call the worker makes (opaque to stores)
    score_ms: int  # its deadline-index score (``lane_score``)
    lane: Lane
    max_attempts: int  # replaces the queue's max_attempts for this job, lapsed leases included
    steps: int = 1  # a chain's length
    group: str = ""  # the group it is a member of ('' none)


@dataclass(frozen=True, slots=True)
class NewGroup:
    """A group to create with its members (``NewJob.group`` is its id)."""

    id: str
    callback: bytes = b""  # the payload of the callback job ('' none); it runs in lane NORMAL
    callback_function: str = ""
    callback_max_attempts: int = 3


class OutcomeKind(StrEnum):
    SUCCEEDED = "succeeded"
    CANCELLED = "cancelled"  # the function saw a cancel request and stopped
    ADVANCE = "advance"  # a chain's step succeeded and another follows


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How a running job ended, for ``finish_jobs`` (the ``ack`` transition for jobs)."""

    lease: Lease
    kind: OutcomeKind
    result: bytes = b""  # JSON; for ADVANCE the finished step's result (kept as ``result``)
    next_payload: bytes = b""  # ADVANCE: the next step's entry
    next_score_ms: int = 0  # ADVANCE: its deadline-index score
    next_function: str = ""  # ADVANCE: the next step's function name (for display)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job as the store keeps it."""

    id: str
    function: str  # the current step's function
    status: JobStatus
    lane: Lane
    attempt: int  # of the current step: 0 before its first claim
    max_attempts: int
    step: int  # 0-based index of the current step
    steps: int
    progress: float | None  # the fraction the function last reported, 0..1
    message: str  # with it ('' none)
    result: bytes | None  # JSON of the last finished step's result
    error: str  # the last failed attempt's error ('' none)
    created_at: int
    started_at: int | None  # the current attempt's claim
    finished_at: int | None
    group: str
    cancel_requested: bool
    payload: bytes  # the current step's entry, as it would be run again by retry_jobs


@dataclass(frozen=True, slots=True)
class GroupRecord:
    """A group's exact counters: every member is counted in exactly one status."""

    id: str
    total: int
    counts: Mapping[JobStatus, int]
    created_at: int
    finished_at: int | None  # when the last member of the current round finished
    round: int  # 1, plus one per retry_jobs that put a finished group's members back
    callback_job: str  # the id of the last callback job started ('' none)
    callback_function: str


@dataclass(frozen=True, slots=True)
class JobPage:
    """One page of ``list_jobs``: newest first; ``cursor`` continues it (None: no more)."""

    jobs: list[JobRecord]
    cursor: str | None


def callback_job_id(group_id: str, round_: int) -> str:
    """The id of a group's callback job for a round: stable, so it is created once."""
    return f"{group_id}:callback:{round_}"
