"""The store protocol: the few atomic operations batching (and later jobs) is built on.

Every operation is one atomic step in the store (a Lua script, a SQL transaction, a locked
section). A key's state is its pending items plus at most one *current batch*, which is
either ``running`` (leased to a worker until ``lease_until``) or ``waiting`` (to be retried at
``retry_at``). Each batcher has one deadline index whose score for a key is the next moment
the key needs attention: its flush deadline while idle, its lease expiry while running, its
retry time while waiting. ``claim_due`` therefore serves new batches, retries and batches
of crashed workers through one path.

A batcher's *rules* (``QueueSpec``: max_items, max_wait, idle, dedupe, max_attempts, lease)
are recorded once per batcher name in the store, so that every process applies the same.
A worker publishes its rules when it starts (``publish_rules``: the last worker to start
defines them); ``append`` checks, in its atomic step, that the producer's rules are the
recorded ones, and stores nothing (``RulesChanged``) when they are not, so no item is ever
scheduled under rules other than the store's.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar, runtime_checkable

from redbatch.errors import ConfigError, NotFound, RedbatchError
from redbatch.jobrecords import GroupRecord, JobOutcome, JobPage, JobRecord, JobStatus, Lane, NewGroup, NewJob
from redbatch.types import ClaimedBatch, DeadRecord, Entry, Lease, QueueCounters, QueueSpec

log = logging.getLogger("redbatch.store")

LEASE_EXPIRED_ERROR = "lease expired: the worker running this batch was lost"
T = TypeVar("T")


class RulesChanged(RedbatchError):
    """An append was made under other rules than the store holds for its batcher; nothing
    was stored. ``Batcher`` catches it, adopts the store's rules and retries; it reaches
    callers of ``Store.append`` only, or when the rules keep changing under a producer.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"batcher {name!r}: the store holds other rules than this append was made under")


@runtime_checkable
class Waiter(Protocol):
    """Blocks a worker until work may have become due, or a timeout."""

    def wait(self, timeout: float) -> bool:
        """Return True when woken by a producer, False on timeout."""

    def close(self) -> None: ...


