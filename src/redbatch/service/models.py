"""The HTTP bodies: pydantic models at the service's edge, turned into library calls by the
routes. Inside, redbatch's own frozen values (``BatcherStats``, ``DeadLetter``, ...) are used;
these models only describe what crosses the wire, so the OpenAPI schema says it exactly.

The limits written here (a key of 1 to 512 characters, a name's pattern) are the library's,
restated so the schema carries them; the library checks them again all the same.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from redbatch.checks import MAX_KEY_LENGTH
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


# ---------------------------------------------------------------- health


class Health(BaseModel):
    status: str = Field(examples=["ok"])
    store: str | None = Field(default=None, description="The store's URL, password masked.")
    worker: str | None = Field(default=None, description="The in-process worker: running, starting, stopped.")
