"""The HTTP bodies: pydantic models at the service's edge, turned into library calls by the
routes. Inside, redbatch's own frozen values (``BatcherStats``, ``DeadLetter``, ...) are used;
these models only describe what crosses the wire, so the OpenAPI schema says it exactly.

The limits written here (a key of 1 to 512 characters, a name's pattern) are the library's,
restated so the schema carries them; the library checks them again all the same.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from redbatch.checks import MAX_DURATION, MAX_KEY_LENGTH
from redbatch.jobs import MAX_JOB_ID
from redbatch.jobtypes import GroupProgress, Job
from redbatch.types import BatcherStats, CorruptItem, DeadLetter, PendingItem

Key = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="What items are grouped by (a chat, an agent): 1 to 512 characters.",
        examples=["agent-123"],
    ),
]
JsonValue = Annotated[
    Any,
    Field(
        description="Any JSON value (NaN and infinities are refused).",
        examples=[{"reply": "thanks"}],
    ),
]


class _Body(BaseModel):
    """A request body: unknown fields are refused, so a typo is a 422, not ignored."""

    model_config = ConfigDict(extra="forbid")


class ErrorDetail(BaseModel):
    type: str = Field(description="The error's class: NotFound, InvalidItem, ValidationError, ...")
    message: str
    details: list[dict[str, Any]] | None = Field(
        default=None, description="For a ValidationError, each problem: where (loc), what (msg), its type."
    )


class ErrorBody(BaseModel):
    """Every 4xx and 5xx the service sends has this body."""

    error: ErrorDetail


# ---------------------------------------------------------------- adding items


class NewItem(_Body):
    key: Key
    item: JsonValue


class NewItems(_Body):
    items: list[NewItem] = Field(description="(key, item) pairs, stored all or none, in one round trip.")


class Added(BaseModel):
    added: int = Field(description="How many items were stored.")


# ---------------------------------------------------------------- operating a batcher


class Stats(BaseModel):
    """``BatcherStats``: times are Unix seconds, durations seconds."""

    name: str
    open_keys: int
    buffered_items: int
    oldest_item_age: float | None
    in_flight: int
    retrying: int
    dead: int
    flushed_batches: int
    flushed_items: int
    last_flush_at: float | None
    seconds_since_last_flush: float | None

    @classmethod
    def of(cls, stats: BatcherStats) -> Stats:
        return cls.model_validate(stats, from_attributes=True)


class Corrupt(BaseModel):
    """Stands in for an item whose stored bytes do not decode as JSON."""

    corrupt: str = Field(description="The stored bytes, decoded as UTF-8 with replacement.")
    reason: str


def _wire(value: Any) -> Any:
    if isinstance(value, CorruptItem):
        return Corrupt(corrupt=value.raw.decode(errors="replace"), reason=value.reason)
    return value


class Pending(BaseModel):
    item: Any = Field(description="The item; a Corrupt object when its stored bytes do not decode.")
    arrived_at: float | None = Field(description="Unix seconds; null when the store cannot read it.")

    @classmethod
    def of(cls, pending: PendingItem) -> Pending:
        return cls(item=_wire(pending.value), arrived_at=pending.arrived_at)


class PendingList(BaseModel):
    key: str
    items: list[Pending] = Field(description="The oldest waiting items, in arrival order.")


class FlushRequest(_Body):
    key: Key | None = Field(
        default=None, description="The key to make due now; absent or null: every idle key."
    )


class Flushed(BaseModel):
    keys: int = Field(description="How many keys are due now.")


class ClearRequest(_Body):
    key: Key


class Cleared(BaseModel):
    cleared: int = Field(description="How many waiting items were dropped.")


# ---------------------------------------------------------------- dead letters


class DeadLetterOut(BaseModel):
    id: str
    key: str
    items: list[Any]
    attempts: int
    error: str
    created_at: float
    died_at: float

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterOut:
        return cls(
            id=letter.id,
            key=letter.key,
            items=[_wire(item) for item in letter.items],
            attempts=letter.attempts,
            error=letter.error,
            created_at=letter.created_at,
            died_at=letter.died_at,
        )


class DeadLetterPage(BaseModel):
    dead_letters: list[DeadLetterOut] = Field(description="Oldest first.")
    next_offset: int | None = Field(description="The offset of the next page; null on the last one.")


DeadLetterIds = Annotated[list[Annotated[str, Field(min_length=1, max_length=128)]], Field(min_length=1)]


class ReplayRequest(_Body):
    """Exactly one of ``ids`` and ``all``."""

    ids: DeadLetterIds | None = None
    all: bool = False


class Replayed(BaseModel):
    replayed: int = Field(description="How many items the replayed letters held.")


class PurgeRequest(_Body):
    """Exactly one of ``ids``, ``older_than`` and ``all``."""

    ids: DeadLetterIds | None = None
    older_than: float | None = Field(default=None, ge=0, description="Seconds since the letter died.")
    all: bool = False


class Purged(BaseModel):
    purged: int = Field(description="How many dead letters were deleted.")


# ---------------------------------------------------------------- jobs and groups

FunctionName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
        description="A job function's registered name.",
        examples=["decide"],
    ),
]
JobId = Annotated[
    str,
    Field(min_length=1, max_length=MAX_JOB_ID, description="A job or group id: 1 to 200 characters."),
]
LaneName = Literal["high", "normal", "low"]
Status = Literal["pending", "running", "succeeded", "failed", "cancelled"]
Seconds = Annotated[float, Field(ge=0, le=MAX_DURATION, allow_inf_nan=False)]


class JobCall(_Body):
    """One call, or a chain: ``function`` runs with ``params``, then each of ``then`` in turn
    with the previous step's result as its params."""

    function: FunctionName
    params: JsonValue = None
    then: list[FunctionName] = Field(
        default_factory=list,
        max_length=100,
        description="A chain's later steps; the job's result is the last step's.",
        examples=[[]],
    )