@runtime_checkable
class JobStore(Protocol):
    """The job operations every store offers beside ``Store``'s (see ``redbatch.jobrecords``
    for the model and ``redbatch.engine.JOB_TRANSITIONS`` for the rule every step follows).

    ``spec`` is always a job queue's (``jobrecords.is_jobs(spec.name)``). On such a spec the
    engine operations ``claim_due`` and ``fail`` (and ``heartbeat``, unchanged) also keep
    the job records, in the same atomic step: ``claim_due`` moves a job to running (and
    buries a lapsed one by the job's own ``max_attempts``, moving it to failed), ``fail``
    to pending (a retry) or failed (dead). Their signatures do not change. Jobs are
    acknowledged with ``finish_jobs``, never ``ack``.
    """

    def submit_jobs(
        self, spec: QueueSpec, jobs: Sequence[NewJob], group: NewGroup | None, now_ms: int
    ) -> list[bool]:
        """Create jobs (and their group) in one atomic step; True for each job created.

        A job whose id exists is left as it is (False), whatever its status: submitting an
        id again is idempotent. With ``group``: when a group of that id exists, nothing at
        all is created (all False); else the group is created with the jobs as its members
        (their ``NewJob.group`` is its id), counting each created one as pending. An empty
        group (no jobs) is finished at once and submits its callback. Each job created gets
        one entry, its payload, under key ``id``, at deadline score ``score_ms`` (which may
        be in the past: a lane's head start), and wakes workers like an append.
        """

    def finish_jobs(self, spec: QueueSpec, outcomes: Sequence[JobOutcome], now_ms: int) -> list[bool]:
        """The ``ack`` of jobs: end each running job as its outcome says, in one step.

        False (and nothing changed) for each lease no longer held. Every held one goes
        through the engine's ``ack`` transition (counters included) and its record moves as
        ``JOB_TRANSITIONS['finish_*']`` says; an ADVANCE appends ``next_payload`` under the
        same key at ``next_score_ms`` in the same step. A member finishing its group submits
        the group's callback (once per round).
        """

    def job_progress(self, spec: QueueSpec, lease: Lease, fraction: float | None, message: str) -> bool:
        """Record a running job's progress; False (nothing changed) when the lease is lost."""

    def cancel_job(self, spec: QueueSpec, job_id: str, now_ms: int) -> JobStatus:
        """Cancel a job: a pending one is cancelled at once (its entry or waiting batch is
        dropped), a running one is asked to stop (``cancel_requested``). Returns the status
        the job has after the call; a finished job is left as it is. Raises ``NotFound``
        for an unknown id."""

    def retry_jobs(self, spec: QueueSpec, job_ids: Sequence[str], lane: Lane | None, score_ms: int,
                   now_ms: int) -> list[str]:  # fmt: skip
        """Put failed jobs back to pending: each gets its record's payload appended anew at
        ``score_ms`` (in ``lane`` when given), attempt 0, its dead letter (if still held)
        purged. Ids of jobs that are not failed (or unknown) are skipped. Returns the ids
        retried. Members of a finished group reopen it (a new round)."""

    def get_jobs(self, spec: QueueSpec, job_ids: Sequence[str]) -> list[JobRecord | None]:
        """Records by id, None for each unknown id. One round trip."""

    def list_jobs(self, spec: QueueSpec, status: JobStatus | None, group: str | None, limit: int,
                  cursor: str | None) -> JobPage:  # fmt: skip
        """Jobs newest first (by created_at, then id), optionally of one status and/or one
        group, ``limit`` at a time; pass the page's cursor back for the next. Served by an
        index, never a scan of every job. A cursor from another query raises ConfigError."""

    def job_counts(self, spec: QueueSpec) -> dict[JobStatus, int]:
        """How many jobs hold each status (every status present, 0 included)."""

    def get_group(self, spec: QueueSpec, group_id: str) -> GroupRecord | None: ...

    def cleanup_jobs(self, spec: QueueSpec, finished_before_ms: int, limit: int) -> int:
        """Delete up to ``limit`` finished jobs that finished before ``finished_before_ms``,
        oldest first, with a failed one's dead letter. A group member goes only with its
        whole group, once the group finished before then (the group record, every member
        and its callback jobs at once); members of an open group are kept. Returns how many
        job records were deleted."""


