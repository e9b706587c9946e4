"""The in-process store: same semantics as the others, nothing durable. For tests.

Its job operations (``JobStore``) are at the end: the engine half of each step is here, the
records' half is ``memory_jobs.JobTable``, both under the one lock.
"""

from __future__ import annotations

import heapq
import logging
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from redbatch.engine import due_at, wakes
from redbatch.errors import NotFound
from redbatch.jobrecords import (
    FINISHED,
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
from redbatch.stores.base import (
    LEASE_EXPIRED_ERROR,
    RulesChanged,
    Waiter,
    first_of_each,
    new_batch_id,
    unknown_dead_letters,
)
from redbatch.stores.local import LocalWaiter, Wakeups
from redbatch.stores.memory_jobs import JobTable
from redbatch.types import ClaimedBatch, DeadRecord, Entry, Lease, QueueCounters, QueueSpec

log = logging.getLogger("redbatch.store.memory")

_Item = tuple[int, bytes, str]  # arrived_at_ms, payload, digest


@dataclass(slots=True)
class _Current:
    batch_id: str
    items: tuple[_Item, ...]
    created_at: int
    attempt: int = 0
    fencing_token: int = 0
    running: bool = False  # False: waiting to be retried
    error: str = ""


@dataclass(slots=True)
class _Key:
    pending: deque[_Item] = field(default_factory=deque)
    digests: set[str] = field(default_factory=set)
    last_ms: int = 0
    current: _Current | None = None


@dataclass(slots=True)
class _Queue:
    """One batcher's state. Counters carry the engine's names (``redbatch.engine``): the
    event counters and the state counts in_flight and retrying are kept here, while
    ``open_keys`` is ``len(due)`` and ``dead`` is ``len(dead)``."""

    keys: dict[str, _Key] = field(default_factory=dict)
    due: dict[str, int] = field(default_factory=dict)
    heap: list[tuple[int, str]] = field(default_factory=list)  # lazy: checked against due
    dead: dict[str, DeadRecord] = field(default_factory=dict)
    dead_digests: dict[str, tuple[str, ...]] = field(default_factory=dict)  # dedupe again on replay
    buffered_items: int = 0
    in_flight: int = 0
    retrying: int = 0
    flushed_batches: int = 0
    flushed_items: int = 0
    last_flush_at: int | None = None
    token_seq: int = 0

    def schedule(self, key: str, score: int) -> None:
        self.due[key] = score
        heapq.heappush(self.heap, (score, key))
        if len(self.heap) > 2 * len(self.due) + 1024:
            self.heap = [(s, k) for k, s in self.due.items()]
            heapq.heapify(self.heap)

    def due_scores(self, now_ms: int, limit: int) -> list[int]:
        """Scores of up to ``limit`` due keys, ascending, read from the lazy heap in place.

        The heap is walked in order from its root (a frontier of candidate positions),
        skipping entries ``due`` no longer holds: O((limit + stale) log) without popping.
        """
        heap = self.heap
        scores: list[int] = []
        seen: set[str] = set()
        frontier = [(heap[0], 0)] if heap else []
        while frontier and len(scores) < limit:
            (score, key), at = heapq.heappop(frontier)
            if score > now_ms:
                break
            if self.due.get(key) == score and key not in seen:  # a key may be pushed twice
                seen.add(key)
                scores.append(score)
            for child in (2 * at + 1, 2 * at + 2):
                if child < len(heap):
                    heapq.heappush(frontier, (heap[child], child))
        return scores

    def head(self) -> tuple[int, str] | None:
        while self.heap:
            score, key = self.heap[0]
            if self.due.get(key) == score:
                return score, key
            heapq.heappop(self.heap)
        return None


class MemoryStore:
    """Everything in one process's memory, guarded by one lock. Not durable."""

    durable = False

    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._lock = threading.RLock()
        self._wakeups = Wakeups(self._lock)
        self._queues: dict[str, _Queue] = {}
        self._rules: dict[str, QueueSpec] = {}
        self._job_tables: dict[str, JobTable] = {}
        log.warning("memory:// store: nothing is durable, everything is lost when the process exits")

    def _queue(self, spec: QueueSpec) -> _Queue:
        queue = self._queues.get(spec.name)
        if queue is None:
            queue = self._queues[spec.name] = _Queue()
        return queue

    def _reschedule(self, spec: QueueSpec, queue: _Queue, key: str, state: _Key, now_ms: int) -> None:
        """After a key's current batch ended: schedule its pending items or forget the key."""
        if state.current is not None:
            return
        if state.pending:
            deadline = due_at(spec, state.pending[0][0], state.last_ms, len(state.pending), now_ms)
            head = queue.head()
            queue.schedule(key, deadline)
            if wakes(deadline, None if head is None else head[0], now_ms):
                self._wakeups.notify()
        else:
            queue.due.pop(key, None)
            del queue.keys[key]

    # ------------------------------------------------------------------ producing

    def append(self, spec: QueueSpec, entries: Sequence[Entry], now_ms: int) -> None:
        with self._lock:
            if self._rules.setdefault(spec.name, spec).version != spec.version:
                raise RulesChanged(spec.name)
            queue = self._queue(spec)
            touched: dict[str, _Key] = {}
            # transition: append
            for entry in entries:
                state = queue.keys.get(entry.key)
                if state is None:
                    state = queue.keys[entry.key] = _Key()
                if spec.dedupe:
                    if entry.digest in state.digests:
                        continue
                    state.digests.add(entry.digest)
                state.pending.append((now_ms, entry.payload, entry.digest))
                state.last_ms = now_ms
                queue.buffered_items += 1
                touched[entry.key] = state
            for key, state in touched.items():
                # A key already due (flushed, or overdue) stays due: more items never delay it.
                if state.current is None and queue.due.get(key, now_ms + 1) > now_ms:
                    self._reschedule(spec, queue, key, state, now_ms)

    # ------------------------------------------------------------------ rules

    def publish_rules(self, spec: QueueSpec, now_ms: int) -> QueueSpec | None:
        with self._lock:
            previous = self._rules.get(spec.name)
            self._rules[spec.name] = spec
            if previous is not None and previous.version == spec.version:
                return previous
            queue = self._queue(spec)
            for key, state in queue.keys.items():
                # A key already due (flushed, or overdue) stays due.
                if state.current is None and state.pending and queue.due.get(key, now_ms) > now_ms:
                    first = state.pending[0][0]
                    queue.schedule(key, due_at(spec, first, state.last_ms, len(state.pending), now_ms))
            self._wakeups.notify()
            return previous

    def stored_rules(self, name: str) -> QueueSpec | None:
        with self._lock:
            return self._rules.get(name)

    # ------------------------------------------------------------------ claiming

    def claim_due(self, spec: QueueSpec, now_ms: int, limit: int) -> list[ClaimedBatch]:
        claimed: list[ClaimedBatch] = []
        with self._lock:
            queue = self._queue(spec)
            while len(claimed) < limit:
                head = queue.head()
                if head is None or head[0] > now_ms:
                    break
                key = head[1]
                state = queue.keys[key]
                batch = self._lease(spec, queue, key, state, now_ms)
                if batch is not None:
                    claimed.append(batch)
        return claimed

    def _lease(
        self, spec: QueueSpec, queue: _Queue, key: str, state: _Key, now_ms: int
    ) -> ClaimedBatch | None:
        current = state.current
        table = self._job_tables.get(spec.name) if is_jobs(spec.name) else None
        job = None if table is None else table.jobs.get(key)
        max_attempts = spec.max_attempts if job is None else job.max_attempts  # a job's own
        if current is not None and current.running and current.attempt >= max_attempts:
            # transition: bury_lapsed
            queue.in_flight -= 1
            self._bury(queue, key, current, LEASE_EXPIRED_ERROR, now_ms)
            state.current = None
            self._reschedule(spec, queue, key, state, now_ms)
            if table is not None and job is not None:  # job transition: bury_lapsed
                job.error, job.dead_batch = LEASE_EXPIRED_ERROR, current.batch_id
                table.move(job, JobStatus.FAILED, now_ms)
                self._enqueue_callbacks(spec, queue, table, now_ms)
            return None
        if current is None:  # transition: claim
            taken = [state.pending.popleft() for _ in range(min(spec.max_items, len(state.pending)))]
            for _, _, digest in taken:
                state.digests.discard(digest)
            queue.buffered_items -= len(taken)
            current = state.current = _Current(new_batch_id(), tuple(taken), now_ms)
            queue.in_flight += 1
        elif not current.running:  # transition: claim_retry
            queue.retrying -= 1
            queue.in_flight += 1
        # transition: reclaim (its lease lapsed, attempts left); every claim ends here: a new lease
        queue.token_seq += 1
        current.attempt += 1
        current.fencing_token = queue.token_seq
        current.running = True
        queue.schedule(key, now_ms + spec.lease_ms)
        if table is not None and job is not None:  # job transition: claim / claim_retry / reclaim
            job.attempt, job.started_at = current.attempt, now_ms
            table.move(job, JobStatus.RUNNING, now_ms)
        return ClaimedBatch(
            Lease(key, current.batch_id, current.fencing_token),
            current.attempt,
            current.created_at,
            tuple(p for _, p, _ in current.items),
            tuple(a for a, _, _ in current.items),
        )

    def _bury(self, queue: _Queue, key: str, current: _Current, error: str, now_ms: int) -> None:
        queue.dead[current.batch_id] = DeadRecord(
            current.batch_id,
            key,
            tuple(p for _, p, _ in current.items),
            tuple(a for a, _, _ in current.items),
            current.attempt,
            error,
            current.created_at,
            now_ms,
        )
        queue.dead_digests[current.batch_id] = tuple(d for _, _, d in current.items)

    def next_due_ms(self, spec: QueueSpec) -> int | None:
        with self._lock:
            head = self._queue(spec).head()
            return None if head is None else head[0]

    def due_deadlines(self, spec: QueueSpec, now_ms: int, limit: int) -> list[int]:
        with self._lock:
            return self._queue(spec).due_scores(now_ms, limit)

    # ------------------------------------------------------------------ lease holders

    def _held(self, queue: _Queue, lease: Lease) -> _Key | None:
        state = queue.keys.get(lease.key)
        if state is None or state.current is None:
            return None
        current = state.current
        if (
            current.batch_id != lease.batch_id
            or current.fencing_token != lease.fencing_token
            or not current.running
        ):
            return None
        return state

    def heartbeat(self, spec: QueueSpec, leases: Sequence[Lease], lease_until_ms: int) -> list[bool]:
        with self._lock:
            queue = self._queue(spec)
            held = []
            for lease in leases:
                state = self._held(queue, lease)
                if state is not None:  # transition: heartbeat
                    queue.schedule(lease.key, lease_until_ms)
                held.append(state is not None)
            return held

    def ack(self, spec: QueueSpec, leases: Sequence[Lease], now_ms: int) -> list[bool]:
        with self._lock:
            queue = self._queue(spec)
            held = []
            for lease in leases:
                state = self._held(queue, lease)
                held.append(state is not None and state.current is not None)
                if state is None or state.current is None:
                    continue
                # transition: ack
                queue.in_flight -= 1
                queue.flushed_batches += 1
                queue.flushed_items += len(state.current.items)
                queue.last_flush_at = now_ms
                state.current = None
                self._reschedule(spec, queue, lease.key, state, now_ms)
            return held

    def fail(
        self,
        spec: QueueSpec,
        lease: Lease,
        now_ms: int,
        error: str,
        retry_at_ms: int | None,
        keep: Sequence[int] | None = None,
    ) -> bool:
        with self._lock:
            queue = self._queue(spec)
            state = self._held(queue, lease)
            if state is None or state.current is None:
                return False
            current = state.current
            queue.in_flight -= 1
            current.error = error
            if keep is not None:
                kept = tuple(current.items[i] for i in keep)
                queue.flushed_items += len(current.items) - len(kept)
                current.items = kept
            if retry_at_ms is None:  # transition: fail_dead
                self._bury(queue, lease.key, current, error, now_ms)
                state.current = None
                self._reschedule(spec, queue, lease.key, state, now_ms)
            else:  # transition: fail_retry
                current.running = False
                queue.retrying += 1
                queue.schedule(lease.key, retry_at_ms)
            table = self._job_tables.get(spec.name) if is_jobs(spec.name) else None
            job = None if table is None else table.jobs.get(lease.key)
            if table is not None and job is not None:  # job transition: fail_dead / fail_retry
                job.error = error
                if retry_at_ms is None:
                    job.dead_batch = current.batch_id
                table.move(job, JobStatus.PENDING if retry_at_ms is not None else JobStatus.FAILED, now_ms)
                self._enqueue_callbacks(spec, queue, table, now_ms)
            return True

    # ------------------------------------------------------------------ operators

    def clear(self, spec: QueueSpec, key: str) -> int:
        with self._lock:
            queue = self._queue(spec)
            state = queue.keys.get(key)
            if state is None:
                return 0
            # transition: clear
            dropped = len(state.pending)
            queue.buffered_items -= dropped
            state.pending.clear()
            state.digests.clear()
            if state.current is not None and not state.current.running:
                dropped += len(state.current.items)
                queue.retrying -= 1
                state.current = None
            self._reschedule(spec, queue, key, state, 0)
            return dropped

    def flush(self, spec: QueueSpec, key: str | None, now_ms: int) -> int:
        with self._lock:
            queue = self._queue(spec)
            keys = [key] if key is not None else list(queue.keys)
            made_due = 0
            # transition: flush
            for name in keys:
                state = queue.keys.get(name)
                if state is None or state.current is not None or not state.pending:
                    continue
                if queue.due.get(name, now_ms + 1) > now_ms:
                    queue.schedule(name, now_ms)
                made_due += 1
            if made_due:
                self._wakeups.notify()
            return made_due

    def peek(self, spec: QueueSpec, key: str, limit: int) -> list[tuple[int, bytes]]:
        with self._lock:
            state = self._queue(spec).keys.get(key)
            if state is None:
                return []
            return [(arrived, payload) for arrived, payload, _ in list(state.pending)[:limit]]

    def counters(self, spec: QueueSpec) -> QueueCounters:
        with self._lock:
            queue = self._queue(spec)
            oldest = min((s.pending[0][0] for s in queue.keys.values() if s.pending), default=None)
            return QueueCounters(
                open_keys=len(queue.due),
                buffered_items=queue.buffered_items,
                oldest_arrival=oldest,
                in_flight=queue.in_flight,
                retrying=queue.retrying,
                dead=len(queue.dead),
                flushed_batches=queue.flushed_batches,
                flushed_items=queue.flushed_items,
                last_flush_at=queue.last_flush_at,
            )

    def oldest_keys(self, spec: QueueSpec, limit: int) -> list[tuple[str, int, int]]:
        # A scan of the open keys: the reference store keeps no age index (it is for tests).
        with self._lock:
            waiting = (
                (s.pending[0][0], key, len(s.pending))
                for key, s in self._queue(spec).keys.items()
                if s.pending
            )
            return [(key, first, count) for first, key, count in heapq.nsmallest(limit, waiting)]

    def dead_letters(self, spec: QueueSpec, limit: int, offset: int) -> list[DeadRecord]:
        with self._lock:
            records = sorted(self._queue(spec).dead.values(), key=lambda r: (r.died_at, r.batch_id))
            return records[offset : offset + limit]

    def replay(self, spec: QueueSpec, batch_ids: Sequence[str] | None, now_ms: int) -> int:
        with self._lock:
            queue = self._queue(spec)
            wanted = None if batch_ids is None else self._known(spec, queue, batch_ids)
            # transition: replay
            # ``dead`` keeps the order letters died in: a key's letters go back in that order.
            by_key: dict[str, list[_Item]] = {}
            for batch_id in [i for i in queue.dead if wanted is None or i in wanted]:
                record = queue.dead.pop(batch_id)
                digests = queue.dead_digests.pop(batch_id)
                letter = zip(record.arrived_at, record.payloads, digests, strict=True)
                by_key.setdefault(record.key, []).extend(letter)
            for key, items in by_key.items():
                self._put_back(spec, queue, key, items, now_ms)
            replayed = sum(len(items) for items in by_key.values())
            if replayed:
                self._wakeups.notify()
            return replayed

    @staticmethod
    def _put_back(spec: QueueSpec, queue: _Queue, key: str, items: list[_Item], now_ms: int) -> None:
        """Put replayed items in front of a key's pending items and make the key due now.

        With dedupe no two equal items wait under a key at once: an item equal to one in
        front of it (replayed too) or behind it (waiting already) collapses into the front one.
        """
        if not items:
            return
        state = queue.keys.get(key)
        if state is None:
            state = queue.keys[key] = _Key(last_ms=now_ms)
        if spec.dedupe:
            items = first_of_each(items, lambda item: item[2])
            replayed = {d for _, _, d in items if d}
            if not replayed.isdisjoint(state.digests):
                kept = deque(item for item in state.pending if item[2] not in replayed)
                queue.buffered_items -= len(state.pending) - len(kept)
                state.pending = kept
            state.digests |= replayed
        state.pending.extendleft(reversed(items))
        queue.buffered_items += len(items)
        if state.current is None:
            queue.schedule(key, now_ms)

    @staticmethod
    def _known(spec: QueueSpec, queue: _Queue, batch_ids: Sequence[str]) -> dict[str, None]:
        """These dead-letter ids, each once; NotFound when one is unknown."""
        ids = dict.fromkeys(batch_ids)
        unknown = [i for i in ids if i not in queue.dead]
        if unknown:
            raise unknown_dead_letters(spec.name, unknown)
        return ids

    def purge_dead(self, spec: QueueSpec, batch_ids: Sequence[str] | None, before_ms: int | None) -> int:
        with self._lock:
            queue = self._queue(spec)
            if batch_ids is not None:
                doomed = list(self._known(spec, queue, batch_ids))
            else:
                doomed = [i for i, r in queue.dead.items() if before_ms is None or r.died_at < before_ms]
            # transition: purge
            for batch_id in doomed:
                del queue.dead[batch_id]
                del queue.dead_digests[batch_id]
            return len(doomed)

    # ------------------------------------------------------------------ jobs (JobStore)

    def _table(self, spec: QueueSpec) -> JobTable:
        table = self._job_tables.get(spec.name)
        if table is None:
            table = self._job_tables[spec.name] = JobTable()
        return table

    def _enqueue(self, queue: _Queue, key: str, payload: bytes, score_ms: int, now_ms: int) -> None:
        """A job's entry under its key at a lane's score (not the batching rule's due_at)."""
        # transition: append
        state = queue.keys.get(key)
        if state is None:
            state = queue.keys[key] = _Key()
        state.pending.append((now_ms, payload, ""))
        state.last_ms = now_ms
        queue.buffered_items += 1
        if state.current is None:
            head = queue.head()
            queue.schedule(key, score_ms)
            if wakes(score_ms, None if head is None else head[0], now_ms):
                self._wakeups.notify()

    def _enqueue_callbacks(self, spec: QueueSpec, queue: _Queue, table: JobTable, now_ms: int) -> None:
        """Submit the callback jobs of the groups this step finished (once per round)."""
        while table.callbacks:
            callback = table.callbacks.pop(0)
            if table.create(callback, now_ms):
                self._enqueue(queue, callback.id, callback.payload, callback.score_ms, now_ms)

    def submit_jobs(
        self, spec: QueueSpec, jobs: Sequence[NewJob], group: NewGroup | None, now_ms: int
    ) -> list[bool]:
        with self._lock:
            self._rules.setdefault(spec.name, spec)
            queue, table = self._queue(spec), self._table(spec)
            if group is not None and not table.create_group(group, now_ms):
                return [False] * len(jobs)
            created = []
            for new in jobs:  # job transition: submit
                made = table.create(new, now_ms)
                if made:
                    self._enqueue(queue, new.id, new.payload, new.score_ms, now_ms)
                created.append(made)
            if group is not None:
                table.finish_if_empty(group.id, now_ms)
                self._enqueue_callbacks(spec, queue, table, now_ms)
            return created

    def finish_jobs(self, spec: QueueSpec, outcomes: Sequence[JobOutcome], now_ms: int) -> list[bool]:
        with self._lock:
            queue, table = self._queue(spec), self._table(spec)
            held = []
            for outcome in outcomes:
                state = self._held(queue, outcome.lease)
                job = table.jobs.get(outcome.lease.key)
                held.append(state is not None and job is not None)
                if state is None or state.current is None or job is None:
                    continue
                # transition: ack
                queue.in_flight -= 1
                queue.flushed_batches += 1
                queue.flushed_items += len(state.current.items)
                queue.last_flush_at = now_ms
                state.current = None
                if outcome.result:  # b'': none (a cancelled function that raised)
                    job.result = outcome.result
                if outcome.kind == OutcomeKind.ADVANCE:  # job transition: finish_advance
                    job.step += 1
                    job.attempt, job.started_at, job.progress, job.message = 0, None, None, ""
                    job.function, job.payload = outcome.next_function, outcome.next_payload
                    table.move(job, JobStatus.PENDING, now_ms)
                    self._enqueue(queue, job.id, outcome.next_payload, outcome.next_score_ms, now_ms)
                    continue
                if outcome.kind == OutcomeKind.SUCCEEDED:  # job transition: finish_succeeded
                    job.progress = 1.0
                    table.move(job, JobStatus.SUCCEEDED, now_ms)
                else:  # job transition: finish_cancelled
                    table.move(job, JobStatus.CANCELLED, now_ms)
                self._reschedule(spec, queue, outcome.lease.key, state, now_ms)
            self._enqueue_callbacks(spec, queue, table, now_ms)
            return held

    def job_progress(self, spec: QueueSpec, lease: Lease, fraction: float | None, message: str) -> bool:
        with self._lock:
            job = self._table(spec).jobs.get(lease.key)
            if self._held(self._queue(spec), lease) is None or job is None:
                return False
            job.progress, job.message = fraction, message  # job transition: progress
            return True

    def cancel_job(self, spec: QueueSpec, job_id: str, now_ms: int) -> JobStatus:
        with self._lock:
            queue, table = self._queue(spec), self._table(spec)
            job = table.jobs.get(job_id)
            if job is None:
                raise NotFound(f"job queue {spec.name!r} has no job {job_id!r}")
            if job.status == JobStatus.RUNNING:  # job transition: cancel_running
                job.cancel_requested = True
            elif job.status == JobStatus.PENDING:  # job transition: cancel_pending
                job.cancel_requested = True
                self.clear(spec, job_id)
                table.move(job, JobStatus.CANCELLED, now_ms)
                self._enqueue_callbacks(spec, queue, table, now_ms)
            return job.status

    def retry_jobs(
        self, spec: QueueSpec, job_ids: Sequence[str], lane: Lane | None, score_ms: int, now_ms: int
    ) -> list[str]:
        with self._lock:
            queue, table = self._queue(spec), self._table(spec)
            retried = []
            for job_id in dict.fromkeys(job_ids):
                job = table.jobs.get(job_id)
                if job is None or job.status != JobStatus.FAILED:
                    continue
                # job transition: retry_jobs
                if queue.dead.pop(job.dead_batch, None) is not None:  # transition: purge
                    queue.dead_digests.pop(job.dead_batch, None)
                job.dead_batch, job.attempt, job.started_at = "", 0, None
                job.cancel_requested = False
                if lane is not None:
                    job.lane = lane
                table.move(job, JobStatus.PENDING, now_ms)
                self._enqueue(queue, job.id, job.payload, score_ms, now_ms)
                retried.append(job_id)
            return retried

    def get_jobs(self, spec: QueueSpec, job_ids: Sequence[str]) -> list[JobRecord | None]:
        with self._lock:
            jobs = self._table(spec).jobs
            return [None if (job := jobs.get(i)) is None else job.record() for i in job_ids]

    def list_jobs(
        self, spec: QueueSpec, status: JobStatus | None, group: str | None, limit: int, cursor: str | None
    ) -> JobPage:
        with self._lock:
            return self._table(spec).page(status, group, limit, cursor)

    def job_counts(self, spec: QueueSpec) -> dict[JobStatus, int]:
        with self._lock:
            return dict(self._table(spec).counts)

    def get_group(self, spec: QueueSpec, group_id: str) -> GroupRecord | None:
        with self._lock:
            group = self._table(spec).groups.get(group_id)
            return None if group is None else group.record()

    def cleanup_jobs(self, spec: QueueSpec, finished_before_ms: int, limit: int) -> int:
        with self._lock:
            queue, table = self._queue(spec), self._table(spec)
            doomed = table.expired(finished_before_ms, limit)
            # job transition: cleanup
            for job in doomed:
                assert job.status in FINISHED
                if queue.dead.pop(job.dead_batch, None) is not None:  # transition: purge
                    queue.dead_digests.pop(job.dead_batch, None)
                table.delete(job)
            return len(doomed)

    def waiter(self, names: Sequence[str]) -> Waiter:
        return LocalWaiter(self._wakeups)

    def close(self) -> None:
        pass
