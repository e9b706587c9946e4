"""The batch state machine, stated once: every store implements exactly these transitions.

A key of a batcher holds *pending* items and at most one *current batch*. Its state is one of:

    ABSENT   no pending items, no current batch; not in the deadline index
    IDLE     pending items, no current batch; indexed at its flush deadline (``due_at``)
    RUNNING  its current batch is leased to a worker; indexed at ``lease_until``
    WAITING  its current batch failed and waits to be retried; indexed at ``retry_at``

(RUNNING and WAITING keys may have pending items too: they form the next batch.) One index
per batcher partition scores every open key by the next moment it needs attention, so one
operation, ``claim_due``, serves new batches, retries and crashed workers' batches alike.

Three counters are *state counts* and follow from the states alone: ``open_keys`` (keys not
ABSENT), ``in_flight`` (RUNNING) and ``retrying`` (WAITING). The others are *event counters*
that the transitions below move: ``buffered_items``, ``dead``, ``flushed_batches``,
``flushed_items``, and the time ``last_flush_at``. These are the names every store uses.

Each store cites a transition by its name (``TRANSITIONS["ack"]`` ... ) where it implements
it: the memory store in Python, the SQLite store in SQL, the Redis store in Lua. The
property-based model test (tests/test_model.py) drives this table, so a store that drifts
from it fails there.

    append        ABSENT|IDLE -> IDLE, RUNNING|WAITING -> same    buffered_items +n
    claim         IDLE -> RUNNING (a new batch of up to max_items) buffered_items -n
    claim_retry   WAITING -> RUNNING (same id, same items)
    reclaim       RUNNING -> RUNNING, lease lapsed, attempts left (a lost worker's batch)
    bury_lapsed   RUNNING -> IDLE|ABSENT, lease lapsed, no attempts left     dead +1
    heartbeat     RUNNING -> RUNNING, lease extended
    ack           RUNNING -> IDLE|ABSENT     flushed_batches +1, flushed_items +n, last_flush_at
    fail_retry    RUNNING -> WAITING         flushed_items +done (items a handler finished)
    fail_dead     RUNNING -> IDLE|ABSENT     dead +1, flushed_items +done
    clear         IDLE|WAITING -> ABSENT, RUNNING -> RUNNING       buffered_items -n
    flush         IDLE -> IDLE, due now
    replay        any -> same, or ABSENT -> IDLE; an idle key due now
                                              dead -1 per letter, buffered_items +n
    purge         (dead letters only)         dead -1 per letter

Every claim takes a new fencing token, and the attempt counts up; heartbeat, ack and fail
change nothing unless they present the current (batch id, token) of a RUNNING batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from redbatch.types import QueueSpec


class KeyState(StrEnum):
    """Where a key of a batcher stands; see the module docstring."""

    ABSENT = "absent"
    IDLE = "idle"
    RUNNING = "running"
    WAITING = "waiting"


class Counter(StrEnum):
    """The event counters a store keeps per batcher (state counts follow from the states)."""

    BUFFERED_ITEMS = "buffered_items"
    DEAD = "dead"
    FLUSHED_BATCHES = "flushed_batches"
    FLUSHED_ITEMS = "flushed_items"


class Amount(StrEnum):
    """How much a transition moves a counter: by one, or by a number the step knows."""

    ONE = "1"
    ITEMS = "n"  # the items the step moved: appended, taken into a batch, cleared, replayed
    DONE = "done"  # the items of a batch that a handler finished (all of them, on ack)
    LETTERS = "letters"  # the dead letters the step replayed or purged


class Deadline(StrEnum):
    """The key's new score in the deadline index after a transition."""

    UNCHANGED = "unchanged"
    DUE_AT = "due_at"  # the batching rule, ``due_at`` below; a key already due stays due
    NOW = "now"
    LEASE_UNTIL = "lease_until"  # now + lease
    RETRY_AT = "retry_at"  # backoff with jitter, decided by the worker
    RESCHEDULE = "reschedule"  # the batch ended: DUE_AT when items are pending, else ABSENT


_ALL = frozenset(KeyState)
_OPEN_ENDED = frozenset({KeyState.IDLE, KeyState.ABSENT})