@runtime_checkable
class Store(JobStore, Protocol):
    """Where all of redbatch's state lives. See the module docstring for the model."""

    url: str
    """The store's URL with any password masked, for logs and display."""

    durable: bool
    """False for stores that lose everything when the process exits."""

    def append(self, spec: QueueSpec, entries: Sequence[Entry], now_ms: int) -> None:
        """Add items under their keys, all or none, and reschedule each key's deadline.

        The batcher's recorded rules must be ``spec``'s (same ``version``): else nothing is
        stored and ``RulesChanged`` is raised. When none are recorded yet, ``spec``'s are
        recorded in the same step.

        A store with an asyncio client also has ``async def append_async(spec, entries,
        now_ms)``, the same step awaited on the running event loop (see ``AsyncAppend``);
        batchers look for it, and make the calls of stores without it on one thread.
        """

    def publish_rules(self, spec: QueueSpec, now_ms: int) -> QueueSpec | None:
        """Record ``spec`` as its batcher's rules; return those it replaced (None: none).

        When the rules change, every key without a current batch is rescheduled under the
        new ones (a key already due stays due); a running or retrying batch keeps its
        deadline, and its key follows the new rules once the batch ends.
        """

    def stored_rules(self, name: str) -> QueueSpec | None:
        """The rules recorded for batcher ``name``, or None when it was never used."""

    def claim_due(self, spec: QueueSpec, now_ms: int, limit: int) -> list[ClaimedBatch]:
        """Lease up to ``limit`` due batches: retries, lapsed leases, or new batches.

        A batch whose lease lapsed after its last allowed attempt goes to dead letters
        instead (a crash counts as an attempt).
        """

    def next_due_ms(self, spec: QueueSpec) -> int | None:
        """The earliest deadline in the index, or None when nothing is open."""

    def due_deadlines(self, spec: QueueSpec, now_ms: int, limit: int) -> list[int]:
        """The deadline-index scores of up to ``limit`` keys due at ``now_ms``, ascending.

        A read, O(log n + limit): a worker serving several batchers shares its free slots
        among them earliest deadline first. A key listed here may still yield no batch
        when claimed (it is buried, or has nothing left), so it is an upper bound.
        """

    def heartbeat(self, spec: QueueSpec, leases: Sequence[Lease], lease_until_ms: int) -> list[bool]:
        """Extend leases that are still held; False for each one lost to another worker."""

    def ack(self, spec: QueueSpec, leases: Sequence[Lease], now_ms: int) -> list[bool]:
        """Finish batches in one step; False (and nothing changed) for each lease that was lost.

        Workers acknowledge in groups: every batch finished while the previous
        acknowledgement was on its way goes in the next one (group commit).
        """

    def fail(
        self,
        spec: QueueSpec,
        lease: Lease,
        now_ms: int,
        error: str,
        retry_at_ms: int | None,
        keep: Sequence[int] | None = None,
    ) -> bool:
        """Schedule a retry at ``retry_at_ms``, or dead-letter the batch when it is None.

        With ``keep`` (sorted item indexes), only those items failed: the batch keeps its id
        and shrinks to them first, and the others count as flushed.
        """

    def clear(self, spec: QueueSpec, key: str) -> int:
        """Drop a key's pending items and any batch waiting to retry; return how many items."""

    def flush(self, spec: QueueSpec, key: str | None, now_ms: int) -> int:
        """Make a key (or every key) due now; return how many keys were made due."""

    def peek(self, spec: QueueSpec, key: str, limit: int) -> Sequence[tuple[int | None, bytes]]:
        """A key's oldest pending items as (arrived_at_ms, payload); the arrival is None where
        the store cannot read it (an entry written by hand, to be dead-lettered as corrupt)."""

    def counters(self, spec: QueueSpec) -> QueueCounters: ...

    def oldest_keys(self, spec: QueueSpec, limit: int) -> list[tuple[str, int, int]]:
        """The ``limit`` keys whose oldest pending item arrived first, as (key, that arrival
        in ms, pending items), oldest first (ties by key). A key with no pending items (only
        a running or retrying batch) is not listed. A read of the age index, O(log n + limit)
        in the durable stores; for dashboards."""

    def dead_letters(self, spec: QueueSpec, limit: int, offset: int) -> list[DeadRecord]:
        """Dead letters, oldest first."""

    def replay(self, spec: QueueSpec, batch_ids: Sequence[str] | None, now_ms: int) -> int:
        """Put dead letters' items back in front of their keys' pending items, due now.

        A key's letters go back in the order they died (whatever order ``batch_ids`` has),
        each with its items in arrival order. Returns how many items were replayed. When
        one of ``batch_ids`` is unknown, raises ``unknown_dead_letters`` and changes nothing.
        """

    def purge_dead(self, spec: QueueSpec, batch_ids: Sequence[str] | None, before_ms: int | None) -> int:
        """Delete dead letters by id, or those that died before ``before_ms``, or all.

        When one of ``batch_ids`` is unknown, raises ``unknown_dead_letters`` and deletes none.
        """

    def waiter(self, names: Sequence[str]) -> Waiter:
        """A waiter woken when a key of one of these batchers may have become due."""

    def close(self) -> None: ...


@runtime_checkable
class AsyncAppend(Protocol):
    """What a store offers when it can append on an event loop without a thread (Redis)."""

    async def append_async(self, spec: QueueSpec, entries: Sequence[Entry], now_ms: int) -> None:
        """``Store.append``, awaited on the running loop: the same step, the same errors."""