class JobSubmit(JobCall):
    id: JobId | None = Field(
        default=None, description="Submitting an id that exists changes nothing (idempotent)."
    )
    lane: LaneName = Field(default="normal", description="High jobs run first; low ones are not starved.")
    delay: Seconds = Field(default=0.0, description="Seconds before it may run.")
    max_attempts: int | None = Field(
        default=None, ge=1, le=10_000, description="Attempts of each step; default the queue's."
    )
    timeout: Seconds | None = Field(
        default=None, gt=0, description="Seconds each step may run; default the queue's."
    )


class Submitted(BaseModel):
    id: str = Field(description="The job's id; its URL is in the Location header.")


class JobOut(BaseModel):
    """``redbatch.Job``: times are Unix seconds."""

    id: str
    function: str = Field(description="The function of its current step.")
    status: Status
    lane: LaneName
    attempt: int = Field(description="The current step's attempt: 0 before its first run.")
    max_attempts: int
    step: int = Field(description="The 0-based index of a chain's current step.")
    steps: int
    progress: float | None = Field(description="The fraction last reported (0 to 1); 1.0 once succeeded.")
    message: str = Field(description="The message reported with it.")
    result: Any = Field(description="The last finished step's result, any JSON value.")
    error: str = Field(description="The last failed attempt's error ('' none).")
    created_at: float
    started_at: float | None
    finished_at: float | None
    group: str = Field(description="Its group's id ('' none).")
    cancel_requested: bool

    @classmethod
    def of(cls, job: Job) -> JobOut:
        return cls.model_validate(job, from_attributes=True)


class JobPageOut(BaseModel):
    jobs: list[JobOut] = Field(description="Newest first.")
    cursor: str | None = Field(description="Pass it back as ?cursor= for the next page; null on the last.")


class JobCounts(BaseModel):
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class CleanupRequest(_Body):
    older_than: Seconds = Field(description="Delete jobs (and whole groups) finished this many seconds ago.")


class CleanedUp(BaseModel):
    deleted: int = Field(description="How many jobs were deleted; pending and running ones never are.")


class GroupSubmit(_Body):
    members: list[JobCall] = Field(description="Calls or chains; member i gets the id '{group id}.{i}'.")
    id: JobId | None = Field(default=None, description="Submitting a group id that exists changes nothing.")
    callback: FunctionName | None = Field(
        default=None, description="A function run once, as a job, when every member has finished."
    )
    lane: LaneName = "normal"


class GroupSubmitted(BaseModel):
    id: str = Field(description="The group's id; its progress URL is in the Location header.")
    members: list[str] = Field(description="The members' job ids, in the order given.")


class GroupProgressOut(BaseModel):
    """``redbatch.GroupProgress``: exact counters, each member counted once."""

    id: str
    total: int
    pending: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    percent: float
    finished_at: float | None = Field(description="When the last member finished; null while any is open.")
    round: int = Field(description="1, plus one per retry of failed members that reopened the group.")
    callback_job: str = Field(description="The id of the last finished round's callback job ('' none).")

    @classmethod
    def of(cls, progress: GroupProgress) -> GroupProgressOut:
        return cls.model_validate(progress, from_attributes=True)


class RetryFailedRequest(_Body):
    """Which failed members to run again: all, or those whose error passes the filters."""

    error_contains: str | None = Field(
        default=None, min_length=1, max_length=1000, description="Only those whose error holds this text."
    )
    error_matches: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Only those whose error this regular expression (Python's re.search) finds.",
    )
    lane: LaneName | None = Field(default=None, description="Run them in this lane; default each its own.")


class Retried(BaseModel):
    retried: int = Field(description="How many failed members were put back to pending.")


# ---------------------------------------------------------------- health


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    store: str | None = Field(default=None, description="The store's URL, password masked.")
    worker: str | None = Field(default=None, description="The in-process worker: running, starting, stopped.")