@dataclass(frozen=True, slots=True)
class Transition:
    """One step of the state machine: which states it leaves and enters and what it moves."""

    name: str
    before: frozenset[KeyState]
    after: frozenset[KeyState]
    deadline: Deadline
    counters: Mapping[Counter, tuple[int, Amount]] = field(default_factory=dict)
    """Counter -> (sign, amount): ``(-1, Amount.ITEMS)`` takes the step's item count away."""
    sets_last_flush: bool = False
    may_wake: bool = False
    """Whether the step can make a key due sooner than any worker expects (see ``wakes``)."""

    def moved(self, items: int = 0, done: int = 0, letters: int = 0) -> dict[Counter, int]:
        """The change to each event counter, for a step that moved these amounts."""
        amounts = {Amount.ONE: 1, Amount.ITEMS: items, Amount.DONE: done, Amount.LETTERS: letters}
        return {counter: sign * amounts[amount] for counter, (sign, amount) in self.counters.items()}


def _t(name: str, before: frozenset[KeyState], after: frozenset[KeyState], deadline: Deadline,
       counters: Mapping[Counter, tuple[int, Amount]] | None = None, *, sets_last_flush: bool = False,
       may_wake: bool = False) -> Transition:  # fmt: skip
    return Transition(name, before, after, deadline, counters or {}, sets_last_flush, may_wake)


_I, _R, _W, _A = KeyState.IDLE, KeyState.RUNNING, KeyState.WAITING, KeyState.ABSENT

TRANSITIONS: Mapping[str, Transition] = {
    t.name: t
    for t in (
        _t("append", _ALL, frozenset({_I, _R, _W}), Deadline.DUE_AT,
           {Counter.BUFFERED_ITEMS: (1, Amount.ITEMS)}, may_wake=True),
        _t("claim", frozenset({_I}), frozenset({_R}), Deadline.LEASE_UNTIL,
           {Counter.BUFFERED_ITEMS: (-1, Amount.ITEMS)}),
        _t("claim_retry", frozenset({_W}), frozenset({_R}), Deadline.LEASE_UNTIL),
        _t("reclaim", frozenset({_R}), frozenset({_R}), Deadline.LEASE_UNTIL),
        _t("bury_lapsed", frozenset({_R}), _OPEN_ENDED, Deadline.RESCHEDULE,
           {Counter.DEAD: (1, Amount.ONE)}, may_wake=True),
        _t("heartbeat", frozenset({_R}), frozenset({_R}), Deadline.LEASE_UNTIL),
        _t("ack", frozenset({_R}), _OPEN_ENDED, Deadline.RESCHEDULE,
           {Counter.FLUSHED_BATCHES: (1, Amount.ONE), Counter.FLUSHED_ITEMS: (1, Amount.DONE)},
           sets_last_flush=True, may_wake=True),
        _t("fail_retry", frozenset({_R}), frozenset({_W}), Deadline.RETRY_AT,
           {Counter.FLUSHED_ITEMS: (1, Amount.DONE)}),
        _t("fail_dead", frozenset({_R}), _OPEN_ENDED, Deadline.RESCHEDULE,
           {Counter.DEAD: (1, Amount.ONE), Counter.FLUSHED_ITEMS: (1, Amount.DONE)}, may_wake=True),
        _t("clear", _ALL, frozenset({_A, _R}), Deadline.UNCHANGED,
           {Counter.BUFFERED_ITEMS: (-1, Amount.ITEMS)}),
        _t("flush", _ALL, _ALL, Deadline.NOW, may_wake=True),
        _t("replay", _ALL, frozenset({_I, _R, _W}), Deadline.NOW,
           {Counter.DEAD: (-1, Amount.LETTERS), Counter.BUFFERED_ITEMS: (1, Amount.ITEMS)}, may_wake=True),
        _t("purge", _ALL, _ALL, Deadline.UNCHANGED, {Counter.DEAD: (-1, Amount.LETTERS)}),
    )
}  # fmt: skip


def due_at(spec: QueueSpec, first_ms: int, last_ms: int, pending: int, now_ms: int) -> int:
    """The batching rule: when a key with ``pending`` items is due.

    ``first_ms`` is its oldest pending item's arrival, ``last_ms`` its newest. A full key is
    due now; otherwise at the oldest arrival plus ``max_wait``, or (with a debounce) at the
    newest arrival plus ``idle`` if that is sooner. The Lua prelude states it again
    (``due_at`` in lib.lua) because it runs inside Redis.
    """
    if pending >= spec.max_items:
        return now_ms
    deadline = first_ms + spec.max_wait_ms
    if spec.idle_ms:
        deadline = min(deadline, last_ms + spec.idle_ms)
    return deadline