@runtime_checkable
class LoopCalls(Protocol):
    """What a store offers when a worker's busiest calls can run on its event loop, with no
    thread between (Redis, on one server or Sentinel, without ``replicas``): for one-item
    batches and jobs, a thread hop and the GIL handed back and forth around each store call
    cost more than the call. Each is its sync twin, awaited: the same step, the same errors.
    """

    def calls_on_loop(self) -> bool:
        """Whether these run on the loop here; False sends the worker to the sync calls."""

    async def claim_due_async(self, spec: QueueSpec, now_ms: int, limit: int) -> list[ClaimedBatch]:
        """``Store.claim_due``, awaited."""

    async def ack_async(self, spec: QueueSpec, leases: Sequence[Lease], now_ms: int) -> list[bool]:
        """``Store.ack``, awaited."""

    async def finish_jobs_async(
        self, spec: QueueSpec, outcomes: Sequence[JobOutcome], now_ms: int
    ) -> list[bool]:
        """``JobStore.finish_jobs``, awaited."""


def replaced_rules(name: str, record: Mapping[str, Any] | None) -> QueueSpec | None:
    """The rules a publish replaced, for the publisher's log; an unreadable record (edited by
    hand) was replaced all the same, so it is logged here rather than failing the publish."""
    if not record:
        return None
    try:
        return QueueSpec.from_record(name, record)
    except ConfigError as exc:
        log.warning("%s; replaced", exc)
        return None


def first_of_each(items: Sequence[T], digest_of: Callable[[T], str]) -> list[T]:
    """``items`` without those whose digest an earlier one has: what dedupe keeps of a replay.

    Items without a digest (added while the batcher did not dedupe) are all kept.
    """
    seen: set[str] = set()
    kept = []
    for item in items:
        digest = digest_of(item)
        if digest:
            if digest in seen:
                continue
            seen.add(digest)
        kept.append(item)
    return kept


def unknown_dead_letters(name: str, batch_ids: Sequence[str]) -> NotFound:
    """The error for dead-letter ids a batcher does not have (nothing was changed)."""
    shown = ", ".join(repr(i) for i in batch_ids[:10])
    if len(batch_ids) > 10:
        shown += f" and {len(batch_ids) - 10} more"
    noun = "dead letter" if len(batch_ids) == 1 else "dead letters"
    return NotFound(f"batcher {name!r} has no {noun} {shown}; nothing was changed")


def new_batch_id() -> str:
    """A unique, roughly time-ordered id: 12 hex digits of milliseconds, 16 random."""
    return new_batch_ids(1)[0]


def new_batch_ids(count: int) -> list[str]:
    """``count`` ids of ``new_batch_id``'s form, from one read of the clock and of
    ``os.urandom`` (a claim sends one per batch it may lease, so 34 from 32 reads was some
    5% of a busy worker's time)."""
    stamp = f"{time.time_ns() // 1_000_000:012x}"
    random = os.urandom(8 * count).hex()
    return [stamp + random[i : i + 16] for i in range(0, 16 * count, 16)]


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs, errors and display.

    Never raises: the URLs quoted in errors are the malformed ones, so this reads the text
    itself rather than trusting ``urlsplit`` (which refuses a bad IPv6 host, and whose
    ``.port`` refuses a bad port). The password is whatever follows the first ``:`` of the
    userinfo (before the authority's last ``@``). A password holding an unescaped ``/``, ``?``
    or ``#`` ends the authority early, so when an ``@`` comes later and the authority has a
    ``:``, everything from that ``:`` up to the URL's last ``@`` is masked: it errs on the side
    of hiding (a port and an ``@`` in a query are masked too).
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url  # no authority, so no userinfo
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority = rest[:end]
    userinfo, at, host = authority.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        return f"{scheme}://{user}:***@{host}{rest[end:]}" if colon else url
    last_at = rest.rfind("@")
    if last_at > end and ":" in authority:
        user = authority.partition(":")[0]
        return f"{scheme}://{user}:***{rest[last_at:]}"
    return url