def wakes(deadline_ms: int, head_before_ms: int | None, now_ms: int) -> bool:
    """Whether a key's new deadline should wake sleeping workers.

    A sleeping worker sleeps until the head of the deadline index it last read, or until a
    wake-up. So a step must wake workers when the key it scheduled is due now, or due
    before that head (``head_before_ms``, the index head before the step; None when the
    index was empty). Every store applies this one rule (the Lua prelude as ``wakes``).
    """
    return deadline_ms <= now_ms or head_before_ms is None or deadline_ms < head_before_ms


# ---------------------------------------------------------------- job records
#
# A job queue (``redbatch.jobrecords``) is a batcher whose keys are job ids, each holding one
# item. Its store operations keep a record per job and per group, changed in the SAME atomic
# step as the batch transition that moves the job. The table below is that rule: for each
# engine transition (and the job-only operations), the job statuses it leaves and enters.
# A group counts every member in exactly one status, so each row also moves the member's
# group counter from its old status to its new one; that is what makes a group exact (a
# member reclaimed and run twice moves RUNNING -> RUNNING, counted once), and a stale
# worker, refused by fencing, moves nothing.
#
#   submit        (none)  -> pending    record created with the entry; an id that exists is
#                                       left as it is (idempotent), whatever its status
#   claim         pending -> running    attempt = the batch's, started_at = now
#   claim_retry   pending -> running
#   reclaim       running -> running    a lost worker's job, leased again
#   bury_lapsed   running -> failed     error = LEASE_EXPIRED_ERROR, finished_at; the job's
#                                       own max_attempts decides, not the queue's
#   heartbeat     running -> running
#   finish        running -> succeeded  (ack) result, progress 1.0, finished_at
#                 running -> cancelled  (ack) the function stopped on a cancel request
#                 running -> pending    (ack + append, ADVANCE) the next step of a chain, in
#                                       the same step: step + 1, attempt 0, result kept
#   fail_retry    running -> pending    error kept
#   fail_dead     running -> failed     error, finished_at; the batch is a dead letter
#   cancel        pending -> cancelled  (clear) its entry or waiting batch dropped
#                 running -> running    cancel_requested set: the function sees it
#   retry_jobs    failed  -> pending    its dead letter (if still held) purged, the
#                                       record's payload appended anew; attempt 0
#   progress      running -> running    fenced: a stale worker's progress is refused
#   cleanup       finished -> (none)    records (and a failed job's dead letter) deleted
#
# A group is *finished* when it has no pending or running member. The step that finishes
# it (finish, fail_dead, bury_lapsed or cancel of its last open member) also, once per
# round, submits the group's callback job (``jobrecords.callback_job_id``) and sets
# ``finished_at``. ``retry_jobs`` on a finished group's members starts a new round (the
# group is open again, ``finished_at`` cleared), whose end submits the callback again.

JOB_TRANSITIONS: Mapping[str, tuple[frozenset[str], str]] = {
    "submit": (frozenset(), "pending"),
    "claim": (frozenset({"pending"}), "running"),
    "claim_retry": (frozenset({"pending"}), "running"),
    "reclaim": (frozenset({"running"}), "running"),
    "bury_lapsed": (frozenset({"running"}), "failed"),
    "heartbeat": (frozenset({"running"}), "running"),
    "finish_succeeded": (frozenset({"running"}), "succeeded"),
    "finish_cancelled": (frozenset({"running"}), "cancelled"),
    "finish_advance": (frozenset({"running"}), "pending"),
    "fail_retry": (frozenset({"running"}), "pending"),
    "fail_dead": (frozenset({"running"}), "failed"),
    "cancel_pending": (frozenset({"pending"}), "cancelled"),
    "cancel_running": (frozenset({"running"}), "running"),
    "retry_jobs": (frozenset({"failed"}), "pending"),
    "progress": (frozenset({"running"}), "running"),
}
"""Job transition -> (statuses it leaves, status it enters); see the comment above."""
